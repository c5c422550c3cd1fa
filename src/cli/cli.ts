/**
 * The `paligemma` command line: a table of commands, each one entry (name, usage line, summary, handler).
 *
 * bin/paligemma.js calls `main(process.argv.slice(2))` and exits with the code it resolves to. Handlers
 * write through an `Io` so tests can read what they print. To add a command, add one entry to `commands`.
 */
import { version as packageVersion } from '../../package.json';
import {
  availableBackends,
  backendInfo,
  backendNames,
  formatBytes,
  setBackend,
  type BackendInfo,
  type BackendRequest,
  type GpuAdapterReport,
} from '../runtime/backend';
import { tf } from '../../dsl/tf';
import { modelCommands } from './commands';
import { makeShapesCommand } from './shapes_command';
import { legacyCommand } from './legacy';

export interface Io {
  out(line: string): void;
  err(line: string): void;
}
export const consoleIo: Io = { out: (l) => console.log(l), err: (l) => console.error(l) };

export interface Command {
  readonly name: string;
  /** One line, without the program name: `info [--backend cpu|wasm|webgpu|auto]`. */
  readonly usage: string;
  readonly summary: string;
  /** Resolves to the exit code; a thrown Error prints `paligemma <name>: <message>` and exits 1. */
  readonly run: (args: readonly string[], io: Io) => Promise<number>;
}

// ---------------------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------------------

/** The value of `--name value` or `--name=value`; undefined when absent, an error when the value is. */
export function flag(args: readonly string[], name: string): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
    if (a === `--${name}`) {
      const v = args[i + 1];
      if (v == null || v.startsWith('--')) throw new Error(`--${name} needs a value`);
      return v;
    }
  }
  return undefined;
}

/** The --backend flag, checked (default auto). */
export function backendFlag(args: readonly string[]): BackendRequest {
  const b = flag(args, 'backend') ?? 'auto';
  const allowed: readonly string[] = ['auto', ...backendNames];
  if (!allowed.includes(b)) throw new Error(`--backend must be one of ${allowed.join(', ')}; got '${b}'`);
  return b as BackendRequest;
}

