/**
 * A mutation fuzzer for the readers of untrusted files: each case writes a mutated copy of a seed file (byte
 * flips, truncations, inflated integers, edited numbers in text headers, spliced bytes) and loads it through
 * the public API. Every outcome must be one of:
 *   - typed error: a `FormatError` (checkpoints/errors.ts) naming a file of the case, field not `internal`;
 *   - load: a result whose structure (keys, shapes, dtypes, sizes) equals the seed's, and whose values equal
 *     the seed's too unless every changed byte lies in a data region (tensor bytes, pixel data, piece text).
 * Anything else is counted: crash (any other error, or an `internal` FormatError), hang (a case over the
 * time limit), blow-up (an allocation failure or stack overflow), silent-wrong (a load that differs).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { FormatError } from '../../checkpoints/errors';

/** What a successful load gave: `structure` must match the seed's; `values` too outside data regions. */
export interface Summary {
  readonly structure: string;
  readonly values: string;
}

export interface Target {
  readonly name: string;
  /** The seed file's bytes and where it goes in the case directory. */
  readonly seed: Uint8Array;
  readonly fileName: string;
  /** Byte ranges [begin, end) of the seed where a flip may change values (not structure). */
  readonly dataRegions: readonly (readonly [number, number])[];
  /**
   * Text (JSON): an edit inside one value region changes that value only, whatever its length (nothing after
   * it moves, unlike in a binary file); an edit that breaks out of the value shows in the structure.
   */
  readonly textual?: boolean;
  /** Files that stay as they are beside the mutated one (shards of an index). */
  readonly beside?: ReadonlyMap<string, Uint8Array>;
  /** Load the mutated file (at `file`, in `dir`) through the public API. */
  load(file: string, dir: string): Summary;
  /**
   * For formats with no integrity check at all (JPEG), the structure a load must have is the one the mutated
   * bytes declare: given, this replaces "equals the seed's" for structure, and values are not compared.
   */
  declared?(bytes: Uint8Array): string | null;
}

export type Mutation =
  | { readonly kind: 'flip'; readonly at: number; readonly xor: number }
  | { readonly kind: 'truncate'; readonly length: number }
  | { readonly kind: 'int'; readonly at: number; readonly width: 1 | 2 | 4 | 8; readonly le: boolean; readonly op: 'inc' | 'dec' | 'max' | 'zero' | 'double' | 'high' }
  | { readonly kind: 'number'; readonly index: number; readonly text: string }
  | { readonly kind: 'splice'; readonly at: number; readonly remove: number; readonly insert: readonly number[] };

/** Decimal numbers in the seed (JSON and npy headers): positions of digit runs. */
function numberRuns(bytes: Uint8Array): [number, number][] {
  const runs: [number, number][] = [];
  const text = Buffer.from(bytes).toString('latin1');
  for (const m of text.matchAll(/-?\d+(\.\d+)?(e[-+]?\d+)?/g)) runs.push([m.index, m.index + m[0].length]);
  return runs;
}

/** Mutations of a seed of `length` bytes with `runs` decimal numbers. */
export function mutationArb(length: number, runs: number): fc.Arbitrary<Mutation> {
  const at = fc.nat({ max: Math.max(0, length - 1) });
  const arbs: fc.Arbitrary<Mutation>[] = [
    fc.record({ kind: fc.constant('flip' as const), at, xor: fc.integer({ min: 1, max: 255 }) }),
    fc.record({ kind: fc.constant('truncate' as const), length: fc.nat({ max: Math.max(0, length - 1) }) }),
    fc.record({
      kind: fc.constant('int' as const),
      at,
      width: fc.constantFrom(1 as const, 2 as const, 4 as const, 8 as const),
      le: fc.boolean(),
      op: fc.constantFrom('inc' as const, 'dec' as const, 'max' as const, 'zero' as const, 'double' as const, 'high' as const),
    }),
    fc.record({
      kind: fc.constant('splice' as const),
      at,
      remove: fc.nat({ max: 8 }),
      insert: fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 8 }),
    }),
  ];
  if (runs > 0) {
    arbs.push(
      fc.record({
        kind: fc.constant('number' as const),
        index: fc.nat({ max: runs - 1 }),
        text: fc.constantFrom('0', '1', '-1', '7', '2147483648', '4294967296', '9007199254740993', '1e308', '1000000000', '3.5', '99999999999999999999'),
      }),
    );
  }
  return fc.oneof(...arbs);
}

