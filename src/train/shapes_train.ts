/**
 * Trains the shapes model from scratch (scripts/train-shapes.mjs builds and runs this file):
 *
 *   node scripts/train-shapes.mjs --steps 3000 --out checkpoints/shapes
 *
 * Every step takes a fresh batch of pictures (data seed, pictures step * batch .. + batch - 1), so no picture
 * is seen twice; init from keras_hub's initializers with our PRNG (init seed); AdamW with linear warm-up
 * then cosine decay to a tenth. The preset is written every `--save-every` steps and at the end, with the
 * run's settings and loss curve in train_log.json. `--stop-at N` stops after N steps keeping the schedule of
 * `--steps` (the checkpoint a longer run saves at step N).
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { initParams } from '../../checkpoints/init';
import { parameterCount } from '../../checkpoints/params';
import { setBackend } from '../runtime/backend';
import { loadSentencePiece } from '../text/tokenizer';
import { trainStep } from './step';
import { causalLmLoss } from './loss';
import { adamw, disposeState } from './optim';
import { selectTrainable, trainableOf, withLeaves, type Trainable } from './select';
import type { OptimizerState } from './api';
import { shapesBatch, shapesConfig, saveShapesPreset } from './shapes_model';
import { shapesVocabularyBytes } from './shapes_vocab';
import type { PaliGemmaParams } from '../../models/paligemma';

export interface ShapesRun {
  readonly steps: number;
  readonly batch: number;
  readonly learningRate: number;
  readonly warmup: number;
  readonly weightDecay: number;
  readonly dataSeed: number;
  readonly initSeed: number;
  readonly out: string;
  readonly saveEvery: number;
  readonly threads: number;
  /** Data parallel: this many worker threads each compute the gradient of `batch` pictures (1: no workers). */
  readonly workers: number;
  /** Stop planning past this wall time: after 10 steps, `steps` is cut to what fits (0: no limit). */
  readonly minutes: number;
  /** Stop after this many steps, keeping the schedule of `steps` (0: run them all). */
  readonly stopAt: number;
}

const DEFAULTS: ShapesRun = { steps: 1400, batch: 40, learningRate: 2e-3, warmup: 100, weightDecay: 0.01, dataSeed: 1, initSeed: 0, out: 'checkpoints/shapes', saveEvery: 100, threads: 1, workers: 1, minutes: 0, stopAt: 0 };

/** Linear warm-up to the peak, then cosine decay to a tenth of it at the last step. */
export function shapesSchedule(run: Pick<ShapesRun, 'steps' | 'learningRate' | 'warmup'>): (step: number) => number {
  return (step) => {
    if (step < run.warmup) return (run.learningRate * (step + 1)) / run.warmup;
    const t = (step - run.warmup) / Math.max(1, run.steps - run.warmup);
    return run.learningRate * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, t))));
  };
}

function parseArgs(argv: readonly string[]): ShapesRun {
  const run: Record<string, number | string> = { ...DEFAULTS };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, '').replace(/-(\w)/g, (_, c: string) => c.toUpperCase());
    if (!(name in DEFAULTS)) throw new Error(`train-shapes: unknown flag ${argv[i]}; flags: ${Object.keys(DEFAULTS).join(', ')}`);
    const v = argv[i + 1];
    if (v === undefined) throw new Error(`train-shapes: ${argv[i]} needs a value`);
    run[name] = typeof DEFAULTS[name as keyof ShapesRun] === 'number' ? Number(v) : v;
    if (Number.isNaN(run[name])) throw new Error(`train-shapes: ${argv[i]} must be a number, got '${v}'`);
  }
  return run as unknown as ShapesRun;
}

// ---------------------------------------------------------------------------------------------------------
// Data parallel: workers compute gradients of equal shards, the main thread averages them and steps AdamW.
// Shards are equal, and the loss divides by batch * length, so the mean of the shard gradients is the
// gradient of the whole batch (up to float summation order).
// ---------------------------------------------------------------------------------------------------------

interface Job {
  readonly start: number;
  readonly size: number;
  readonly params: readonly Float32Array[];
}
interface Result {
  readonly loss: number;
  readonly grads: readonly Float32Array[];
}

async function workerMain(dataSeed: number): Promise<void> {
  await setBackend('wasm', { threads: 1 });
  const tokenizer = loadSentencePiece(shapesVocabularyBytes(), 'shapes vocabulary');
  const structure = initParams(shapesConfig(), d.key(0));
  parentPort!.on('message', async (job: Job) => {
    let i = 0;
    const params = d.mapTree(structure, (x) => d.named(tf.tensor(job.params[i++], [...x.shape]), x.axes));
    const batch = shapesBatch(tokenizer, dataSeed, job.start, job.size);
    const { value, grads } = d.valueAndGrad((p: PaliGemmaParams) => {
      const r = causalLmLoss(p, batch);
      tf.dispose([r.correct, r.weight]);
      return r.loss;
    }, params);
    const flat = await Promise.all(d.leaves(grads).map(async ([, g]) => Float32Array.from((await g.tensor.data()) as Float32Array)));
    const loss = (await value.data())[0];
    tf.dispose([value, ...d.collectTensors(batch)]);
    d.disposeTree(grads);
    d.disposeTree(params);
    const result: Result = { loss, grads: flat };
    parentPort!.postMessage(result, flat.map((g) => g.buffer as ArrayBuffer));
  });
}

