/**
 * The per-reader fuzz test of `npm test`: a few hundred mutations of one target, each bounded in time; any
 * crash, hang, blow-up or silent-wrong load fails the test with the mutation that caused it.
 */
import type { ExecutionContext } from 'ava';
import * as path from 'node:path';
import { tempDir } from '../helpers/files';
import { fuzz, tallyLine } from './harness';
import { TARGETS } from './targets';

/**
 * Per-case limit: a tiny file takes milliseconds; a case past 10 s is a hang (or a runaway loop), not a slow
 * machine. (A hang that never returns is caught by ava's timeout here, and by the worker watchdog in
 * `npm run fuzz`.)
 */
export const CASE_LIMIT_MS = 10_000;

export function fuzzReader(t: ExecutionContext, name: string, cases: number, seed = 20261204): void {
  const dir = path.join(tempDir(t, 'paligemma-fuzz-'), 'case');
  const tally = fuzz(TARGETS[name](), dir, cases, seed, CASE_LIMIT_MS);
  t.log(tallyLine(name, tally));
  t.deepEqual(tally.failures, [], tallyLine(name, tally));
  t.is(tally.typed + tally.loads, cases);
  // Both outcomes happen: the mutations reach past the first check, and the seed itself loads.
  t.true(tally.typed > 0 && tally.loads > 0, tallyLine(name, tally));
}
