/**
 * `npm run bench`: forward time of a 50M-parameter PaliGemma (random weights; batch 1, 32 text tokens) on
 * each backend, then generation (prefill of 256 image + 10 prompt tokens, greedy decode). Prints the median
 * over >= 5 runs after a warm-up, the effective GFLOP/s (matmul FLOPs only), and memory; then the same-run
 * ratios against wasm with 2 threads. A script, not a test: speed is compared within one run.
 *
 *   node dist/bench.js [--backends onnx,onnx-int8,wasm,wasm:2] [--runs 5] [--text 32] [--decode 32]
 *       wasm:2 = wasm with 2 threads; onnx = compiled onto onnxruntime (onnx:1 = one thread); onnx-int8 = onnx
 *       with int8 weights (generate's quantize: 'int8'); cpu is slow (~40 s)
 * Then a training row (src/cli/bench_train.ts): steps/s of LoRA and full fine-tuning steps, peak memory.
 *
 *   node dist/bench.js [--only forward|train] [--train-backends wasm] [--train-runs 3] [--batch 2]
 *   node dist/bench.js --big [--decode 8] [--int8]   a 3B-sized model (PaliGemma 3B 224, random weights) on
 *       onnx: prefill of 256 image + 10 prompt tokens, decode s/token, peak RSS (needs ~16 GiB of RAM)
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { CONFIG_DEFAULTS, imageSequenceLength, type PaliGemmaConfig } from '../../models/config';
import { backbone, logits, type BackboneInputs, type PaliGemmaParams } from '../../models/paligemma';
import { initParams } from '../../checkpoints/init';
import { buildTree, kerasLayout, parameterCount, skeleton } from '../../checkpoints/params';
import { familyConfig } from '../../checkpoints/presets';
import { setBackend, type BackendRequest } from '../runtime/backend';
import { decodeStep, prefill, transposedHead, type StepOutput } from '../generate/generate';
import { decodeStepCompiled, prefillCompiled, type Quantize } from '../generate/compiled';
import { benchTraining } from './bench_train';

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

interface Result {
  readonly label: string;
  readonly forwardMs: number;
  readonly prefillMs: number;
  readonly tokensPerSecond: number;
}

/** CPU seconds of this process (all threads) since `from`: on a shared machine, wall time overstates work. */
const cpuSeconds = (from: NodeJS.CpuUsage) => {
  const u = process.cpuUsage(from);
  return (u.user + u.system) / 1e6;
};

const forwardPure = (p: PaliGemmaParams, x: BackboneInputs) => logits(p, backbone(p, x));
const compiledForward = d.jit(forwardPure, { name: 'forward' });
const compiledForwardInt8 = d.jit(forwardPure, { name: 'forward_int8', int8: { weights: 0 } });

/**
 * Prefill (256 image + `prompt` tokens) median ms over `runs`, then `steps` greedy decode steps: tokens/s.
 * int8: compiled with int8 weights (the first prefill, the warm-up, quantizes them).
 */
async function generation(p: PaliGemmaParams, images: BackboneInputs['images'], compiled: boolean, prompt: number, steps: number, runs: number, quantize?: Quantize) {
  if (!(steps >= 3)) throw new Error(`bench: --decode must be at least 3 (a warm-up step and timed ones), got ${steps}`);
  const pre = compiled ? (...a: Parameters<typeof prefill>) => prefillCompiled(a[0], a[1], a[2], a[3], a[4], a[5], quantize) : prefill;
  const step = compiled ? (...a: Parameters<typeof decodeStep>) => decodeStepCompiled(a[0], a[1], a[2], a[3], a[4], a[5], a[6], quantize) : decodeStep;
  const ids = [Array.from({ length: prompt }, (_, i) => 2 + ((i * 7919) % 1000))];
  const n = imageSequenceLength(p.config);
  const length = prompt + steps;
  const times: number[] = [];
  const cpuTimes: number[] = [];
  let state!: StepOutput;
  for (let i = 0; i <= runs; i++) {
    if (state) tf.dispose(d.collectTensors(state));
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    state = pre(p, images, ids, [prompt], length);
    await state.logits.tensor.data();
    if (i > 0) times.push(performance.now() - t0);
    if (i > 0) cpuTimes.push(cpuSeconds(c0));
  }
  // as generate does for calls of 16+ steps: the tied embedding transposed once, outside the timing
  const transposed = quantize ? undefined : transposedHead(p, steps, compiled);
  // the first decode step is the warm-up (compiled: the decode graph's trace and session, int8: prepacking),
  // the other steps - 2 are timed
  let c0 = process.cpuUsage();
  let t0 = performance.now();
  for (let s = 0; s < steps - 1; s++) {
    const host = await state.logits.tensor.data();
    if (s === 1) [c0, t0] = [process.cpuUsage(), performance.now()];
    let best = 0;
    for (let v = 1; v < host.length; v++) if (host[v] > host[best]) best = v;
    const next = step(p, state.cache, [best], [n + prompt + s], [true], undefined, transposed);
    tf.dispose(d.collectTensors(state));
    state = next;
  }
  await state.logits.tensor.data();
  const decodeMs = performance.now() - t0;
  const decodeCpu = cpuSeconds(c0);
  tf.dispose(d.collectTensors(state));
  if (transposed) tf.dispose(transposed.map((t) => t.tensor));
  return { prefillMs: median(times), prefillCpu: median(cpuTimes), msPerToken: decodeMs / (steps - 2), cpuPerToken: decodeCpu / (steps - 2) };
}