/** The mutated bytes, and whether the change is confined to the seed's data regions (same length, in place). */
export function mutate(seed: Uint8Array, m: Mutation, dataRegions: Target['dataRegions'], textual = false): { bytes: Uint8Array; dataOnly: boolean } {
  // Adjacent regions (two tensors back to back) count as one.
  const merged: [number, number][] = [];
  for (const [b, e] of [...dataRegions].sort((x, y) => x[0] - y[0])) {
    const last = merged[merged.length - 1];
    if (last !== undefined && b <= last[1]) last[1] = Math.max(last[1], e);
    else merged.push([b, e]);
  }
  // In text, an edit of the character next to a value (the space before a number) can join it: one of slack.
  const slack = textual ? 1 : 0;
  const inData = (from: number, to: number) => merged.some(([b, e]) => from >= b - slack && to <= e + slack);
  switch (m.kind) {
    case 'flip': {
      const bytes = Uint8Array.from(seed);
      bytes[m.at] ^= m.xor;
      return { bytes, dataOnly: inData(m.at, m.at + 1) };
    }
    case 'truncate':
      return { bytes: seed.slice(0, m.length), dataOnly: false };
    case 'int': {
      const bytes = Uint8Array.from(seed);
      const w = Math.min(m.width, seed.length - m.at);
      if (w <= 0) return { bytes, dataOnly: true };
      let v = 0n;
      for (let i = 0; i < w; i++) v |= BigInt(bytes[m.at + (m.le ? i : w - 1 - i)]) << BigInt(8 * i);
      const max = (1n << BigInt(8 * w)) - 1n;
      const next = { inc: v + 1n, dec: v - 1n, max, zero: 0n, double: v * 2n + 1n, high: v | (1n << BigInt(8 * w - 2)) }[m.op] & max;
      for (let i = 0; i < w; i++) bytes[m.at + (m.le ? i : w - 1 - i)] = Number((next >> BigInt(8 * i)) & 0xffn);
      // only the bytes that changed count
      let changed = true;
      for (let i = m.at; i < m.at + w; i++) if (bytes[i] !== seed[i] && !inData(i, i + 1)) changed = false;
      return { bytes, dataOnly: changed };
    }
    case 'number': {
      const runs = numberRuns(seed);
      const [b, e] = runs[m.index % runs.length];
      const bytes = Buffer.concat([seed.subarray(0, b), Buffer.from(m.text, 'latin1'), seed.subarray(e)]);
      // a number replaced by another number, inside a value: a value change, whatever its length
      return { bytes, dataOnly: inData(b, e) };
    }
    case 'splice': {
      const bytes = Buffer.concat([seed.subarray(0, m.at), Buffer.from(m.insert), seed.subarray(Math.min(seed.length, m.at + m.remove))]);
      // same length (a removal clipped at the end can be): in place, so only the bytes that changed count
      if (textual) return { bytes, dataOnly: inData(m.at, Math.min(seed.length, m.at + m.remove)) };
      let dataOnly = bytes.length === seed.length;
      for (let i = 0; dataOnly && i < bytes.length; i++) if (bytes[i] !== seed[i] && !inData(i, i + 1)) dataOnly = false;
      return { bytes, dataOnly };
    }
  }
}

export type Outcome = 'typed' | 'load' | 'crash' | 'hang' | 'blow-up' | 'silent-wrong';

export interface CaseResult {
  readonly outcome: Outcome;
  readonly detail: string;
  readonly ms: number;
}

const isBlowUp = (e: unknown): boolean => {
  const m = e instanceof Error ? `${e.message} ${e.cause instanceof Error ? e.cause.message : ''}` : String(e);
  return /Array buffer allocation failed|Invalid (typed )?array length|out of memory|Maximum call stack size exceeded|Cannot create a string longer|ERR_BUFFER_TOO_LARGE|Invalid string length/i.test(m);
};

/** The seed's own summary (computed once per target). */
const seedSummaries = new WeakMap<Target, Summary>();

/** Set up `dir` for a target (the files beside the mutated one) and load the seed once. */
export function prepare(target: Target, dir: string): Summary {
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, bytes] of target.beside ?? []) fs.writeFileSync(path.join(dir, name), bytes);
  fs.writeFileSync(path.join(dir, target.fileName), target.seed);
  const summary = target.load(path.join(dir, target.fileName), dir);
  seedSummaries.set(target, summary);
  return summary;
}

/**
 * An in-place mutation that changed bytes both in data and outside it changed the values: is that the data
 * part's doing? The part outside the data alone is applied to the seed and loaded: when it gives the seed's
 * structure and values, those bytes are ones the reader reads but ignores (padding inside a metadata block),
 * and the change is a data change. Otherwise the structural part moved values: silent-wrong stands.
 * (Leaves `file` holding the mutated bytes again.)
 */
