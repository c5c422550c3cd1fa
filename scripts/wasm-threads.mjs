// Measures a 1024x1024 float32 matMul on the wasm backend with 1 and with 2 XNNPACK threads.
//
// Why: tfjs-backend-wasm runs one thread in Node; src/runtime/backend.ts can start its threaded build
// (setBackend('wasm', { threads })). MEASURED.md expects about 2x on 2 cores. Each configuration runs in its
// own process, alternating, so a busy neighbour hurts both alike. Run after `npm run build`:
//   node scripts/wasm-threads.mjs [rounds]
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const n = 1024;

if (process.argv[2] === '--child') {
  const { tf, setBackend } = require('../dist/index.js');
  const info = await setBackend('wasm', { threads: Number(process.argv[3]) });
  const a = tf.randomNormal([n, n], 0, 1, 'float32', 1);
  const b = tf.randomNormal([n, n], 0, 1, 'float32', 2);
  const once = async () => {
    const c = tf.matMul(a, b);
    await c.data();
    c.dispose();
  };
  for (let i = 0; i < 3; i++) await once();
  const reps = 20;
  const start = performance.now();
  for (let i = 0; i < reps; i++) await once();
  const seconds = (performance.now() - start) / 1000 / reps;
  console.log(JSON.stringify({ threads: info.threads, ms: seconds * 1e3, gflops: (2 * n ** 3) / seconds / 1e9 }));
  process.exit(0);
}

const rounds = Number(process.argv[2] ?? 3);
const results = { 1: [], 2: [] };
for (let r = 0; r < rounds; r++) {
  for (const threads of [1, 2]) {
    const line = execFileSync(process.execPath, [new URL(import.meta.url).pathname, '--child', String(threads)], {
      encoding: 'utf8',
    });
    const m = JSON.parse(line.trim().split('\n').pop());
    if (m.threads !== threads) throw new Error(`asked for ${threads} threads, got ${m.threads}`);
    results[threads].push(m);
  }
}
for (const threads of [1, 2]) {
  const ms = results[threads].map((m) => m.ms).sort((x, y) => x - y);
  const best = ms[0];
  const median = ms[Math.floor(ms.length / 2)];
  console.log(
    `wasm ${threads} thread${threads > 1 ? 's' : ' '}: matMul ${n}x${n} median ${median.toFixed(1)} ms ` +
      `(${((2 * n ** 3) / (median / 1e3) / 1e9).toFixed(1)} GFLOP/s), best ${best.toFixed(1)} ms ` +
      `(${((2 * n ** 3) / (best / 1e3) / 1e9).toFixed(1)} GFLOP/s)`,
  );
}
