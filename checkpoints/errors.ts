/**
 * One error class for every untrusted input a reader refuses (checkpoints, configs, tokenizers, images,
 * preset handles), so that callers and fuzzers can tell "this file is bad" from a bug in the reader.
 *
 * `FormatError` carries the file (or handle) and the field that is wrong; its message starts with the file
 * and names the expected and actual values. `asFormatError` is the boundary every public reader passes its
 * errors through: our own messages (plain `Error`s that already name the file) become `FormatError`s as they
 * are, and anything else a malformed file could provoke deep inside (a `RangeError` from a DataView, a
 * `TypeError` from a decoder library, a stack overflow) becomes a `FormatError` whose field is `internal`:
 * still a clear error for the user, and, for the fuzzers, a crash to fix.
 */

export class FormatError extends Error {
  override readonly name = 'FormatError';

  constructor(
    /** The file, directory or handle that is refused. */
    readonly file: string,
    /** What in it is wrong: a header field, a key, a chunk; `internal` for an unexpected failure. */
    readonly field: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** `${file}: ${field}: ${detail}` as a FormatError. */
export const formatError = (file: string, field: string, detail: string): FormatError =>
  new FormatError(file, field, `${file}: ${field}: ${detail}`);

/** The field of one of our own messages `<file>: <field>: ...` (the text up to the next colon), else `file`. */
function fieldOf(message: string, file: string): string {
  const rest = message.startsWith(`${file}: `) ? message.slice(file.length + 2) : message;
  const colon = rest.indexOf(': ');
  return colon > 0 && colon < 120 ? rest.slice(0, colon) : 'file';
}

/**
 * Pass an error out of a reader of `file`: FormatErrors unchanged; our own plain Errors (they name the file
 * already) as FormatErrors with the same message; anything else wrapped, with the file, as field `internal`.
 */
export function asFormatError(e: unknown, file: string): FormatError {
  if (e instanceof FormatError) return e;
  if (e instanceof Error && e.constructor === Error) {
    // Our messages name the file they are about (for a merge of shards, the shards): kept as they are.
    return new FormatError(file, fieldOf(e.message, file), e.message, { cause: e });
  }
  const what = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  return new FormatError(file, 'internal', `${file}: corrupt or unsupported file (${what})`, { cause: e });
}

/** Run `f`, passing any error through `asFormatError(e, file)`. */
export function guarded<T>(file: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw asFormatError(e, file);
  }
}
