/**
 * `npm run fuzz -- --cases N [--formats h5,png] [--seed S] [--limit-ms L]`: the mutation fuzzer of
 * spec/fuzz/harness.ts at scale, one line per format:
 *   `<format>: N cases, T typed errors, L loads, 0 crashes, 0 hangs, 0 blow-ups, 0 silent-wrong`
 * Each format runs in a worker thread with a heap limit; a case that does not finish within the limit (a real
 * hang never returns) gets the worker terminated, is counted as a hang, and the run goes on from the next case.
 * A worker that runs out of memory counts a blow-up the same way. Exit status 1 when anything but typed errors
 * and loads happened; the first failures are printed with their mutations.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import fc from 'fast-check';
import { count, emptyTally, mutationArb, numberCount, prepare, runCase, tallyLine, type CaseResult, type Mutation, type Tally } from './harness';
import { TARGETS } from './targets';
import { makeTempDir } from '../helpers/tmp';

interface Job {
  readonly format: string;
  readonly start: number;
  readonly cases: number;
  readonly seed: number;
  readonly limitMs: number;
  readonly dir: string;
}

type FromWorker =
  | { readonly type: 'start'; readonly index: number }
  | { readonly type: 'result'; readonly index: number; readonly result: CaseResult; readonly mutation: Mutation }
  | { readonly type: 'done' };

function work(job: Job): void {
  const target = TARGETS[job.format]();
  prepare(target, job.dir);
  const mutations = fc.sample(mutationArb(target.seed.length, numberCount(target.seed)), { seed: job.seed, numRuns: job.cases });
  for (let i = job.start; i < job.cases; i++) {
    parentPort!.postMessage({ type: 'start', index: i } satisfies FromWorker);
    const result = runCase(target, job.dir, mutations[i], job.limitMs);
    parentPort!.postMessage({ type: 'result', index: i, result, mutation: mutations[i] } satisfies FromWorker);
  }
  parentPort!.postMessage({ type: 'done' } satisfies FromWorker);
}

/** One format: a worker from case `start` on, replaced past any case that hangs, crashes it or exhausts its memory. */
async function runFormat(format: string, cases: number, seed: number, limitMs: number, root: string): Promise<Tally> {
  const tally = emptyTally();
  let start = 0;
  while (start < cases) {
    const dir = path.join(root, `${format}-${start}`);
    const job: Job = { format, start, cases, seed, limitMs, dir };
    start = await new Promise<number>((resolve) => {
      const worker = new Worker(__filename, { workerData: job, resourceLimits: { maxOldGenerationSizeMb: 1024 } });
      let current = start;
      let timer: NodeJS.Timeout | undefined;
      const stop = (outcome: CaseResult['outcome'], detail: string) => {
        clearTimeout(timer);
        void worker.terminate();
        count(tally, { outcome, detail: `case ${current} (seed ${seed}): ${detail}`, ms: 0 }, { kind: 'truncate', length: -1 });
        resolve(current + 1);
      };
      worker.on('message', (m: FromWorker) => {
        clearTimeout(timer);
        if (m.type === 'start') {
          current = m.index;
          // a case that never returns: the worker is stopped after 3 limits (the harness counts slow ones itself)
          timer = setTimeout(() => stop('hang', `no result after ${3 * limitMs} ms`), 3 * limitMs);
        } else if (m.type === 'result') count(tally, m.result, m.mutation);
        else resolve(cases);
      });
      worker.on('error', (e: Error & { code?: string }) => stop(e.code === 'ERR_WORKER_OUT_OF_MEMORY' ? 'blow-up' : 'crash', e.message));
    });
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return tally;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string, fallback: string): string => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 && args[i + 1] !== undefined ? args[i + 1] : fallback;
  };
  const cases = Number(opt('cases', '1000'));
  const seed = Number(opt('seed', '1'));
  const limitMs = Number(opt('limit-ms', '2000'));
  const formats = opt('formats', Object.keys(TARGETS).join(',')).split(',');
  const { dir: root, remove } = makeTempDir('paligemma-fuzz-');
  let bad = false;
  try {
    for (const format of formats) {
      if (!(format in TARGETS)) throw new Error(`unknown format ${format}; known: ${Object.keys(TARGETS).join(', ')}`);
      const t = await runFormat(format, cases, seed, limitMs, root);
      console.log(tallyLine(format, t));
      if (t.failures.length > 0) {
        bad = true;
        for (const f of t.failures) console.log(`  ${f}`);
      }
    }
  } finally {
    remove();
  }
  process.exitCode = bad ? 1 : 0;
}

if (isMainThread) void main();
else work(workerData as Job);
