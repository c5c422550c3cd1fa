/**
 * The parser and `--help` of a declarative command (./command.ts), on `node:util`'s `parseArgs` in strict mode.
 *
 * Every mistake on the command line is a `UsageError` (exit 2) that names the flag and the value: an unknown
 * flag (with the closest known one: `--max_length` -> `--max-length`), a missing or extra positional, a flag
 * without its value, a value for a switch, a malformed or out-of-range number, a value outside `choices`, a
 * missing required flag. Values are checked here, so a handler only sees typed, valid values.
 */
import { parseArgs } from 'node:util';
import type { Command, FlagSpec, Flags, Positional } from './command';

/** A command line that does not fit the command's description: exit 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface Parsed {
  readonly flags: Readonly<Record<string, string | number | boolean | undefined>>;
  readonly positionals: readonly string[];
  /** `--help` or `-h` was given (the rest is not checked then). */
  readonly help: boolean;
}

// ---------------------------------------------------------------------------------------------------------
// Suggestions
// ---------------------------------------------------------------------------------------------------------

/** Edit distance with transpositions (optimal string alignment). */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/**
 * The known name closest to `name`, if it is close: the same up to case and `_`/`-` (`max_length`), a unique
 * name it begins (`max-new` -> `max-new-tokens`), or within 2 edits (1 for names of 4 letters or fewer).
 */
export function closestName(name: string, known: readonly string[]): string | undefined {
  const norm = (s: string) => s.toLowerCase().replace(/_/g, '-');
  const n = norm(name);
  const same = known.find((k) => norm(k) === n);
  if (same !== undefined) return same;
  const prefixed = known.filter((k) => n.length >= 3 && norm(k).startsWith(n));
  if (prefixed.length === 1) return prefixed[0];
  const scored = known.map((k) => ({ k, d: editDistance(n, norm(k)) })).sort((a, b) => a.d - b.d);
  const best = scored[0];
  if (best === undefined) return undefined;
  return best.d <= (Math.min(n.length, best.k.length) <= 4 ? 1 : 2) ? best.k : undefined;
}

// ---------------------------------------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------------------------------------

// Decimal numbers only: Number('') is 0, Number('0x10') is 16 and Number(' 1') is 1, none of which a user means.
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)(e[+-]?\d+)?$/i;

function typeWords(spec: FlagSpec): string {
  if (spec.type === 'boolean') return 'a switch';
  if (spec.type === 'string') return spec.choices ? `one of ${spec.choices.join(', ')}` : 'a string';
  const what = spec.type === 'integer' ? 'an integer' : 'a number';
  if (spec.min !== undefined && spec.max !== undefined) return `${what} from ${spec.min} to ${spec.max}`;
  if (spec.min !== undefined) return `${what} >= ${spec.min}`;
  if (spec.max !== undefined) return `${what} <= ${spec.max}`;
  return what;
}

