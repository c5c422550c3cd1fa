/**
 * `paligemma fine-tune` and `paligemma eval`, declared with src/cli/command.ts.
 *
 *   fine-tune  a preset + a JSONL of {image, prefix, suffix} -> <out>/preset (a keras_hub task preset, LoRA
 *              merged as keras_hub's save_to_preset does), <out>/adapters.lora.h5 with --lora-rank,
 *              <out>/checkpoint (every --checkpoint-every steps; --resume continues it), <out>/history.json,
 *              <out>/loss.svg and loss.png; a progress line on a TTY (step, loss, steps/s, tokens/s, ETA)
 *   eval       greedy exact match on a JSONL, per prefix and overall; the last line is exactly
 *              `accuracy: 0.973 (1946/2000)`
 */
import * as path from 'node:path';
import * as d from '../../dsl';
import { backendOf, defineCommand, sharedFlags, type Command, type Io } from './command';
import { loadCausalLM } from '../generate/causal_lm';
import { saveCausalLM } from '../generate/save';
import { readJsonl } from '../train/data';
import { fit, writeHistory } from '../train/fit';
import { evaluate, formatAccuracy } from '../train/evaluate';
import { hasCheckpoint } from '../train/checkpoint';
import { adam, adamw } from '../train/optim';
import { constant, warmupCosine, warmupLinear } from '../train/schedule';
import { selectTrainable, summarize, trainableOf } from '../train/select';
import { adaptersOf, enableLora, loraTrainable } from '../train/lora';
import { writeLoraH5 } from '../../checkpoints/lora';
import type { Schedule } from '../train/api';
import type { Stream } from '../train/progress';
import { DEFAULT_PRESET } from './commands';

/** Progress to a TTY's stderr as a redrawn line, or to the command's output as whole lines. */
function progressStream(io: Io): Stream {
  if (process.stderr.isTTY) return process.stderr;
  return { write: (s: string) => void io.out(s.replace(/\n$/, '')) };
}

const fineTuneFlags = {
  preset: { ...sharedFlags.preset, help: 'the model to fine-tune (a preset name, directory or handle)', default: DEFAULT_PRESET },
  data: { type: 'string', help: 'training records, JSONL of {"image", "prefix", "suffix"} (image paths relative to the file)', placeholder: 'train.jsonl' },
  eval: { type: 'string', help: 'held-out records (same form), evaluated every --eval-every steps and at the end', placeholder: 'eval.jsonl' },
  'lora-rank': { type: 'integer', help: "LoRA adapters of this rank on keras_hub's default layers; without it every weight trains", min: 1 },
  steps: { type: 'integer', help: 'optimizer steps (default: --epochs 1)', min: 1 },
  epochs: { type: 'integer', help: 'passes over the data', min: 1 },
  'batch-size': { type: 'integer', help: 'examples per micro-batch', default: 4, min: 1 },
  accumulate: { type: 'integer', help: 'micro-batches per optimizer step (gradient accumulation)', default: 1, min: 1 },
  'learning-rate': { type: 'number', help: "peak learning rate (keras_hub's default compile: 2e-5)", default: 2e-5, min: 0 },
  schedule: { type: 'string', help: 'learning-rate schedule after --warmup-steps', default: 'constant', choices: ['constant', 'cosine', 'linear'] },
  'warmup-steps': { type: 'integer', help: 'linear warmup steps (cosine and linear schedules)', default: 0, min: 0 },
  'weight-decay': { type: 'number', help: 'AdamW decoupled weight decay (0: Adam, as keras_hub)', default: 0, min: 0 },
  'clip-norm': { type: 'number', help: 'clip gradients to this global L2 norm', min: 0 },
  'sequence-length': { type: 'integer', help: 'text tokens per row (default: the longest row of each batch)', min: 2 },
  truncate: { type: 'boolean', help: 'trim rows longer than --sequence-length (counted) instead of refusing them' },
  seed: { type: 'integer', help: 'seed of the shuffling, dropout and LoRA initialisation keys', default: 0, min: 0 },
  'eval-every': { type: 'integer', help: 'steps between evaluations', default: 100, min: 1 },
  'checkpoint-every': { type: 'integer', help: 'steps between checkpoints', default: 100, min: 1 },
  out: { type: 'string', help: 'output directory (preset/, checkpoint/, history.json, loss.svg)', default: 'fine-tuned', placeholder: 'dir' },
  resume: { type: 'string', help: "continue the run whose --out (or checkpoint directory) this is", placeholder: 'dir' },
  backend: sharedFlags.backend,
  threads: sharedFlags.threads,
} as const;

