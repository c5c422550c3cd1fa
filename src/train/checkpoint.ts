/**
 * Training checkpoints: everything a run needs to continue exactly where it stopped.
 *
 *   <dir>/trainable.safetensors   the trainable leaves (all params for full fine-tuning, the adapters and
 *                                 whatever else trains for LoRA), F32, keyed by params path
 *   <dir>/optimizer.safetensors   the optimizer's slots, keyed `<slot>/<params path>`
 *   <dir>/state.json              step, optimizer name and step, PRNG keys, data position, history, the
 *                                 run's fingerprint, and each file's byte length
 *
 * The directory is written as a whole (`writeDirAtomic`): a crash leaves the previous checkpoint or the new
 * one, never a mix. Loading recovers a directory a crash left renamed aside, then checks that every file is
 * there with the recorded length, every tensor has the shape the params expect, and the fingerprint matches
 * the run being resumed; anything else is an error naming the file and the key. Values are float32 written
 * and read bit for bit, so a resumed run on cpu repeats an uninterrupted one exactly.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Key, Named, Tree } from '../../dsl';
import { recoverDir, writeDirAtomic } from '../../checkpoints/atomic';
import { readSafetensorsFile, writeSafetensors, type TensorToWrite } from '../../checkpoints/safetensors';
import type { Optimizer, OptimizerState } from './api';
import type { DataPosition } from './data';

export const CHECKPOINT_FORMAT = 'paligemma-ts-checkpoint';
export const CHECKPOINT_VERSION = 1;
const TRAINABLE_FILE = 'trainable.safetensors';
const OPTIMIZER_FILE = 'optimizer.safetensors';
const STATE_FILE = 'state.json';

/** What a run must agree on to be resumed from a checkpoint (plain JSON values). */
export type Fingerprint = Readonly<Record<string, string | number | boolean | null>>;

export interface CheckpointState<H = unknown> {
  /** Optimizer steps done. */
  readonly step: number;
  readonly keys: { readonly dropout: Key | null; readonly shuffle: Key | null };
  readonly position: DataPosition;
  /** The run's history so far (JSON). */
  readonly history: H;
  readonly fingerprint: Fingerprint;
}

export interface Checkpoint<H = unknown> extends CheckpointState<H> {
  /** The trainable leaves by params path (new tensors; the caller owns them). */
  readonly trainable: Readonly<Record<string, Named>>;
  readonly optimizerState: OptimizerState;
}

interface StateJson<H> extends CheckpointState<H> {
  readonly format: string;
  readonly version: number;
  readonly optimizer: { readonly name: string; readonly step: number; readonly slots: readonly string[] };
  readonly trainable: readonly string[];
  readonly files: Readonly<Record<string, number>>;
}

async function host(x: Named): Promise<TensorToWrite> {
  if (x.tensor.dtype !== 'float32') throw new Error(`saveCheckpoint: only float32 tensors are saved, got ${x.tensor.dtype}`);
  return { shape: x.shape, values: Float32Array.from((await x.tensor.data()) as Float32Array) };
}

/**
 * Remove the temporary directories a killed writer left beside `dir` (`.<name>.tmp-<pid>.*` of another
 * process: one run writes its checkpoint directory at a time).
 */
function removeStaleTemps(dir: string): void {
  const parent = path.dirname(path.resolve(dir));
  const prefix = `.${path.basename(path.resolve(dir))}.tmp-`;
  if (!fs.existsSync(parent)) return;
  for (const f of fs.readdirSync(parent)) {
    if (f.startsWith(prefix) && !f.startsWith(`${prefix}${process.pid}.`)) fs.rmSync(path.join(parent, f), { recursive: true, force: true });
  }
}

/**
 * Write a checkpoint to `dir`, replacing what is there as a whole. `trainable` is the flat record of
 * trainable leaves; `optimizerState` the optimizer's state for them. Reads tensors with `await data()`
 * (every backend). Memory-neutral.
 */
export async function saveCheckpoint<H>(
  dir: string,
  trainable: Readonly<Record<string, Named>>,
  optimizer: Optimizer,
  optimizerState: OptimizerState,
  state: CheckpointState<H>,
): Promise<void> {
  const params: [string, TensorToWrite][] = [];
  for (const [p, x] of Object.entries(trainable)) params.push([p, await host(x)]);
  const slots: [string, TensorToWrite][] = [];
  for (const [name, tree] of Object.entries(optimizerState.slots)) {
    for (const [p, x] of d.leaves(tree)) slots.push([`${name}/${p}`, await host(x)]);
  }
  removeStaleTemps(dir);
  writeDirAtomic(dir, (tmp) => {
    writeSafetensors(path.join(tmp, TRAINABLE_FILE), params, { format: CHECKPOINT_FORMAT });
    writeSafetensors(path.join(tmp, OPTIMIZER_FILE), slots, { format: CHECKPOINT_FORMAT });
    const json: StateJson<H> = {
      format: CHECKPOINT_FORMAT,
      version: CHECKPOINT_VERSION,
      ...state,
      optimizer: { name: optimizer.name, step: optimizerState.step, slots: Object.keys(optimizerState.slots) },
      trainable: Object.keys(trainable),
      files: Object.fromEntries([TRAINABLE_FILE, OPTIMIZER_FILE].map((f) => [f, fs.statSync(path.join(tmp, f)).size])),
    };
    fs.writeFileSync(path.join(tmp, STATE_FILE), JSON.stringify(json, null, 1));
  });
}

/** Whether `dir` holds a checkpoint (after recovering one a crash left aside). */
export function hasCheckpoint(dir: string): boolean {
  recoverDir(dir);
  return fs.existsSync(path.join(dir, STATE_FILE));
}

