/**
 * `npm run bench`: forward time of a 50M-parameter PaliGemma (random weights; batch 1, 32 text tokens) on
 * each backend. Prints the median over >= 5 runs after a warm-up, the effective GFLOP/s (matmul FLOPs only),
 * and peak tensor memory. A script, not a test: speed is compared against baselines printed in the same run.
 * Then a training row: steps/s of a LoRA (rank 4) and a full fine-tuning step (keras_hub's loss, Adam) on the
 * same config, with the peak tensor memory of a step; cpu is left out of it (minutes per step) unless named.
 *
 * Then a decode row per backend: the prefill once, then `--steps` cached decode steps (one token each, the
 * logits read to the host as generate does): median ms per step and decode tokens/s.
 *
 *   node dist/bench.js [--backends wasm,wasm:2,cpu] [--runs 5] [--text 32] [--steps 32]      (wasm:2 = wasm with 2 threads)
 *                      [--only forward|train] [--train-backends wasm] [--train-runs 3] [--batch 2]
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { CONFIG_DEFAULTS, imageSequenceLength, type PaliGemmaConfig } from '../../models/config';
import { backbone, logits, type BackboneInputs } from '../../models/paligemma';
import { initParams } from '../../checkpoints/init';
import { parameterCount } from '../../checkpoints/params';
import { setBackend, type BackendRequest } from '../runtime/backend';
import { decodeStep, prefill, transposedEmbedding, type StepOutput } from '../generate/generate';
import { adam, disposeState } from '../train/optim';
import { trainStep } from '../train/step';
import { defaultLossChunk } from '../train/loss';
import { selectTrainable, trainableOf, type Trainable } from '../train/select';
import { enableLora, loraTrainable } from '../train/lora';
import type { TrainBatch } from '../train/api';

export const BENCH_CONFIG: PaliGemmaConfig = {
  ...CONFIG_DEFAULTS,
  vocabulary_size: 32000,
  image_size: 224,
  num_layers: 6,
  num_query_heads: 8,
  num_key_value_heads: 1,
  hidden_dim: 512,
  intermediate_dim: 4096,
  head_dim: 64,
  vit_patch_size: 14,
  vit_num_heads: 6,
  vit_hidden_dim: 384,
  vit_num_layers: 6,
  vit_intermediate_dim: 1536,
};

/** Multiply-add FLOPs (2 per MAC) of every matmul in one forward (backbone + text logits). */
export function forwardFlops(c: PaliGemmaConfig, textLength: number): number {
  const n = (c.image_size / c.vit_patch_size) ** 2;
  const dv = c.vit_hidden_dim;
  const vit =
    2 * n * c.vit_patch_size ** 2 * 3 * dv +
    c.vit_num_layers * (4 * 2 * n * dv * dv + 2 * 2 * n * n * dv + 2 * 2 * n * dv * c.vit_intermediate_dim) +
    2 * imageSequenceLength(c) * dv * c.hidden_dim;
  const L = imageSequenceLength(c) + textLength;
  const D = c.hidden_dim;
  const qh = c.num_query_heads * c.head_dim;
  const kvh = c.num_key_value_heads * c.head_dim;
  const layer = 2 * L * D * qh + 2 * 2 * L * D * kvh + 2 * 2 * L * L * qh + 2 * L * qh * D + 3 * 2 * L * D * (c.intermediate_dim / 2);
  return vit + c.num_layers * layer + 2 * textLength * D * c.vocabulary_size;
}

