/**
 * Runs a declarative command (src/cli/command.ts) from the current argv-style command table in cli.ts:
 * parses `--name value` / `--name=value` by the command's flag specs (strict: unknown flags, bad numbers,
 * values out of range are errors), fills defaults, and passes the positionals. The generated parser of the
 * new cli.ts replaces this.
 */
import type { Command as DeclaredCommand, FlagSpec } from './command';
import type { Command } from './cli';

function parseValue(name: string, spec: FlagSpec, raw: string): string | number | boolean {
  if (spec.type === 'string') {
    if (spec.choices && !spec.choices.includes(raw)) throw new Error(`--${name} must be one of ${spec.choices.join(', ')}; got '${raw}'`);
    return raw;
  }
  if (spec.type === 'boolean') {
    if (raw !== 'true' && raw !== 'false') throw new Error(`--${name} must be true or false; got '${raw}'`);
    return raw === 'true';
  }
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n) || (spec.type === 'integer' && !Number.isInteger(n))) {
    throw new Error(`--${name} must be ${spec.type === 'integer' ? 'an integer' : 'a number'}; got '${raw}'`);
  }
  if (spec.min !== undefined && n < spec.min) throw new Error(`--${name} must be at least ${spec.min}; got ${n}`);
  if (spec.max !== undefined && n > spec.max) throw new Error(`--${name} must be at most ${spec.max}; got ${n}`);
  return n;
}

export function legacyCommand(c: DeclaredCommand): Command {
  const flagUsage = Object.entries(c.flags).map(([n, s]) => (s.type === 'boolean' ? `[--${n}]` : `[--${n} <${'placeholder' in s && s.placeholder ? s.placeholder : s.type}>]`));
  return {
    name: c.name,
    usage: [c.name, ...(c.positionals ?? []).map((p) => (p.optional ? `[${p.name}]` : `<${p.name}>`)), ...flagUsage].join(' '),
    summary: c.summary,
    async run(args, io) {
      const values: Record<string, string | number | boolean> = {};
      const positionals: string[] = [];
      for (let i = 0; i < args.length; i++) {
        const a = args[i];
        if (!a.startsWith('--')) {
          positionals.push(a);
          continue;
        }
        const eq = a.indexOf('=');
        const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
        const spec = c.flags[name];
        if (spec === undefined) throw new Error(`unknown flag --${name}; flags: ${Object.keys(c.flags).map((n) => `--${n}`).join(', ')}`);
        let raw = eq >= 0 ? a.slice(eq + 1) : undefined;
        if (raw === undefined && spec.type === 'boolean') raw = 'true';
        if (raw === undefined) {
          raw = args[++i];
          if (raw === undefined || raw.startsWith('--')) throw new Error(`--${name} needs a value`);
        }
        values[name] = parseValue(name, spec, raw);
      }
      for (const [name, spec] of Object.entries(c.flags)) {
        if (values[name] === undefined && spec.default !== undefined) values[name] = spec.default;
        if (values[name] === undefined && spec.type === 'boolean') values[name] = false;
      }
      const required = (c.positionals ?? []).filter((p) => !p.optional).length;
      if (positionals.length < required || positionals.length > (c.positionals ?? []).length) {
        throw new Error(`expected ${(c.positionals ?? []).map((p) => p.name).join(' ') || 'no positional arguments'}; got ${positionals.length ? positionals.join(' ') : 'none'}`);
      }
      return c.run(values as never, positionals, io);
    },
  };
}
