/**
 * What a `paligemma` command is: a name, a summary, an example, its flags (each with a type, a default and
 * one line of help) and its positionals, and a handler that gets the parsed, checked values. The parser
 * (strict: unknown flags, positionals and malformed numbers are usage errors, exit 2) and `--help` are
 * generated from this description, so a command never parses argv itself.
 */
import { setBackend, type BackendInfo, type BackendRequest } from '../runtime/backend';

export interface Io {
  out(line: string): void;
  err(line: string): void;
  /** Part of a line on stdout, no newline added (streamed tokens); where absent, callers print whole lines. */
  write?(chunk: string): void;
}
export const consoleIo: Io = { out: (l) => console.log(l), err: (l) => console.error(l), write: (s) => void process.stdout.write(s) };

/**
 * One flag. `required: true` (a flag without a default that must be given) makes its value always set; a
 * missing one is a usage error. `placeholder` names the value in `--help` (`--preset <name|dir>`).
 */
export type FlagSpec =
  | { readonly type: 'string'; readonly help: string; readonly default?: string; readonly choices?: readonly string[]; readonly placeholder?: string; readonly required?: boolean }
  | { readonly type: 'number' | 'integer'; readonly help: string; readonly default?: number; readonly min?: number; readonly max?: number; readonly placeholder?: string; readonly required?: boolean }
  | { readonly type: 'boolean'; readonly help: string; readonly default?: boolean };

export type Flags = { readonly [name: string]: FlagSpec };

/** A flag's value: its choices as a union where it has them (`'auto' | 'cpu' | ...`). */
type FlagValue<S extends FlagSpec> = S extends { type: 'boolean' }
  ? boolean
  : S extends { type: 'string' }
    ? S extends { choices: readonly (infer C extends string)[] }
      ? C
      : string
    : number;
/** Parsed flags, keyed by their kebab-case names: a flag with a default, a required one and every boolean are always set. */
export type FlagValues<F extends Flags> = {
  readonly [K in keyof F]: F[K] extends { default: unknown } | { type: 'boolean' } | { required: true } ? FlagValue<F[K]> : FlagValue<F[K]> | undefined;
};

export interface Positional {
  readonly name: string;
  readonly help: string;
  readonly optional?: boolean;
}

export interface Command<F extends Flags = Flags> {
  readonly name: string;
  readonly summary: string;
  /** One full example command line, shown by `--help`. */
  readonly example: string;
  readonly flags: F;
  readonly positionals?: readonly Positional[];
  /** Resolves to the exit code; a thrown Error prints `paligemma <name>: <message>` and exits 1. */
  readonly run: (flags: FlagValues<F>, positionals: readonly string[], io: Io) => Promise<number>;
}

/** Keeps a command's flag types precise (the table of all commands holds them as `Command`). */
export const defineCommand = <const F extends Flags>(c: Command<F>): Command => c as unknown as Command;

/** Flags that mean the same on every command that has them. */
export const sharedFlags = {
  backend: { type: 'string', help: 'where tensors run', default: 'auto', choices: ['auto', 'cpu', 'wasm', 'webgpu', 'onnx'] },
  threads: { type: 'integer', help: 'wasm threads (default: 1); onnx threads (default: one per core)', min: 1 },
  int8: { type: 'boolean', help: 'int8 weights for the weight matMuls (onnx backend; a 3B decodes ~3x faster)' },
  preset: { type: 'string', help: 'a built-in preset name, kaggle://..., hf://org/repo, or a directory', placeholder: 'name|dir' },
  'max-new-tokens': { type: 'integer', help: 'most tokens generated per prompt', default: 64, min: 1 },
} as const satisfies Flags;

/** The backend the shared flags ask for (threads, wasm's or onnx's, only when given: else the backend's default). */
export const backendOf = (flags: { readonly backend: string; readonly threads?: number }): Promise<BackendInfo> =>
  setBackend(flags.backend as BackendRequest, flags.threads !== undefined ? { threads: flags.threads } : {});
