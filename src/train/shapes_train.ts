/**
 * Trains the shapes model from scratch with this project's trainer, `fit` (scripts/train-shapes.mjs builds
 * and runs this file):
 *
 *   node scripts/train-shapes.mjs --steps 20000 --out checkpoints/shapes
 *
 * Data: pictures 0 .. steps * batch - 1 of the data seed, one task each (`shapesDataset`), one epoch, so no
 * picture is seen twice; held out: 150 pictures of the eval seed, greedy exact match every `--eval-every`
 * steps. Init from keras_hub's initializers with our PRNG (init seed); keras' AdamW, linear warm-up then
 * cosine decay to a tenth of the peak. `fit` writes a checkpoint (params, AdamW moments, data position) every
 * `--save-every` steps into `<out>.run/checkpoint` and resumes from it when rerun with the same flags, so a
 * killed run continues where it stopped. At the end the preset is written to `--out` with the run's settings,
 * loss curve (100-step means) and evaluations (train_log.json); the run directory keeps the whole history and
 * the plot (history.json, loss.svg, loss.png).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as d from '../../dsl';
import { initParams } from '../../checkpoints/init';
import { parameterCount } from '../../checkpoints/params';
import { setBackend, type BackendName } from '../runtime/backend';
import { loadSentencePiece } from '../text/tokenizer';
import { fit, type History } from './fit';
import { adamw } from './optim';
import { warmupCosine } from './schedule';
import { trainableOf } from './select';
import { shapesConfig, shapesDataset, saveShapesPreset, SHAPES_SEQUENCE_LENGTH } from './shapes_model';
import { shapesVocabularyBytes } from './shapes_vocab';

export interface ShapesRun {
  readonly steps: number;
  readonly batch: number;
  readonly learningRate: number;
  readonly warmup: number;
  readonly weightDecay: number;
  readonly dataSeed: number;
  readonly evalSeed: number;
  readonly initSeed: number;
  readonly out: string;
  readonly saveEvery: number;
  readonly evalEvery: number;
  readonly backend: string;
  readonly threads: number;
}

const DEFAULTS: ShapesRun = {
  steps: 20000,
  batch: 48,
  learningRate: 2e-3,
  warmup: 500,
  weightDecay: 0.01,
  dataSeed: 1,
  evalSeed: 2,
  initSeed: 0,
  out: 'checkpoints/shapes',
  saveEvery: 1000,
  evalEvery: 2000,
  backend: 'onnx',
  threads: 0,
};

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

export async function trainShapes(run: ShapesRun, log: (line: string) => void = console.log): Promise<void> {
  const info = await setBackend(run.backend as BackendName, run.threads > 0 ? { threads: run.threads } : {});
  const tokenizer = loadSentencePiece(shapesVocabularyBytes(), 'shapes vocabulary');
  const config = shapesConfig();
  const params = initParams(config, d.key(run.initSeed));
  const runDir = `${run.out.replace(/\/+$/, '')}.run`;
  fs.mkdirSync(runDir, { recursive: true });
  log(`train-shapes: ${parameterCount(config)} parameters, vocabulary ${config.vocabulary_size}, ${info.name}; ${JSON.stringify(run)}`);
  const t0 = performance.now();
  const r = await fit(params, shapesDataset(run.dataSeed, run.steps * run.batch), {
    tokenizer,
    steps: run.steps,
    batchSize: run.batch,
    sequenceLength: SHAPES_SEQUENCE_LENGTH, // one batch shape: one compiled graph
    optimizer: adamw({ weightDecay: run.weightDecay }),
    schedule: warmupCosine({ peak: run.learningRate, warmupSteps: run.warmup, totalSteps: run.steps, final: run.learningRate / 10 }),
    shuffle: false, // the pictures are random already, and each is seen once
    eval: { data: shapesDataset(run.evalSeed, 150), every: run.evalEvery, batchSize: 150 },
    checkpoint: { dir: path.join(runDir, 'checkpoint'), every: run.saveEvery },
    resume: path.join(runDir, 'checkpoint'),
    plot: path.join(runDir, 'loss.svg'),
    progress: process.stderr,
  });
  const seconds = (performance.now() - t0) / 1000;
  // the curve: mean loss over each 100 steps (the whole history stays in the run directory)
  const h: History = r.history;
  const curve = [];
  for (let s = 0; s < h.steps.length; s += 100) {
    const part = h.steps.slice(s, s + 100);
    curve.push({ step: part[part.length - 1].step, loss: part.reduce((a, x) => a + x.loss, 0) / part.length, accuracy: part.reduce((a, x) => a + x.accuracy, 0) / part.length });
  }
  const record = { run, steps_done: r.step, seconds_this_process: Math.round(seconds), backend: info.name, parameters: parameterCount(config), curve, evals: h.evals };
  fs.writeFileSync(path.join(runDir, 'history.json'), JSON.stringify(h) + '\n');
  // the preset ships: the log with the curve as 100-step means (loss.svg, every step, stays in the run directory)
  await saveShapesPreset(r.params, run.out, { 'train_log.json': JSON.stringify(record, null, 1) + '\n' });
  log(`train-shapes: ${r.step} steps (${r.stepsRun} in this process, ${seconds.toFixed(0)} s); saved ${run.out}`);
  d.disposeTree(trainableOf(r.params, r.trainable));
  d.disposeTree(params);
}

if (require.main === module) {
  trainShapes(parseArgs(process.argv.slice(2))).catch((e) => {
    console.error((e as Error).stack ?? e);
    process.exit(1);
  });
}
