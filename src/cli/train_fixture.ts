/**
 * `paligemma run-fixture` for the fine-tuning fixtures (spec/fixtures/train/README.md), by manifest `kind`:
 *
 *   lora_grad             the preset + its `.lora.h5` adapter: sequence_output, logits, loss, and the
 *                         gradients of the trainable variables (keras_hub's LoRA trainables)
 *   traj_full, traj_adamw full fine-tuning, `trajectory.steps` optimizer steps on one batch with the
 *                         manifest's optimizer (Adam, or AdamW with its weight-decay exclusions)
 *   traj_lora             the same with LoRA from `lora.lora_file` (keras_hub's trainables), plus the
 *                         `.lora.h5` it would save after the last step
 *   preprocess            the training preprocessor (packing + image converter) for each run, and the
 *                         default-compile loss of the preset model on the first run
 *
 * Outputs go in the fixture's own format: `outputs` (for trajectories `losses`, one per step: the loss
 * before that step's update, as keras logs it), `gradients` (the first step's, keyed by keras path),
 * `weights_final` (every variable the fixture lists, keyed by keras path).
 */
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Named } from '../../dsl';
import { backbone, logits, type PaliGemmaParams } from '../../models/paligemma';
import { kerasLayout, type WeightSpec } from '../../checkpoints/params';
import { loadPreset } from '../runtime/preset';
import { causalLmLoss } from '../train/loss';
import { adam, adamw, clipByGlobalNormAsync, disposeState, kerasVariableName as kerasName, sgd } from '../train/optim';
import { selectTrainable, trainableOf, withLeaves, type Trainable } from '../train/select';
import type { Optimizer, TrainBatch } from '../train/api';
import { lossAndGradsCompiled, lossCompiled, updateCompiled } from '../train/compiled';
import { lossAndGrads } from '../train/step';
import { forwardCompiled } from '../generate/compiled';
import { compiledModels } from '../runtime/backend';
import { adaptersOf, loraSpecs, loraTrainable, withAdapters } from '../train/lora';
import { readLoraH5, writeLoraH5, type LoraFile } from '../../checkpoints/lora';
import { fixtureInputs, readBin, type Manifest } from './fixture';
import { loadTokenizer } from '../text/tokenizer';
import { packTrainingBatch, type SpecialIds } from '../preprocess/packing';
import { convertImage, type RawImage } from '../preprocess/image';

/** The manifest kinds `computeTrainFixture` runs. */
export const TRAIN_KINDS = ['lora_grad', 'traj_full', 'traj_lora', 'traj_adamw', 'preprocess'] as const;

/** Dispatch by `kind` (see the module comment). */
export function computeTrainFixture(dir: string, m: Manifest): Promise<TrainComputed> {
  switch (m.kind) {
    case 'lora_grad':
      return computeLoraGrad(dir, m);
    case 'traj_full':
    case 'traj_adamw':
    case 'traj_lora':
      return computeTrajectory(dir, m);
    case 'preprocess':
      return computePreprocess(dir, m);
    default:
      throw new Error(`${path.join(dir, 'manifest.json')}: kind ${JSON.stringify(m.kind)} is not a training fixture (${TRAIN_KINDS.join(', ')})`);
  }
}

export type Tensors = Map<string, { shape: number[]; data: Float32Array; keras_path?: string }>;

export interface TrainComputed {
  readonly outputs: Tensors;
  readonly gradients: Tensors;
  readonly weights_final?: Tensors;
  /** preprocess: `runs[name][key]` tensors (int32 / uint8 / float32 as the fixture stores them). */
  readonly runs?: Map<string, Map<string, { shape: number[]; data: Float32Array | Int32Array | Uint8Array; dtype: 'float32' | 'int32' | 'uint8' }>>;
  /** Files to write next to the manifest (e.g. the adapter after training), by name. */
  readonly files?: Map<string, (file: string) => void>;
}

/** The fixture's training batch: the four backbone inputs plus `y` and `sample_weight`. */
export function trainBatchOf(dir: string, m: Manifest): TrainBatch {
  const inputs = fixtureInputs(dir, m);
  const get = (k: string, dtype: 'int32' | 'float32') => {
    const e = m.inputs[k];
    if (!e) throw new Error(`${path.join(dir, 'manifest.json')}: inputs.${k} is missing`);
    const data = readBin(dir, e);
    return d.named(tf.tensor(dtype === 'int32' ? Int32Array.from(data) : Float32Array.from(data), e.shape as number[], dtype), ['batch', 'seq'] as const);
  };
  return { ...inputs, y: get('y', 'int32'), sample_weight: get('sample_weight', 'float32') };
}

