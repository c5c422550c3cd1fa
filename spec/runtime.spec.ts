import { backendTest } from './helpers/backends';
import { tf } from '../src/tf';

backendTest('matMul runs', async (t, info) => {
  const a = tf.tensor2d([1, 2, 3, 4], [2, 2]);
  const y = tf.matMul(a, a);
  t.deepEqual(Array.from(await y.data()), [7, 10, 15, 22]);
  t.is(tf.getBackend(), info.name);
  tf.dispose([a, y]);
});
