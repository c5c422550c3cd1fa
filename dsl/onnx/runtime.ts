/**
 * onnxruntime-node, loaded lazily (the package is an optional dependency) and called synchronously.
 *
 * Why the binding: onnxruntime-node's public `InferenceSession` wraps a synchronous native session in
 * promises (`setImmediate`); a compiled call here replaces a synchronous model function, so we call the
 * native session the package itself wraps (`dist/binding`: loadModel, run) with the same options.
 */
import * as os from 'node:os';
import * as fs from 'node:fs';
import * as path from 'node:path';

export type OrtType = 'float32' | 'int32' | 'bool' | 'int64';

interface OrtTensor {
  readonly type: string;
  readonly dims: readonly number[];
  readonly data: Float32Array | Int32Array | Uint8Array | BigInt64Array;
  dispose?(): void;
}

interface OrtModule {
  Tensor: new (type: string, data: ArrayBufferView, dims: readonly number[]) => OrtTensor;
}

interface NativeSession {
  loadModel(buffer: ArrayBuffer, byteOffset: number, byteLength: number, options: object): void;
  run(feeds: Record<string, OrtTensor>, fetches: Record<string, null>, options: object): Record<string, OrtTensor | { type: string; dims: number[]; data: OrtTensor['data'] }>;
  dispose(): void;
}

interface Binding {
  binding: { InferenceSession: new () => NativeSession };
  initOrt(): void;
}

let loaded: { ort: OrtModule; native: Binding } | undefined;
let loadError: Error | undefined;

/** The onnxruntime-node module, or an error saying how to install it. */
export function onnxRuntime(): { ort: OrtModule; native: Binding } {
  if (loaded) return loaded;
  if (loadError) throw loadError;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const ort = require('onnxruntime-node') as OrtModule;
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const native = require('onnxruntime-node/dist/binding') as Binding;
    loaded = { ort, native };
    return loaded;
  } catch (e) {
    loadError = new Error(`jit: onnxruntime-node is not installed or does not load (${(e as Error).message.split('\n')[0]}); npm install onnxruntime-node`);
    throw loadError;
  }
}

/** True when onnxruntime-node loads here. */
export function onnxAvailable(): boolean {
  try {
    onnxRuntime();
    return true;
  } catch {
    return false;
  }
}

let defaultThreads: number | undefined;

/** Intra-op threads of sessions created from now on (default: one per core). */
export function setOnnxThreads(threads?: number): void {
  if (threads !== undefined && !(Number.isInteger(threads) && threads >= 1)) throw new Error(`onnx: threads must be a positive integer, got ${threads}`);
  defaultThreads = threads;
}

export const onnxThreads = (): number => defaultThreads ?? os.availableParallelism?.() ?? os.cpus().length;

export interface Session {
  run(feeds: Record<string, { type: OrtType; data: ArrayBufferView; dims: readonly number[] }>, outputs: readonly string[]): Map<string, { type: string; dims: number[]; data: OrtTensor['data'] }>;
  release(): void;
}

let telemetryLogRemoved = false;
/**
 * onnxruntime's bundled telemetry library (1DS, "MATSDK") creates an empty `mat-debug-<pid>.log` in /tmp when
 * the runtime initialises and never removes it: one file per process. It stays open inside the runtime; we
 * unlink its name (only when empty), so no process of ours leaves one behind.
 */
function removeTelemetryLog(): void {
  if (telemetryLogRemoved) return;
  telemetryLogRemoved = true;
  for (const dir of new Set(['/tmp', os.tmpdir()])) {
    const file = path.join(dir, `mat-debug-${process.pid}.log`);
    try {
      if (fs.statSync(file).size === 0) fs.unlinkSync(file);
    } catch {
      // not there (another platform, another build of onnxruntime)
    }
  }
}

/** A session over a serialized model: every graph optimisation, `threads` intra-op threads, CPU. */
/**
 * `memArena: false` turns off onnxruntime's CPU arena for this session: the arena keeps every block it
 * allocated (outputs included) for reuse, so a session that returns one large output (a transposed
 * embedding) would otherwise hold a second copy of it for its lifetime.
 */
export function createSession(
  model: Uint8Array,
  threads = onnxThreads(),
  options: { memArena?: boolean; externalData?: readonly { readonly path: string; readonly data: Uint8Array }[] } = {},
): Session {
  const { ort, native } = onnxRuntime();
  native.initOrt();
  removeTelemetryLog();
  const s = new native.binding.InferenceSession();
  s.loadModel(model.buffer as ArrayBuffer, model.byteOffset, model.byteLength, {
    graphOptimizationLevel: 'all',
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    executionProviders: [{ name: 'cpu' }],
    enableCpuMemArena: options.memArena ?? true,
    // initializers stored outside the ModelProto (int8 weights), as in-memory files
    ...(options.externalData?.length ? { externalData: options.externalData.map((f) => ({ path: f.path, data: f.data })) } : {}),
    // PALIGEMMA_ORT_PROFILE=<prefix>: onnxruntime writes a JSON trace of every node (written at exit)
    ...(process.env.PALIGEMMA_ORT_PROFILE ? { enableProfiling: true, profileFilePrefix: process.env.PALIGEMMA_ORT_PROFILE } : {}),
  });
  let released = false;
  if (process.env.PALIGEMMA_ORT_PROFILE) process.once('exit', () => !released && (s as unknown as { endProfiling(): void }).endProfiling());
  return {
    run(feeds, outputs) {
      if (released) throw new Error('jit: this compiled function was disposed');
      const tensors: Record<string, OrtTensor> = {};
      for (const [k, f] of Object.entries(feeds)) tensors[k] = new ort.Tensor(f.type, f.data, f.dims);
      try {
        const fetches = Object.fromEntries(outputs.map((o) => [o, null]));
        const result = s.run(tensors, fetches, {});
        const out = new Map<string, { type: string; dims: number[]; data: OrtTensor['data'] }>();
        for (const o of outputs) {
          const r = result[o];
          out.set(o, { type: r.type, dims: [...r.dims], data: r.data });
          (r as OrtTensor).dispose?.();
        }
        return out;
      } finally {
        for (const t of Object.values(tensors)) t.dispose?.();
      }
    },
    release() {
      if (!released) s.dispose();
      released = true;
    },
  };
}