/** A flag's raw string as its type, or a UsageError naming flag, value and what was expected. */
export function flagValue(name: string, spec: FlagSpec, raw: string): string | number {
  const bad = () => new UsageError(`--${name} must be ${typeWords(spec)}; got '${raw}'`);
  if (spec.type === 'string') {
    if (spec.choices !== undefined && !spec.choices.includes(raw)) throw bad();
    return raw;
  }
  if (spec.type === 'boolean') throw new UsageError(`--${name} is a switch and takes no value; got '${raw}'`);
  if (!DECIMAL.test(raw)) throw bad();
  const n = Number(raw);
  if (!Number.isFinite(n) || (spec.type === 'integer' && !Number.isSafeInteger(n))) throw bad();
  if ((spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) throw bad();
  return n;
}

// ---------------------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------------------

const HELP = new Set(['help', 'h']);

/** parseArgs' option table for a command: every value flag is a string (typed here), plus --help/-h. */
function options(flags: Flags) {
  const out: Record<string, { type: 'string' | 'boolean'; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  for (const [name, spec] of Object.entries(flags)) out[name] = { type: spec.type === 'boolean' ? 'boolean' : 'string' };
  return out;
}

const positionalRange = (ps: readonly Positional[]): [number, number] => [ps.filter((p) => !p.optional).length, ps.length];

/**
 * Parse `args` (after the command name) against a command's flags and positionals. Throws a UsageError for
 * anything that does not fit; a missing value of a flag with a default is that default.
 */
export function parseCommandLine(command: Pick<Command, 'name' | 'flags' | 'positionals'>, args: readonly string[]): Parsed {
  const flags = command.flags;
  const opts = options(flags);
  // First pass, not strict: every token as written, so each mistake gets our own message (and a suggestion).
  const { tokens } = parseArgs({ args: [...args], options: opts, strict: false, allowPositionals: true, tokens: true });
  if (tokens.some((t) => t.kind === 'option' && HELP.has(t.name))) {
    return { flags: {}, positionals: [], help: true };
  }
  const joined = new Map<number, string>(); // `--flag -1` as `--flag=-1`, at the flag's index
  for (const t of tokens) {
    if (t.kind !== 'option') continue;
    const spec = flags[t.name];
    if (spec === undefined) {
      const near = closestName(t.name, Object.keys(flags));
      throw new UsageError(`unknown flag ${t.rawName}${near !== undefined ? `; did you mean --${near}?` : ''}`);
    }
    if (spec.type === 'boolean') {
      if (t.value !== undefined) throw new UsageError(`--${t.name} is a switch and takes no value; got '${t.value}'`);
    } else if (t.value === undefined) {
      throw new UsageError(`--${t.name} needs a value`);
    } else if (!t.inlineValue && t.value.startsWith('-')) {
      // `--temperature -1`: a negative number is a value (strict parseArgs calls it ambiguous); anything else
      // that begins with '-' is more likely the next flag, `--image --prompt x`.
      if (spec.type !== 'string' && DECIMAL.test(t.value)) joined.set(t.index, `${t.rawName}=${t.value}`);
      else throw new UsageError(`--${t.name} needs a value, not '${t.value}' (a value that begins with '-' is written --${t.name}=${t.value})`);
    }
  }
  const strictArgs = args.flatMap((a, i) => (joined.has(i - 1) ? [] : [joined.get(i) ?? a]));
  const ps = command.positionals ?? [];
  const given = tokens.filter((t) => t.kind === 'positional').map((t) => (t as { value: string }).value);
  const [least, most] = positionalRange(ps);
  if (given.length > most) {
    const extra = given.slice(most).map((v) => `'${v}'`).join(', ');
    throw new UsageError(`unexpected argument${given.length - most > 1 ? 's' : ''} ${extra}${most === 0 ? ` (${command.name} takes none)` : ''}`);
  }
  if (given.length < least) throw new UsageError(`missing <${ps[given.length].name}>`);

  // Second pass, strict (the same checks as above, by node:util): the values.
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({ args: strictArgs, options: opts, strict: true, allowPositionals: true });
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const values: Record<string, string | number | boolean | undefined> = {};
  for (const [name, spec] of Object.entries(flags)) {
    const raw = parsed.values[name];
    if (spec.type === 'boolean') values[name] = raw === true ? true : (spec.default ?? false);
    else if (typeof raw === 'string') values[name] = flagValue(name, spec, raw);
    else if (spec.required === true) throw new UsageError(`missing --${name} ${placeholder(name, spec)}`);
    else values[name] = spec.default;
  }
  return { flags: values, positionals: parsed.positionals, help: false };
}

// ---------------------------------------------------------------------------------------------------------
// Help
// ---------------------------------------------------------------------------------------------------------

/** `<name|dir>`, `<auto|cpu|wasm|webgpu>`, `<integer>`: the value part of a flag in usage lines. */
export function placeholder(name: string, spec: FlagSpec): string {
  if (spec.type === 'boolean') return '';
  if (spec.placeholder !== undefined) return `<${spec.placeholder}>`;
  if (spec.type === 'string' && spec.choices !== undefined) return `<${spec.choices.join('|')}>`;
  return `<${spec.type === 'string' ? name.split('-').pop() : spec.type}>`;
}

const flagWithValue = (name: string, spec: FlagSpec) => `--${name}${spec.type === 'boolean' ? '' : ` ${placeholder(name, spec)}`}`;

/** One usage line: `paligemma run-fixture <fixture-dir> --out <dir> [--backend <...>] ...`. */
export function usageLine(command: Pick<Command, 'name' | 'flags' | 'positionals'>): string {
  const ps = (command.positionals ?? []).map((p) => (p.optional ? `[<${p.name}>]` : `<${p.name}>`));
  const fs = Object.entries(command.flags).map(([n, s]) => (s.type !== 'boolean' && s.required === true ? flagWithValue(n, s) : `[${flagWithValue(n, s)}]`));
  return ['paligemma', command.name, ...ps, ...fs].join(' ');
}

/** The type column of `--help`: `string`, `integer >= 1`, `one of auto, cpu, wasm, webgpu`, `switch`. */
export function typeColumn(spec: FlagSpec): string {
  if (spec.type === 'boolean') return 'switch';
  if (spec.type === 'string') return spec.choices ? `one of ${spec.choices.join(', ')}` : 'string';
  return typeWords(spec).replace(/^an? /, '');
}

/** The default column: the value, `required`, or `none`. */
export function defaultColumn(spec: FlagSpec): string {
  if (spec.type === 'boolean') return spec.default === true ? 'on' : 'off';
  if (spec.default !== undefined) return String(spec.default);
  return spec.required === true ? 'required' : '-';
}

/** Rows padded into columns, two spaces apart. */
export function table(rows: readonly (readonly string[])[], indent = '  '): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => indent + r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ').trimEnd());
}

/** A flag table: flag, type, default, help. */
export function flagTable(flags: Flags, extra: readonly (readonly string[])[] = []): string[] {
  const rows = Object.entries(flags).map(([n, s]) => [flagWithValue(n, s), typeColumn(s), defaultColumn(s), s.help]);
  return table([['flag', 'type', 'default', 'what'], ...rows, ...extra]);
}

/** `paligemma <command> --help`. */
export function commandHelp(command: Command): string {
  const ps = command.positionals ?? [];
  return [
    `usage: ${usageLine(command)}`,
    '',
    command.summary,
    ...(ps.length > 0 ? ['', 'arguments:', ...table(ps.map((p) => [`<${p.name}>`, p.optional ? 'optional' : 'required', p.help]))] : []),
    '',
    'flags:',
    ...flagTable(command.flags, [['--help', 'switch', 'off', 'this text']]),
    '',
    'example:',
    `  ${command.example}`,
  ].join('\n');
}