export async function bench(backends: string[], runs: number, text: number, decodeSteps = 32): Promise<void> {
  const c = BENCH_CONFIG;
  const flops = forwardFlops(c, text);
  console.log(`config: 50M PaliGemma (${(parameterCount(c) / 1e6).toFixed(1)}M params), batch 1, ${imageSequenceLength(c)} image + ${text} text tokens, ${(flops / 1e9).toFixed(2)} GFLOP of matmuls per forward`);
  console.log('reference on this kind of machine (MEASURED.md, Zen 4): keras_hub JAX/XLA 0.125 s, onnxruntime on an HF export 0.130 s (2 threads)');
  const results: Result[] = [];
  for (const spec of backends) {
    // onnx-int8[:threads]: the onnx backend with int8 weights (compiled.ts)
    const [name, threads] = spec.split(':');
    const quantize = name === 'onnx-int8' ? ('int8' as const) : undefined;
    const b = quantize ? 'onnx' : name;
    const info = await setBackend(b as BackendRequest, threads ? { threads: Number(threads) } : {});
    const compiled = info.name === 'onnx';
    const params = initParams(c, d.key(0));
    const inputs = benchInputs(c, text);
    const forward = () => {
      if (compiled) return (quantize ? compiledForwardInt8 : compiledForward)(params, inputs);
      const seq = backbone(params, inputs);
      const out = logits(params, seq);
      seq.dispose();
      return out;
    };
    const times: number[] = [];
    let peak = 0;
    for (let i = 0; i <= runs; i++) {
      const t0 = performance.now();
      if (compiled) {
        const out = forward();
        await out.tensor.data();
        out.dispose();
      } else {
        const prof = await tf.profile(async () => {
          const out = forward();
          await out.tensor.data();
          out.dispose();
        });
        peak = Math.max(peak, prof.peakBytes);
      }
      const ms = performance.now() - t0;
      if (i > 0) times.push(ms); // run 0 is the warm-up (and, compiled, the trace and session)
    }
    const ms = median(times);
    const label = info.name + (quantize ? '-int8' : '') + (info.threads ? ` x${info.threads}` : '');
    console.log(
      `${label.padEnd(9)} forward median ${ms.toFixed(0)} ms over ${runs} runs (min ${Math.min(...times).toFixed(0)}), ` +
        `${(flops / (ms / 1000) / 1e9).toFixed(1)} GFLOP/s, ` +
        (compiled ? '' : `peak tensors ${(peak / 2 ** 20).toFixed(0)} MiB, `) +
        `params ${(tf.memory().numBytes / 2 ** 20).toFixed(0)} MiB, rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB` +
        (info.reason !== 'requested' ? ` (${info.reason})` : ''),
    );
    const g = await generation(params, inputs.images, compiled, 10, decodeSteps, Math.max(1, Math.min(runs, 3)), quantize);
    console.log(
      `${label.padEnd(9)} generate: prefill (${imageSequenceLength(c)} image + 10 prompt tokens) ${(g.prefillMs / 1000).toFixed(3)} s (${g.prefillCpu.toFixed(2)} CPU s), ` +
        `decode ${(1000 / g.msPerToken).toFixed(1)} tokens/s (${g.msPerToken.toFixed(1)} ms/token, ${(g.cpuPerToken * 1000).toFixed(1)} CPU ms/token, over ${decodeSteps - 2} steps after a warm-up step)`,
    );
    results.push({ label, forwardMs: ms, prefillMs: g.prefillMs, tokensPerSecond: 1000 / g.msPerToken });
    tf.dispose(d.collectTensors(inputs));
    d.disposeTree(params);
  }
  const base = results.find((r) => r.label === 'wasm x2') ?? results.find((r) => r.label.startsWith('wasm'));
  if (base) {
    for (const r of results) {
      if (r === base) continue;
      console.log(
        `${r.label} vs ${base.label} (same run): forward ${(base.forwardMs / r.forwardMs).toFixed(2)}x, prefill ${(base.prefillMs / r.prefillMs).toFixed(2)}x, decode ${(r.tokensPerSecond / base.tokensPerSecond).toFixed(2)}x faster`,
      );
    }
  }
}

