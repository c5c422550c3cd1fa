/**
 * fit on every backend: the same run (3 steps of 2 accumulated micro-batches, evaluation of the loss, a
 * checkpoint) gives the cpu run's losses and
 * weights on wasm, webgpu and onnx (forward tolerance: losses 1e-4; weights after Adam at lr 1e-3: 1e-4). On
 * onnx the loss and gradients run compiled (one session per batch shape), the optimizer eagerly.
 */
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { loadCausalLM } from '../../src/generate/causal_lm';
import { readJsonl } from '../../src/train/data';
import { fit } from '../../src/train/fit';
import { trainableOf } from '../../src/train/select';
import { compiledTraining } from '../../src/train/compiled';
import { backendTest } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';
import { tempDir } from '../helpers/files';
import { tinyJsonl } from '../helpers/train';

const preset = 'spec/fixtures/train/preprocess_train/preset';
let reference: { losses: number[]; weights: Float32Array } | undefined;

backendTest(
  'fit: 3 steps with evaluation and a checkpoint give the same losses and weights on every backend',
  async (t, info) => {
    const dir = tempDir(t);
    const data = readJsonl(tinyJsonl(dir, 4));
    const held = readJsonl(tinyJsonl(dir, 2, 'eval'));
    const lm = loadCausalLM(preset);
    const before = tf.memory().numTensors;
    const traced = { grads: compiledTraining.lossAndGrads.traces, loss: compiledTraining.loss.traces };
    const r = await fit(lm.params, data, {
      tokenizer: lm.tokenizer,
      steps: 3,
      batchSize: 2,
      schedule: 1e-3,
      accumulate: 2,
      eval: { data: held, every: 3, exactMatch: false },
      checkpoint: { dir: path.join(dir, 'ck'), every: 3 },
    });
    const losses = r.history.steps.map((s) => s.loss);
    const parts = await Promise.all(d.leaves(r.params).map(async ([, x]) => Float32Array.from((await x.tensor.data()) as Float32Array)));
    const weights = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
    parts.reduce((o, p) => (weights.set(p, o), o + p.length), 0);
    if (info.name === 'cpu') reference = { losses, weights };
    else if (reference) {
      assertClose(t, losses, reference.losses, 1e-4, 0, 'losses');
      assertClose(t, weights, reference.weights, 1e-4, 0, 'weights');
    }
    t.is(r.history.evals.length, 1);
    // onnx: the steps and the evaluation loss ran compiled, one trace per batch shape: the micro-batches
    // ('longest' in each) come in two lengths, the evaluation batch in one
    const onnx = info.name === 'onnx';
    t.deepEqual({ grads: compiledTraining.lossAndGrads.traces - traced.grads, loss: compiledTraining.loss.traces - traced.loss }, { grads: onnx ? 2 : 0, loss: onnx ? 1 : 0 });
    d.disposeTree(trainableOf(r.params, r.trainable));
    t.is(tf.memory().numTensors, before);
    d.disposeTree(lm.params);
  },
  { webgpu: true, onnx: true },
);