/** One params leaf path (a key of a `Trainable`) -> its keras variable, for the layout specs given. */
export function leafSpecs(specs: readonly WeightSpec[]): Map<string, WeightSpec> {
  return new Map(specs.map((s) => [s.param, s]));
}

/** Leaves keyed by params path -> keras layout values keyed by keras path (shards joined). */
export async function toKeras(leaves: Trainable, specs: readonly WeightSpec[]): Promise<Tensors> {
  const out: Tensors = new Map();
  for (const s of specs) {
    let parts: Named[] = [];
    if (s.sharded) {
      for (let i = 0; `${s.param}/${i}` in leaves; i++) parts.push(leaves[`${s.param}/${i}`]);
    } else if (leaves[s.param]) parts = [leaves[s.param]];
    if (parts.length === 0) continue;
    const t = tf.tidy(() => {
      const aligned = parts.map((x) => (s.squeeze ? x.tensor : d.align(x, s.kerasAxes as never).tensor));
      return tf.reshape(aligned.length === 1 ? aligned[0] : tf.concat(aligned, 0), s.kerasShape as number[]);
    });
    out.set(s.keras, { shape: [...s.kerasShape], data: Float32Array.from((await t.data()) as Float32Array), keras_path: s.keras });
    t.dispose();
  }
  return out;
}

/** Every leaf of params by path (shared tensors). */
const allLeaves = (params: unknown): Trainable => Object.fromEntries(d.leaves(params));

interface OptimizerConfig {
  readonly learning_rate: number;
  readonly beta_1?: number;
  readonly beta_2?: number;
  readonly epsilon?: number;
  readonly weight_decay?: number | null;
  readonly amsgrad?: boolean;
  readonly clipnorm?: number | null;
  readonly global_clipnorm?: number | null;
  readonly clipvalue?: number | null;
}

/** keras' gradient clipping before the update (base_optimizer.apply: clip, then weight decay, then the step). */
export interface Clipping {
  readonly clipnorm?: number;
  readonly global_clipnorm?: number;
  readonly clipvalue?: number;
}

/**
 * The manifest's optimizer (keras Adam, AdamW or SGD, with weight decay and its `exclude_from_weight_decay`
 * var_names, and clipping) and learning rate; anything else is refused by name. `trainable` maps the
 * trainable params paths to keras paths, to check the exclusions against the fixture's list.
 */
export function optimizerOf(dir: string, m: Manifest, trainable: ReadonlyMap<string, string>): { optimizer: Optimizer; learningRate: number; clipping: Clipping } {
  const where = path.join(dir, 'manifest.json');
  const compile = m.compile as { optimizer_class?: string; optimizer_config?: OptimizerConfig & { momentum?: number; nesterov?: boolean }; how?: string; excluded_from_weight_decay?: string[] } | undefined;
  const c = compile?.optimizer_config;
  if (!compile || !c) throw new Error(`${where}: compile.optimizer_config is missing`);
  if (c.amsgrad) throw new Error(`${where}: amsgrad is not supported`);
  const clipping: Clipping = {
    ...(c.clipnorm != null ? { clipnorm: c.clipnorm } : {}),
    ...(c.global_clipnorm != null ? { global_clipnorm: c.global_clipnorm } : {}),
    ...(c.clipvalue != null ? { clipvalue: c.clipvalue } : {}),
  };
  const o = { beta1: c.beta_1, beta2: c.beta_2, epsilon: c.epsilon };
  const decay = c.weight_decay ?? 0;
  // exclude_from_weight_decay(var_names=[...]) as the compile call wrote it, checked against the fixture's list
  const match = /var_names=\[([^\]]*)\]/.exec(compile.how ?? '');
  const names = match ? [...match[1].matchAll(/['"]([^'"]+)['"]/g)].map((x) => x[1]) : [];
  if (decay) {
    const pattern = names.length ? new RegExp(names.join('|')) : null;
    const mine = [...trainable.entries()].filter(([p]) => pattern && pattern.test(kerasName(p))).map(([, k]) => k).sort();
    const theirs = [...(compile.excluded_from_weight_decay ?? [])].filter((k) => [...trainable.values()].includes(k)).sort();
    if (mine.join('\n') !== theirs.join('\n')) {
      throw new Error(`${where}: weight-decay exclusions [${names.join(', ')}] select ${mine.length} trainable variables here, the fixture lists ${theirs.length}`);
    }
  }
  switch (compile.optimizer_class) {
    case 'keras.optimizers.Adam':
    case 'keras.optimizers.AdamW':
      // keras' Adam with weight_decay set decays exactly as AdamW (base_optimizer._apply_weight_decay)
      return { optimizer: decay ? adamw({ ...o, weightDecay: decay, excludeFromWeightDecay: names }) : adam(o), learningRate: c.learning_rate, clipping };
    case 'keras.optimizers.SGD':
      if (decay) throw new Error(`${where}: SGD with weight_decay is not supported`);
      return { optimizer: sgd({ momentum: c.momentum ?? 0, nesterov: c.nesterov ?? false }), learningRate: c.learning_rate, clipping };
    default:
      throw new Error(`${where}: optimizer ${compile.optimizer_class} is not supported (keras.optimizers.Adam, AdamW, SGD)`);
  }
}