function startWorkers(run: ShapesRun): { step(params: PaliGemmaParams, step: number): Promise<{ loss: number; grads: PaliGemmaParams }>; close(): void } {
  const workers = Array.from({ length: run.workers }, () => new Worker(__filename, { workerData: { shapesWorker: true, dataSeed: run.dataSeed } }));
  const ask = (w: Worker, job: Job): Promise<Result> =>
    new Promise((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
      w.postMessage(job);
    });
  return {
    async step(params, step) {
      const flat = await Promise.all(d.leaves(params).map(async ([, x]) => Float32Array.from((await x.tensor.data()) as Float32Array)));
      const results = await Promise.all(workers.map((w, k) => ask(w, { start: (step * run.workers + k) * run.batch, size: run.batch, params: flat })));
      let i = 0;
      const grads = d.mapTree(params, (x) => {
        const sum = new Float32Array(results[0].grads[i].length);
        for (const r of results) for (let j = 0; j < sum.length; j++) sum[j] += r.grads[i][j] / results.length;
        i++;
        return d.named(tf.tensor(sum, [...x.shape]), x.axes);
      });
      return { loss: results.reduce((a, r) => a + r.loss, 0) / results.length, grads };
    },
    close: () => workers.forEach((w) => void w.terminate()),
  };
}

export async function trainShapes(run: ShapesRun, log: (line: string) => void = console.log): Promise<void> {
  const info = await setBackend('wasm', { threads: run.threads });
  const tokenizer = loadSentencePiece(shapesVocabularyBytes(), 'shapes vocabulary');
  const config = shapesConfig();
  let params: PaliGemmaParams = initParams(config, d.key(run.initSeed));
  // full fine-tuning: every leaf trains (keras' AdamW, decay on every variable)
  const paths = selectTrainable(params);
  const optimizer = adamw({ weightDecay: run.weightDecay });
  let state: OptimizerState = optimizer.init(trainableOf(params, paths));
  let schedule = shapesSchedule(run);
  log(`train-shapes: ${parameterCount(config)} parameters, vocabulary ${config.vocabulary_size}, ${info.name}; ${JSON.stringify(run)}`);
  const t0 = performance.now();
  const curve: { step: number; loss: number; seconds: number }[] = [];
  let sum = 0;
  let n = 0;
  const save = async (step: number): Promise<void> => {
    const seconds = (performance.now() - t0) / 1000;
    const record = { run: { ...run, steps }, steps_done: step, seconds: Math.round(seconds), backend: info.name, parameters: parameterCount(config), curve };
    await saveShapesPreset(params, run.out, { 'train_log.json': JSON.stringify(record, null, 1) + '\n' });
    log(`  saved ${run.out} at step ${step} (${seconds.toFixed(0)} s)`);
  };
  const pool = run.workers > 1 ? startWorkers(run) : undefined;
  let steps = run.steps;
  const last = (): number => (run.stopAt > 0 ? Math.min(run.stopAt, steps) : steps);
  for (let step = 0; step < last(); step++) {
    const learningRate = schedule(step);
    const trainable = trainableOf(params, paths);
    let loss: number;
    let out: { trainable: Trainable; state: OptimizerState };
    if (pool) {
      const r = await pool.step(params, step);
      loss = r.loss;
      const next = optimizer.update(trainable, trainableOf(r.grads, paths), state, learningRate);
      out = { trainable: next.params as Trainable, state: next.state };
      d.disposeTree(r.grads);
    } else {
      const batch = shapesBatch(tokenizer, run.dataSeed, step * run.batch, run.batch);
      const o = trainStep(params, trainable, state, batch, { optimizer, learningRate });
      tf.dispose(d.collectTensors(batch));
      loss = (await o.report.loss.data())[0];
      tf.dispose([o.report.loss, o.report.correct, o.report.weight]);
      out = o;
    }
    const next = withLeaves(params, out.trainable);
    d.disposeTree(params);
    disposeState(state);
    params = next;
    state = out.state;
    if (step === 9 && run.minutes > 0) {
      const perStep = (performance.now() - t0) / 1000 / 10;
      const fits = Math.floor((run.minutes * 60) / perStep);
      if (fits < steps) {
        steps = fits;
        schedule = shapesSchedule({ ...run, steps });
        log(`train-shapes: ${perStep.toFixed(2)} s/step: ${steps} steps fit in ${run.minutes} minutes (the schedule is that of --steps ${steps})`);
      }
    }
    if (!Number.isFinite(loss)) throw new Error(`train-shapes: loss is ${loss} at step ${step}`);
    sum += loss;
    n++;
    if ((step + 1) % 25 === 0 || step === 0) {
      const seconds = (performance.now() - t0) / 1000;
      curve.push({ step: step + 1, loss: sum / n, seconds: Math.round(seconds) });
      log(`step ${step + 1}/${steps} loss ${(sum / n).toFixed(4)} lr ${schedule(step).toExponential(2)} ${(seconds / (step + 1)).toFixed(2)} s/step, ${tf.memory().numTensors} tensors`);
      sum = 0;
      n = 0;
    }
    if ((step + 1) % run.saveEvery === 0 && step + 1 < last()) await save(step + 1);
  }
  pool?.close();
  await save(last());
  d.disposeTree(params);
  disposeState(state);
}

if (!isMainThread && (workerData as { shapesWorker?: boolean } | null)?.shapesWorker) {
  void workerMain((workerData as { dataSeed: number }).dataSeed);
} else if (require.main === module) {
  trainShapes(parseArgs(process.argv.slice(2))).catch((e) => {
    console.error((e as Error).stack ?? e);
    process.exit(1);
  });
}