export const fineTuneCommand = defineCommand({
  name: 'fine-tune',
  summary: 'fine-tune a preset on JSONL records (full or LoRA); writes a keras_hub preset, checkpoints, history and a loss curve',
  example: 'paligemma fine-tune --preset tiny-dir --data train.jsonl --eval eval.jsonl --lora-rank 4 --steps 200 --batch-size 8 --learning-rate 1e-4 --out run1',
  flags: fineTuneFlags,
  async run(f, _positionals, io) {
    if (f.data === undefined) throw new Error('missing --data <train.jsonl>');
    if (f.steps !== undefined && f.epochs !== undefined) throw new Error('give --steps or --epochs, not both');
    const data = readJsonl(f.data);
    const held = f.eval !== undefined ? readJsonl(f.eval) : undefined;
    const info = await backendOf(f);
    const preset = f.preset;
    const lm = loadCausalLM(preset);
    const seed = d.key(f.seed);
    const [shuffleKey, dropoutKey, loraKey] = d.split(seed, 3);
    const params = f['lora-rank'] !== undefined ? enableLora(lm.params, { rank: f['lora-rank'], key: loraKey }) : lm.params;
    const trainable = f['lora-rank'] !== undefined ? loraTrainable(params) : selectTrainable(params);
    const owned = new Set(d.leaves(lm.params).map(([, x]) => x));
    const created = d.leaves(params).filter(([, x]) => !owned.has(x));
    try {
      const out = f.out;
      // --resume: a previous --out (its checkpoint/ inside) or a checkpoint directory itself
      const ckpt = path.join(out, 'checkpoint');
      const resume = f.resume === undefined ? undefined : hasCheckpoint(path.join(f.resume, 'checkpoint')) ? path.join(f.resume, 'checkpoint') : f.resume;
      if (resume !== undefined && !hasCheckpoint(resume)) throw new Error(`--resume ${f.resume}: no checkpoint there (looked for ${path.join(f.resume!, 'checkpoint', 'state.json')} and ${path.join(f.resume!, 'state.json')})`);
      if (resume === undefined && hasCheckpoint(ckpt)) throw new Error(`${ckpt} holds a checkpoint of an earlier run: pass --resume ${out} to continue it, or another --out`);
      io.out(`preset: ${preset} (${info.name}); data: ${data.examples.length} examples${held ? `, eval: ${held.examples.length}` : ''}`);
      for (const line of summarize(params, trainable).text.split('\n').slice(0, 2)) io.out(line);
      const lr = f['learning-rate'];
      const sched = (total: number): Schedule =>
        f.schedule === 'constant' ? constant(lr) : (f.schedule === 'cosine' ? warmupCosine : warmupLinear)({ peak: lr, warmupSteps: f['warmup-steps'], totalSteps: total });
      const total = f.steps ?? Math.ceil((f.epochs ?? 1) * Math.ceil(data.examples.length / f['batch-size']) / f.accumulate);
      const result = await fit(params, data, {
        tokenizer: lm.tokenizer,
        steps: total,
        batchSize: f['batch-size'],
        accumulate: f.accumulate,
        sequenceLength: f['sequence-length'] ?? 'longest',
        truncate: f.truncate,
        optimizer: f['weight-decay'] > 0 ? adamw({ weightDecay: f['weight-decay'], excludeFromWeightDecay: ['bias', 'scale'] }) : adam(),
        schedule: sched(total),
        clipNorm: f['clip-norm'],
        trainable: { train: (p) => trainable.includes(p) },
        shuffle: shuffleKey,
        dropout: lm.params.config.dropout > 0 ? dropoutKey : undefined,
        eval: held && { data: held, every: f['eval-every'] },
        checkpoint: { dir: resume ?? ckpt, every: f['checkpoint-every'] },
        resume,
        plot: path.join(out, 'loss.svg'),
        progress: progressStream(io),
      });
      try {
        const last = result.history.steps[result.history.steps.length - 1];
        io.out(`done: ${result.step} steps (${result.stepsRun} in this run), final loss ${last?.loss.toFixed(4)}`);
        if (f['lora-rank'] !== undefined) writeLoraH5(path.join(out, 'adapters.lora.h5'), result.params.config, await adaptersOf(result.params));
        // adapted kernels are written merged (kernel + scale A.B), as keras_hub's save_to_preset does
        await saveCausalLM({ params: result.params, tokenizer: lm.tokenizer }, path.join(out, 'preset'), { sequenceLength: f['sequence-length'] ?? 512 });
        writeHistory(path.join(out, 'history.json'), result.history);
        io.out(`saved: ${path.join(out, 'preset')} (loadCausalLM / --preset)${f['lora-rank'] !== undefined ? `, ${path.join(out, 'adapters.lora.h5')}` : ''}, ${path.join(out, 'loss.svg')}`);
        const ev = result.history.evals[result.history.evals.length - 1];
        if (ev?.total) io.out(formatAccuracy('eval accuracy', { correct: ev.correct!, total: ev.total }));
      } finally {
        d.disposeTree(trainableOf(result.params, result.trainable));
      }
    } finally {
      for (const [, x] of created) x.dispose();
      d.disposeTree(lm.params);
    }
    return 0;
  },
});