function benchInputs(c: PaliGemmaConfig, text: number): BackboneInputs {
  const S = c.image_size;
  return d.scoped(() => ({
    images: d.named(tf.randomUniform([1, S, S, 3], -1, 1, 'float32', 1), ['batch', 'height', 'width', 'channels'] as const),
    token_ids: d.named(tf.randomUniform([1, text], 0, c.vocabulary_size, 'int32', 2), ['batch', 'seq'] as const),
    padding_mask: d.named(tf.ones([1, text], 'int32'), ['batch', 'seq'] as const),
    response_mask: d.named(tf.zeros([1, text], 'int32'), ['batch', 'seq'] as const),
  }));
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/**
 * Median ms of one decode step after a prefill of `text` prompt tokens (batch 1, buffer text + steps),
 * each step feeding token 7 at the next position and reading its logits to the host.
 */
export async function benchDecode(
  p: ReturnType<typeof initParams>,
  inputs: BackboneInputs,
  text: number,
  steps: number,
  kernels = false,
  transpose = true,
): Promise<{ ms: number; cpuMs: number; peak: number; top?: string }> {
  const n = imageSequenceLength(p.config);
  const ids = [Array.from(await inputs.token_ids.tensor.data())];
  const transposed = transpose ? transposedEmbedding(p) : undefined; // as generate does
  let state: StepOutput = prefill(p, inputs.images, ids, [text], text + steps, undefined, transposed);
  const free = (s: StepOutput) => tf.dispose(d.collectTensors(s));
  const times: number[] = [];
  const cpu: number[] = []; // process CPU time: steadier than wall time on a shared machine
  const byKernel = new Map<string, number>();
  let peak = 0;
  try {
    await state.logits.tensor.data();
    for (let s = 0; s < steps; s++) {
      const t0 = performance.now();
      const c0 = process.cpuUsage();
      let next: StepOutput | undefined;
      const prof = await tf.profile(async () => {
        next = decodeStep(p, state.cache, [7], [n + text + s], [true], undefined, transposed);
        await next.logits.tensor.data();
      });
      times.push(performance.now() - t0);
      const c1 = process.cpuUsage(c0);
      cpu.push((c1.user + c1.system) / 1000);
      peak = Math.max(peak, prof.peakBytes);
      if (kernels && s > 0) for (const k of prof.kernels) byKernel.set(`${k.name}${process.env.BENCH_SHAPES ? JSON.stringify(k.inputShapes) : ''}`, (byKernel.get(k.name) ?? 0) + (Number(await k.kernelTimeMs) || 0) / (steps - 1));
      free(state);
      state = next!;
    }
  } finally {
    free(state);
    if (transposed) tf.dispose(transposed.map((t) => t.tensor));
  }
  const top = [...byKernel].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.BENCH_TOP ?? 8)).map(([k, ms]) => `${k} ${ms.toFixed(1)} ms`).join(', ');
  return { ms: median(times.slice(1)), cpuMs: median(cpu.slice(1)), peak, ...(kernels ? { top } : {}) };
}