function structuralPartIgnored(target: Target, dir: string, bytes: Uint8Array, file: string, seed: Summary): boolean {
  if (bytes.length !== target.seed.length) return false;
  const inData = (i: number) => target.dataRegions.some(([b, e]) => i >= b && i < e);
  const part = Uint8Array.from(target.seed);
  let outside = 0;
  for (let i = 0; i < bytes.length; i++) {
    if (bytes[i] !== target.seed[i] && !inData(i)) {
      part[i] = bytes[i];
      outside++;
    }
  }
  if (outside === 0) return false;
  fs.writeFileSync(file, part);
  try {
    const alone = target.load(file, dir);
    return alone.structure === seed.structure && alone.values === seed.values;
  } catch {
    return false;
  } finally {
    fs.writeFileSync(file, bytes);
  }
}

/** Run one case in `dir` (prepared), classifying the outcome. */
export function runCase(target: Target, dir: string, m: Mutation, limitMs: number): CaseResult {
  const seed = seedSummaries.get(target);
  if (seed === undefined) throw new Error(`prepare(${target.name}) first`);
  const { bytes, dataOnly } = mutate(target.seed, m, target.dataRegions, target.textual);
  const file = path.join(dir, target.fileName);
  fs.writeFileSync(file, bytes);
  const start = performance.now();
  let result: CaseResult;
  try {
    const got = target.load(file, dir);
    const ms = performance.now() - start;
    const expected = target.declared ? target.declared(bytes) : seed.structure;
    if (got.structure !== expected) result = { outcome: 'silent-wrong', detail: `structure ${got.structure} != ${expected}`, ms };
    else if (!target.declared && !dataOnly && got.values !== seed.values && !structuralPartIgnored(target, dir, bytes, file, seed)) {
      result = { outcome: 'silent-wrong', detail: `values changed by a structural mutation`, ms };
    }
    else result = { outcome: 'load', detail: '', ms };
  } catch (e) {
    const ms = performance.now() - start;
    if (isBlowUp(e)) result = { outcome: 'blow-up', detail: String(e instanceof Error ? e.message : e).slice(0, 300), ms };
    else if (e instanceof FormatError && e.field !== 'internal' && e.file.startsWith(dir) && e.message.includes(dir)) result = { outcome: 'typed', detail: e.message.slice(0, 300), ms };
    else result = { outcome: 'crash', detail: `${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)}`.slice(0, 500), ms };
  }
  if (result.ms > limitMs && result.outcome !== 'crash') return { outcome: 'hang', detail: `${result.ms.toFixed(0)} ms (limit ${limitMs}): ${result.detail}`, ms: result.ms };
  return result;
}

export interface Tally {
  cases: number;
  typed: number;
  loads: number;
  crashes: number;
  hangs: number;
  blowUps: number;
  silentWrong: number;
  /** The first few failures, with their mutations. */
  readonly failures: string[];
}

export const emptyTally = (): Tally => ({ cases: 0, typed: 0, loads: 0, crashes: 0, hangs: 0, blowUps: 0, silentWrong: 0, failures: [] });

export function count(t: Tally, r: CaseResult, m: Mutation): void {
  t.cases++;
  const key = ({ typed: 'typed', load: 'loads', crash: 'crashes', hang: 'hangs', 'blow-up': 'blowUps', 'silent-wrong': 'silentWrong' } as const)[r.outcome];
  t[key]++;
  if (r.outcome !== 'typed' && r.outcome !== 'load' && t.failures.length < 10) t.failures.push(`${r.outcome}: ${JSON.stringify(m)}: ${r.detail}`);
}

export const tallyLine = (name: string, t: Tally): string =>
  `${name}: ${t.cases} cases, ${t.typed} typed errors, ${t.loads} loads, ${t.crashes} crashes, ${t.hangs} hangs, ${t.blowUps} blow-ups, ${t.silentWrong} silent-wrong`;

/** The seed's decimal-number count, for `mutationArb`. */
export const numberCount = (seed: Uint8Array): number => numberRuns(seed).length;

/** Run `cases` mutations of a target in `dir` (fast-check sampling from `seed`), tallied. */
export function fuzz(target: Target, dir: string, cases: number, seed: number, limitMs: number): Tally {
  prepare(target, dir);
  const tally = emptyTally();
  const arb = mutationArb(target.seed.length, numberCount(target.seed));
  for (const m of fc.sample(arb, { seed, numRuns: cases })) count(tally, runCase(target, dir, m, limitMs), m);
  return tally;
}
