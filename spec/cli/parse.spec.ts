/**
 * The strict command line (src/cli/parse.ts through `main`): usage errors exit 2 with literal messages that
 * name the flag and the value (and the closest flag for a typo), --version, --help (global and per command,
 * every flag with its type and default, an example), `presets` with the machine's presets controlled by env.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { execFileSync } from 'node:child_process';
import { commands, main, type Io } from '../../src/cli/cli';
import { defineCommand, sharedFlags, type FlagSpec } from '../../src/cli/command';
import { closestName, commandHelp, editDistance, parseCommandLine, UsageError } from '../../src/cli/parse';
import { memoryNeeded } from '../../src/cli/presets';
import { findPreset } from '../../checkpoints/presets';
import { test } from '../helpers/backends';
import { tempDir } from '../helpers/files';

function capture(): Io & { lines: string[]; errors: string[] } {
  const lines: string[] = [];
  const errors: string[] = [];
  return { lines, errors, out: (l) => lines.push(...l.split('\n')), err: (l) => errors.push(...l.split('\n')) };
}

/** main's exit code and what it printed on stderr, for a command line that must fail before running. */
async function usage(argv: string[]): Promise<[number, string[]]> {
  const io = capture();
  const code = await main(argv, io);
  return [code, io.errors];
}

const hint = (name: string) => `run 'paligemma ${name} --help' for its flags`;

