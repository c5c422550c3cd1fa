/**
 * What a `paligemma` command is: a name, a summary, an example, its flags (each with a type, a default and
 * one line of help) and its positionals, and a handler that gets the parsed, checked values. The parser
 * (strict: unknown flags, positionals and malformed numbers are usage errors, exit 2) and `--help` are
 * generated from this description, so a command never parses argv itself.
 */

export interface Io {
  out(line: string): void;
  err(line: string): void;
}
export const consoleIo: Io = { out: (l) => console.log(l), err: (l) => console.error(l) };

export type FlagSpec =
  | { readonly type: 'string'; readonly help: string; readonly default?: string; readonly choices?: readonly string[]; readonly placeholder?: string }
  | { readonly type: 'number' | 'integer'; readonly help: string; readonly default?: number; readonly min?: number; readonly max?: number }
  | { readonly type: 'boolean'; readonly help: string; readonly default?: boolean };

export type Flags = { readonly [name: string]: FlagSpec };

type FlagValue<S extends FlagSpec> = S extends { type: 'boolean' } ? boolean : S extends { type: 'string' } ? string : number;
/** Parsed flags, keyed by their kebab-case names: a flag with a default (and every boolean) is always set. */
export type FlagValues<F extends Flags> = {
  readonly [K in keyof F]: F[K] extends { default: unknown } | { type: 'boolean' } ? FlagValue<F[K]> : FlagValue<F[K]> | undefined;
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
export const defineCommand = <F extends Flags>(c: Command<F>): Command => c as unknown as Command;

/** Flags that mean the same on every command that has them. */
export const sharedFlags = {
  backend: { type: 'string', help: 'where tensors run', default: 'auto', choices: ['auto', 'cpu', 'wasm', 'webgpu', 'onnx'] },
  threads: { type: 'integer', help: 'wasm threads (default: 1); onnx threads (default: one per core)', min: 1 },
  preset: { type: 'string', help: 'a built-in preset name, kaggle://..., hf://org/repo, or a directory', placeholder: 'name|dir' },
  'max-new-tokens': { type: 'integer', help: 'most tokens generated per prompt', default: 32, min: 1 },
} as const satisfies Flags;
