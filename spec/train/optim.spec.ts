import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { adam, adamw, clipByGlobalNorm, clipByGlobalNormAsync, disposeState, kerasVariableName, sgd } from '../../src/train/optim';
import { constant, warmupCosine, warmupLinear } from '../../src/train/schedule';
import { globToRegExp, selectTrainable, summarize, trainableOf, valueAndGradTrainable } from '../../src/train/select';
import { backendTest, test } from '../helpers/backends';
import { assertClose } from '../helpers/numeric';

const vec = (xs: number[]) => d.named(tf.tensor1d(xs), ['i'] as const);

backendTest('SGD on f(w) = sum((w - c)^2) / 2: w_t - c = (1 - lr)^t (w_0 - c); momentum and nesterov as keras', async (t) => {
  const c = [1, -2, 3];
  for (const [o, factor] of [[{}, (s: number) => 0.7 ** s], [{ momentum: 0.5 }, null], [{ momentum: 0.5, nesterov: true }, null]] as const) {
    const opt = sgd(o);
    let params: d.Tree = { w: vec([0, 0, 0]) };
    let state = opt.init(params);
    const before = tf.memory().numTensors;
    const ws: number[][] = [];
    for (let s = 1; s <= 3; s++) {
      const g = { w: d.named(tf.tidy(() => tf.sub((params as { w: d.Named }).w.tensor, tf.tensor1d(c))), ['i'] as const) };
      const next = opt.update(params, g, state, 0.3);
      d.disposeTree(g);
      d.disposeTree(params);
      disposeState(state);
      params = next.params;
      state = next.state;
      ws.push(Array.from(await (params as { w: d.Named }).w.tensor.data()));
    }
    t.is(tf.memory().numTensors, before, 'memory-neutral');
    if (factor) ws.forEach((w, i) => assertClose(t, w, c.map((x) => x - factor(i + 1) * x), 1e-6, 0, `step ${i + 1}`));
    else {
      // host replay of keras' rule: m = mu m - lr g; w += m (nesterov: w += mu m - lr g)
      let w = [0, 0, 0];
      let m = [0, 0, 0];
      for (let s = 0; s < 3; s++) {
        const g = w.map((x, i) => x - c[i]);
        m = m.map((x, i) => 0.5 * x - 0.3 * g[i]);
        w = w.map((x, i) => x + ('nesterov' in o ? 0.5 * m[i] - 0.3 * g[i] : m[i]));
        assertClose(t, ws[s], w, 1e-6, 0, `momentum step ${s + 1}`);
      }
    }
    t.is(state.step, 3);
    d.disposeTree(params);
    disposeState(state);
  }
});

backendTest("Adam: keras' first step is lr * g / (|g| + eps / sqrt(1 - b2)), and g = 0 leaves w exactly", async (t) => {
  const opt = adam();
  const p = { w: vec([1, 2, 3]) };
  const s0 = opt.init(p);
  const g = { w: vec([0.5, 0, -1e-6]) };
  const { params, state } = opt.update(p, g, s0, 0.01);
  const w = await (params as typeof p).w.tensor.data();
  const eps = 1e-7 / Math.sqrt(1 - 0.999);
  assertClose(t, w, [1 - (0.01 * 0.5) / (0.5 + eps), 2, 3 + (0.01 * 1e-6) / (1e-6 + eps)], 1e-7, 0, 'w');
  t.is(w[1], 2, 'zero gradient: no move');
  for (const x of [p, g, params]) d.disposeTree(x);
  disposeState(s0);
  disposeState(state);
});

backendTest('AdamW: decay w *= 1 - wd * lr except variables whose keras name matches exclude_from_weight_decay', async (t) => {
  const opt = adamw({ weightDecay: 0.1, excludeFromWeightDecay: ['bias', 'scale'] });
  const p = { 'vit/blocks/0/query_proj/bias': vec([1]), 'vit/blocks/0/query_proj/kernel': vec([1]), 'layers/0/attention/query': vec([1]), 'final_norm/scale': vec([1]) };
  const zero = d.mapTree(p, (x) => d.named(tf.zerosLike(x.tensor), x.axes));
  const s0 = opt.init(p);
  const { params, state } = opt.update(p, zero, s0, 0.5);
  const got = await Promise.all(Object.values(params as typeof p).map(async (x) => (await x.tensor.data())[0]));
  assertClose(t, got, [1, 0.95, 0.95, 1], 1e-7, 0, 'decayed kernels only');
  t.is(kerasVariableName('layers/3/attention/query'), 'kernel');
  t.is(kerasVariableName('token_embedding/0'), 'embeddings');
  for (const x of [p, zero, params]) d.disposeTree(x);
  disposeState(s0);
  disposeState(state);
});

backendTest('clipByGlobalNorm scales every gradient by maxNorm / ||g|| when above', async (t, backend) => {
  const g = { a: vec([3, 0]), b: vec([4]) };
  const before = tf.memory().numTensors;
  const { grads, norm } = await clipByGlobalNormAsync(g, 1);
  t.is(tf.memory().numTensors - before, 2, 'two new gradients, nothing else');
  t.is(norm, 5);
  assertClose(t, [...(await grads.a.tensor.data()), ...(await grads.b.tensor.data())], [0.6, 0, 0.8], 1e-7, 0, 'clipped');
  d.disposeTree(grads);
  const same = (await (async () => (backend.name === 'webgpu' ? clipByGlobalNormAsync(g, 10) : clipByGlobalNorm(g, 10)))());
  assertClose(t, await same.grads.b.tensor.data(), [4], 0, 0, 'unchanged below');
  d.disposeTree(same.grads);
  d.disposeTree(g);
}, { webgpu: true });

