/**
 * The training row of `npm run bench` (src/cli/bench.ts): steps/s of a LoRA and a full fine-tuning step
 * (keras_hub's loss, Adam) with the peak tensor memory of a step, and the chunked loss's memory bound.
 */
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { imageSequenceLength, type PaliGemmaConfig } from '../../models/config';
import { initParams } from '../../checkpoints/init';
import { setBackend, type BackendRequest } from '../runtime/backend';
import { adam, disposeState } from '../train/optim';
import { trainStep } from '../train/step';
import { trainStepCompiled } from '../train/compiled';
import { defaultLossChunk } from '../train/loss';
import { selectTrainable, trainableOf, type Trainable } from '../train/select';
import { enableLora, loraTrainable } from '../train/lora';
import type { TrainBatch } from '../train/api';

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function trainBatch(c: PaliGemmaConfig, batch: number, text: number): TrainBatch {
  const inputs = d.scoped(() => {
    const S = c.image_size;
    const seq = ['batch', 'seq'] as const;
    // the second half of each row is the response: targets weighted there, as a captioning batch
    const w = tf.concat([tf.zeros([batch, text / 2]), tf.ones([batch, text / 2])], 1);
    return {
      images: d.named(tf.randomUniform([batch, S, S, 3], -1, 1, 'float32', 1), ['batch', 'height', 'width', 'channels'] as const),
      token_ids: d.named(tf.randomUniform([batch, text], 3, c.vocabulary_size, 'int32', 2), seq),
      padding_mask: d.named(tf.ones([batch, text], 'int32'), seq),
      response_mask: d.named(tf.cast(w, 'int32'), seq),
      y: d.named(tf.randomUniform([batch, text], 3, c.vocabulary_size, 'int32', 3), seq),
      sample_weight: d.named(w, seq),
    };
  });
  return inputs;
}

/**
 * Training steps/s (loss + gradients + Adam) of LoRA (rank 4, keras_hub's targets) and full fine-tuning on
 * the bench config, batch `batch` x `text` tokens, median over `runs` steps after one warm-up; peak tensor
 * memory of a step (tf.profile) and the live bytes around it (params, optimizer slots).
 */
export async function benchTraining(c: PaliGemmaConfig, backends: string[], runs: number, batch: number, text: number): Promise<void> {
  const chunk = defaultLossChunk(c.vocabulary_size);
  console.log(
    `training: batch ${batch} x (${imageSequenceLength(c)} image + ${text} text tokens, ${(batch * text) / 2} weighted), Adam; ` +
      `chunked loss: at most ${chunk} positions x ${c.vocabulary_size} vocab per logits-sized tensor (2^24 floats = 64 MiB, ~5 live = ~320 MiB), whatever B x L`,
  );
  for (const spec of backends) {
    const [b, threads] = spec.split(':');
    const info = await setBackend(b as BackendRequest, threads ? { threads: Number(threads) } : {});
    const base = initParams(c, d.key(0));
    const x = trainBatch(c, batch, text);
    for (const mode of ['lora', 'full'] as const) {
      if (info.name === 'wasm' && mode === 'full' && !process.env.BENCH_WASM_FULL) {
        // measured: tfjs keeps every forward intermediate until the backward ends, so a full step's peak
        // (params + grads + Adam slots + the tape) passes the 4 GiB wasm32 heap and the module aborts
        console.log(`${info.name.padEnd(9)} full skipped: a full step of this config does not fit the 4 GiB wasm heap (aborts; LoRA's peak is already ~2.6 GiB); BENCH_WASM_FULL=1 tries`);
        continue;
      }
      const params = mode === 'lora' ? enableLora(base, { rank: 4, key: d.key(1) }) : base;
      const paths = mode === 'lora' ? loraTrainable(params) : selectTrainable(params);
      let trainable: Trainable = trainableOf(params, paths);
      let owned = false;
      const optimizer = adam();
      let state = optimizer.init(trainable);
      const times: number[] = [];
      let peak = 0;
      let live = 0;
      for (let i = 0; i <= runs; i++) {
        const t0 = performance.now();
        let next: ReturnType<typeof trainStep> | undefined;
        const run = async () => {
          // onnx: loss, gradients and the Adam update compiled into one session run (src/train/compiled.ts)
          next = (info.name === 'onnx' ? trainStepCompiled : trainStep)(params, trainable, state, x, { optimizer, learningRate: 1e-4, tableGrad: mode === 'full' });
          await next.report.loss.data();
        };
        // tf.profile clones every kernel's output, which a trace cannot do: onnx reports peak RSS instead
        let prof = { peakBytes: 0 };
        if (info.name === 'onnx') await run();
        else prof = await tf.profile(run);
        const ms = performance.now() - t0;
        tf.dispose([next!.report.loss, next!.report.correct, next!.report.weight]);
        if (owned) d.disposeTree(trainable);
        disposeState(state);
        trainable = next!.trainable;
        state = next!.state;
        owned = true;
        peak = Math.max(peak, prof.peakBytes);
        live = tf.memory().numBytes;
        if (i > 0) times.push(ms);
      }
      const ms = median(times);
      const trained = paths.reduce((n, p) => n + trainableOf(params, [p])[p].tensor.size, 0);
      console.log(
        `${(info.name + (info.threads ? ` x${info.threads}` : '')).padEnd(9)} ${mode.padEnd(4)} ${(1000 / ms).toFixed(2)} steps/s (median ${ms.toFixed(0)} ms over ${runs}), ` +
          `${((batch * text) / (ms / 1000)).toFixed(0)} text tokens/s, ${(trained / 1e6).toFixed(2)}M trained, ` +
          (info.name === 'onnx'
            ? // onnxruntime's buffers are not tfjs tensors: the process's peak RSS (so far in this bench) says more
              `peak RSS ${(process.resourceUsage().maxRSS / 2 ** 20).toFixed(2)} GiB, live tensors after ${(live / 2 ** 20).toFixed(0)} MiB`
            : `peak in step ${(peak / 2 ** 20).toFixed(0)} MiB, live after ${(live / 2 ** 20).toFixed(0)} MiB`),
      );
      if (owned) d.disposeTree(trainable);
      disposeState(state);
      if (params !== base) {
        const keep = new Set(d.leaves(base).map(([, t]) => t));
        for (const [, t] of d.leaves(params)) if (!keep.has(t)) t.dispose();
      }
    }
    tf.dispose(d.collectTensors(x));
    d.disposeTree(base);
  }
}
