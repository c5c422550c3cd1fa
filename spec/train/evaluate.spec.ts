import test from 'ava';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { setBackend } from '../../src/runtime/backend';
import { loadCausalLM } from '../../src/generate/causal_lm';
import { makeBatch, readJsonl, toTensors } from '../../src/train/data';
import { causalLmLoss } from '../../src/train/loss';
import { evaluate, formatAccuracy } from '../../src/train/evaluate';
import { tempDir } from '../helpers/files';
import { tinyJsonl } from '../helpers/train';

test.serial('evaluate: the mean of the batches\' keras losses, correct / weight over all batches, exact match counted per prefix', async (t) => {
  await setBackend('cpu');
  const dir = tempDir(t);
  const data = readJsonl(tinyJsonl(dir, 5));
  const lm = loadCausalLM('spec/fixtures/train/preprocess_train/preset');
  const before = tf.memory().numTensors;
  const r = await evaluate(lm, data, { batchSize: 2, maxNewTokens: 2 });
  t.is(tf.memory().numTensors, before, 'memory-neutral');
  // by hand: batches [0, 1], [2, 3], [4], each packed to its longest row
  let loss = 0;
  let correct = 0;
  let weight = 0;
  for (const rows of [[0, 1], [2, 3], [4]]) {
    const x = toTensors(makeBatch(data, rows, { tokenizer: lm.tokenizer, imageSize: 16, batchSize: 2, sequenceLength: 'longest' }));
    const rep = causalLmLoss(lm.params, x);
    loss += (await rep.loss.data())[0] / 3;
    correct += (await rep.correct.data())[0];
    weight += (await rep.weight.data())[0];
    tf.dispose([rep.loss, rep.correct, rep.weight, ...d.collectTensors(x)]);
  }
  t.true(Math.abs(r.loss! - loss) < 1e-6, `${r.loss} vs ${loss}`);
  t.is(r.tokenAccuracy, correct / weight);
  t.is(weight, data.examples.reduce((n, e) => n + lm.tokenizer.encode(e.suffix).length + 1, 0), 'weighted targets: each suffix\'s tokens and its eos');
  const matches = r.predictions!.map((p, i) => p.trim() === data.examples[i].suffix.trim());
  t.is(r.exactMatch!.correct, matches.filter(Boolean).length);
  t.is(r.exactMatch!.total, 5);
  t.deepEqual([...r.byPrefix!.keys()], ['answer en what colour?', 'caption en']);
  t.is(r.byPrefix!.get('answer en what colour?')!.total, 3);
  t.is(formatAccuracy('accuracy', { correct: 1946, total: 2000 }), 'accuracy: 0.973 (1946/2000)');
  t.is(formatAccuracy('accuracy', { correct: 0, total: 0 }), 'accuracy: 0.000 (0/0)');
  d.disposeTree(lm.params);
});
