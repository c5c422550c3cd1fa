/**
 * The `paligemma` command line: a table of declarative commands (./command.ts), parsed strictly by ./parse.ts.
 *
 * bin/paligemma.js calls `main(process.argv.slice(2))` and exits with the code it resolves to: 0 done, 1 the
 * command failed (`paligemma <name>: <message>`), 2 a usage error (an unknown command or flag, a malformed
 * value). Handlers write through an `Io` so tests can read what they print. To add a command, define it with
 * `defineCommand` and add it to `commands`.
 */
import { version as packageVersion } from '../../package.json';
import { availableBackends, backendInfo, formatBytes, type BackendInfo, type GpuAdapterReport } from '../runtime/backend';
import { tf } from '../../dsl/tf';
import { backendOf, consoleIo, defineCommand, sharedFlags, type Command, type Io } from './command';
import { closestName, commandHelp, flagTable, parseCommandLine, table, UsageError } from './parse';
import { modelCommands } from './commands';
import { presetsCommand } from './presets';
import { trainCommands } from './train_commands';
import { makeShapesCommand } from './shapes_command';

export { consoleIo, type Command, type Io };

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

const info = defineCommand({
  name: 'info',
  summary: 'versions, the backends this machine offers, the chosen one, and a tiny matMul and gradient',
  example: 'paligemma info --backend wasm --threads 2',
  flags: { backend: sharedFlags.backend, threads: sharedFlags.threads },
  run: async (flags, _positionals, io) => {
    io.out(`paligemma-ts ${packageVersion}, tfjs-core ${tf.version_core}, node ${process.version} (${process.platform} ${process.arch})`);
    const offer = await availableBackends();
    io.out('backends available:');
    io.out(`  cpu     yes (plain JavaScript, slow)`);
    io.out(`  wasm    ${offer.wasm ? `yes (XNNPACK; ${offer.cores} cores here)` : 'no WebAssembly'}`);
    const webgpu = offer.webgpu;
    io.out(`  webgpu  ${typeof webgpu === 'string' ? `unavailable: ${webgpu.replace(/^webgpu: /, '')}` : adapterLine(webgpu)}`);
    const chosen = await backendOf(flags);
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
});

// ---------------------------------------------------------------------------------------------------------
// The table, help and main
// ---------------------------------------------------------------------------------------------------------

export const commands: Command[] = [info, presetsCommand, ...modelCommands, ...trainCommands, makeShapesCommand];

/** `paligemma --help`: the commands, the flags they share, every command's flags, examples. */
export function usage(): string {
  return [
    'usage: paligemma <command> [flags]        paligemma <command> --help: its flags, types, defaults, an example',
    '       paligemma --version | --help',
    '',
    'commands:',
    ...table(commands.map((c) => [c.name, c.summary])),
    '',
    'flags shared by commands (the same meaning wherever they appear):',
    ...flagTable(sharedFlags),
    '',
    'flags of each command:',
    ...table(commands.map((c) => [c.name, Object.keys(c.flags).map((f) => `--${f}`).join(' ')])),
    '',
    'examples:',
    ...commands.map((c) => `  ${c.example}`),
    '',
    'Exit status: 0 done, 1 the command failed, 2 a usage error. Backends: auto (default) picks webgpu on a',
    'hardware GPU, else onnx (compiled, when onnxruntime-node loads), else wasm; PALIGEMMA_WASM_THREADS sets the',
    'wasm threads when --threads is not given.',
  ].join('\n');
}

const usageError = (io: Io, where: string, message: string, hint: string): number => {
  io.err(`${where}: ${message}`);
  io.err(hint);
  return 2;
};

export async function main(argv: readonly string[], io: Io = consoleIo): Promise<number> {
  const [name, ...args] = argv;
  if (name === undefined) {
    io.err(usage());
    return 2;
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    io.out(usage());
    return 0;
  }
  if (name === '--version' || name === '-V') {
    io.out(`paligemma-ts ${packageVersion}`);
    return 0;
  }
  const command = commands.find((c) => c.name === name);
  if (command === undefined) {
    const near = closestName(name.replace(/^-+/, ''), commands.map((c) => c.name));
    const what = name.startsWith('-') ? `unknown flag ${name} before the command` : `unknown command '${name}'`;
    const hint = near !== undefined ? `; did you mean '${near}'?` : '';
    return usageError(io, 'paligemma', `${what}${hint} (commands: ${commands.map((c) => c.name).join(', ')})`, "run 'paligemma --help' for usage");
  }
  let parsed;
  try {
    parsed = parseCommandLine(command, args);
  } catch (e) {
    if (e instanceof UsageError) return usageError(io, `paligemma ${name}`, e.message, `run 'paligemma ${name} --help' for its flags`);
    throw e;
  }
  if (parsed.help) {
    io.out(commandHelp(command));
    return 0;
  }
  try {
    return await command.run(parsed.flags as never, parsed.positionals, io);
  } catch (e) {
    if (e instanceof UsageError) return usageError(io, `paligemma ${name}`, e.message, `run 'paligemma ${name} --help' for its flags`);
    io.err(`paligemma ${name}: ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}