/**
 * Params of a config with the right shapes and glorot-sized values from a fast LCG (the bench's 3B model:
 * keras_hub's initializers through our Threefry take ~5 minutes for 3B parameters on this machine; timing
 * does not depend on the values).
 */
function fastParams(config: PaliGemmaConfig): PaliGemmaParams {
  let seed = 12345;
  return buildTree<PaliGemmaParams>(kerasLayout(config), (s) => {
    const n = s.kerasShape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(n);
    const leaf = s.keras.split('/').pop()!;
    if (leaf === 'bias' || leaf === 'beta' || leaf === 'scale') return out;
    if (leaf === 'gamma') return out.fill(1);
    const limit = s.kerasShape.length >= 2 ? Math.sqrt(6 / (s.kerasShape[s.kerasShape.length - 2] + s.kerasShape[s.kerasShape.length - 1])) : 0.05;
    for (let i = 0; i < n; i++) {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      out[i] = (seed / 2 ** 31 - 1) * limit;
    }
    return out;
  }, skeleton(config));
}

/** The 3B-sized model on onnx: prefill of 256 image + 10 prompt tokens, decode s/token, peak RSS. */
export async function benchBig(decodeSteps: number, threads?: number, layers?: number, quantize?: Quantize): Promise<void> {
  const info = await setBackend('onnx', threads ? { threads } : {});
  const full = familyConfig('PG1 3B', 224);
  // --layers N: fewer decoder and ViT layers (a smoke test of the script on a small machine)
  const config = layers ? { ...full, num_layers: layers, vit_num_layers: layers } : full;
  const t0 = performance.now();
  const params = fastParams(config);
  console.log(`3B-sized model (PaliGemma 3B 224 shapes, ${(parameterCount(config) / 1e9).toFixed(2)}B params, ${(parameterCount(config) * 4 / 2 ** 30).toFixed(1)} GiB float32) built in ${((performance.now() - t0) / 1000).toFixed(1)} s; onnx x${info.threads}`);
  const images = d.named(tf.randomUniform([1, 224, 224, 3], -1, 1, 'float32', 1), ['batch', 'height', 'width', 'channels'] as const);
  const g = await generation(params, images, true, 10, decodeSteps, 1, quantize);
  const peak = process.resourceUsage().maxRSS * 1024;
  console.log(
    `3B onnx${quantize ? '-int8' : ''} x${info.threads}: prefill (256 image + 10 prompt tokens) ${(g.prefillMs / 1000).toFixed(2)} s, ${g.prefillCpu.toFixed(1)} CPU s (speed of light here ~3 s), ` +
      `decode ${(g.msPerToken / 1000).toFixed(3)} s/token, ${g.cpuPerToken.toFixed(3)} CPU s/token over ${decodeSteps - 2} steps after a warm-up step (~0.14 s), peak RSS ${(peak / 2 ** 30).toFixed(2)} GiB`,
  );
  images.dispose();
  d.disposeTree(params);
}

if (require.main === module && !process.env.NO_BENCH_MAIN) {
  const arg = (name: string, fallback: string) => {
    const i = process.argv.indexOf(`--${name}`);
    return i >= 0 ? process.argv[i + 1] : fallback;
  };
  const run = process.argv.includes('--big')
    ? benchBig(
        Number(arg('decode', '8')),
        process.argv.includes('--threads') ? Number(arg('threads', '0')) : undefined,
        process.argv.includes('--layers') ? Number(arg('layers', '0')) : undefined,
        process.argv.includes('--int8') ? 'int8' : undefined,
      )
    : (async () => {
        const backends = arg('backends', 'onnx,onnx-int8,wasm,wasm:2').split(',');
        const only = arg('only', 'all');
        if (only !== 'train') await bench(backends, Number(arg('runs', '5')), Number(arg('text', '32')), Number(arg('decode', '32')));
        // training on cpu takes minutes per step at this size: onnx (compiled) and wasm by default; batch 1,
        // because wasm's LoRA step of batch 2 passes the 4 GiB heap (XNNPACK aborts: measured), batch 1 peaks at ~2.6 GiB
        if (only !== 'forward') await benchTraining(BENCH_CONFIG, arg('train-backends', 'onnx,wasm').split(','), Number(arg('train-runs', '3')), Number(arg('batch', '1')), Number(arg('text', '32')));
      })();
  run.catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
