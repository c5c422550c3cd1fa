/**
 * The browser build (dist/browser.mjs) in headless Chromium: a page served here on localhost (node:http)
 * imports it, fetches the shipped preset, decodes its picture with the browser's own decoder, generates on
 * the wasm backend and writes the answer into the DOM; Chromium's `--dump-dom` prints the DOM, and the answer
 * must be what Node generates from the same files.
 *
 * `--dump-dom` prints once the page's load event fires. The page holds it back with one image whose
 * response this server sends only after the page has posted that it is done (or failed).
 *
 * Chromium: PALIGEMMA_CHROMIUM, else /usr/bin/chromium (Debian's `chromium`, which npm test's pretest
 * installs as root).
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { extname, join, normalize } from 'node:path';
import { setBackend } from '../src/runtime/backend';
import { generateText, loadCausalLM } from '../src/generate/causal_lm';
import { convertImage, readImage } from '../src/preprocess/image';
import * as d from '../dsl';
import { encode as jpegEncode } from 'jpeg-js';
import { decodeImage } from '../src/preprocess/image';

const root = join(__dirname, '..', '..');
const chromium = process.env.PALIGEMMA_CHROMIUM ?? '/usr/bin/chromium';
const preset = join(root, 'checkpoints', 'tiny');
const wasmDir = join(root, 'node_modules', '@tensorflow', 'tfjs-backend-wasm', 'dist');
const bundle = join(root, 'dist', 'browser.mjs');
const MAX_LENGTH = 24;

const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>paligemma-ts in a browser</title></head>
<body>
<pre id="answer">pending</pre>
<img src="/hold.png" alt="">
<script type="module">
const out = document.getElementById('answer');
let report;
try {
  const pg = await import('/browser.mjs');
  pg.setWasmPaths('/wasm/');
  const info = await pg.setBackend('wasm');
  const lm = await pg.fetchCausalLM('/preset/');
  const image = await pg.decodeImageInBrowser(await (await fetch('/preset/cat.png')).blob());
  const pixels = pg.convertImage(image, lm.params.config.image_size);
  const jpeg = pg.decodeImage(new Uint8Array(await (await fetch('/photo.jpg')).arrayBuffer()), 'photo.jpg');
  let png;
  try { pg.decodeImage(new Uint8Array(await (await fetch('/preset/cat.png')).arrayBuffer()), 'cat.png'); } catch (e) { png = e.message; }
  const before = pg.tf.memory().numTensors;
  const { texts } = await pg.generateText(lm, { images: [image], prompts: ['caption en\\n'] }, { maxLength: ${MAX_LENGTH}, stripPrompt: true });
  report = {
    text: texts[0], backend: info.name, simd: info.simd, leaked: pg.tf.memory().numTensors - before,
    channels: image.channels, size: [image.height, image.width], pixels: Array.from(pixels),
    jpeg: [jpeg.channels, jpeg.height, jpeg.width, Array.from(jpeg.data)], png,
    nodeGlobals: ['process', 'Buffer', 'require', '__filename'].filter((g) => typeof globalThis[g] !== 'undefined'),
  };
} catch (e) {
  report = { error: String(e && e.stack || e) };
}
// JSON with <, > and & escaped, so the DOM's serialisation leaves it as it is
out.textContent = JSON.stringify(report).replace(/[<>&]/g, (c) => '\\\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'));
await fetch('/done', { method: 'POST', body: out.textContent });
</script>
</body></html>`;

const types: Record<string, string> = {
  '.mjs': 'text/javascript',
  '.js': 'text/javascript',
  '.wasm': 'application/wasm',
  '.json': 'application/json',
  '.png': 'image/png',
};
// 1x1 transparent PNG
const pixel = Buffer.from('iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=', 'base64');

// a 24x20 JPEG with a gradient and a block of colour, made here (jpeg-js, quality 90)
const photo: Uint8Array = (() => {
  const [width, height] = [24, 20];
  const data = new Uint8Array(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const i = 4 * (y * width + x);
      const block = x > 8 && x < 16 && y > 5 && y < 14;
      data.set(block ? [220, 40, 60, 255] : [x * 10, y * 12, 255 - x * 5, 255], i);
    }
  }
  return jpegEncode({ data, width, height }, 90).data;
})();

/** Serves the page, the bundle, tfjs' .wasm files and the preset; resolves `done` with the page's report. */
function serve(): Promise<{ url: string; done: Promise<string>; requests: string[]; close: () => void }> {
  let finish: (body: string) => void = () => {};
  const done = new Promise<string>((resolve) => (finish = resolve));
  const held: ServerResponse[] = [];
  const requests: string[] = [];
  const file = (res: ServerResponse, path: string): void => {
    if (!existsSync(path)) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': types[extname(path)] ?? 'application/octet-stream' }).end(readFileSync(path));
  };
  const inside = (dir: string, rel: string): string => {
    const p = normalize(join(dir, decodeURIComponent(rel)));
    return p.startsWith(dir + '/') ? p : join(dir, '\0');
  };
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    requests.push(url.pathname);
    if (url.pathname === '/') res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(page);
    else if (url.pathname === '/browser.mjs') file(res, bundle);
    else if (url.pathname === '/photo.jpg') res.writeHead(200, { 'content-type': 'image/jpeg' }).end(photo);
    else if (url.pathname.startsWith('/wasm/')) file(res, inside(wasmDir, url.pathname.slice(6)));
    else if (url.pathname.startsWith('/preset/')) file(res, inside(preset, url.pathname.slice(8)));
    else if (url.pathname === '/hold.png') held.push(res);
    else if (url.pathname === '/done' && req.method === 'POST') {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        res.writeHead(204).end();
        finish(body);
        for (const h of held.splice(0)) h.writeHead(200, { 'content-type': 'image/png' }).end(pixel);
      });
    } else res.writeHead(404).end();
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${port}/`,
        done,
        requests,
        close: () => {
          for (const h of held.splice(0)) h.destroy();
          server.closeAllConnections();
          server.close();
        },
      });
    }),
  );
}

function dumpDom(url: string, profile: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'];
  flags.push('--disable-sync', '--no-first-run', `--user-data-dir=${profile}`, '--timeout=120000', '--dump-dom', url);
  return new Promise((resolve) => {
    const child = spawn(chromium, flags, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b) => (stdout += b));
    child.stderr.on('data', (b) => (stderr += b));
    child.on('error', (e) => resolve({ code: null, stdout, stderr: `${stderr}${e.message}` }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('dist/browser.mjs keeps Node out: only the stubs of Node-only branches remain, and no import of a Node module', (t) => {
  const code = readFileSync(bundle, 'utf8');
  // one self-contained module: no import declarations, no Node module named anywhere
  t.notRegex(code, /(^|[;}\n])\s*import(\s*[{*"]|\s+[\w$])/);
  t.false(code.includes('"node:'));
  const stubs = [...code.matchAll(/"((?:fs|path|os|module|zlib|pngjs|url|util|crypto|webgpu)\.[A-Za-z]+)"/g)].map((m) => m[1]);
  // backend.ts' Node set-up (createRequire, the runtime dir: behind isNode), loadImage's file names and PNG
  // bytes (pngjs), tokenizer file names, the regular-file reader behind paths (checkpoints/files.ts), onnxruntime's thread count and telemetry log (the onnx backend is Node's), the
  // machine's memory (generate's bound on cpu: behind inNode): none on the browser path. No reader of
  // checkpoint files is left.
  t.deepEqual([...new Set(stubs)].sort(), [
    'fs.closeSync', 'fs.constants', 'fs.fstatSync', 'fs.lstatSync', 'fs.mkdirSync', 'fs.mkdtempSync', 'fs.openSync',
    'fs.readFileSync', 'fs.readSync', 'fs.readdirSync', 'fs.rmSync', 'fs.statSync', 'fs.unlinkSync',
    'module.createRequire', 'os.availableParallelism', 'os.cpus', 'os.homedir', 'os.tmpdir', 'os.totalmem', 'path.dirname', 'path.join', 'pngjs.PNG',
  ]);
  t.true(code.length < 1.5 * 2 ** 20, `${code.length} bytes`);
});

test('headless Chromium loads the shipped preset by fetch, generates on wasm and writes what Node generates', async (t) => {
  t.timeout(180_000);
  if (!existsSync(chromium)) {
    t.fail(`no Chromium at ${chromium}: apt-get install -y chromium (npm test's pretest does, as root), or set PALIGEMMA_CHROMIUM`);
    return;
  }
  // Node's answer from the same files, on the same backend
  await setBackend('wasm');
  const lm = loadCausalLM(preset);
  const here = await generateText(lm, { images: [join(preset, 'cat.png')], prompts: ['caption en\n'] }, { maxLength: MAX_LENGTH, stripPrompt: true });
  const pixels = convertImage(join(preset, 'cat.png'), lm.params.config.image_size);
  const decoded = readImage(join(preset, 'cat.png'));
  d.disposeTree(lm.params);

  const server = await serve();
  const profile = mkdtempSync(join(tmpdir(), 'paligemma-chromium-'));
  t.teardown(() => {
    server.close();
    rmSync(profile, { recursive: true, force: true });
  });
  const started = Date.now();
  const run = await dumpDom(server.url, profile);
  t.log(`chromium: ${((Date.now() - started) / 1000).toFixed(1)} s, exit ${run.code}`);
  const match = /<pre id="answer">([^<]*)<\/pre>/.exec(run.stdout);
  if (match == null) {
    t.fail(`no answer in the DOM (exit ${run.code}); requests: ${server.requests.join(' ')}\n${run.stderr.slice(-3000)}`);
    return;
  }
  const report = JSON.parse(match[1]) as {
    error?: string; text: string; backend: string; leaked: number; channels: number; size: number[]; pixels: number[];
    nodeGlobals: string[]; jpeg: [number, number, number, number[]]; png: string;
  };
  if (report.error !== undefined) {
    t.fail(`the page failed: ${report.error}`);
    return;
  }
  t.is(await server.done, match[1]);
  t.is(report.backend, 'wasm');
  t.deepEqual(report.nodeGlobals, []);
  t.deepEqual([report.channels, ...report.size], [decoded.channels, decoded.height, decoded.width]);
  t.true(report.pixels.length === pixels.length && report.pixels.every((v, i) => v === pixels[i]), 'converted pixels equal Node\'s');
  t.is(report.leaked, 0);
  const jpeg = decodeImage(photo, 'photo.jpg');
  t.deepEqual(report.jpeg, [jpeg.channels, jpeg.height, jpeg.width, Array.from(jpeg.data)], 'decodeImage(JPEG bytes) as in Node');
  t.is(report.png, "decodeImage: 'cat.png' is a PNG, and PNG bytes decode in Node only; in a browser use decodeImageInBrowser");
  t.is(report.text, here.texts[0]);
  t.log(`answer: ${JSON.stringify(report.text.slice(0, 60))}...`);
});
