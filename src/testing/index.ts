/**
 * `paligemma-ts/testing`: helpers for users' own tests (and ours). It shares the package's one TensorFlow.js
 * (dist/testing.js is a view of dist/index.js, see scripts/build.mjs), so tensor counts are the package's.
 *
 * Minimal on this branch: the shipped preset and a memory-neutrality check. Another branch (cli) grows it.
 */
import { tf } from '../../dsl/tf';
export { shippedPresetDir as defaultPresetDir } from '../runtime/shipped';

/** What `memoryNeutral` measured. */
export interface MemoryReport<T> {
  readonly result: T;
  readonly tensorsBefore: number;
  readonly tensorsAfter: number;
}

/**
 * Runs `f` and throws when it leaves tensors behind or frees tensors it did not make
 * (`tf.memory().numTensors` before != after), naming `what` and both counts.
 */
export async function memoryNeutral<T>(f: () => T | Promise<T>, what = 'the function'): Promise<MemoryReport<T>> {
  const tensorsBefore = tf.memory().numTensors;
  const result = await f();
  const tensorsAfter = tf.memory().numTensors;
  if (tensorsAfter !== tensorsBefore) {
    throw new Error(`${what} is not memory-neutral: ${tensorsBefore} tensors before, ${tensorsAfter} after`);
  }
  return { result, tensorsBefore, tensorsAfter };
}