const isKey = (k: unknown): k is Key => Array.isArray(k) && k.length === 2 && k.every((w) => Number.isInteger(w) && w >= 0 && w < 2 ** 32);

/**
 * Read the checkpoint in `dir` for a run whose trainable leaves are `trainable` (their shapes are checked;
 * the values are not used) and whose optimizer is `optimizer`. Returns new tensors; the caller owns them.
 */
export function loadCheckpoint<H = unknown>(
  dir: string,
  trainable: Readonly<Record<string, Named>>,
  optimizer: Optimizer,
  fingerprint: Fingerprint,
): Checkpoint<H> {
  recoverDir(dir);
  const stateFile = path.join(dir, STATE_FILE);
  if (!fs.existsSync(stateFile)) throw new Error(`checkpoint ${dir}: no ${STATE_FILE} (not a checkpoint directory)`);
  let s: StateJson<H>;
  try {
    s = JSON.parse(fs.readFileSync(stateFile, 'utf8'));
  } catch (e) {
    throw new Error(`checkpoint ${stateFile}: not JSON (${(e as Error).message})`);
  }
  if (s.format !== CHECKPOINT_FORMAT || s.version !== CHECKPOINT_VERSION) {
    throw new Error(`checkpoint ${stateFile}: format ${JSON.stringify(s.format)} version ${s.version}, expected ${CHECKPOINT_FORMAT} version ${CHECKPOINT_VERSION}`);
  }
  if (!Number.isInteger(s.step) || s.step < 0) throw new Error(`checkpoint ${stateFile}: step must be an integer >= 0, got ${JSON.stringify(s.step)}`);
  for (const k of ['dropout', 'shuffle'] as const) {
    const v = s.keys?.[k];
    if (v !== null && !isKey(v)) throw new Error(`checkpoint ${stateFile}: keys.${k} must be two uint32 words or null, got ${JSON.stringify(v)}`);
  }
  const pos = s.position;
  if (!pos || !Number.isInteger(pos.epoch) || !Number.isInteger(pos.offset) || pos.epoch < 0 || pos.offset < 0) {
    throw new Error(`checkpoint ${stateFile}: position must be {epoch, offset} integers >= 0, got ${JSON.stringify(pos)}`);
  }
  for (const [k, v] of Object.entries(fingerprint)) {
    if (s.fingerprint?.[k] !== v) {
      throw new Error(`checkpoint ${dir} belongs to another run: ${k} is ${JSON.stringify(s.fingerprint?.[k])} there, ${JSON.stringify(v)} here`);
    }
  }
  if (s.optimizer?.name !== optimizer.name) throw new Error(`checkpoint ${dir}: optimizer ${JSON.stringify(s.optimizer?.name)}, this run uses ${optimizer.name}`);
  const expected = Object.keys(trainable);
  const missing = expected.filter((p) => !s.trainable.includes(p));
  const extra = s.trainable.filter((p) => !(p in trainable));
  if (missing.length || extra.length) {
    throw new Error(`checkpoint ${dir}: trainable leaves differ from this run's: missing ${missing.slice(0, 3).join(', ') || 'none'}; unexpected ${extra.slice(0, 3).join(', ') || 'none'}`);
  }
  for (const [f, size] of Object.entries(s.files ?? {})) {
    const file = path.join(dir, f);
    const actual = fs.existsSync(file) ? fs.statSync(file).size : -1;
    if (actual !== size) throw new Error(`checkpoint ${file}: ${actual < 0 ? 'missing' : `${actual} bytes`}, ${STATE_FILE} says ${size} bytes`);
  }
  const read = (file: string, key: string, like: Named): Named => {
    const t = readSafetensorsFile(path.join(dir, file)).tensors.get(key);
    if (!t) throw new Error(`checkpoint ${path.join(dir, file)}: no tensor '${key}'`);
    if (t.dtype !== 'F32' || t.shape.length !== like.shape.length || t.shape.some((n, i) => n !== like.shape[i])) {
      throw new Error(`checkpoint ${path.join(dir, file)}: '${key}' is ${t.dtype} [${t.shape.join(', ')}], expected F32 [${like.shape.join(', ')}]`);
    }
    return d.named(tf.tensor(t.read(), [...like.shape], 'float32'), like.axes);
  };
  const out: Record<string, Named> = {};
  const made: Named[] = [];
  try {
    for (const p of expected) made.push((out[p] = read(TRAINABLE_FILE, p, trainable[p])));
    // the optimizer's own init gives the slots' structure; each leaf is then read by path
    const fresh = optimizer.init(trainable);
    let slots: Record<string, Tree>;
    try {
      const names = Object.keys(fresh.slots);
      if (names.join() !== (s.optimizer.slots ?? []).join()) {
        throw new Error(`checkpoint ${dir}: optimizer slots ${JSON.stringify(s.optimizer.slots)}, ${optimizer.name} has ${JSON.stringify(names)}`);
      }
      slots = Object.fromEntries(names.map((n) => [n, d.mapTree(fresh.slots[n], (x, p) => {
        const y = read(OPTIMIZER_FILE, `${n}/${p}`, x);
        made.push(y);
        return y;
      })]));
    } finally {
      for (const t of Object.values(fresh.slots)) d.disposeTree(t);
    }
    return {
      step: s.step,
      keys: s.keys,
      position: pos,
      history: s.history,
      fingerprint: s.fingerprint,
      trainable: out,
      optimizerState: { step: s.optimizer.step, slots },
    };
  } catch (e) {
    for (const x of made) x.dispose();
    throw e;
  }
}
