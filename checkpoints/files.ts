/**
 * Opening untrusted files and paths: only regular files are read (a FIFO in place of `config.json` would block
 * forever, a device would never end), text is read up to a size limit, JSON is refused past a nesting depth
 * before it is parsed, and names from a file or a handle (shard names, repo names, revisions) are single plain
 * path segments whose joined path stays inside its root.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError } from './errors';

const kind = (st: fs.Stats): string =>
  st.isDirectory() ? 'a directory' : st.isFIFO() ? 'a FIFO' : st.isSocket() ? 'a socket' : st.isCharacterDevice() || st.isBlockDevice() ? 'a device' : 'not a regular file';

/**
 * Open `file` for reading when it is a regular file (following links). Opened non-blocking, so a FIFO cannot
 * block the open, then checked with fstat on the descriptor itself (no race with a swap after a stat).
 */
export function openRegularFile(file: string): number {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | (fs.constants.O_NONBLOCK ?? 0));
  } catch (e) {
    throw new FormatError(file, 'file', `${file}: cannot read: ${(e as Error).message}`, { cause: e });
  }
  const st = fs.fstatSync(fd);
  if (!st.isFile()) {
    fs.closeSync(fd);
    throw new FormatError(file, 'file', `${file}: cannot read: ${kind(st)}, not a regular file`);
  }
  return fd;
}

/** True when `file` is a regular file (following links); false when missing or anything else. */
export function isRegularFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** The whole of a regular file, refused above `maxBytes` before anything is read. */
export function readRegularFile(file: string, maxBytes: number): Buffer {
  const fd = openRegularFile(file);
  try {
    const size = fs.fstatSync(fd).size;
    if (size > maxBytes) throw new FormatError(file, 'size', `${file}: size: ${size} bytes, above the limit of ${maxBytes} for this kind of file`);
    const buf = Buffer.alloc(size);
    for (let done = 0; done < size; ) {
      const n = fs.readSync(fd, buf, done, size - done, done);
      if (n === 0) throw new FormatError(file, 'size', `${file}: size: ended at byte ${done} of ${size} while being read`);
      done += n;
    }
    return buf;
  } finally {
    fs.closeSync(fd);
  }
}

/** A config.json is a few KB; refuse reading more than this. */
export const MAX_CONFIG_BYTES = 1 << 20;

/** JSON files we read are small: configs, shard maps, tokenizer.json (Gemma's is ~35 MB). */
export const MAX_JSON_BYTES = 256 * 1024 * 1024;
/** No file we read nests deeper than ~10; V8's parser and our walkers recurse. */
export const MAX_JSON_DEPTH = 64;

/** Deepest nesting of arrays and objects in JSON text (strings skipped), stopping once past `limit`. */
export function jsonDepth(text: string, limit = Infinity): number {
  let depth = 0;
  let deepest = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++; // backslash: skip the escaped character
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      depth++;
      if (depth > deepest) deepest = depth;
      if (deepest > limit) return deepest;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return deepest;
}

/** Parse JSON text from `file`, refusing nesting deeper than MAX_JSON_DEPTH; errors name the file. */
export function parseJsonText(text: string, file: string): unknown {
  const depth = jsonDepth(text, MAX_JSON_DEPTH);
  if (depth > MAX_JSON_DEPTH) throw new FormatError(file, 'json', `${file}: json: nested deeper than ${MAX_JSON_DEPTH} levels`);
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new FormatError(file, 'json', `${file}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** Read and parse a JSON file (a regular file, at most `maxBytes`, at most MAX_JSON_DEPTH deep). */
export function readJsonFile(file: string, maxBytes = MAX_JSON_BYTES): unknown {
  return parseJsonText(readRegularFile(file, maxBytes).toString('utf8'), file);
}

/**
 * A name that must be one plain path segment (a shard file name, a repo or revision part): not empty, not `.`
 * or `..`, no `/`, `\` or NUL. Returns the problem, or null when it is fine.
 */
export function segmentProblem(name: string): string | null {
  if (name === '') return 'an empty name';
  if (name === '.' || name === '..') return `"${name}", which is not a file name`;
  if (/[/\\\0]/.test(name)) return `${JSON.stringify(name)}, which is not a single file name (it has a path separator)`;
  return null;
}

/** `root/...parts`, refused (FormatError on `what`) unless it resolves inside `root`. */
export function joinInside(root: string, parts: readonly string[], what: string): string {
  const base = path.resolve(root);
  const joined = path.resolve(base, ...parts);
  const rel = path.relative(base, joined);
  if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) {
    throw new FormatError(what, 'path', `${what}: path: ${JSON.stringify(parts.join('/'))} leaves ${base}`);
  }
  return joined;
}
