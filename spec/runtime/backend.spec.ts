/**
 * The runtime and the CLI skeleton: backends (cpu, wasm with and without threads, webgpu on SwiftShader when
 * VK_ICD_FILENAMES names it), auto, the missing-adapter and heap-guard errors (literal), one gradient on every
 * backend against its analytic value, `main(['info'])`, and memory neutrality.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { availableParallelism } from 'node:os';
import { backendTest, test, testBackends } from '../helpers/backends';
import { tf } from '../../dsl/tf';
import {
  compiledModels,
  assertFitsBackend,
  availableBackends,
  backendInfo,
  formatBytes,
  setBackend,
  setWasmSafeBytes,
  tensorOnBackend,
  vulkanIcdPresent,
} from '../../src/runtime/backend';
import { main, type Io } from '../../src/cli/cli';

const noAdapter =
  'webgpu: no WebGPU adapter. In Node, the webgpu package (Dawn) needs a Vulkan driver; for the SwiftShader ' +
  'software one: apt-get install -y chromium libvulkan1 and ' +
  'VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json. Or use --backend wasm.';

/** An adapter as SwiftShader describes itself (see `npx paligemma info --backend webgpu`). */
const swiftShaderLike = {
  info: { vendor: 'google', architecture: 'swiftshader', device: 'swiftshader-device', description: 'SwiftShader' },
  limits: { maxStorageBufferBindingSize: 2 ** 30, maxBufferSize: 2 ** 30 },
  requestDevice: async () => {
    throw new Error('not used: a software adapter is passed over');
  },
};

function capture(): Io & { lines: string[]; errors: string[] } {
  const lines: string[] = [];
  const errors: string[] = [];
  return { lines, errors, out: (l) => lines.push(...l.split('\n')), err: (l) => errors.push(...l.split('\n')) };
}

// ---------------------------------------------------------------------------------------------------------
// setBackend
// ---------------------------------------------------------------------------------------------------------

backendTest(
  'setBackend switches and describes the backend',
  async (t, info) => {
    t.is(tf.getBackend(), info.name);
    t.is(info.requested, info.name);
    t.is(info.reason, 'requested');
    t.is(info.tfjsVersion, tf.version_core);
    t.deepEqual(backendInfo(), info);
    if (info.name === 'wasm') {
      t.is(info.threads, 1);
      t.true(info.simd);
      t.true(info.wasmHeapBytes! >= 16 * 2 ** 20);
    }
    if (info.name === 'webgpu') {
      t.truthy(info.adapter);
      t.true(info.adapter!.limits.maxStorageBufferBindingSize >= 128 * 2 ** 20);
    }
    const a = tf.tensor2d([1, 2, 3, 4], [2, 2]);
    const y = tf.matMul(a, a);
    t.deepEqual(Array.from(await y.data()), [7, 10, 15, 22]);
    tf.dispose([a, y]);
  },
  { webgpu: true },
);

// d/dA sum(A A) at (i, j) = sum_l A[j, l] + sum_k A[k, i]: row sum j plus column sum i.
backendTest(
  'gradient of sum(A.A) matches rowsum(A)[j] + colsum(A)[i]',
  async (t) => {
    const n = 5;
    const values = Array.from({ length: n * n }, (_, k) => Math.sin(k + 1));
    const rowSum = (j: number) => values.slice(j * n, j * n + n).reduce((s, v) => s + v, 0);
    const colSum = (i: number) => values.filter((_, k) => k % n === i).reduce((s, v) => s + v, 0);
    const expected = Array.from({ length: n * n }, (_, k) => rowSum(k % n) + colSum(Math.floor(k / n)));
    const before = tf.memory().numTensors;
    const a = tf.tensor2d(values, [n, n]);
    const g = tf.grad((m: tf.Tensor) => tf.sum(tf.matMul(m as tf.Tensor2D, m as tf.Tensor2D)))(a);
    const got = Array.from(await g.data());
    tf.dispose([a, g]);
    t.is(tf.memory().numTensors, before);
    got.forEach((v, k) => t.true(Math.abs(v - expected[k]) < 1e-4, `element ${k}: ${v} vs ${expected[k]}`));
  },
  { webgpu: true },
);