export async function bench(backends: string[], runs: number, text: number, steps = 32, kernels = false): Promise<void> {
  const c = BENCH_CONFIG;
  const flops = forwardFlops(c, text);
  console.log(`config: 50M PaliGemma (${(parameterCount(c) / 1e6).toFixed(1)}M params), batch 1, ${imageSequenceLength(c)} image + ${text} text tokens, ${(flops / 1e9).toFixed(2)} GFLOP of matmuls per forward`);
  console.log('reference on this machine (MEASURED.md): keras_hub JAX/XLA 0.075-0.079 s, keras_hub torch 0.22-0.25 s (2 threads)');
  for (const spec of backends) {
    const [b, threads] = spec.split(':');
    const info = await setBackend(b as BackendRequest, threads ? { threads: Number(threads) } : {});
    const params = initParams(c, d.key(0));
    const inputs = benchInputs(c, text);
    const forward = () => {
      const seq = backbone(params, inputs);
      const out = logits(params, seq);
      seq.dispose();
      return out;
    };
    const times: number[] = [];
    let peak = 0;
    for (let i = 0; runs > 0 && i <= runs; i++) {
      const t0 = performance.now();
      const prof = await tf.profile(async () => {
        const out = forward();
        await out.tensor.data();
        out.dispose();
      });
      const ms = performance.now() - t0;
      peak = Math.max(peak, prof.peakBytes);
      if (i > 0) times.push(ms); // run 0 is the warm-up
    }
    const ms = median(times);
    if (runs > 0) console.log(
      `${(info.name + (info.threads ? ` x${info.threads}` : '')).padEnd(9)} median ${ms.toFixed(0)} ms over ${runs} runs (min ${Math.min(...times).toFixed(0)}), ` +
        `${(flops / (ms / 1000) / 1e9).toFixed(1)} GFLOP/s, peak tensors ${(peak / 2 ** 20).toFixed(0)} MiB, ` +
        `params ${(tf.memory().numBytes / 2 ** 20).toFixed(0)} MiB, rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB` +
        (info.reason ? ` (${info.reason})` : ''),
    );
    if (steps > 1) {
      // on wasm, the same run also decodes with the head as before (E . x^T, one output column), in
      // alternating rounds: what the transposed embedding saves
      const rounds = info.name === 'wasm' ? 2 : 1;
      const runs_: { ms: number; cpuMs: number; peak: number; top?: string }[][] = [[], []];
      for (let r = 0; r < rounds; r++) {
        runs_[0].push(await benchDecode(params, inputs, text, steps, kernels && r === 0));
        if (info.name === 'wasm') runs_[1].push(await benchDecode(params, inputs, text, steps, false, false));
      }
      const best = (xs: { ms: number; cpuMs: number; peak: number; top?: string }[]) => xs.reduce((a, b) => (b.cpuMs < a.cpuMs ? b : a));
      const dec = best(runs_[0]);
      console.log(
        `${(info.name + (info.threads ? ` x${info.threads}` : '')).padEnd(9)} decode: median ${dec.ms.toFixed(1)} ms per step (cpu time ${dec.cpuMs.toFixed(1)} ms) over ${steps - 1} steps ` +
          `(${text} prompt tokens, cache ${imageSequenceLength(c) + text + steps} positions), ${(1000 / dec.ms).toFixed(1)} tokens/s, peak tensors ${(dec.peak / 2 ** 20).toFixed(1)} MiB`,
      );
      if (runs_[0][0].top) console.log(`          per step by kernel: ${runs_[0][0].top}`);
      if (runs_[1].length > 0) {
        const old = best(runs_[1]);
        console.log(`${''.padEnd(9)} decode without the transposed embedding: median ${old.ms.toFixed(1)} ms per step (cpu time ${old.cpuMs.toFixed(1)} ms), ${(1000 / old.ms).toFixed(1)} tokens/s; cpu-time ratio ${(old.cpuMs / dec.cpuMs).toFixed(2)}x`);
      }
    }
    tf.dispose(d.collectTensors(inputs));
    d.disposeTree(params);
  }
}

function trainBatch(c: PaliGemmaConfig, batch: number, text: number): TrainBatch {
  const inputs = d.scoped(() => {
    const S = c.image_size;
    const seq = ['batch', 'seq'] as const;
    // the second half of each row is the response: targets weighted there, as a captioning batch
    const w = tf.concat([tf.zeros([batch, text / 2]), tf.ones([batch, text / 2])], 1);
    return {
      images: d.named(tf.randomUniform([batch, S, S, 3], -1, 1, 'float32', 1), ['batch', 'height', 'width', 'channels'] as const),
      token_ids: d.named(tf.randomUniform([batch, text], 3, c.vocabulary_size, 'int32', 2), seq),
      padding_mask: d.named(tf.ones([batch, text], 'int32'), seq),
      response_mask: d.named(tf.cast(w, 'int32'), seq),
      y: d.named(tf.randomUniform([batch, text], 3, c.vocabulary_size, 'int32', 3), seq),
      sample_weight: d.named(w, seq),
    };
  });
  return inputs;
}

/**
 * Training steps/s (loss + gradients + Adam) of LoRA (rank 4, keras_hub's targets) and full fine-tuning on
 * the bench config, batch `batch` x `text` tokens, median over `runs` steps after one warm-up; peak tensor
 * memory of a step (tf.profile) and the live bytes around it (params, optimizer slots).
 */