test('schedules: constant, linear and cosine warmup with their end points', (t) => {
  t.is(constant(0.1)(1000), 0.1);
  const lin = warmupLinear({ peak: 1, warmupSteps: 4, totalSteps: 14, final: 0.1 });
  t.deepEqual([0, 1, 3].map(lin), [0.25, 0.5, 1]);
  t.is(lin(4), 1);
  t.true(Math.abs(lin(9) - 0.5) < 1e-12, 'progress 5/9 of the way from 1 to 0.1');
  t.is(lin(13), 0.1);
  t.is(lin(100), 0.1);
  const cos = warmupCosine({ peak: 2, warmupSteps: 0, totalSteps: 11 });
  t.is(cos(0), 2);
  t.true(Math.abs(cos(5) - 1) < 1e-12);
  t.true(Math.abs(cos(10)) < 1e-12);
  t.throws(() => warmupCosine({ peak: 1, warmupSteps: 5, totalSteps: 3 }), { message: 'warmupCosine: warmupSteps (5) exceeds totalSteps (3)' });
});

backendTest('selection by globs; gradients only for trainable leaves (frozen ones are constants)', async (t) => {
  t.true(globToRegExp('**/lora_kernel_*').test('layers/0/attention/query_lora/lora_kernel_a'));
  t.false(globToRegExp('vit/*').test('vit/blocks/0'));
  t.true(globToRegExp('vit/**').test('vit/blocks/0/query_proj/kernel'));
  const p = { vit: { a: vec([1, 2]) }, layers: [{ w: vec([3]) }, { w: vec([4]) }] };
  t.deepEqual(selectTrainable(p, { freeze: ['vit/**'] }), ['layers/0/w', 'layers/1/w']);
  t.deepEqual(selectTrainable(p, { train: (x) => x.endsWith('/w'), freeze: ['layers/1/*'] }), ['layers/0/w']);
  t.throws(() => selectTrainable(p, { train: ['layer/**'] }), { message: "selectTrainable: train glob 'layer/**' matches no params path (paths look like vit/a, layers/0/w, layers/1/w, ...)" });
  t.is(summarize(p, ['layers/0/w']).trainable.parameters, 1);
  t.is(summarize(p, ['layers/0/w']).frozen.parameters, 3);
  const trainable = trainableOf(p, ['layers/1/w']);
  const before = tf.memory().numTensors;
  const loss = (q: typeof p) => tf.tidy(() => tf.sum(tf.mul(tf.mul(q.vit.a.tensor, q.layers[1].w.tensor), q.layers[0].w.tensor)) as tf.Scalar);
  const { value, grads } = valueAndGradTrainable(loss, p, trainable);
  t.is(tf.memory().numTensors - before, 2, 'the value and one gradient');
  t.deepEqual(Object.keys(grads), ['layers/1/w']);
  assertClose(t, await grads['layers/1/w'].tensor.data(), [9], 0, 0, 'd/dw1 sum(a * w1 * w0) = sum(a) * w0');
  assertClose(t, await value.data(), [36], 0, 0, 'value');
  value.dispose();
  d.disposeTree(grads);
  d.disposeTree(p);
});

backendTest('optimizer state restores bit for bit: 2 steps = 1 step, state copied through the host, 1 step', async (t) => {
  for (const opt of [adam(), adamw({ weightDecay: 0.1 }), sgd({ momentum: 0.9 })]) {
    const p0 = { a: vec([0.3, -1.2, 2]), b: vec([0.5]) };
    const grad = (p: typeof p0) => d.mapTree(p, (x) => d.named(tf.tidy(() => tf.sin(tf.mul(x.tensor, 3))), x.axes));
    const step = (p: typeof p0, s: ReturnType<typeof opt.init>) => {
      const g = grad(p);
      const out = opt.update(p, g, s, 0.05);
      d.disposeTree(g);
      return out as { params: typeof p0; state: typeof s };
    };
    const s0 = opt.init(p0);
    const one = step(p0, s0);
    const two = step(one.params, one.state);
    // copy through plain arrays, as a checkpoint would
    const copy = async <T>(tree: T): Promise<T> => {
      const leaves = await Promise.all(d.leaves(tree).map(async ([k, x]) => [k, Float32Array.from((await x.tensor.data()) as Float32Array), x] as const));
      const byPath = new Map(leaves.map(([k, v, x]) => [k, d.named(tf.tensor(v, [...x.shape]), x.axes)]));
      return d.mapTree(tree, (_, k) => byPath.get(k)!);
    };
    const restored = { step: one.state.step, slots: Object.fromEntries(await Promise.all(Object.entries(one.state.slots).map(async ([k, v]) => [k, await copy(v)] as const))) };
    const p1 = await copy(one.params);
    const again = step(p1, restored);
    for (const k of ['a', 'b'] as const) t.deepEqual(Array.from(await again.params[k].tensor.data()), Array.from(await two.params[k].tensor.data()), `${opt.name} ${k}`);
    for (const x of [p0, one.params, two.params, p1, again.params]) d.disposeTree(x);
    for (const s of [s0, one.state, two.state, restored, again.state]) disposeState(s);
  }
});
