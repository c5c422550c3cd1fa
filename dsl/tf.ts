/**
 * The one TensorFlow.js the whole package uses.
 *
 * Why this file exists: tfjs-core 4.22 ships two builds and neither loads well in Node on its own. Its ESM
 * build has the gradients (`dist/register_all_gradients.js`, which not even its own index imports) but uses extensionless relative imports that Node's ESM
 * loader rejects; its CommonJS build (`dist/tf-core.node.js`) loads but registers no gradients
 * (`register_all_gradients` exists only as ESM). We therefore bundle the ESM build with esbuild
 * (`mainFields: module,main`, see scripts/build.mjs) into one CommonJS file, keeping the side-effect
 * imports (kernel and gradient registration). Everything in the package imports tf from here, and the
 * package re-exports it, so a user (or a tslab notebook) never holds two copies of tfjs.
 */
import * as tf from '@tensorflow/tfjs-core';
// Gradients live in a side-effect module that only the ESM build has; tfjs-core's index does not import it.
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import '@tensorflow/tfjs-backend-cpu';
import '@tensorflow/tfjs-backend-wasm';
import '@tensorflow/tfjs-backend-webgpu';

export { tf };
export type { Tensor, Rank } from '@tensorflow/tfjs-core';

// tfjs would otherwise start on its highest-priority backend (wasm), which needs an async initialisation
// before the first op: start on cpu, which initialises synchronously, so plain synchronous use works;
// `setBackend('auto' | ...)` (src/runtime/backend.ts) moves to a faster one.
void tf.setBackend('cpu');
// tfjs-backend-cpu prints a banner suggesting tfjs-node on its first tensor in Node (backend_cpu.ts
// `firstUse`); a library must not print on its users' stderr. The cpu factory is synchronous, so the
// instance exists by now.
const cpuBackend = tf.findBackend('cpu') as unknown as { firstUse?: boolean } | null;
if (cpuBackend != null) cpuBackend.firstUse = false;

/**
 * Whether tensors of the current backend can be read synchronously (`dataSync`): cpu and wasm. webgpu in Node
 * cannot, and a traced graph (d.jit) has no values yet; callers take their tensor-only path there.
 */
export const readsSync = (): boolean => tf.getBackend() === 'cpu' || tf.getBackend() === 'wasm';

/** Whether this is Node (not a browser): Node-only facts (the machine's memory, cores) are asked only there. */
export const inNode = typeof process !== 'undefined' && process.versions?.node != null;
