/**
 * The most bytes one tensor may take on the current backend. WebGPU binds one buffer of at most
 * maxStorageBufferBindingSize per tensor (2 GiB on most GPUs; PaliGemma 2's embedding is 2.4 GB); other
 * backends have no such line. Params too big are stored in row shards (checkpoints/params.ts).
 *
 * The runtime (src/runtime/backend.ts) reports the WebGPU adapter's limit here when it registers the
 * backend, so lower floors can ask without importing the runtime. `setMaxTensorBytes(n)` overrides it
 * (tests shard small tables with it); `setMaxTensorBytes()` resets.
 */
import { tf } from './tf';

let webgpuBindingBytes = Infinity;
let override: number | undefined;

export function setWebgpuBindingBytes(bytes: number): void {
  webgpuBindingBytes = bytes;
}

export function maxTensorBytes(): number {
  if (override !== undefined) return override;
  return tf.getBackend() === 'webgpu' ? webgpuBindingBytes : Infinity;
}

export function setMaxTensorBytes(bytes?: number): void {
  override = bytes;
}
