/**
 * Runs a declarative command (./command.ts) under the table of ./cli.ts, which still takes raw arguments: a
 * strict parser of `--name value`, `--name=value` and boolean `--name`, checked against the flag specs
 * (unknown flags, missing values, malformed or out-of-range numbers and bad choices are errors naming the
 * flag). A stopgap until cli.ts parses every command from its declaration; then this file goes away.
 */
import type { Command, FlagSpec } from './command';
import type { Command as TableCommand } from './cli';

function value(name: string, spec: FlagSpec, raw: string): string | number {
  if (spec.type === 'string') {
    if (spec.choices && !spec.choices.includes(raw)) throw new Error(`--${name} must be one of ${spec.choices.join(', ')}; got '${raw}'`);
    return raw;
  }
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n) || (spec.type === 'integer' && !Number.isInteger(n))) {
    throw new Error(`--${name} must be ${spec.type === 'integer' ? 'an integer' : 'a number'}; got '${raw}'`);
  }
  if (spec.type !== 'boolean' && spec.min !== undefined && n < spec.min) throw new Error(`--${name} must be >= ${spec.min}; got ${raw}`);
  if (spec.type !== 'boolean' && spec.max !== undefined && n > spec.max) throw new Error(`--${name} must be <= ${spec.max}; got ${raw}`);
  return n;
}

/** Parsed flags (defaults filled, booleans false when absent) and positionals. */
export function parseFlags(c: Command, args: readonly string[]): { flags: Record<string, unknown>; positionals: string[] } {
  const flags: Record<string, unknown> = {};
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (!a.startsWith('--')) {
      positionals.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    const name = a.slice(2, eq < 0 ? undefined : eq);
    const spec = c.flags[name];
    if (!spec) throw new Error(`unknown flag --${name}; ${c.name} takes ${Object.keys(c.flags).map((f) => `--${f}`).join(', ')}`);
    if (spec.type === 'boolean') {
      if (eq >= 0) throw new Error(`--${name} takes no value`);
      flags[name] = true;
      continue;
    }
    const raw = eq >= 0 ? a.slice(eq + 1) : args[++i];
    if (raw === undefined || (eq < 0 && raw.startsWith('--'))) throw new Error(`--${name} needs a value`);
    flags[name] = value(name, spec, raw);
  }
  for (const [name, spec] of Object.entries(c.flags)) {
    if (!(name in flags)) flags[name] = spec.type === 'boolean' ? spec.default ?? false : spec.default;
  }
  const wanted = c.positionals ?? [];
  if (positionals.length > wanted.length) throw new Error(`unexpected argument '${positionals[wanted.length]}'`);
  const missing = wanted.find((p, i) => !p.optional && positionals[i] === undefined);
  if (missing) throw new Error(`missing <${missing.name}>`);
  return { flags, positionals };
}

function usage(c: Command): string {
  const shown = (s: FlagSpec): string =>
    s.type === 'string' ? (s.choices ? s.choices.join('|') : s.placeholder ?? 'text') : s.type === 'boolean' ? '' : s.type === 'integer' ? 'N' : 'X';
  const flags = Object.entries(c.flags).map(([n, s]) => (s.type === 'boolean' ? `[--${n}]` : `[--${n} ${shown(s)}]`));
  return [c.name, ...(c.positionals ?? []).map((p) => `<${p.name}>`), ...flags].join(' ');
}

/** The command as an entry of cli.ts's table. */
export function tableEntry(c: Command): TableCommand {
  return {
    name: c.name,
    usage: usage(c),
    summary: c.summary,
    run: (args, io) => {
      const { flags, positionals } = parseFlags(c, args);
      return c.run(flags as never, positionals, io);
    },
  };
}