export async function benchTraining(backends: string[], runs: number, batch: number, text: number): Promise<void> {
  const c = BENCH_CONFIG;
  const chunk = defaultLossChunk(c.vocabulary_size);
  console.log(
    `training: batch ${batch} x (${imageSequenceLength(c)} image + ${text} text tokens, ${(batch * text) / 2} weighted), Adam; ` +
      `chunked loss: at most ${chunk} positions x ${c.vocabulary_size} vocab per logits-sized tensor (2^24 floats = 64 MiB, ~5 live = ~320 MiB), whatever B x L`,
  );
  for (const spec of backends) {
    const [b, threads] = spec.split(':');
    const info = await setBackend(b as BackendRequest, threads ? { threads: Number(threads) } : {});
    const base = initParams(c, d.key(0));
    const x = trainBatch(c, batch, text);
    for (const mode of ['lora', 'full'] as const) {
      if (info.name === 'wasm' && mode === 'full' && !process.env.BENCH_WASM_FULL) {
        // measured: tfjs keeps every forward intermediate until the backward ends, so a full step's peak
        // (params + grads + Adam slots + the tape) passes the 4 GiB wasm32 heap and the module aborts
        console.log(`${info.name.padEnd(9)} full skipped: a full step of this config does not fit the 4 GiB wasm heap (aborts; LoRA's peak is already ~2.6 GiB); BENCH_WASM_FULL=1 tries`);
        continue;
      }
      const params = mode === 'lora' ? enableLora(base, { rank: 4, key: d.key(1) }) : base;
      const paths = mode === 'lora' ? loraTrainable(params) : selectTrainable(params);
      let trainable: Trainable = trainableOf(params, paths);
      let owned = false;
      const optimizer = adam();
      let state = optimizer.init(trainable);
      const times: number[] = [];
      let peak = 0;
      let live = 0;
      for (let i = 0; i <= runs; i++) {
        const t0 = performance.now();
        let next: ReturnType<typeof trainStep> | undefined;
        const prof = await tf.profile(async () => {
          next = trainStep(params, trainable, state, x, { optimizer, learningRate: 1e-4, tableGrad: mode === 'full' });
          await next.report.loss.data();
        });
        const ms = performance.now() - t0;
        tf.dispose([next!.report.loss, next!.report.correct, next!.report.weight]);
        if (owned) d.disposeTree(trainable);
        disposeState(state);
        trainable = next!.trainable;
        state = next!.state;
        owned = true;
        peak = Math.max(peak, prof.peakBytes);
        live = tf.memory().numBytes;
        if (i > 0) times.push(ms);
      }
      const ms = median(times);
      const trained = paths.reduce((n, p) => n + trainableOf(params, [p])[p].tensor.size, 0);
      console.log(
        `${(info.name + (info.threads ? ` x${info.threads}` : '')).padEnd(9)} ${mode.padEnd(4)} ${(1000 / ms).toFixed(2)} steps/s (median ${ms.toFixed(0)} ms over ${runs}), ` +
          `${((batch * text) / (ms / 1000)).toFixed(0)} text tokens/s, ${(trained / 1e6).toFixed(2)}M trained, ` +
          `peak in step ${(peak / 2 ** 20).toFixed(0)} MiB, live after ${(live / 2 ** 20).toFixed(0)} MiB`,
      );
      if (owned) d.disposeTree(trainable);
      disposeState(state);
      if (params !== base) {
        const keep = new Set(d.leaves(base).map(([, t]) => t));
        for (const [, t] of d.leaves(params)) if (!keep.has(t)) t.dispose();
      }
    }
    tf.dispose(d.collectTensors(x));
    d.disposeTree(base);
  }
}

if (require.main === module && !process.env.NO_BENCH_MAIN) {
  const arg = (name: string, fallback: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : fallback;
  };
  const backends = arg('backends', 'wasm,wasm:2,cpu').split(',');
  const only = arg('only', 'all');
  (async () => {
    if (only !== 'train') await bench(backends, Number(arg('runs', '5')), Number(arg('text', '32')), Number(arg('steps', '32')), process.argv.includes('--kernels'));
    // training on cpu takes minutes per step at this size: left out unless named (--train-backends cpu)
    if (only !== 'forward') await benchTraining(arg('train-backends', backends.filter((b) => b !== 'cpu').join(',')).split(','), Number(arg('train-runs', '3')), Number(arg('batch', '2')), Number(arg('text', '32')));
  })().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