export const evalCommand = defineCommand({
  name: 'eval',
  summary: 'greedy exact match of a preset on JSONL records, per prefix and overall',
  example: 'paligemma eval --preset run1/preset --data eval.jsonl',
  flags: {
    preset: { ...sharedFlags.preset, help: 'the model (a preset name, directory or handle)', default: DEFAULT_PRESET },
    data: { type: 'string', help: 'JSONL of {"image", "prefix", "suffix"} (image paths relative to the file)', placeholder: 'eval.jsonl' },
    'batch-size': { type: 'integer', help: 'examples generated at once', default: 8, min: 1 },
    'max-new-tokens': { type: 'integer', help: 'most tokens generated per example (default: the longest suffix + 1)', min: 1 },
    int8: sharedFlags.int8,
    backend: sharedFlags.backend,
    threads: sharedFlags.threads,
  },
  async run(f, _positionals, io) {
    if (f.data === undefined) throw new Error('missing --data <eval.jsonl>');
    const data = readJsonl(f.data);
    await backendOf(f);
    const lm = loadCausalLM(f.preset);
    try {
      const report = await evaluate(lm, data, { batchSize: f['batch-size'], maxNewTokens: f['max-new-tokens'], loss: false, quantize: f.int8 ? 'int8' : undefined });
      const rows = [...report.byPrefix!];
      const width = Math.min(40, Math.max(...rows.map(([p]) => JSON.stringify(p).length)));
      for (const [prefix, c] of rows) io.out(formatAccuracy(`  ${JSON.stringify(prefix).padEnd(width)}`, c));
      io.out(formatAccuracy('accuracy', report.exactMatch!));
    } finally {
      d.disposeTree(lm.params);
    }
    return 0;
  },
});

export const trainCommands: readonly Command[] = [fineTuneCommand, evalCommand];