/** The --threads flag (wasm), checked; undefined when absent. */
export function threadsFlag(args: readonly string[]): number | undefined {
  const v = flag(args, 'threads');
  if (v == null) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--threads must be a positive integer; got '${v}'`);
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// info
// ---------------------------------------------------------------------------------------------------------

function adapterLine(a: GpuAdapterReport): string {
  const names = [a.vendor, a.architecture, a.device].filter((s) => s !== '').join(' / ');
  return `${a.description || names} (${names}${a.software ? ', software adapter' : ''})`;
}

function backendLine(info: BackendInfo): string {
  const extra =
    info.name === 'wasm'
      ? `, ${info.threads} thread${info.threads === 1 ? '' : 's'}, SIMD ${info.simd ? 'on' : 'off'}`
      : '';
  return `backend: ${info.name}${extra} (${info.reason})`;
}

/** A 256x256 matMul timing and one gradient with a known value: enough to see the backend compute. */
async function demo(io: Io): Promise<void> {
  const n = 256;
  const a = tf.randomUniform([n, n], -1, 1, 'float32', 1);
  const warm = tf.matMul(a, a);
  await warm.data();
  warm.dispose();
  const reps = 3;
  const start = performance.now();
  for (let i = 0; i < reps; i++) {
    const c = tf.matMul(a, a);
    await c.data();
    c.dispose();
  }
  const seconds = (performance.now() - start) / 1000 / reps;
  a.dispose();
  io.out(`demo: matMul ${n}x${n}: ${(seconds * 1e3).toFixed(2)} ms (${((2 * n ** 3) / seconds / 1e9).toFixed(2)} GFLOP/s)`);

  // d/dA sum(A A) = rowsum(A)[j] + colsum(A)[i] at (i, j): [[7, 11], [9, 13]] for A = [[1, 2], [3, 4]].
  const x = tf.tensor2d([1, 2, 3, 4], [2, 2]);
  const g = tf.grad((m: tf.Tensor) => tf.sum(tf.matMul(m as tf.Tensor2D, m as tf.Tensor2D)))(x);
  const values = Array.from(await g.data());
  tf.dispose([x, g]);
  io.out(`demo: gradient of sum(A.A) at A = [[1,2],[3,4]]: [[${values.slice(0, 2)}],[${values.slice(2)}]] (expected [[7,11],[9,13]])`);
}

const info: Command = {
  name: 'info',
  usage: 'info [--backend cpu|wasm|webgpu|auto] [--threads N]',
  summary: 'versions, the backends this machine offers, the chosen one, and a tiny matMul and gradient',
  run: async (args, io) => {
    const request = backendFlag(args);
    const threads = threadsFlag(args);
    io.out(`paligemma-ts ${packageVersion}, tfjs-core ${tf.version_core}, node ${process.version} (${process.platform} ${process.arch})`);
    const offer = await availableBackends();
    io.out('backends available:');
    io.out(`  cpu     yes (plain JavaScript, slow)`);
    io.out(`  wasm    ${offer.wasm ? `yes (XNNPACK; ${offer.cores} cores here)` : 'no WebAssembly'}`);
    const webgpu = offer.webgpu;
    io.out(`  webgpu  ${typeof webgpu === 'string' ? `unavailable: ${webgpu.replace(/^webgpu: /, '')}` : adapterLine(webgpu)}`);
    const chosen = await setBackend(request, threads != null ? { threads } : {});
    io.out(backendLine(chosen));
    if (chosen.adapter != null) {
      const l = chosen.adapter.limits;
      io.out(`adapter: ${adapterLine(chosen.adapter)}`);
      io.out(
        `  limits: maxStorageBufferBindingSize ${formatBytes(l.maxStorageBufferBindingSize)}, ` +
          `maxBufferSize ${formatBytes(l.maxBufferSize)}, ` +
          `maxComputeWorkgroupStorageSize ${formatBytes(l.maxComputeWorkgroupStorageSize)}, ` +
          `maxComputeInvocationsPerWorkgroup ${l.maxComputeInvocationsPerWorkgroup}`,
      );
    }
    await demo(io);
    if (backendInfo().name === 'wasm' && chosen.wasmHeapBytes != null) {
      io.out(`wasm heap: ${formatBytes(backendInfo().wasmHeapBytes ?? 0)} now, 4.0 GiB at most`);
    }
    return 0;
  },
};

// ---------------------------------------------------------------------------------------------------------
// The table and main
// ---------------------------------------------------------------------------------------------------------

export const commands: Command[] = [info, ...modelCommands, legacyCommand(makeShapesCommand)];

export function usage(): string {
  const width = Math.max(...commands.map((c) => c.usage.length));
  return [
    'usage: paligemma <command> [options]',
    '',
    'commands:',
    ...commands.map((c) => `  ${c.usage.padEnd(width)}  ${c.summary}`),
    '',
    'Backends: auto (default) picks webgpu on a hardware GPU, else wasm; set PALIGEMMA_WASM_THREADS for wasm threads.',
  ].join('\n');
}

export async function main(argv: readonly string[], io: Io = consoleIo): Promise<number> {
  const [name, ...args] = argv;
  if (name == null || name === '--help' || name === '-h' || name === 'help') {
    io.out(usage());
    return name == null ? 1 : 0;
  }
  const command = commands.find((c) => c.name === name);
  if (command == null) {
    io.err(`paligemma: unknown command '${name}'; commands: ${commands.map((c) => c.name).join(', ')}`);
    io.err(`run 'paligemma --help' for usage`);
    return 1;
  }
  if (args.includes('--help') || args.includes('-h')) {
    io.out(`usage: paligemma ${command.usage}\n\n${command.summary}`);
    return 0;
  }
  try {
    return await command.run(args, io);
  } catch (e) {
    io.err(`paligemma ${name}: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}
