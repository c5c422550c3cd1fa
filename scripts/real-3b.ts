/**
 * A PaliGemma 3B (224) checkpoint at full size, written as Hugging Face ships it (float32 safetensors in 3
 * shards + index; random weights, since nothing is downloaded here), then loaded by `fromPreset` and run by
 * `generate` on the onnx backend: load seconds, generate seconds (prefill + 7 decode steps), peak RSS.
 *
 *   npx tsx scripts/real-3b.ts write /big/pg3b        11.7 GB of disk, ~12 GiB of RAM while writing
 *   npx tsx scripts/real-3b.ts run /big/pg3b [--int8]  one process per run, so that the peak RSS is its own
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../dsl/tf';
import * as d from '../dsl';
import { familyConfig } from '../checkpoints/presets';
import { encodeHfConfig, hfLayout, hfShape } from '../checkpoints/hf';
import { SAFETENSORS_INDEX_FILE, writeSafetensors } from '../checkpoints/safetensors';
import { setBackend } from '../src/runtime/backend';
import { fromPreset } from '../src/runtime/preset';
import { generate } from '../src/generate/generate';

const SHARD_BYTES = 4.5e9;

function write(dir: string): void {
  fs.mkdirSync(dir, { recursive: true });
  const c = familyConfig('PG1 3B', 224);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(encodeHfConfig(c), null, 2));
  const shards: ReturnType<typeof hfLayout>[] = [[]];
  let bytes = 0;
  for (const s of hfLayout(c)) {
    const n = hfShape(s.transform, s.keras.kerasShape).reduce((a, b) => a * b, 1) * 4;
    if (bytes > 0 && bytes + n > SHARD_BYTES) [shards[shards.length], bytes] = [[], 0];
    shards[shards.length - 1].push(s);
    bytes += n;
  }
  const names = shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`);
  const weightMap: Record<string, string> = {};
  let total = 0;
  let seed = 1;
  shards.forEach((shard, i) => {
    const tensors = shard.map((s) => {
      const shape = hfShape(s.transform, s.keras.kerasShape);
      const values = new Float32Array(shape.reduce((a, b) => a * b, 1));
      const leaf = s.keras.keras.split('/').pop()!;
      if (leaf === 'gamma') values.fill(1);
      else if (leaf !== 'bias' && leaf !== 'beta' && leaf !== 'scale') {
        for (let j = 0; j < values.length; j++) {
          seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
          values[j] = (seed / 2 ** 32 - 0.5) * 0.04;
        }
      }
      weightMap[s.hf] = names[i];
      total += values.length * 4;
      return [s.hf, { shape, values }] as const;
    });
    writeSafetensors(path.join(dir, names[i]), tensors);
    console.log(`wrote ${names[i]}: ${(fs.statSync(path.join(dir, names[i])).size / 1e9).toFixed(2)} GB`);
  });
  fs.writeFileSync(path.join(dir, SAFETENSORS_INDEX_FILE), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
}

async function run(dir: string, quantize: 'int8' | undefined): Promise<void> {
  const peak = () => `${((process.resourceUsage().maxRSS * 1024) / 2 ** 30).toFixed(2)} GiB`;
  await setBackend('onnx');
  let t0 = performance.now();
  const p = fromPreset(dir);
  console.log(`loaded ${dir} in ${((performance.now() - t0) / 1000).toFixed(1)} s; peak RSS ${peak()}`);
  const images = d.named(tf.randomUniform([1, 224, 224, 3], -1, 1, 'float32', 1), ['batch', 'height', 'width', 'channels'] as const);
  const prompt = [2, ...Array.from({ length: 9 }, (_, i) => 100 + i)];
  for (const call of ['first call (compiles)', 'second call']) {
    t0 = performance.now();
    const out = await generate(p, { images, tokenIds: [prompt], paddingMask: [prompt.map(() => 1)] }, { maxLength: prompt.length + 8, quantize, compiled: true });
    console.log(`${quantize ?? 'float32'}, ${call}: prefill + ${out.steps - 1} decode steps in ${((performance.now() - t0) / 1000).toFixed(1)} s; peak RSS ${peak()}`);
  }
  images.dispose();
  d.disposeTree(p);
}

const [mode, dir] = process.argv.slice(2);
if (mode === 'write' && dir) write(dir);
else if (mode === 'run' && dir) void run(dir, process.argv.includes('--int8') ? 'int8' : undefined);
else {
  console.error('usage: npx tsx scripts/real-3b.ts write DIR | run DIR [--int8]');
  process.exit(2);
}