test.serial('wasm with 2 threads computes what 1 thread does', async (t) => {
  const n = 96;
  const values = Float32Array.from({ length: n * n }, (_, k) => Math.cos(k));
  const product = async () => {
    const a = tf.tensor2d(values, [n, n]);
    const y = tf.matMul(a, a);
    const out = await y.data();
    tf.dispose([a, y]);
    return out;
  };
  const two = await setBackend('wasm', { threads: 2 });
  t.is(two.threads, 2);
  t.true(two.simd);
  const threaded = await product();
  const one = await setBackend('wasm', { threads: 1 });
  t.is(one.threads, 1);
  const single = await product();
  t.true(threaded.every((v, k) => Math.abs(v - single[k]) < 1e-4));
});

test.serial('auto passes over a software adapter and picks onnx (onnxruntime-node is installed)', async (t) => {
  const info = await setBackend('auto', { requestAdapter: async () => swiftShaderLike });
  t.is(info.name, 'onnx');
  t.is(info.requested, 'auto');
  t.is(info.threads, availableParallelism(), 'onnx threads: one per core');
  t.is(info.reason, 'the only WebGPU adapter is a software one (SwiftShader), ~100x slower than wasm: onnx, models compiled onto onnxruntime-node, params in host memory');
  t.true(compiledModels());
  await setBackend('cpu');
  t.false(compiledModels(), 'another backend turns compiled model calls off');
});

test.serial('auto without onnx passes over a software adapter and picks wasm', async (t) => {
  const info = await setBackend('auto', { requestAdapter: async () => swiftShaderLike, onnx: false });
  t.is(info.name, 'wasm');
  t.is(info.requested, 'auto');
  t.is(info.reason, 'the only WebGPU adapter is a software one (SwiftShader), ~100x slower than wasm: wasm');
});

test.serial('auto without any adapter and without onnx picks wasm', async (t) => {
  const info = await setBackend('auto', { requestAdapter: async () => null, onnx: false });
  t.is(info.name, 'wasm');
  t.is(info.reason, 'no WebGPU adapter: wasm');
});

test.serial('auto picks onnx on this machine (SwiftShader at most)', async (t) => {
  if (process.env.PALIGEMMA_WEBGPU === '1') return t.pass('a hardware GPU is declared here');
  const info = await setBackend('auto');
  t.is(info.name, 'onnx');
  if (vulkanIcdPresent()) t.regex(info.reason, /^the only WebGPU adapter is a software one/);
});

test.serial('webgpu without an adapter says how to get one', async (t) => {
  await t.throwsAsync(setBackend('webgpu', { requestAdapter: async () => null }), { message: noAdapter });
});

test.serial('unknown backend names are refused', async (t) => {
  await t.throwsAsync(setBackend('gpu' as never), {
    message: "setBackend: unknown backend 'gpu'; expected one of auto, cpu, wasm, webgpu, onnx",
  });
});

test.serial('availableBackends reports the injected adapter', async (t) => {
  const offer = await availableBackends(async () => swiftShaderLike);
  t.true(offer.wasm);
  t.like(offer.webgpu, { vendor: 'google', architecture: 'swiftshader', software: true });
  t.is((await availableBackends(async () => null)).webgpu, noAdapter);
});

// ---------------------------------------------------------------------------------------------------------
// Heap guard
// ---------------------------------------------------------------------------------------------------------

test.serial('the wasm heap guard refuses work past the safe line, naming the sizes', async (t) => {
  await setBackend('wasm');
  t.is(tf.memory().numBytes, 0);
  setWasmSafeBytes(1024);
  const live = tf.zeros([100]); // 400 B
  try {
    assertFitsBackend(624, 'exactly up to the line');
    const heap = formatBytes(backendInfo().wasmHeapBytes!);
    const message =
      `the test weights needs 1000 B, and 400 B of tensors are live: more than the 1.0 KiB the wasm backend ` +
      `holds safely (heap now ${heap}, at most 4.0 GiB; XNNPACK keeps a packed copy of each weight, and a ` +
      `failed allocation can silently overwrite a live tensor). Use the cpu backend (--backend cpu), or webgpu.`;
    t.throws(() => assertFitsBackend(1000, 'the test weights'), { message });
    const before = tf.memory().numTensors;
    t.throws(() => tensorOnBackend(new Float32Array(250), [250], 'the test weights'), { message });
    t.is(tf.memory().numTensors, before);
  } finally {
    live.dispose();
    setWasmSafeBytes();
  }
});

