/**
 * Register an ava test once per backend: `backendTest(title, impl, { webgpu: true, onnx: true })` registers
 * `${title} [cpu]`, `${title} [wasm]` and, when asked for, `${title} [webgpu]` (when available) and
 * `${title} [onnx]` (models compiled; its tensors are cpu tensors).
 *
 * Serial, because the backend is process-wide state in tfjs. Read tensors with `await t.data()`: the
 * webgpu backend in Node has no `dataSync`. `PALIGEMMA_TEST_BACKENDS=cpu,wasm` limits the backends.
 */
import test, { type ExecutionContext } from 'ava';
import { setBackend, vulkanIcdPresent, type BackendName, type BackendInfo } from '../../src/runtime/backend';

/** ava's `test`, re-exported so a spec needs one import. */
export { test };

/**
 * True when a WebGPU adapter is likely here: a Vulkan ICD (e.g. SwiftShader's) is named in VK_ICD_FILENAMES
 * and present, or PALIGEMMA_WEBGPU=1 says so (a machine with a hardware GPU); PALIGEMMA_WEBGPU=0 turns it off.
 */
export function webgpuAvailable(): boolean {
  if (process.env.PALIGEMMA_WEBGPU === '1') return true;
  if (process.env.PALIGEMMA_WEBGPU === '0') return false;
  return vulkanIcdPresent();
}

/** The backends tests run on: cpu and wasm, webgpu and onnx when requested (webgpu: and available); env can restrict. */
export function testBackends(opts: { webgpu?: boolean; onnx?: boolean } = {}): BackendName[] {
  const all: BackendName[] = ['cpu', 'wasm', ...(opts.webgpu && webgpuAvailable() ? ['webgpu' as const] : []), ...(opts.onnx ? ['onnx' as const] : [])];
  const only = process.env.PALIGEMMA_TEST_BACKENDS;
  if (!only) return all;
  const wanted = only.split(',').map((s) => s.trim());
  return all.filter((b) => wanted.includes(b));
}

export type BackendImpl = (t: ExecutionContext, backend: BackendInfo) => Promise<void> | void;

export function backendTest(title: string, impl: BackendImpl, opts: { webgpu?: boolean; onnx?: boolean } = {}): void {
  for (const name of testBackends(opts)) {
    test.serial(`${title} [${name}]`, async (t) => {
      const info = await setBackend(name);
      await impl(t, info);
    });
  }
}