/** keras' clipping of a gradient pytree: clipvalue, then clipnorm (per variable), then global_clipnorm. */
async function clip(grads: Trainable, c: Clipping): Promise<Trainable> {
  let g = grads;
  const replace = (next: Trainable) => {
    if (g !== grads) d.disposeTree(g);
    g = next;
  };
  if (c.clipvalue !== undefined) replace(d.mapTree(g, (x) => d.scoped(() => d.named(tf.clipByValue(x.tensor, -c.clipvalue!, c.clipvalue!), x.axes))));
  if (c.clipnorm !== undefined) {
    const n = c.clipnorm;
    replace(d.mapTree(g, (x) => d.scoped(() => d.named(tf.mul(x.tensor, tf.div(n, tf.maximum(tf.norm(x.tensor), n))), x.axes))));
  }
  if (c.global_clipnorm !== undefined) replace((await clipByGlobalNormAsync(g, c.global_clipnorm)).grads);
  return g;
}

/** Run `steps` optimizer steps on one batch; losses before each update, step-1 gradients, final params. */
export async function trajectory(
  params: PaliGemmaParams,
  batch: TrainBatch,
  trainable: readonly string[],
  optimizer: Optimizer,
  learningRate: number,
  steps: number,
  compat?: 'keras_hub',
  clipping: Clipping = {},
): Promise<{ losses: number[]; firstGrads: Trainable; params: PaliGemmaParams }> {
  let current = trainableOf(params, trainable);
  let state = optimizer.init(current);
  const losses: number[] = [];
  let firstGrads: Trainable = {};
  for (let step = 0; step < steps; step++) {
    const full = withLeaves(params, current);
    // the onnx backend: the loss and gradients as one session run, the update as another (src/train/compiled.ts)
    const compiled = compiledModels();
    const { report, grads } = compiled ? lossAndGradsCompiled(full, current, batch, { compat }) : lossAndGrads(full, current, batch, { compat });
    losses.push((await report.loss.data())[0]);
    tf.dispose([report.loss, report.correct, report.weight]);
    const clipped = await clip(grads, clipping);
    const next = compiled ? updateCompiled(optimizer, current, clipped, state, learningRate) : optimizer.update(current, clipped, state, learningRate);
    if (clipped !== grads) d.disposeTree(clipped);
    if (step === 0) firstGrads = grads;
    else d.disposeTree(grads);
    if (step > 0) d.disposeTree(current); // step 0's are the caller's tensors
    disposeState(state);
    current = next.params as Trainable;
    state = next.state;
  }
  disposeState(state);
  return { losses, firstGrads, params: withLeaves(params, current) };
}

/** The fixture's `.lora.h5` (`lora.lora_file`, or `adapter.lora.h5`). */
function loraFileOf(dir: string, m: Manifest): string {
  const lora = m.lora as { lora_file?: string } | undefined;
  return path.join(dir, lora?.lora_file ?? 'adapter.lora.h5');
}

