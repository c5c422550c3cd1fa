/**
 * `fit(params, data, options)`: fine-tuning as one function, keras_hub's `PaliGemmaCausalLM.fit` done
 * functionally. Params go in, new params and a history come out; every random choice comes from explicit
 * keys (shuffling per epoch, dropout per step and micro-batch), so a run is a pure function of its inputs and
 * a resumed run repeats an uninterrupted one.
 *
 * One optimizer step:
 *
 *   for m in 0 .. accumulate-1:   batch at the data position (keras_hub's preprocessor), then
 *                                 value and gradient of keras_hub's loss w.r.t. the trainable leaves,
 *                                 dropout key foldIn(foldIn(dropout, step), m)
 *   g = mean of the micro-batch gradients (the gradient of the mean loss)
 *   g = clipByGlobalNorm(g, clipNorm)                    when asked
 *   params, state = optimizer.update(params, g, state, schedule(step))
 *
 * Evaluation (loss, token accuracy, greedy exact match) runs on a held-out dataset every `eval.every` steps
 * and after the last; a checkpoint is written every `checkpoint.every` steps and after the last. Tensors
 * are replaced one for one, so the tensor count stays flat across steps.
 *
 * Ownership: the result's trainable leaves are new tensors; its frozen leaves are `params`' own (shared,
 * not copied). Dispose the result's trainable leaves (`trainableOf(result.params, result.trainable)`) and,
 * separately, the params you passed in.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key, Named, Tree } from '../../dsl';
import type { PaliGemmaParams } from '../../models/paligemma';
import type { Tokenizer } from '../text/tokenizer';
import { writeFileAtomic } from '../../checkpoints/atomic';
import type { LossReport, Optimizer, OptimizerState, Schedule } from './api';
import { batchAt, batchesPerEpoch, checkBatchOptions, DATA_START, toTensors, type BatchOptions, type DataPosition, type Dataset } from './data';
import { adam, clipByGlobalNormAsync, disposeState } from './optim';
import { constant } from './schedule';
import { selectTrainable, summarize, trainableOf, withLeaves, type Selection } from './select';
import { evaluate, type EvalReport } from './evaluate';
import { hasCheckpoint, loadCheckpoint, saveCheckpoint, type Fingerprint } from './checkpoint';
import { lossCurvePng, lossCurveSvg } from './plot';
import { lossAndGradsCompiled, trainStepCompiled, updateCompiled } from './compiled';
import { lossAndGrads } from './step';
import { compiledModels } from '../runtime/backend';
import { progressPrinter, type Stream } from './progress';

export interface StepRecord {
  /** 1-based: the number of optimizer steps done after this one. */
  readonly step: number;
  /** Mean keras loss over the step's micro-batches (before the update, as keras logs it). */
  readonly loss: number;
  /** Weighted token accuracy of the step's batches. */
  readonly accuracy: number;
  readonly learningRate: number;
  /** Global gradient norm before clipping (only when clipping). */
  readonly gradNorm?: number;
  /** Text tokens (non-padding) and examples in the step. */
  readonly tokens: number;
  readonly examples: number;
  /** Rows trimmed to fit (only with truncation allowed). */
  readonly truncated: number;
}

export interface EvalRecord {
  readonly step: number;
  readonly loss?: number;
  readonly tokenAccuracy?: number;
  readonly exactMatch?: number;
  readonly correct?: number;
  readonly total?: number;
}

export interface History {
  readonly steps: StepRecord[];
  readonly evals: EvalRecord[];
  /** Things the run did not do as one might expect (a dropout key with dropout 0, truncation...). */
  readonly warnings: string[];
}