test('usage errors exit 2 and name the flag, the value and the closest flag', async (t) => {
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--max_length', '8']), [2, ['paligemma generate: unknown flag --max_length; did you mean --max-length?', hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--max-new-token', '8']), [2, ['paligemma generate: unknown flag --max-new-token; did you mean --max-new-tokens?', hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--tempreature', '1']), [2, ['paligemma generate: unknown flag --tempreature; did you mean --temperature?', hint('generate')]]);
  t.deepEqual(await usage(['run', '--zebra']), [2, ['paligemma run: unknown flag --zebra', hint('run')]]);
  t.deepEqual(await usage(['run', '-x']), [2, ['paligemma run: unknown flag -x', hint('run')]]);
  t.deepEqual(await usage(['run', 'cat.png']), [2, ["paligemma run: unexpected argument 'cat.png' (run takes none)", hint('run')]]);
  t.deepEqual(await usage(['run-fixture', 'a', 'b', '--out', 'o']), [2, ["paligemma run-fixture: unexpected argument 'b'", hint('run-fixture')]]);
  t.deepEqual(await usage(['run-fixture', '--out', 'o']), [2, ['paligemma run-fixture: missing <fixture-dir>', hint('run-fixture')]]);
  t.deepEqual(await usage(['run-fixture', 'a']), [2, ['paligemma run-fixture: missing --out <dir>', hint('run-fixture')]]);
  t.deepEqual(await usage(['generate']), [2, ['paligemma generate: missing --prompt <text>', hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--max-new-tokens', '1.5']), [2, ["paligemma generate: --max-new-tokens must be an integer >= 1; got '1.5'", hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--max-new-tokens', '12abc']), [2, ["paligemma generate: --max-new-tokens must be an integer >= 1; got '12abc'", hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--max-new-tokens=0x10']), [2, ["paligemma generate: --max-new-tokens must be an integer >= 1; got '0x10'", hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--max-new-tokens=']), [2, ["paligemma generate: --max-new-tokens must be an integer >= 1; got ''", hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--temperature', 'hot']), [2, ["paligemma generate: --temperature must be a number >= 0; got 'hot'", hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--temperature', '-1']), [2, ["paligemma generate: --temperature must be a number >= 0; got '-1'", hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--p', '1.5']), [2, ["paligemma generate: --p must be a number from 0 to 1; got '1.5'", hint('generate')]]);
  t.deepEqual(await usage(['generate', '--prompt', 'x', '--sampler', 'beam']), [2, ["paligemma generate: --sampler must be one of greedy, top_k, top_p; got 'beam'", hint('generate')]]);
  t.deepEqual(await usage(['info', '--backend']), [2, ['paligemma info: --backend needs a value', hint('info')]]);
  t.deepEqual(await usage(['run', '--image', '--prompt', 'x']), [2, ["paligemma run: --image needs a value, not '--prompt' (a value that begins with '-' is written --image=--prompt)", hint('run')]]);
  const names = commands.map((c) => c.name).join(', ');
  t.true(names.startsWith('info, presets, run, generate, run-fixture'), names);
  t.deepEqual(await usage(['genrate']), [2, [`paligemma: unknown command 'genrate'; did you mean 'generate'? (commands: ${names})`, "run 'paligemma --help' for usage"]]);
  t.deepEqual(await usage(['--verbose']), [2, [`paligemma: unknown flag --verbose before the command (commands: ${names})`, "run 'paligemma --help' for usage"]]);
  const none = capture();
  t.is(await main([], none), 2);
  t.is(none.errors[0], 'usage: paligemma <command> [flags]        paligemma <command> --help: its flags, types, defaults, an example');
});

test('the parser: typed values, defaults, --flag=value, negative numbers, switches, `--`', (t) => {
  const command = {
    name: 'demo',
    flags: {
      n: { type: 'integer', help: 'n', default: 3 },
      x: { type: 'number', help: 'x' },
      name: { type: 'string', help: 'name', choices: ['a', 'b'] },
      dry: { type: 'boolean', help: 'dry run' },
    },
    positionals: [{ name: 'file', help: 'a file', optional: true }],
  } as const;
  t.deepEqual(parseCommandLine(command, []), { flags: { n: 3, x: undefined, name: undefined, dry: false }, positionals: [], help: false });
  t.deepEqual(parseCommandLine(command, ['f', '--n=7', '--x', '-2.5e-1', '--name', 'b', '--dry']), { flags: { n: 7, x: -0.25, name: 'b', dry: true }, positionals: ['f'], help: false });
  t.deepEqual(parseCommandLine(command, ['--n', '+4', '--', '--dry']).positionals, ['--dry']);
  t.is(parseCommandLine(command, ['--nope', '-h']).help, true, '--help wins over everything else');
  t.throws(() => parseCommandLine(command, ['--dry=yes']), { instanceOf: UsageError, message: "--dry is a switch and takes no value; got 'yes'" });
  t.throws(() => parseCommandLine(command, ['--x', 'NaN']), { instanceOf: UsageError, message: "--x must be a number; got 'NaN'" });
  t.throws(() => parseCommandLine(command, ['--x', '1e999']), { instanceOf: UsageError, message: "--x must be a number; got '1e999'" });
  t.throws(() => parseCommandLine(command, ['--n', '1e20']), { instanceOf: UsageError, message: "--n must be an integer; got '1e20'" });
  t.throws(() => parseCommandLine(command, ['--name', '-a']), { instanceOf: UsageError, message: "--name needs a value, not '-a' (a value that begins with '-' is written --name=-a)" });
  t.deepEqual(parseCommandLine(command, ['--name=a']).flags.name, 'a');
  t.throws(() => parseCommandLine(command, ['a', 'b']), { instanceOf: UsageError, message: "unexpected argument 'b'" });
});

test('closestName: separators and case, unique prefixes, small edits, nothing far', (t) => {
  const known = ['max-length', 'max-new-tokens', 'preset', 'p', 'k', 'seed', 'threads'];
  t.is(closestName('max_length', known), 'max-length');
  t.is(closestName('MAX_NEW_TOKENS', known), 'max-new-tokens');
  t.is(closestName('max-new', known), 'max-new-tokens');
  t.is(closestName('presett', known), 'preset');
  t.is(closestName('thraeds', known), 'threads');
  t.is(closestName('sed', known), 'seed');
  t.is(closestName('max', known), undefined, 'two flags begin with max-: no guess');
  t.is(closestName('zebra', known), undefined);
  t.is(editDistance('ab', 'ba'), 1);
  t.is(editDistance('kitten', 'sitting'), 3);
});

test('--version and --help', async (t) => {
  const version = capture();
  t.is(await main(['--version'], version), 0);
  t.deepEqual(version.lines, ['paligemma-ts 0.1.0']);

  const help = capture();
  t.is(await main(['--help'], help), 0);
  const text = help.lines.join('\n');
  t.is(help.lines[0], 'usage: paligemma <command> [flags]        paligemma <command> --help: its flags, types, defaults, an example');
  t.true(
    text.includes(
      [
        'flags shared by commands (the same meaning wherever they appear):',
        '  flag                                   type                                  default  what',
        '  --backend <auto|cpu|wasm|webgpu|onnx>  one of auto, cpu, wasm, webgpu, onnx  auto     where tensors run',
        '  --threads <integer>                    integer >= 1                          -        wasm threads (default: 1); onnx threads (default: one per core)',
        '  --int8                                 switch                                off      int8 weights for the weight matMuls (onnx backend; a 3B decodes ~3x faster)',
        '  --preset <name|dir>                    string                                -        a built-in preset name, kaggle://..., hf://org/repo, or a directory',
        '  --max-new-tokens <integer>             integer >= 1                          64       most tokens generated per prompt',
      ].join('\n'),
    ),
    text,
  );
  for (const c of commands) {
    t.true(help.lines.some((l) => l.startsWith(`  ${c.name} `) && l.endsWith(c.summary)), c.name);
    t.true(help.lines.includes(`  ${c.example}`), c.example);
    const flags = Object.keys(c.flags).map((f) => `--${f}`).join(' ');
    t.true(help.lines.some((l) => new RegExp(`^  ${c.name} +${flags}$`).test(l) || (flags === '' && l === `  ${c.name}`)), `${c.name}'s flags`);
  }

  const info = capture();
  t.is(await main(['info', '--help'], info), 0);
  t.deepEqual(info.lines, [
    'usage: paligemma info [--backend <auto|cpu|wasm|webgpu|onnx>] [--threads <integer>]',
    '',
    'versions, the backends this machine offers, the chosen one, and a tiny matMul and gradient',
    '',
    'flags:',
    '  flag                                   type                                  default  what',
    '  --backend <auto|cpu|wasm|webgpu|onnx>  one of auto, cpu, wasm, webgpu, onnx  auto     where tensors run',
    '  --threads <integer>                    integer >= 1                          -        wasm threads (default: 1); onnx threads (default: one per core)',
    '  --help                                 switch                                off      this text',
    '',
    'example:',
    '  paligemma info --backend wasm --threads 2',
  ]);

  const fixture = capture();
  t.is(await main(['run-fixture', '-h'], fixture), 0);
  t.deepEqual(fixture.lines.slice(0, 8), [
    'usage: paligemma run-fixture <fixture-dir> --out <dir> [--backend <auto|cpu|wasm|webgpu|onnx>] [--threads <integer>]',
    '',
    "compute every output of a golden fixture's manifest.json from its preset/ and write them as .bin + manifest.json",
    '',
    'arguments:',
    '  <fixture-dir>  required  a golden fixture: manifest.json, inputs and preset/',
    '',
    'flags:',
  ]);
  t.true(fixture.lines.includes('  --out <dir>                            string                                required  where to write the outputs (.bin files and manifest.json)'));

  // every command's help lists every flag of it with its type column and default column
  for (const c of commands) {
    const lines = commandHelp(c).split('\n');
    for (const [name, spec] of Object.entries(c.flags)) {
      const row = lines.find((l) => l.startsWith(`  --${name} `) || l === `  --${name}`);
      t.truthy(row, `${c.name} --${name}`);
      t.true(row!.includes(spec.help), `${c.name} --${name} help`);
    }
    t.true(lines.includes(`  ${c.example}`));
  }
});

test('the shared flags have the same type, range and choices wherever they appear', (t) => {
  // a command may give one its own default and say so in its help (--preset tiny, eval's --max-new-tokens)
  const meaning = (f: FlagSpec) => ({ ...f, default: undefined, help: undefined });
  for (const c of commands) {
    for (const name of Object.keys(sharedFlags) as Array<keyof typeof sharedFlags>) {
      if (name in c.flags) t.deepEqual(meaning(c.flags[name]), meaning(sharedFlags[name]), `${c.name} --${name}`);
    }
  }
  t.is(commands.find((c) => c.name === 'info')!.flags.backend, sharedFlags.backend);
});

test('a command defined elsewhere gets the same parser and help', async (t) => {
  const seen: unknown[] = [];
  const echo = defineCommand({
    name: 'echo',
    summary: 'prints its flags',
    example: 'paligemma echo --times 2 words',
    positionals: [{ name: 'word', help: 'what to print' }],
    flags: { times: { type: 'integer', help: 'how often', default: 1, min: 1, max: 3 }, loud: { type: 'boolean', help: 'upper case' } },
    async run(flags, [word], io) {
      seen.push(flags);
      for (let i = 0; i < flags.times; i++) io.out(flags.loud ? word.toUpperCase() : word);
      return 0;
    },
  });
  commands.push(echo);
  t.teardown(() => commands.splice(commands.indexOf(echo), 1));
  const io = capture();
  t.is(await main(['echo', 'hi', '--times', '2', '--loud'], io), 0);
  t.deepEqual(io.lines, ['HI', 'HI']);
  t.deepEqual(seen, [{ times: 2, loud: true }]);
  t.deepEqual(await usage(['echo', 'hi', '--times', '4']), [2, ["paligemma echo: --times must be an integer from 1 to 3; got '4'", hint('echo')]]);
});

test.serial('presets: every preset, its size, whether it is here, and what it needs', async (t) => {
  const root = tempDir(t, 'pg-presets-');
  fs.mkdirSync(path.join(root, 'pali_gemma_3b_224'));
  fs.copyFileSync(path.join('checkpoints', 'tiny', 'config.json'), path.join(root, 'pali_gemma_3b_224', 'config.json'));
  fs.mkdirSync(path.join(root, 'pali_gemma_3b_448')); // there, but empty
  const saved = { p: process.env.PALIGEMMA_PRESETS, k: process.env.KAGGLEHUB_CACHE };
  t.teardown(() => {
    for (const [k, v] of [['PALIGEMMA_PRESETS', saved.p], ['KAGGLEHUB_CACHE', saved.k]] as const) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
  process.env.PALIGEMMA_PRESETS = root;
  process.env.KAGGLEHUB_CACHE = path.join(root, 'kaggle');
  const io = capture();
  t.is(await main(['presets'], io), 0);
  const tiny = path.resolve('checkpoints', 'tiny');
  t.deepEqual(io.lines.slice(0, 11), [
    'shipped in this package (--preset <name>):',
    '  name                          params   float32    here  needs ~    wasm',
    '  paligemma_shapes              720.4 K  2.7 MiB    yes   2.9 MiB    yes',
    '  tiny                          107.2 K  418.6 KiB  yes   618.6 KiB  yes',
    '',
    "keras_hub's built-in presets (--preset <name>; nothing is downloaded: fromPreset looks in $PALIGEMMA_PRESETS and the kagglehub cache):",
    '  name                          params   float32    here  needs ~    wasm',
    '  pali_gemma_3b_mix_224         2.92 B   10.9 GiB   no    10.9 GiB   no',
    '  pali_gemma_3b_224             2.92 B   10.9 GiB   yes   10.9 GiB   no',
    '  pali_gemma_3b_mix_448         2.92 B   10.9 GiB   no    11.0 GiB   no',
    '  pali_gemma_3b_448             2.92 B   10.9 GiB   bad   11.0 GiB   no',
  ]);
  t.true(io.lines.includes('  pali_gemma2_pt_28b_896        27.65 B  103.0 GiB  no    107.1 GiB  no'));
  t.is(io.lines.filter((l) => /^ {2}pali_gemma\S* +\d/.test(l)).length, 22);
  const here = io.lines.indexOf('on this machine:');
  t.deepEqual(io.lines.slice(here, here + 5), [
    'on this machine:',
    `  paligemma_shapes: ${path.resolve('checkpoints', 'shapes')}`,
    `  tiny: ${tiny}`,
    `  pali_gemma_3b_224: ${path.join(root, 'pali_gemma_3b_224')}`,
    `  pali_gemma_3b_448: not usable: ${path.join(root, 'pali_gemma_3b_448')}: not a PaliGemma preset: expected config.json ` +
      '(keras_hub: class_name PaliGemmaBackbone; Hugging Face: model_type paligemma, with *.safetensors) or a keras_hub task.json whose backbone is a PaliGemmaBackbone',
  ]);
  // 28B at 896 px: the decoder's 32 query heads over 4096 image + 64 text tokens outweigh the ViT's 16 heads
  // over 4096 patches; scores and softmax in float32, on top of the weights
  const big = findPreset('pali_gemma2_pt_28b_896')!;
  t.is(memoryNeeded(big.config), 4 * 27_654_615_792 + 2 * 4 * 32 * 4160 * 4160);
  // PG1 3B at 896: 8 query heads x 4160^2 < 16 ViT heads x 4096^2
  t.is(memoryNeeded(findPreset('pali_gemma_3b_896')!.config), 4 * 2_927_759_088 + 2 * 4 * 16 * 4096 * 4096);
});

test('--preset tiny is the shipped directory, from any working directory', (t) => {
  const bin = path.join(__dirname, '..', '..', '..', 'bin', 'paligemma.js');
  const help = execFileSync(process.execPath, [bin, 'presets'], { cwd: tempDir(t, 'pg-cwd-'), encoding: 'utf8' });
  t.true(help.includes(`  tiny: ${path.resolve('checkpoints', 'tiny')}\n`), help);
});
