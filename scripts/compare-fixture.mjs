#!/usr/bin/env node
// Compare `paligemma run-fixture` output with a golden fixture:
//   node scripts/compare-fixture.mjs <fixture-dir> <out-dir>
// Prints max |diff| per output and gradient and exits 1 when any exceeds the tolerance
// (outputs 1e-4 absolute; loss and gradients 1e-3 relative + 1e-4 absolute).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const [fixture, out] = process.argv.slice(2);
if (!fixture || !out) {
  console.error('usage: node scripts/compare-fixture.mjs <fixture-dir> <out-dir>');
  process.exit(2);
}
const manifest = (dir) => JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8'));
const f32 = (dir, e) => {
  const b = readFileSync(join(dir, e.file));
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
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
for (const [k, e] of Object.entries(want.outputs)) {
  if (k === 'loss') continue;
  check('output', k, e, got.outputs[k], 1e-4, 0);
}
if (want.loss_value !== undefined) check('output', 'loss', Float32Array.of(want.loss_value), got.outputs.loss, 1e-4, 1e-3);
for (const [k, e] of Object.entries(want.gradients ?? {})) check('gradient', k, e, got.gradients?.[k], 1e-4, 1e-3);
console.log(ok ? 'OK' : 'MISMATCH');
process.exit(ok ? 0 : 1);