export interface FitOptions {
  readonly tokenizer: Tokenizer;
  /** Examples per micro-batch (default 4). */
  readonly batchSize?: number;
  /** Micro-batches per optimizer step (gradient accumulation; default 1). */
  readonly accumulate?: number;
  /** Text positions: a number or 'longest' per batch (default 'longest'), and its cap. */
  readonly sequenceLength?: number | 'longest';
  readonly maxSequenceLength?: number;
  /** Trim over-long rows (keras_hub's round robin) and count them, instead of refusing them. */
  readonly truncate?: boolean;
  readonly verbatimPrompts?: boolean;
  /** Optimizer steps, or whole epochs (exactly one of them; default 1 epoch). */
  readonly steps?: number;
  readonly epochs?: number;
  /** Default keras_hub's compile: Adam, constant 2e-5. */
  readonly optimizer?: Optimizer;
  readonly schedule?: Schedule | number;
  /** Clip the (accumulated) gradient to this global L2 norm. */
  readonly clipNorm?: number;
  /** Which leaves train (default all), as globs or predicates over params paths (src/train/select.ts). */
  readonly trainable?: Selection;
  /** Shuffle each epoch with this key; `false` keeps the file order. Default key(0). */
  readonly shuffle?: Key | false;
  /** Dropout key (training mode). Reported when the config's dropout is 0. */
  readonly dropout?: Key;
  /** Positions per loss chunk (src/train/loss.ts). */
  readonly lossChunk?: number;
  readonly eval?: {
    readonly data: Dataset;
    /** Evaluate every this many steps (and after the last step). */
    readonly every?: number;
    readonly batchSize?: number;
    readonly exactMatch?: boolean;
    readonly maxNewTokens?: number;
  };
  readonly checkpoint?: {
    readonly dir: string;
    /** Write every this many steps (and after the last step). */
    readonly every: number;
  };
  /** Continue from the checkpoint in this directory (when it holds one; otherwise start fresh). */
  readonly resume?: string;
  /** Write the loss curve here (`.svg`; a `.png` beside it too). */
  readonly plot?: string;
  /** A status line: redrawn on a TTY, printed every few steps elsewhere. */
  readonly progress?: Stream;
  readonly onStep?: (record: StepRecord, history: History) => void | Promise<void>;
  readonly onEval?: (record: EvalRecord, report: EvalReport) => void | Promise<void>;
  readonly onWarning?: (message: string) => void;
}

export interface FitResult {
  readonly params: PaliGemmaParams;
  /** Paths of the trained leaves. */
  readonly trainable: readonly string[];
  readonly history: History;
  /** Steps done in all, and how many this call ran (fewer after a resume). */
  readonly step: number;
  readonly stepsRun: number;
}

const positiveInt = (v: number | undefined, name: string): void => {
  if (v !== undefined && (!Number.isInteger(v) || v < 1)) throw new Error(`fit: ${name} must be a positive integer, got ${v}`);
};

/**
 * FNV-1a (32-bit) over every example's prefix and suffix: the data a checkpoint was made with, independent
 * of where the files sit (a moved dataset resumes; an edited one does not).
 */
export function dataHash(data: Dataset): string {
  let h = 0x811c9dc5;
  for (const e of data.examples) {
    for (const s of [e.prefix, '\u0000', e.suffix, '\u0001']) {
      for (let i = 0; i < s.length; i++) {
        h ^= s.charCodeAt(i);
        h = Math.imul(h, 0x01000193) >>> 0;
      }
    }
  }
  return h.toString(16).padStart(8, '0');
}

/** On the onnx backend, the number of distinct batch shapes at which fit says that each compiles a graph. */
export const COMPILED_SHAPES_WARNING = 4;

/** The mean of `accumulate` gradient records (frees the parts). */
function meanGrads(parts: Record<string, Named>[]): Record<string, Named> {
  if (parts.length === 1) return parts[0];
  const out: Record<string, Named> = {};
  for (const p of Object.keys(parts[0])) {
    // a chain of adds, not tf.addN: webgpu binds every addN input as a storage buffer (at most 8-12 per stage)
    out[p] = d.scoped(() => d.named(tf.div(parts.slice(1).reduce((acc, g) => tf.add(acc, g[p].tensor), parts[0][p].tensor), parts.length), parts[0][p].axes));
  }
  for (const g of parts) d.disposeTree(g);
  return out;
}

function plotHistory(file: string, h: History): void {
  const series = [
    { name: 'train loss', color: '#1f77b4', points: h.steps.map((s) => [s.step, s.loss] as const) },
    ...(h.evals.some((e) => e.loss !== undefined) ? [{ name: 'eval loss', color: '#d62728', dots: true, points: h.evals.filter((e) => e.loss !== undefined).map((e) => [e.step, e.loss!] as const) }] : []),
  ];
  writeFileAtomic(file, lossCurveSvg(series, 'fine-tuning loss'));
  writeFileAtomic(file.replace(/\.svg$/i, '') + '.png', lossCurvePng(series));
}

