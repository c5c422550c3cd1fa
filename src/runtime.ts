/**
 * Runtime: choosing and describing the TensorFlow.js backend (cpu, wasm, webgpu, auto).
 *
 * (First cut: cpu and wasm. webgpu, auto, threads and the heap guard follow.)
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { tf } from './tf';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';

export type BackendName = 'cpu' | 'wasm' | 'webgpu';
export type BackendRequest = BackendName | 'auto';

export interface BackendInfo {
  readonly name: BackendName;
  readonly reason: string;
  readonly tfjsVersion: string;
}

const isNode = typeof process !== 'undefined' && process.versions?.node != null;

let wasmPathsSet = false;
/** Points tfjs-backend-wasm at the .wasm files of the installed package (they are not bundled). */
function locateWasmBinaries(): void {
  if (wasmPathsSet || !isNode) return;
  const req = createRequire(join(process.cwd(), 'noop.js'));
  const pkg = req.resolve('@tensorflow/tfjs-backend-wasm/package.json', { paths: [__dirname, process.cwd()] });
  setWasmPaths(join(dirname(pkg), 'dist') + '/');
  wasmPathsSet = true;
}

export async function setBackend(name: BackendRequest): Promise<BackendInfo> {
  const chosen: BackendName = name === 'auto' ? 'wasm' : name;
  if (chosen === 'wasm') locateWasmBinaries();
  const ok = await tf.setBackend(chosen);
  if (!ok || tf.getBackend() !== chosen) throw new Error(`setBackend: could not initialise the '${chosen}' backend`);
  await tf.ready();
  return { name: chosen, reason: name === 'auto' ? 'auto: wasm (first cut)' : 'requested', tfjsVersion: tf.version_core };
}
