/**
 * Exact-match accuracy of a model on fresh shapes pictures, per task family (caption, count, detect), with
 * greedy generation: every task of every picture (`sceneTasks`: caption, count, one detection per kind
 * present), the answer compared with the expected suffix as a string.
 *
 *   node scripts/train-shapes.mjs --eval --preset checkpoints/shapes --seed 7 --count 2000
 */
import { setBackend } from '../runtime/backend';
import { generateText, loadCausalLM, type CausalLM } from '../generate/causal_lm';
import { greedy } from '../generate/generate';
import type { Quantize } from '../generate/compiled';
import * as d from '../../dsl';
import { parseDetections, type Box } from '../preprocess/outputs';
import { CAPTION_PREFIX, COUNT_PREFIX, makeScene, renderScene, sceneTasks, taskOf, type TaskRecord } from './shapes';
import { SHAPES_SEQUENCE_LENGTH } from './shapes_model';

export interface TaskScore {
  readonly correct: number;
  readonly total: number;
  /** detect only: answers with the right number of boxes, each (in order) of IoU >= 0.5 with the truth. */
  readonly iou50?: number;
}

const area = (b: Box): number => Math.max(0, b.yMax - b.yMin) * Math.max(0, b.xMax - b.xMin);
/** Intersection over union of two boxes (0 when both are empty). */
export function iou(a: Box, b: Box): number {
  const inter = area({ yMin: Math.max(a.yMin, b.yMin), xMin: Math.max(a.xMin, b.xMin), yMax: Math.min(a.yMax, b.yMax), xMax: Math.min(a.xMax, b.xMax) });
  const union = area(a) + area(b) - inter;
  return union > 0 ? inter / union : 0;
}

/** Whether a detection answer finds the expected boxes (same count and labels, each IoU >= 0.5, in order). */
export function detectionMatches(answer: string, expected: string): boolean {
  const got = parseDetections(answer);
  const want = parseDetections(expected);
  return got.length === want.length && got.every((g, i) => g.label === want[i].label && iou(g.box, want[i].box) >= 0.5);
}

export interface ShapesEval {
  /** By task family: 'caption en', 'answer en how many shapes?', 'detect'. */
  readonly tasks: Readonly<Record<string, TaskScore>>;
  /** The first few wrong answers, for reading. */
  readonly mistakes: readonly (TaskRecord & { readonly index: number; readonly answer: string })[];
}

const FAMILY_ORDER = [COUNT_PREFIX, CAPTION_PREFIX, 'detect'];

/** Pictures 0 .. count - 1 of `seed`, `batch` prompts per generate call. */
export async function evaluateShapes(lm: CausalLM, seed: number, count: number, batch = 128, options: { readonly quantize?: Quantize } = {}): Promise<ShapesEval> {
  const rows = Array.from({ length: count }, (_, index) => {
    const scene = makeScene(seed, index, lm.params.config.image_size);
    const image = renderScene(scene);
    return sceneTasks(scene).map((task) => ({ index, image, task }));
  })
    .flat()
    // a batch decodes until its longest answer ends: batch the short answers (counts) together
    .sort((a, b) => FAMILY_ORDER.indexOf(taskOf(a.task.prefix)) - FAMILY_ORDER.indexOf(taskOf(b.task.prefix)) || a.index - b.index);
  const tasks: Record<string, { correct: number; total: number; iou50?: number }> = {};
  const mistakes: (TaskRecord & { index: number; answer: string })[] = [];
  for (let start = 0; start < rows.length; start += batch) {
    const chunk = rows.slice(start, start + batch);
    const out = await generateText(
      lm,
      { images: chunk.map((r) => r.image), prompts: chunk.map((r) => `${r.task.prefix}\n`) },
      { maxLength: SHAPES_SEQUENCE_LENGTH, sampler: greedy(), stripPrompt: true, quantize: options.quantize },
    );
    chunk.forEach((r, i) => {
      const family = taskOf(r.task.prefix);
      const score = (tasks[family] ??= { correct: 0, total: 0 });
      score.total++;
      if (family === 'detect') score.iou50 = (score.iou50 ?? 0) + (detectionMatches(out.texts[i], r.task.suffix) ? 1 : 0);
      if (out.texts[i] === r.task.suffix) score.correct++;
      else if (mistakes.length < 20) mistakes.push({ ...r.task, index: r.index, answer: out.texts[i] });
    });
  }
  return { tasks, mistakes };
}

async function main(argv: readonly string[]): Promise<void> {
  const get = (name: string, fallback: string): string => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : fallback;
  };
  const info = await setBackend(get('backend', 'auto') as 'auto');
  const lm = loadCausalLM(get('preset', 'checkpoints/shapes'));
  const t0 = performance.now();
  const seed = Number(get('seed', '7'));
  const count = Number(get('count', '2000'));
  const quantize = argv.includes('--int8') ? ('int8' as const) : undefined;
  const result = await evaluateShapes(lm, seed, count, Number(get('batch', '128')), { quantize });
  d.disposeTree(lm.params);
  const seconds = (performance.now() - t0) / 1000;
  console.log(JSON.stringify({ preset: get('preset', 'checkpoints/shapes'), seed, count, backend: info.name, ...(quantize ? { quantize } : {}), seconds: Math.round(seconds), ...result }, null, 1));
}

if (require.main === module) {
  main(process.argv.slice(2)).catch((e) => {
    console.error((e as Error).stack ?? e);
    process.exit(1);
  });
}
