/** paligemma-ts/testing: the kit users import next to the package. */
import test from 'ava';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { tf } from '../../dsl/tf';
import { defaultPresetDir, memoryNeutral } from '../../src/testing';

test('memoryNeutral returns the result and the counts, and names a leak with both counts', async (t) => {
  const before = tf.memory().numTensors;
  const ok = await memoryNeutral(() => tf.tidy(() => tf.add(tf.scalar(1), tf.scalar(2)).dataSync()[0]));
  t.deepEqual(ok, { result: 3, tensorsBefore: before, tensorsAfter: before });
  let leaked: tf.Tensor | undefined;
  await t.throwsAsync(
    memoryNeutral(async () => {
      leaked = tf.scalar(1);
    }, 'the leaky thing'),
    { message: `the leaky thing is not memory-neutral: ${before} tensors before, ${before + 1} after` },
  );
  leaked!.dispose();
});

test('defaultPresetDir is the shipped tiny preset', (t) => {
  t.is(defaultPresetDir(), join(__dirname, '..', '..', '..', 'checkpoints', 'tiny'));
  t.true(existsSync(join(defaultPresetDir(), 'model.weights.h5')));
});