/** lora_grad: forward, loss and trainable gradients of the preset with the fixture's adapter. */
export async function computeLoraGrad(dir: string, m: Manifest): Promise<TrainComputed> {
  const base = loadPreset(path.join(dir, 'preset'));
  const file = loraFileOf(dir, m);
  const params = withAdapters(base, readLoraH5(file, base.config));
  const specs = [...kerasLayout(params.config), ...loraSpecs(params)];
  const batch = trainBatchOf(dir, m);
  const compat = m.options?.compat;
  const outputs: Tensors = new Map();
  // the adapter as we would save it (keras_hub's save_lora_weights of the same model)
  const saved = await adaptersOf(params);
  const files = new Map<string, (out: string) => void>([[path.basename(file), (out) => writeLoraH5(out, params.config, saved)]]);
  try {
    const compiled = compiledModels();
    const { sequence_output: seq, logits: l } = compiled ? forwardCompiled(params, batch, compat) : d.scoped(() => {
      const sequence_output = backbone(params, batch, { compat });
      return { sequence_output, logits: logits(params, sequence_output) };
    });
    outputs.set('sequence_output', { shape: [...seq.shape], data: Float32Array.from((await seq.tensor.data()) as Float32Array) });
    outputs.set('logits', { shape: [...l.shape], data: Float32Array.from((await l.tensor.data()) as Float32Array) });
    tf.dispose([seq.tensor, l.tensor]);
    const trainable = trainableOf(params, loraTrainable(params));
    const { report, grads } = compiled ? lossAndGradsCompiled(params, trainable, batch, { compat }) : lossAndGrads(params, trainable, batch, { compat });
    outputs.set('loss', { shape: [1], data: Float32Array.from((await report.loss.data()) as Float32Array) });
    const gradients = await toKeras(grads, specs);
    tf.dispose([report.loss, report.correct, report.weight]);
    d.disposeTree(grads);
    return { outputs, gradients, files };
  } finally {
    tf.dispose(d.collectTensors(batch));
    d.disposeTree(params);
  }
}

/** traj_full / traj_adamw: full fine-tuning on the fixture's batch; traj_lora: LoRA from the fixture's file. */
export async function computeTrajectory(dir: string, m: Manifest, own?: PaliGemmaParams): Promise<TrainComputed> {
  const base = own ?? loadPreset(path.join(dir, 'preset'));
  const lora = m.kind === 'traj_lora';
  const params = lora ? withAdapters(base, readLoraH5(loraFileOf(dir, m), base.config)) : base;
  const specs = [...kerasLayout(params.config), ...(lora ? loraSpecs(params) : [])];
  const batch = trainBatchOf(dir, m);
  const kerasByPath = new Map<string, string>();
  for (const s of specs) {
    if (s.sharded) for (let i = 0; i < params.token_embedding.length; i++) kerasByPath.set(`${s.param}/${i}`, s.keras);
    else kerasByPath.set(s.param, s.keras);
  }
  try {
    const trainable = lora ? loraTrainable(params) : selectTrainable(params);
    const { optimizer, learningRate, clipping } = optimizerOf(dir, m, new Map(trainable.map((p) => [p, kerasByPath.get(p)!])));
    const steps = (m.trajectory as { steps?: number } | undefined)?.steps ?? (m.outputs.losses?.shape[0] as number);
    const run = await trajectory(params, batch, trainable, optimizer, learningRate, steps, m.options?.compat, clipping);
    const files = new Map<string, (file: string) => void>();
    if (lora) {
      const saved: LoraFile = await adaptersOf(run.params);
      files.set((m.lora as { lora_final_file?: string }).lora_final_file ?? 'lora_final.lora.h5', (file) => writeLoraH5(file, params.config, saved));
    }
    const gradients = await toKeras(run.firstGrads, specs);
    const final = await toKeras(allLeaves(run.params), specs);
    const wanted = Object.keys((m.weights_final as Record<string, unknown>) ?? {});
    const weights_final: Tensors = new Map(wanted.filter((k) => final.has(k)).map((k) => [k, final.get(k)!]));
    d.disposeTree(run.firstGrads);
    const changed = trainableOf(run.params, trainable);
    for (const [p, x] of Object.entries(changed)) if (x !== trainableOf(params, [p])[p]) x.dispose();
    return { outputs: new Map([['losses', { shape: [steps], data: Float32Array.from(run.losses) }]]), gradients, weights_final, files };
  } finally {
    tf.dispose(d.collectTensors(batch));
    if (lora) for (const [p, x] of d.leaves(params)) if (/lora_kernel_[ab]$/.test(p)) x.dispose();
    if (!own) d.disposeTree(base);
  }
}