export async function fit(params: PaliGemmaParams, data: Dataset, options: FitOptions): Promise<FitResult> {
  const c = params.config;
  positiveInt(options.batchSize, 'batchSize');
  positiveInt(options.accumulate, 'accumulate');
  positiveInt(options.steps, 'steps');
  positiveInt(options.epochs, 'epochs');
  if (options.steps !== undefined && options.epochs !== undefined) throw new Error('fit: give steps or epochs, not both');
  if (options.clipNorm !== undefined && !(options.clipNorm > 0)) throw new Error(`fit: clipNorm must be > 0, got ${options.clipNorm}`);
  positiveInt(options.eval?.every, 'eval.every');
  positiveInt(options.checkpoint?.every, 'checkpoint.every');
  const accumulate = options.accumulate ?? 1;
  const shuffle = options.shuffle === false ? undefined : options.shuffle ?? d.key(0);
  const batch: BatchOptions = {
    tokenizer: options.tokenizer,
    imageSize: c.image_size,
    batchSize: options.batchSize ?? 4,
    sequenceLength: options.sequenceLength ?? 'longest',
    maxSequenceLength: options.maxSequenceLength,
    truncate: options.truncate,
    verbatimPrompts: options.verbatimPrompts,
    shuffle,
  };
  checkBatchOptions(batch);
  const totalSteps = options.steps ?? Math.ceil(((options.epochs ?? 1) * batchesPerEpoch(data, batch)) / accumulate);
  const optimizer = options.optimizer ?? adam();
  const sched: Schedule = typeof options.schedule === 'number' ? constant(options.schedule) : options.schedule ?? constant(2e-5);
  const paths = selectTrainable(params, options.trainable);
  if (paths.length === 0) throw new Error('fit: nothing is trainable (the selection matches no params)');

  const history: { steps: StepRecord[]; evals: EvalRecord[]; warnings: string[] } = { steps: [], evals: [], warnings: [] };
  const printer = options.progress ? progressPrinter(options.progress) : undefined;
  const warn = (m: string) => {
    history.warnings.push(m);
    if (options.onWarning) options.onWarning(m);
    else printer?.message(`warning: ${m}`);
  };
  let dropoutKey = options.dropout;
  if (dropoutKey && c.dropout === 0) {
    warn('a dropout key was given but the config has dropout 0: training runs without dropout');
    dropoutKey = undefined;
  } else if (!dropoutKey && c.dropout > 0) {
    warn(`the config has dropout ${c.dropout} but no dropout key was given: training runs without dropout`);
  }

  // on the onnx backend the steps run compiled (src/train/compiled.ts), dropout included (its masks are inputs)
  const compiled = compiledModels();
  // one micro-batch and no clipping: loss, gradients and update are one session run per step
  const fused = compiled && accumulate === 1 && options.clipNorm === undefined;

  // each batch shape is its own compiled graph (a trace and a session, kept for the process): 'longest' with
  // rows of many lengths compiles many, which a fixed sequenceLength avoids
  const shapes = new Set<string>();
  const noteShape = (shape: readonly number[]): void => {
    shapes.add(shape.join('x'));
    if (shapes.size === COMPILED_SHAPES_WARNING) {
      warn(`${shapes.size} batch shapes compiled so far (${[...shapes].join(', ')}): each is a graph of its own; a fixed sequenceLength (and full batches) makes one`);
    }
  };

  const fingerprint: Fingerprint = {
    data: dataHash(data),
    examples: data.examples.length,
    batchSize: batch.batchSize,
    accumulate,
    sequenceLength: String(batch.sequenceLength),
    totalSteps,
    optimizer: optimizer.name,
    trainable: paths.length,
    shuffle: shuffle ? shuffle.join(',') : null,
    dropout: dropoutKey ? dropoutKey.join(',') : null,
  };

  // state: the trainable leaves (owned by fit once replaced), the optimizer state, the data position
  let trainable = trainableOf(params, paths);
  let owned = false;
  let state: OptimizerState;
  let position: DataPosition = DATA_START;
  let step = 0;
  if (options.resume && hasCheckpoint(options.resume)) {
    const ck = loadCheckpoint<History>(options.resume, trainable, optimizer, fingerprint);
    trainable = ck.trainable;
    owned = true;
    state = ck.optimizerState;
    position = ck.position;
    step = ck.step;
    history.steps.push(...(ck.history?.steps ?? []));
    history.evals.push(...(ck.history?.evals ?? []));
    history.warnings.push(...(ck.history?.warnings ?? []));
    printer?.message(`resumed from ${options.resume} at step ${step}/${totalSteps}`);
  } else {
    state = optimizer.init(trainable);
  }
  const current = (): PaliGemmaParams => withLeaves(params, trainable);

  const runEval = async (): Promise<void> => {
    const e = options.eval!;
    const report = await evaluate({ params: current(), tokenizer: options.tokenizer }, e.data, {
      batchSize: e.batchSize ?? batch.batchSize,
      exactMatch: e.exactMatch,
      maxNewTokens: e.maxNewTokens,
      truncate: options.truncate,
      verbatimPrompts: options.verbatimPrompts,
    });
    const record: EvalRecord = {
      step,
      loss: report.loss,
      tokenAccuracy: report.tokenAccuracy,
      ...(report.exactMatch && { exactMatch: report.exactMatch.accuracy, correct: report.exactMatch.correct, total: report.exactMatch.total }),
    };
    history.evals.push(record);
    printer?.message(
      `eval at step ${step}: loss ${report.loss?.toFixed(4)} token accuracy ${report.tokenAccuracy?.toFixed(3)}` +
        (report.exactMatch ? ` exact match ${report.exactMatch.accuracy.toFixed(3)} (${report.exactMatch.correct}/${report.exactMatch.total})` : ''),
    );
    await options.onEval?.(record, report);
  };
  const checkpointNow = async (): Promise<void> => {
    await saveCheckpoint(options.checkpoint!.dir, trainable, optimizer, state, {
      step,
      keys: { dropout: dropoutKey ?? null, shuffle: shuffle ?? null },
      position,
      history,
      fingerprint,
    });
  };

  const started = performance.now();
  const startStep = step;
  let tokensRun = 0;
  try {
    while (step < totalSteps) {
      const lr = sched(step);
      const parts: Record<string, Named>[] = [];
      let lossSum = 0;
      let correct = 0;
      let weight = 0;
      let tokens = 0;
      let examples = 0;
      let truncated = 0;
      const p = current();
      let updated: { params: Tree; state: OptimizerState } | undefined;
      for (let m = 0; m < accumulate; m++) {
        const { batch: host, next } = batchAt(data, batch, position);
        position = next;
        truncated += host.truncated;
        examples += host.rows.length;
        for (const v of host.paddingMask) tokens += v;
        const x = toTensors(host);
        if (compiled) noteShape(x.token_ids.shape);
        const key = dropoutKey ? d.foldIn(d.foldIn(dropoutKey, step), m) : undefined;
        try {
          let report: LossReport;
          if (fused) {
            const out = trainStepCompiled(p, trainable, state, x, { optimizer, learningRate: lr, chunk: options.lossChunk, key });
            report = out.report;
            updated = { params: out.trainable, state: out.state };
          } else {
            const r = compiled
              ? lossAndGradsCompiled(p, trainable, x, { chunk: options.lossChunk, key })
              : lossAndGrads(p, trainable, x, { key, chunk: options.lossChunk, weights: host.sampleWeight });
            report = r.report;
            parts.push(r.grads as Record<string, Named>);
          }
          lossSum += (await report.loss.data())[0];
          correct += (await report.correct.data())[0];
          weight += (await report.weight.data())[0];
          tf.dispose([report.loss, report.correct, report.weight]);
        } finally {
          tf.dispose(d.collectTensors(x));
        }
      }
      if (truncated > 0) warn(`step ${step + 1}: ${truncated} row${truncated === 1 ? '' : 's'} truncated to the sequence length`);
      let gradNorm: number | undefined;
      if (!updated) {
        let grads = meanGrads(parts);
        if (options.clipNorm !== undefined) {
          const clipped = await clipByGlobalNormAsync(grads, options.clipNorm);
          d.disposeTree(grads);
          grads = clipped.grads;
          gradNorm = clipped.norm;
        }
        updated = compiled ? updateCompiled(optimizer, trainable, grads, state, lr) : optimizer.update(trainable as Tree, grads, state, lr);
        d.disposeTree(grads);
      }
      if (owned) d.disposeTree(trainable);
      disposeState(state);
      trainable = updated.params as Record<string, Named>;
      state = updated.state;
      owned = true;
      step++;
      tokensRun += tokens;
      const record: StepRecord = { step, loss: lossSum / accumulate, accuracy: weight > 0 ? correct / weight : 0, learningRate: lr, ...(gradNorm !== undefined && { gradNorm }), tokens, examples, truncated };
      history.steps.push(record);
      const seconds = (performance.now() - started) / 1000;
      const lastEval = history.evals[history.evals.length - 1]?.exactMatch;
      printer?.update({ step, steps: totalSteps, loss: record.loss, stepsPerSecond: (step - startStep) / seconds, tokensPerSecond: tokensRun / seconds, evalAccuracy: lastEval });
      await options.onStep?.(record, history);
      const last = step === totalSteps;
      if (options.eval && ((options.eval.every && step % options.eval.every === 0) || last)) await runEval();
      if (options.checkpoint && (step % options.checkpoint.every === 0 || last)) await checkpointNow();
      if (options.plot && (last || step % 10 === 0)) plotHistory(options.plot, history);
    }
    if (options.eval && history.evals.length === 0) await runEval(); // resumed after the last step
  } catch (e) {
    if (owned) d.disposeTree(trainable);
    disposeState(state);
    throw e;
  } finally {
    printer?.done();
  }
  disposeState(state);
  if (options.plot && history.steps.length > 0) plotHistory(options.plot, history);
  return { params: current(), trainable: paths, history, step, stepsRun: step - startStep };
}

/** The summary of what trains (counts by group), for printing before a run. */
export function trainableSummary(params: PaliGemmaParams, selection?: Selection): string {
  return summarize(params, selectTrainable(params, selection)).text;
}

/** Write the history as JSON lines (one step per line, then the evaluations) next to a run's outputs. */
export function writeHistory(file: string, h: History): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  writeFileAtomic(file, JSON.stringify(h, null, 1) + '\n');
}