test.serial('the heap guard lets cpu through, and tensorOnBackend makes the tensor', async (t) => {
  await setBackend('cpu');
  setWasmSafeBytes(16);
  try {
    assertFitsBackend(2 ** 40, 'a terabyte on cpu');
    const x = tensorOnBackend(new Int32Array([1, 2, 3, 4, 5, 6]), [2, 3], 'ids');
    t.is(x.dtype, 'int32');
    t.deepEqual(x.shape, [2, 3]);
    x.dispose();
  } finally {
    setWasmSafeBytes();
  }
  t.throws(() => setWasmSafeBytes(0), { message: 'setWasmSafeBytes: expected a positive number of bytes, got 0' });
});

test('formatBytes', (t) => {
  t.is(formatBytes(1000), '1000 B');
  t.is(formatBytes(1536), '1.5 KiB');
  t.is(formatBytes(4 * 2 ** 30), '4.0 GiB');
});

// ---------------------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------------------

test.serial('main(["info"]) prints versions, backends, the choice and the demo', async (t) => {
  const io = capture();
  t.is(await main(['info'], io), 0);
  t.deepEqual(io.errors, []);
  t.is(io.lines[0], `paligemma-ts 0.1.0, tfjs-core ${tf.version_core}, node ${process.version} (${process.platform} ${process.arch})`);
  t.is(io.lines[1], 'backends available:');
  t.is(io.lines[2], '  cpu     yes (plain JavaScript, slow)');
  t.regex(io.lines[3], /^ {2}wasm {4}yes \(XNNPACK; \d+ cores here\)$/);
  t.regex(io.lines[4], /^ {2}webgpu {2}/);
  t.regex(io.lines[5], /^backend: (onnx|wasm, 1 thread, SIMD on|webgpu) \(/);
  t.true(io.lines.includes('demo: gradient of sum(A.A) at A = [[1,2],[3,4]]: [[7,11],[9,13]] (expected [[7,11],[9,13]])'));
  t.true(io.lines.some((l) => /^demo: matMul 256x256: [\d.]+ ms \([\d.]+ GFLOP\/s\)$/.test(l)));
});

test.serial('main: bad info flags are usage errors (exit 2)', async (t) => {
  const bad = capture();
  t.is(await main(['info', '--backend', 'gpu'], bad), 2);
  t.deepEqual(bad.errors, ["paligemma info: --backend must be one of auto, cpu, wasm, webgpu, onnx; got 'gpu'", "run 'paligemma info --help' for its flags"]);
  const threads = capture();
  t.is(await main(['info', '--threads', '0'], threads), 2);
  t.deepEqual(threads.errors, ["paligemma info: --threads must be an integer >= 1; got '0'", "run 'paligemma info --help' for its flags"]);
});

test.serial('`paligemma info --backend webgpu` without a Vulkan driver exits 1 with the way to get one', (t) => {
  const bin = join(__dirname, '..', '..', '..', 'bin', 'paligemma.js');
  const env = { ...process.env, VK_ICD_FILENAMES: '/nonexistent/icd.json' };
  const run = () => execFileSync(process.execPath, [bin, 'info', '--backend', 'webgpu'], { env, stdio: 'pipe' });
  const error = t.throws(run) as Error & { status: number; stderr: Buffer };
  t.is(error.status, 1);
  t.true(error.stderr.toString().includes(`paligemma info: ${noAdapter}`));
});

// ---------------------------------------------------------------------------------------------------------
// Memory and the test helper
// ---------------------------------------------------------------------------------------------------------

backendTest(
  'what runtime and cli export leaves no tensor behind',
  async (t, info) => {
    const before = tf.memory().numTensors;
    await setBackend(info.name);
    backendInfo();
    await availableBackends();
    assertFitsBackend(4, 'four bytes');
    tensorOnBackend(new Float32Array([1, 2]), [2], 'two floats').dispose();
    t.is(await main(['info', '--backend', info.name], capture()), 0);
    t.is(tf.getBackend(), info.name);
    t.is(tf.memory().numTensors, before);
  },
  { webgpu: true },
);

test('PALIGEMMA_TEST_BACKENDS restricts the backends', (t) => {
  const saved = process.env.PALIGEMMA_TEST_BACKENDS;
  try {
    process.env.PALIGEMMA_TEST_BACKENDS = 'wasm';
    t.deepEqual(testBackends({ webgpu: true }), ['wasm']);
    delete process.env.PALIGEMMA_TEST_BACKENDS;
    t.deepEqual(testBackends().slice(0, 2), ['cpu', 'wasm']);
  } finally {
    if (saved == null) delete process.env.PALIGEMMA_TEST_BACKENDS;
    else process.env.PALIGEMMA_TEST_BACKENDS = saved;
  }
});