// -------------------------------------------------------------------------------------------------
// preprocess: the training preprocessor on strings and uint8 images
// -------------------------------------------------------------------------------------------------

interface PreprocessRun {
  readonly sequence_length: number;
  readonly [k: string]: unknown;
}

/** preprocess: every run's packed tensors, and the default-compile loss of the preset on `end_to_end`'s run. */
export async function computePreprocess(dir: string, m: Manifest): Promise<TrainComputed> {
  const where = path.join(dir, 'manifest.json');
  const pairs = m.pairs as { prompt: string; response: string }[] | undefined;
  const runs = m.runs as Record<string, PreprocessRun> | undefined;
  if (!pairs || !runs) throw new Error(`${where}: a preprocess fixture has "pairs" and "runs"`);
  const tokenizer = loadTokenizer(path.join(dir, 'preset'));
  const special: SpecialIds = { bos: tokenizer.bosId, eos: tokenizer.eosId, pad: tokenizer.padId };
  const prompts = pairs.map((p) => tokenizer.encode(p.prompt));
  const responses = pairs.map((p) => tokenizer.encode(p.response));
  const e = m.inputs.images_uint8;
  if (!e || e.shape.length !== 4) throw new Error(`${where}: inputs.images_uint8 [B, H, W, C] is missing`);
  const [B, H, W, C] = e.shape;
  const raw = readBin(dir, e) as Uint8Array;
  const config = loadPreset(path.join(dir, 'preset'));
  const size = config.config.image_size;
  const plane = size * size * 3;
  const images = new Float32Array(B * plane);
  for (let b = 0; b < B; b++) {
    const image: RawImage = { data: raw.subarray(b * H * W * C, (b + 1) * H * W * C), height: H, width: W, channels: C as 1 | 3 | 4 };
    images.set(convertImage(image, size), b * plane);
  }
  const out: NonNullable<TrainComputed['runs']> = new Map();
  const u8 = (x: Int32Array) => Uint8Array.from(x);
  const outputs: Tensors = new Map();
  try {
    for (const [name, run] of Object.entries(runs)) {
      const L = run.sequence_length;
      const p = packTrainingBatch(prompts, responses, L, special);
      out.set(name, new Map<string, { shape: number[]; data: Float32Array | Int32Array | Uint8Array; dtype: 'float32' | 'int32' | 'uint8' }>([
        ['x_token_ids', { shape: [B, L], data: p.tokenIds, dtype: 'int32' }],
        ['x_padding_mask', { shape: [B, L], data: u8(p.paddingMask), dtype: 'uint8' }],
        ['x_response_mask', { shape: [B, L], data: u8(p.responseMask), dtype: 'uint8' }],
        ['x_images', { shape: [B, size, size, 3], data: images, dtype: 'float32' }],
        ['y', { shape: [B, L], data: p.y, dtype: 'int32' }],
        ['sample_weight', { shape: [B, L], data: u8(p.sampleWeight), dtype: 'uint8' }],
      ]));
      const e2e = m.end_to_end as { sequence_length?: number } | undefined;
      if ('end_to_end_loss' in m.outputs && e2e?.sequence_length === L) {
        const batch: TrainBatch = d.scoped(() => ({
          images: d.named(tf.tensor(images, [B, size, size, 3]), ['batch', 'height', 'width', 'channels'] as const),
          token_ids: d.named(tf.tensor(p.tokenIds, [B, L], 'int32'), ['batch', 'seq'] as const),
          padding_mask: d.named(tf.tensor(p.paddingMask, [B, L], 'int32'), ['batch', 'seq'] as const),
          response_mask: d.named(tf.tensor(p.responseMask, [B, L], 'int32'), ['batch', 'seq'] as const),
          y: d.named(tf.tensor(p.y, [B, L], 'int32'), ['batch', 'seq'] as const),
          sample_weight: d.named(tf.tensor(Float32Array.from(p.sampleWeight), [B, L]), ['batch', 'seq'] as const),
        }));
        const r = compiledModels() ? lossCompiled(config, batch) : causalLmLoss(config, batch, { weights: p.sampleWeight });
        outputs.set('end_to_end_loss', { shape: [1], data: Float32Array.from((await r.loss.data()) as Float32Array) });
        tf.dispose([r.loss, r.correct, r.weight, ...d.collectTensors(batch)]);
      }
    }
  } finally {
    d.disposeTree(config);
  }
  return { outputs, gradients: new Map(), runs: out };
}
