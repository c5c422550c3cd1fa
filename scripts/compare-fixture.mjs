#!/usr/bin/env node
// Compare `paligemma run-fixture` output with a golden fixture:
//   node scripts/compare-fixture.mjs <fixture-dir> <out-dir>
// Prints max |diff| per output and gradient and exits 1 when any exceeds the tolerance
// (outputs 1e-4 absolute; loss and gradients 1e-3 relative + 1e-4 absolute). Training fixtures
// (spec/fixtures/train, a manifest `kind`): losses 1e-5 absolute, weights_final 1e-6 + 1e-5 |w|, preprocess
// runs exact (ids, masks) and 1e-6 (images).
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

const [fixture, out] = process.argv.slice(2);
if (!fixture || !out) {
  console.error('usage: node scripts/compare-fixture.mjs <fixture-dir> <out-dir>');
  process.exit(2);
}
const manifest = (dir) => JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
const f32 = (dir, e) => {
  const b = readFileSync(join(dir, e.file));
  const bytes = new Uint8Array(b.byteLength);
  bytes.set(b);
  if (e.dtype === 'int32') return Float32Array.from(new Int32Array(bytes.buffer));
  if (e.dtype === 'uint8') return Float32Array.from(bytes);
  return new Float32Array(bytes.buffer);
};
const want = manifest(fixture);
const got = manifest(out);
let ok = true;
const check = (kind, name, expected, actual, atol, rtol) => {
  if (!actual) {
    console.log(`${kind} ${name}: MISSING`);
    ok = false;
    return;
  }
  const a = actual instanceof Float32Array ? actual : f32(out, actual);
  const e = expected instanceof Float32Array ? expected : f32(fixture, expected);
  if (typeof atol === 'function') atol = atol(name);
  if (a.length !== e.length) {
    console.log(`${kind} ${name}: ${a.length} values, expected ${e.length}`);
    ok = false;
    return;
  }
  let worst = 0;
  let bad = 0;
  for (let i = 0; i < e.length; i++) {
    const d = Math.abs(a[i] - e[i]);
    worst = Math.max(worst, d);
    if (!(d <= atol + rtol * Math.abs(e[i]))) bad++;
  }
  ok &&= bad === 0;
  console.log(`${kind} ${name}: max |diff| ${worst.toExponential(2)}${bad ? `  FAIL (${bad} values outside tolerance)` : ''}`);
};
const training = typeof want.kind === 'string';
for (const [k, e] of Object.entries(want.outputs)) {
  if (k === 'loss' && !training) continue;
  const lossLike = k === 'loss' || k === 'losses' || k.endsWith('_loss');
  check('output', k, e, got.outputs[k], lossLike && training ? 1e-5 : 1e-4, 0);
}
if (want.weights_final) {
  const lr = want.compile?.optimizer_config?.learning_rate ?? 0;
  const steps = want.trajectory?.steps ?? 0;
  // The ViT key biases have a true gradient of 0 (softmax ignores a per-query constant): their float32
  // gradients are noise, and Adam moves them by noise alone, at most lr * 1e-3 per step (spec/train).
  const atol = (name) => (/(key_proj|attention\/key)\/bias$/.test(name) ? Math.max(1e-6, steps * lr * 1e-3) : 1e-6);
  for (const [k, e] of Object.entries(want.weights_final)) check('weights_final', k, e, got.weights_final?.[k], atol, 1e-5);
}
for (const [name, run] of Object.entries(want.runs ?? {})) {
  for (const [k, e] of Object.entries(run)) {
    if (!e || typeof e !== 'object' || !('file' in e)) continue;
    check(`runs.${name}`, k, e, got.runs?.[name]?.[k], k === 'x_images' ? 1e-6 : 0, 0);
  }
}
if (want.loss_value !== undefined) check('output', 'loss', Float32Array.of(want.loss_value), got.outputs.loss, 1e-4, 1e-3);
for (const [k, e] of Object.entries(want.gradients ?? {})) check('gradient', k, e, got.gradients?.[k], 1e-4, 1e-3);
// .lora.h5 files we wrote next to our manifest: same layers, ranks and shapes as the fixture's, values within
// the weights' tolerance (read with the package's own reader: run `npm run build` first).
for (const name of got.files ?? []) {
  if (!name.endsWith('.lora.h5') || !existsSync(join(fixture, name))) continue;
  const { readLoraH5, readPresetConfig } = createRequire(import.meta.url)('../dist/index.js');
  const config = readPresetConfig(join(fixture, 'preset'));
  const mine = readLoraH5(join(out, name), config);
  const theirs = readLoraH5(join(fixture, name), config);
  if (mine.rank !== theirs.rank || mine.adapters.length !== theirs.adapters.length) {
    console.log(`file ${name}: rank ${mine.rank} with ${mine.adapters.length} adapters, expected ${theirs.rank} with ${theirs.adapters.length}`);
    ok = false;
    continue;
  }
  theirs.adapters.forEach((a, i) => {
    const b = mine.adapters[i];
    if (b.layer !== a.layer) {
      console.log(`file ${name}: adapter ${i} is ${b.layer}, expected ${a.layer}`);
      ok = false;
      return;
    }
    check(`file ${name}`, `${a.layer}/lora_kernel_a`, a.a.values, b.a.values, 1e-6, 1e-5);
    check(`file ${name}`, `${a.layer}/lora_kernel_b`, a.b.values, b.b.values, 1e-6, 1e-5);
  });
}
console.log(ok ? 'OK' : 'MISMATCH');
process.exit(ok ? 0 : 1);
