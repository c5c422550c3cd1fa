/**
 * Runtime: which TensorFlow.js backend runs the math (cpu, wasm, webgpu, or auto), and what it is.
 *
 * Why this file exists: none of the three backends works out of the box in Node inside our bundle.
 * - wasm: tfjs-backend-wasm looks for its .wasm files next to the running script (dist/), where the bundle
 *   does not put them; we point it at the installed package's dist/ at run time (`setWasmPaths`).
 * - wasm threads: tfjs-backend-wasm 4.22 turns them off in Node (flags_wasm.ts: `WASM_HAS_MULTITHREAD_SUPPORT`
 *   is false when IS_NODE, tfjs issue #3830): its init hands Emscripten a Blob URL for the pthread worker,
 *   which Node's worker_threads cannot load. Even with workers, the C++ side caps the pool at
 *   `emscripten_num_logical_cores() / 2` = os.cpus().length / 2, i.e. 1 thread on our 2-vCPU machines. We
 *   build the threaded module ourselves (see `threadedWasmModule`) and measured 1024^2 matMul at about
 *   twice the speed with 2 threads (MEASURED.md: 32-37 vs 67-75 GFLOP/s).
 * - webgpu: the backend registers itself at import only if `navigator.gpu` exists, which Node lacks. We take
 *   a GPU from the `webgpu` package (Dawn for Node), install it as `navigator.gpu`, and register the backend
 *   with a device that asks for the adapter's largest limits (tfjs' own registration asks for a few only).
 * - auto: webgpu on a hardware adapter, else wasm, else cpu. A software adapter (SwiftShader) computes
 *   correctly but ~100x slower than wasm (MEASURED.md: 0.3-0.4 GFLOP/s), so auto passes it over.
 *
 * And a guard: tfjs-backend-wasm's heap holds at most 4 GiB, XNNPACK keeps a packed copy of each weight, and
 * an allocation that fails can silently overwrite a live tensor (MEASURED.md). `assertFitsBackend` refuses
 * work that would cross a safe line, with an error that names the sizes and the way out.
 */
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { cpus, homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { BackendWasm, getThreadsCount, setThreadsCount, setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { tf } from '../../dsl/tf';
import { setWebgpuBindingBytes } from '../../dsl/limits';
import { onnxAvailable, onnxThreads, setOnnxThreads } from '../../dsl/onnx/runtime';

// ---------------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------------

export type BackendName = 'cpu' | 'wasm' | 'webgpu' | 'onnx';
export type BackendRequest = BackendName | 'auto';
export const backendNames: readonly BackendName[] = ['cpu', 'wasm', 'webgpu', 'onnx'];

/** The WebGPU adapter, as far as we report it. */
export interface GpuAdapterReport {
  readonly vendor: string;
  readonly architecture: string;
  readonly device: string;
  readonly description: string;
  /** A software rasteriser (SwiftShader, llvmpipe, WARP) or a fallback adapter: correct, but slow. */
  readonly software: boolean;
  readonly limits: {
    readonly maxStorageBufferBindingSize: number;
    readonly maxBufferSize: number;
    readonly maxComputeWorkgroupStorageSize: number;
    readonly maxComputeInvocationsPerWorkgroup: number;
    readonly maxComputeWorkgroupsPerDimension: number;
  };
}

export interface BackendInfo {
  readonly name: BackendName;
  /** What was asked for ('auto' or a name) and why `name` was chosen. */
  readonly requested: BackendRequest;
  readonly reason: string;
  readonly tfjsVersion: string;
  /** wasm: XNNPACK threads and whether the SIMD build runs; onnx: onnxruntime's intra-op threads. */
  readonly threads?: number;
  readonly simd?: boolean;
  /** wasm only: the current size of the heap (it grows, never shrinks; 4 GiB at most). */
  readonly wasmHeapBytes?: number;
  /** webgpu only. */
  readonly adapter?: GpuAdapterReport;
}

/** The few parts of the WebGPU API we touch (TypeScript's DOM lib has no WebGPU types). */
interface GpuAdapterLike {
  readonly info?: Partial<Record<'vendor' | 'architecture' | 'device' | 'description', string>> & {
    readonly isFallbackAdapter?: boolean;
  };
  readonly isFallbackAdapter?: boolean;
  readonly limits: Record<string, number>;
  requestDevice(descriptor?: { requiredLimits?: Record<string, number> }): Promise<unknown>;
}
interface GpuLike {
  requestAdapter(options?: { powerPreference?: 'high-performance' | 'low-power' }): Promise<GpuAdapterLike | null>;
}
export type RequestAdapter = () => Promise<GpuAdapterLike | null>;

export interface BackendOptions {
  /**
   * wasm: XNNPACK threads (1 = tfjs' stock single-threaded build). Default: `PALIGEMMA_WASM_THREADS` or 1.
   * onnx: onnxruntime intra-op threads. Default: one per core.
   */
  readonly threads?: number;
  /** auto: whether to consider onnx (default true; it is chosen when onnxruntime-node loads). */
  readonly onnx?: boolean;
  /** webgpu and auto: how to get an adapter (tests inject a missing one). Default: navigator.gpu / Dawn. */
  readonly requestAdapter?: RequestAdapter;
}

const isNode = typeof process !== 'undefined' && process.versions?.node != null;
// Resolves the installed packages at run time, from wherever this bundle lies (dist/ or dist/spec/).
const nodeRequire = isNode ? createRequire(__filename) : undefined;

// ---------------------------------------------------------------------------------------------------------
// wasm
// ---------------------------------------------------------------------------------------------------------

/** The installed tfjs-backend-wasm package folder (its dist/ holds the .wasm files, wasm-out/ the glue). */
function wasmPackageDir(): string {
  return dirname(nodeRequire!.resolve('@tensorflow/tfjs-backend-wasm/package.json'));
}

// Point the stock factory at the installed binaries now, so a plain tf.setBackend('wasm') also works.
if (isNode) setWasmPaths(join(wasmPackageDir(), 'dist') + '/');
// tfjs' own single-threaded factory, kept so we can put it back after a threaded one; wrapped so that a plain
// tf.setBackend('wasm') also leaves no Emscripten process handlers behind (see withoutNewProcessHandlers).
const tfjsWasmFactory = tf.findBackendFactory('wasm');
const stockWasmFactory = tfjsWasmFactory && (async () => withoutNewProcessHandlers(async () => tfjsWasmFactory()));
const WASM_PRIORITY = 2; // tfjs' own
let wasmThreadsRegistered = 1;
if (stockWasmFactory != null) {
  tf.removeBackend('wasm');
  tf.registerBackend('wasm', stockWasmFactory, WASM_PRIORITY);
}
let wasmSimd = false; // known once a wasm backend has started
let wasmStartError: string | undefined; // why the last threaded start failed

/** The threads a wasm backend gets when the caller names none. */
export function defaultWasmThreads(): number {
  const env = isNode ? Number(process.env.PALIGEMMA_WASM_THREADS) : NaN;
  return Number.isInteger(env) && env >= 1 ? env : 1;
}

/**
 * Runs `start` (which starts an Emscripten module) and removes the process handlers Emscripten added.
 *
 * Emscripten's Node glue (tfjs' bundled copy and the raw wasm-out/ one alike) installs
 * `process.on('uncaughtException', function (ex) { if (!(ex instanceof ExitStatus)) throw ex })` and
 * `process.on('unhandledRejection', function (reason) { throw reason })`. Throwing from an uncaughtException
 * handler makes Node exit with code 7 instead of the user's own error's code 1, and prints the glue's line
 * instead of the user's; the unhandledRejection one overrides the user's `--unhandled-rejections` mode.
 * Node's defaults already crash on both, so a library must not keep them. tfjs' init adds them after an await,
 * so we look once `start` settles, and take back only new listeners with exactly those bodies: a handler the
 * user adds while the module loads is left alone. (spec/runtime/hygiene.spec.ts fails if the glue changes.)
 */
export async function withoutNewProcessHandlers<T>(start: () => Promise<T>): Promise<T> {
  if (!isNode) return start();
  const emitter: NodeJS.EventEmitter = process;
  const before = processEvents.map((e) => emitter.listeners(e));
  try {
    return await start();
  } finally {
    processEvents.forEach((e, i) => {
      for (const l of emitter.listeners(e)) {
        if (!before[i].includes(l) && isEmscriptenHandler(l)) emitter.removeListener(e, l as () => void);
      }
    });
  }
}
const isEmscriptenHandler = (listener: unknown): boolean => {
  const source = typeof listener === 'function' ? Function.prototype.toString.call(listener) : '';
  return /\binstanceof\s+ExitStatus\b/.test(source) || /^function\s*\(\s*(\w+)\s*\)\s*\{\s*throw\s+\1;?\s*\}$/.test(source);
};
const processEvents = ['uncaughtException', 'unhandledRejection'] as const;

/**
 * The Emscripten module of tfjs-backend-wasm's threaded SIMD build, set up for Node without tfjs' `init`:
 * - the pthread worker script: tfjs ships it as a string (wasm-out/*.worker.js) and hands Emscripten a Blob
 *   URL of it, which Node's `Worker` cannot load. We start it from a `data:` URL instead: a two-line ES
 *   module that gives the script the CommonJS `require` it expects and runs it.
 * - the main script each worker imports (`mainScriptUrlOrBlob`): the installed wasm-out/*.js file itself.
 * - the core count: the C++ caps the pool at `emscripten_num_logical_cores() / 2`; we answer that import
 *   with 2 x threads, through Emscripten's documented `instantiateWasm` hook, for this module only.
 * The handle table mirrors the one tfjs' init builds (backend_wasm.ts); BackendWasm needs exactly these.
 */
async function threadedWasmModule(threads: number): Promise<unknown> {
  const pkg = wasmPackageDir();
  const glue = join(pkg, 'wasm-out', 'tfjs-backend-wasm-threaded-simd.js');
  const binary = join(pkg, 'dist', 'tfjs-backend-wasm-threaded-simd.wasm');
  const { wasmWorkerContents } = nodeRequire!(join(pkg, 'wasm-out', 'tfjs-backend-wasm-threaded-simd.worker.js'));
  const factory = nodeRequire!(glue);
  // The worker source sits in a template literal upstream; its "\n" escapes arrive as raw newlines.
  const workerSource = String(wasmWorkerContents).replace(/\n/g, '\\n');
  const boot =
    `import { createRequire } from 'node:module';\n` +
    `new Function('require', '__filename', ${JSON.stringify(workerSource)})` +
    `(createRequire(${JSON.stringify(glue)}), ${JSON.stringify(glue)});\n`;
  const workerUrl = new URL(`data:text/javascript,${encodeURIComponent(boot)}`);
  let failed: (e: unknown) => void = () => {};
  const failure = new Promise<never>((_, reject) => (failed = reject));
  const module = await withoutNewProcessHandlers(() =>
    Promise.race([
      factory({
        locateFile: (path: string, prefix: string) =>
          path.endsWith('.worker.js') ? workerUrl : path.endsWith('.wasm') ? binary : prefix + path,
        mainScriptUrlOrBlob: glue,
        instantiateWasm: (info: { env: Record<string, unknown> }, receive: (i: unknown, m: unknown) => void) => {
          const imports = { ...info, env: { ...info.env, emscripten_num_logical_cores: () => 2 * threads } };
          WebAssembly.instantiate(readFileSync(binary), imports as WebAssembly.Imports).then(
            ({ instance, module }) => receive(instance, module),
            failed, // else Emscripten would wait for ever
          );
          return {}; // Emscripten: instantiation continues asynchronously
        },
      }),
      failure,
    ]),
  );
  module.tfjs = {
    init: module.cwrap('init', null, []),
    initWithThreadsCount: module.cwrap('init_with_threads_count', null, ['number']),
    getThreadsCount: module.cwrap('get_threads_count', 'number', []),
    registerTensor: module.cwrap('register_tensor', null, ['number', 'number', 'number']),
    disposeData: module.cwrap('dispose_data', null, ['number']),
    dispose: module.cwrap('dispose', null, []),
  };
  return module;
}

/**
 * The wasm backend on the threaded module. Its constructor starts XNNPACK's pool; Emscripten `ref()`s each
 * worker that runs a pthread, and pool threads never end, so Node would never exit: we unref them (they
 * still run; `tf.removeBackend('wasm')` terminates them).
 */
async function threadedWasmBackend(threads: number): Promise<BackendWasm> {
  try {
    const module = (await threadedWasmModule(threads)) as { PThread: { runningWorkers: { unref(): void }[] } };
    const backend = new BackendWasm(module as never);
    for (const worker of module.PThread.runningWorkers) worker.unref();
    return backend;
  } catch (e) {
    wasmStartError = e instanceof Error ? e.message : String(e); // tf.setBackend keeps only `false`
    throw e;
  }
}

/** Registers the wasm backend with `threads` XNNPACK threads, replacing (and disposing) another count. */
function registerWasm(threads: number): void {
  if (threads === wasmThreadsRegistered && tf.findBackendFactory('wasm') != null) return;
  if (threads > 1 && !isNode) throw new Error('wasm threads: only set up here for Node; in a browser use tfjs as is');
  if (tf.findBackendFactory('wasm') != null) tf.removeBackend('wasm');
  setThreadsCount(threads);
  const factory = threads === 1 ? stockWasmFactory! : async () => threadedWasmBackend(threads);
  tf.registerBackend('wasm', factory, WASM_PRIORITY);
  wasmThreadsRegistered = threads;
}

/** The size of the wasm backend's heap now (0 when wasm is not the current backend). */
function wasmHeapBytes(): number {
  if (tf.getBackend() !== 'wasm') return 0;
  const wasm = (tf.backend() as unknown as { wasm?: { HEAPU8: Uint8Array; wasmMemory?: WebAssembly.Memory } }).wasm;
  // The threaded build exports its Memory; HEAPU8 there is refreshed only when the main thread grows it.
  return wasm?.wasmMemory?.buffer.byteLength ?? wasm?.HEAPU8.buffer.byteLength ?? 0;
}

// ---------------------------------------------------------------------------------------------------------
// webgpu
// ---------------------------------------------------------------------------------------------------------

export const SWIFTSHADER_ICD = '/usr/lib/chromium/vk_swiftshader_icd.json';

export const noAdapterMessage = isNode
  ? 'webgpu: no WebGPU adapter. In Node, the webgpu package (Dawn) needs a Vulkan driver; for the ' +
    'SwiftShader software one: apt-get install -y chromium libvulkan1 and ' +
    `VK_ICD_FILENAMES=${SWIFTSHADER_ICD}. Or use --backend wasm.`
  : 'webgpu: no WebGPU adapter. Use a browser with WebGPU enabled (navigator.gpu), or the wasm backend.';

export const webgpuMissingMessage =
  "webgpu: the optional 'webgpu' package (Dawn for Node, ~130 MB) is not installed: npm install webgpu. " +
  'Or use --backend wasm.';

/**
 * One runtime directory per user for the Vulkan loader, reused by every process: `<tmpdir>/paligemma-xdg-<uid>`,
 * mode 0700. If that path exists but is not a directory we own and alone can enter (a link, another user's,
 * group- or world-accessible), we make a fresh one and remove it when the process exits.
 */
export function privateRuntimeDir(): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  const shared = join(tmpdir(), `paligemma-xdg-${uid ?? 'user'}`);
  try {
    mkdirSync(shared, { mode: 0o700 });
  } catch (e) {
    if ((e as { code?: string }).code !== 'EEXIST') return throwaway();
  }
  const st = lstatSync(shared);
  const ours = st.isDirectory() && !st.isSymbolicLink() && (uid === undefined || st.uid === uid) && (st.mode & 0o077) === 0;
  return ours ? shared : throwaway();
}
function throwaway(): string {
  const dir = mkdtempSync(join(tmpdir(), 'paligemma-xdg-'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/**
 * Linux: the Vulkan ICD manifests (drivers) the loader would find: `VK_DRIVER_FILES` / `VK_ICD_FILENAMES`
 * when set (they replace the search), else the `vulkan/icd.d` folders under XDG_CONFIG_DIRS, /etc,
 * XDG_DATA_HOME and XDG_DATA_DIRS (the loader's search order), plus `VK_ADD_DRIVER_FILES`. Without any, Dawn
 * can only fail, printing native warnings ("vkCreateInstance: Found no drivers!"), so we do not ask it.
 * Other systems (Metal, D3D12) answer undefined: we cannot tell without asking.
 */
export function vulkanDrivers(env: NodeJS.ProcessEnv = isNode ? process.env : {}): string[] | undefined {
  if (!isNode || process.platform !== 'linux') return undefined;
  const list = (v: string | undefined): string[] => (v ?? '').split(':').filter((f) => f !== '');
  const manifests = (dir: string): string[] => {
    try {
      return readdirSync(dir).filter((n) => n.endsWith('.json')).map((n) => join(dir, n));
    } catch {
      return [];
    }
  };
  const expand = (f: string): string[] => {
    try {
      return lstatSync(f).isDirectory() ? manifests(f) : [f];
    } catch {
      return [];
    }
  };
  const added = list(env.VK_ADD_DRIVER_FILES).flatMap(expand);
  const override = list(env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES);
  if (override.length > 0) return [...override.flatMap(expand), ...added];
  const home = env.HOME ?? homedir();
  const dirs = [
    ...list(env.XDG_CONFIG_DIRS || '/etc/xdg'),
    '/usr/local/etc',
    '/etc',
    env.XDG_DATA_HOME || join(home, '.local', 'share'),
    ...list(env.XDG_DATA_DIRS || '/usr/local/share:/usr/share'),
  ];
  return [...new Set(dirs)].flatMap((d) => manifests(join(d, 'vulkan', 'icd.d'))).concat(added);
}

let nodeGpu: GpuLike | undefined;
/** navigator.gpu, or in Node a GPU from the `webgpu` package installed as navigator.gpu (tfjs looks there). */
function gpu(): GpuLike | undefined {
  const nav = (globalThis as { navigator?: { gpu?: GpuLike } }).navigator;
  if (nav?.gpu != null) return nav.gpu;
  if (!isNode) return undefined;
  if (nodeGpu == null) {
    let dawn: { create(flags: string[]): GpuLike; globals: Record<string, unknown> };
    // The Vulkan loader prints "XDG_RUNTIME_DIR is invalid or not set" on stderr for every adapter probe
    // when the variable is unset (CI, containers); a private directory is what it wants.
    if (!process.env.XDG_RUNTIME_DIR) process.env.XDG_RUNTIME_DIR = privateRuntimeDir();
    try {
      dawn = nodeRequire!('webgpu');
    } catch (e) {
      const code = (e as { code?: string }).code;
      if (code === 'MODULE_NOT_FOUND' && /'webgpu'/.test((e as Error).message)) throw new Error(webgpuMissingMessage);
      throw new Error(`webgpu: the 'webgpu' package (Dawn for Node) does not load: ${(e as Error).message}`);
    }
    nodeGpu = dawn.create([]);
    // tfjs' kernels use the GPUBufferUsage / GPUMapMode / GPUShaderStage constants as globals.
    for (const [name, value] of Object.entries(dawn.globals)) {
      if (!(name in globalThis)) Object.defineProperty(globalThis, name, { value, configurable: true, writable: true });
    }
  }
  if (nav == null) {
    Object.defineProperty(globalThis, 'navigator', { value: { gpu: nodeGpu }, configurable: true, writable: true });
  } else {
    Object.defineProperty(nav, 'gpu', { value: nodeGpu, configurable: true });
  }
  return nodeGpu;
}

/** Node on Linux without a navigator.gpu and without any Vulkan ICD manifest. */
const noVulkanDriver = (): boolean =>
  (globalThis as { navigator?: { gpu?: unknown } }).navigator?.gpu == null && vulkanDrivers()?.length === 0;

const defaultRequestAdapter: RequestAdapter = async () => {
  // No driver: no adapter, and Dawn is not loaded (it would print native warnings on its way to null).
  if (noVulkanDriver()) return null;
  const g = gpu();
  return g == null ? null : g.requestAdapter({ powerPreference: 'high-performance' });
};

let cachedAdapter: GpuAdapterLike | null | undefined;
async function adapterFor(request?: RequestAdapter): Promise<GpuAdapterLike | null> {
  if (request != null) return request();
  if (cachedAdapter === undefined) cachedAdapter = await defaultRequestAdapter();
  return cachedAdapter;
}

const softwareNames = /swiftshader|llvmpipe|lavapipe|softpipe|warp|basic render/i;

function describeAdapter(adapter: GpuAdapterLike): GpuAdapterReport {
  const info = adapter.info ?? {};
  const [vendor, architecture, device, description] = [info.vendor, info.architecture, info.device, info.description]
    .map((s) => s ?? '');
  const l = adapter.limits;
  return {
    vendor,
    architecture,
    device,
    description,
    software:
      info.isFallbackAdapter === true ||
      adapter.isFallbackAdapter === true ||
      softwareNames.test(`${vendor} ${architecture} ${device} ${description}`),
    limits: {
      maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
      maxBufferSize: l.maxBufferSize,
      maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
    },
  };
}

// The limits we raise to the adapter's maximum (WebGPU's defaults are small: 128 MiB bindings, 16 KiB
// workgroup storage); the rest keep their defaults.
const raisedLimits = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupSizeZ',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
];

let webgpuAdapter: GpuAdapterReport | undefined;
/** An adapter, or the error that says how to get one; registers the webgpu backend on it if none is. */
async function prepareWebgpu(request?: RequestAdapter): Promise<GpuAdapterReport> {
  const adapter = await adapterFor(request);
  if (adapter == null) throw new Error(noAdapterMessage);
  const report = describeAdapter(adapter);
  if (tf.findBackendFactory('webgpu') == null) {
    const requiredLimits = Object.fromEntries(
      raisedLimits.filter((k) => typeof adapter.limits[k] === 'number').map((k) => [k, adapter.limits[k]]),
    );
    const device = await adapter.requestDevice({ requiredLimits });
    tf.registerBackend('webgpu', async () => new WebGPUBackend(device as never, adapter.info as never), 0);
    webgpuAdapter = report;
  }
  // In a browser tfjs registered webgpu itself, on its own adapter: report ours, which is the same GPU.
  webgpuAdapter ??= report;
  setWebgpuBindingBytes(webgpuAdapter.limits.maxStorageBufferBindingSize ?? Infinity);
  return webgpuAdapter;
}

// ---------------------------------------------------------------------------------------------------------
// setBackend, backendInfo
// ---------------------------------------------------------------------------------------------------------

let lastChoice: { name: BackendName; requested: BackendRequest; reason: string } | undefined;

// onnx: tensors live on tfjs' cpu backend (plain host arrays: no 4 GiB heap, no copies when fed to
// onnxruntime) and model calls (src/: forward, generate, fixtures) run compiled through d.jit.
let onnxActive = false;

/** True when model calls should run compiled on onnxruntime (the 'onnx' backend is active). */
export function compiledModels(): boolean {
  return onnxActive && tf.getBackend() === 'cpu';
}

const ONNX_MISSING = 'onnxruntime-node is not installed (npm install onnxruntime-node)';

async function startOnnx(threads?: number): Promise<void> {
  if (!onnxAvailable()) throw new Error(`setBackend: the 'onnx' backend needs ${ONNX_MISSING}`);
  setOnnxThreads(threads);
  await activate('cpu');
  onnxActive = true;
}

async function activate(name: BackendName): Promise<void> {
  const ok = await tf.setBackend(name);
  if (!ok || tf.getBackend() !== name) throw new Error(`setBackend: the '${name}' backend failed to initialise`);
  await tf.ready();
  if (name === 'wasm') {
    // Our threaded build is SIMD; tfjs' stock factory chose by this flag (evaluated by then, so cached).
    wasmSimd = wasmThreadsRegistered > 1 || (await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT')) === true;
  }
  if (name === 'cpu') {
    // tfjs-backend-cpu prints a banner suggesting tfjs-node on its first write in Node; we chose cpu knowingly.
    (tf.backend() as unknown as { firstUse?: boolean }).firstUse = false;
  }
}

/**
 * Makes `name` the backend of all tensors created from now on and says what it is.
 * 'auto': webgpu on a hardware adapter, else wasm, else cpu. Tensors of another backend stay readable (tfjs
 * moves them on use); changing the wasm thread count disposes the wasm backend and its tensors.
 */
export async function setBackend(name: BackendRequest, options: BackendOptions = {}): Promise<BackendInfo> {
  onnxActive = false;
  if (name === 'auto') return setAuto(options);
  if (!backendNames.includes(name)) {
    throw new Error(`setBackend: unknown backend '${name}'; expected one of auto, ${backendNames.join(', ')}`);
  }
  if (name === 'onnx') {
    await startOnnx(options.threads);
    lastChoice = { name, requested: name, reason: 'requested' };
    return backendInfo();
  }
  let note = '';
  if (name === 'wasm') note = await startWasm(options.threads ?? defaultWasmThreads());
  else {
    if (name === 'webgpu') await prepareWebgpu(options.requestAdapter);
    await activate(name);
  }
  lastChoice = { name, requested: name, reason: `requested${note}` };
  return backendInfo();
}

/**
 * Starts wasm with `threads` threads; if the threaded build fails to start (it leans on tfjs-backend-wasm's
 * file layout, see `threadedWasmModule`), falls back to the stock single thread and says so.
 */
async function startWasm(threads: number): Promise<string> {
  registerWasm(threads);
  wasmStartError = undefined;
  try {
    await activate('wasm');
    return '';
  } catch (e) {
    if (threads === 1) throw e;
    registerWasm(1);
    await activate('wasm');
    return `; ${threads} threads failed to start (${wasmStartError ?? (e as Error).message}), running 1`;
  }
}

async function setAuto(options: BackendOptions): Promise<BackendInfo> {
  let why: string;
  try {
    const adapter = await adapterFor(options.requestAdapter);
    if (adapter != null && !describeAdapter(adapter).software) {
      await prepareWebgpu(options.requestAdapter);
      await activate('webgpu');
      lastChoice = { name: 'webgpu', requested: 'auto', reason: 'a hardware WebGPU adapter is present' };
      return backendInfo();
    }
    why =
      adapter == null
        ? options.requestAdapter == null && noVulkanDriver()
          ? 'no Vulkan driver, so no WebGPU adapter'
          : 'no WebGPU adapter'
        : `the only WebGPU adapter is a software one (${describeAdapter(adapter).description}), ~100x slower than wasm`;
  } catch (e) {
    why = `WebGPU is unavailable (${(e as Error).message})`;
  }
  if (options.onnx !== false && onnxAvailable()) {
    await startOnnx(options.threads);
    lastChoice = { name: 'onnx', requested: 'auto', reason: `${why}: onnx, models compiled onto onnxruntime-node, params in host memory` };
    return backendInfo();
  }
  if (options.onnx !== false) why += `, and ${ONNX_MISSING}`;
  try {
    const note = await startWasm(options.threads ?? defaultWasmThreads());
    lastChoice = { name: 'wasm', requested: 'auto', reason: `${why}: wasm${note}` };
  } catch (e) {
    await activate('cpu');
    lastChoice = { name: 'cpu', requested: 'auto', reason: `${why}, and wasm failed (${(e as Error).message}): cpu` };
  }
  return backendInfo();
}

/** The current backend: name, why it was chosen, threads and SIMD (wasm), adapter (webgpu), tfjs version. */
export function backendInfo(): BackendInfo {
  const name = (compiledModels() ? 'onnx' : tf.getBackend()) as BackendName;
  const choice = lastChoice?.name === name ? lastChoice : { requested: name, reason: 'set outside setBackend' };
  const base = { name, requested: choice.requested, reason: choice.reason, tfjsVersion: tf.version_core };
  if (name === 'wasm') {
    return {
      ...base,
      threads: getThreadsCount(),
      simd: wasmSimd,
      wasmHeapBytes: wasmHeapBytes(),
    };
  }
  if (name === 'webgpu') return webgpuAdapter ? { ...base, adapter: webgpuAdapter } : base;
  if (name === 'onnx') return { ...base, threads: onnxThreads() };
  return base;
}

/** What this machine offers, without switching backend (the webgpu probe loads Dawn in Node). */
export async function availableBackends(
  request?: RequestAdapter,
): Promise<{ cpu: true; wasm: boolean; webgpu: GpuAdapterReport | string; cores: number }> {
  let webgpu: GpuAdapterReport | string;
  try {
    const adapter = await adapterFor(request);
    webgpu = adapter == null ? noAdapterMessage : describeAdapter(adapter);
  } catch (e) {
    webgpu = (e as Error).message;
  }
  return { cpu: true, wasm: typeof WebAssembly === 'object', webgpu, cores: isNode ? cpus().length : 1 };
}

/** True when a WebGPU adapter is likely here without asking Dawn: a Vulkan ICD named and present. */
export function vulkanIcdPresent(): boolean {
  const icd = isNode ? process.env.VK_ICD_FILENAMES : undefined;
  return icd != null && icd.split(':').some((f) => f !== '' && existsSync(f));
}

// ---------------------------------------------------------------------------------------------------------
// Heap guard
// ---------------------------------------------------------------------------------------------------------

/** wasm32: the heap can never exceed 4 GiB (tfjs' Emscripten builds set this maximum). */
export const WASM_HEAP_MAX_BYTES = 4 * 2 ** 30;
/**
 * Live tensor bytes we allow on wasm: 45 % of the heap, because XNNPACK holds a packed copy of each weight
 * it multiplies (x2) and activations and its workspaces need the rest. MEASURED.md: ~1.8 GiB of float32
 * weights fit.
 */
export const WASM_SAFE_BYTES_DEFAULT = Math.floor(0.45 * WASM_HEAP_MAX_BYTES);
let wasmSafeBytes = WASM_SAFE_BYTES_DEFAULT;

/** Sets the wasm safe line (tests use a small one); no argument restores the default. */
export function setWasmSafeBytes(bytes: number = WASM_SAFE_BYTES_DEFAULT): void {
  if (!(bytes > 0)) throw new Error(`setWasmSafeBytes: expected a positive number of bytes, got ${bytes}`);
  wasmSafeBytes = bytes;
}

/** 1536 -> "1.5 KiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) [n, i] = [n / 1024, i + 1];
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

/**
 * Throws, before any allocation, when `bytesNeeded` more bytes of tensors would cross the current backend's
 * safe line: on wasm the live tensor bytes (tf.memory) plus the new ones against the safe line above. cpu
 * and webgpu have no such line here (see `tensorOnBackend` for WebGPU's per-buffer limit).
 */
export function assertFitsBackend(bytesNeeded: number, what: string): void {
  if (tf.getBackend() !== 'wasm') return;
  const live = tf.memory().numBytes;
  if (live + bytesNeeded <= wasmSafeBytes) return;
  const heap = wasmHeapBytes();
  throw new Error(
    `${what} needs ${formatBytes(bytesNeeded)}, and ${formatBytes(live)} of tensors are live: more than the ` +
      `${formatBytes(wasmSafeBytes)} the wasm backend holds safely (heap now ${formatBytes(heap)}, at most ` +
      `${formatBytes(WASM_HEAP_MAX_BYTES)}; XNNPACK keeps a packed copy of each weight, and a failed ` +
      `allocation can silently overwrite a live tensor). Use the cpu backend (--backend cpu), or webgpu.`,
  );
}

export { maxTensorBytes, setMaxTensorBytes } from '../../dsl/limits';

/**
 * A tensor from a large buffer, guarded: the wasm heap line above, and on webgpu the adapter's largest
 * buffer (one binding holds at most maxStorageBufferBindingSize; split big tables by rows).
 */
export function tensorOnBackend<R extends tf.Rank>(
  values: Float32Array | Int32Array,
  shape: number[],
  what: string,
): tf.Tensor<R> {
  assertFitsBackend(values.byteLength, what);
  const limit = tf.getBackend() === 'webgpu' ? webgpuAdapter?.limits.maxStorageBufferBindingSize : undefined;
  if (limit != null && values.byteLength > limit) {
    throw new Error(
      `${what} is ${formatBytes(values.byteLength)}, but one WebGPU buffer binding holds at most ` +
        `${formatBytes(limit)} on this adapter: split it (by rows), or use the cpu backend.`,
    );
  }
  const tensor: tf.Tensor = tf.tensor(values, shape, values instanceof Int32Array ? 'int32' : 'float32');
  return tensor as tf.Tensor<R>;
}
