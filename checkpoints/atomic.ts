/**
 * Atomic file writes: everything goes to a temporary file next to the target, which is fsync'ed and then
 * renamed over the target, so a crash or an error leaves the old file or the new one, never half of one
 * (checkpoints, fixture outputs).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Positioned write of all of `bytes` (fs.writeSync may write less than asked, and at most 2 GiB at once). */
export function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  for (let done = 0; done < bytes.byteLength; ) {
    done += fs.writeSync(fd, bytes, done, Math.min(bytes.byteLength - done, 1 << 30), position + done);
  }
}

/** Run `write(fd)` on a temporary file next to `file`, then fsync it and rename it over `file`. */
export function writeAtomically(file: string, write: (fd: number) => void): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = path.join(dir, `.${path.basename(file)}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`);
  const fd = fs.openSync(tmp, 'wx');
  let done = false;
  try {
    write(fd);
    fs.fsyncSync(fd);
    done = true;
  } finally {
    fs.closeSync(fd);
    if (!done) fs.rmSync(tmp, { force: true });
  }
  try {
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}

/** Write bytes, a string (UTF-8) or consecutive pieces to `file`, atomically. */
export function writeFileAtomic(file: string, data: Uint8Array | string | readonly Uint8Array[]): void {
  const pieces = typeof data === 'string' ? [Buffer.from(data, 'utf8')] : data instanceof Uint8Array ? [data] : data;
  writeAtomically(file, (fd) => {
    let position = 0;
    for (const p of pieces) {
      writeFully(fd, p, position);
      position += p.byteLength;
    }
  });
}

/**
 * Build the directory `dir` as a whole: `fill(tmp)` writes every file into a sibling temporary directory,
 * which is fsync'ed and renamed into place; an existing `dir` is first renamed aside and removed after. A
 * crash leaves the old directory or the new one (or, in the instant between the two renames, the old one
 * beside it as `.<name>.old-*`, which `recoverDir` puts back).
 */
export function writeDirAtomic(dir: string, fill: (tmp: string) => void): void {
  const parent = path.dirname(path.resolve(dir));
  const name = path.basename(path.resolve(dir));
  fs.mkdirSync(parent, { recursive: true });
  recoverDir(dir);
  const tag = `${process.pid}.${Math.random().toString(36).slice(2)}`;
  const tmp = path.join(parent, `.${name}.tmp-${tag}`);
  fs.mkdirSync(tmp);
  try {
    fill(tmp);
    for (const f of fs.readdirSync(tmp, { recursive: true, encoding: 'utf8' })) {
      const p = path.join(tmp, f);
      if (fs.statSync(p).isFile()) {
        const fd = fs.openSync(p, 'r');
        fs.fsyncSync(fd);
        fs.closeSync(fd);
      }
    }
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = path.join(parent, `.${name}.old-${tag}`);
  const hadOld = fs.existsSync(dir);
  if (hadOld) fs.renameSync(dir, old);
  fs.renameSync(tmp, dir);
  if (hadOld) fs.rmSync(old, { recursive: true, force: true });
}

/** Put back a directory a crash left renamed aside (`.<name>.old-*`) when `dir` itself is missing. */
export function recoverDir(dir: string): void {
  const parent = path.dirname(path.resolve(dir));
  const name = path.basename(path.resolve(dir));
  if (fs.existsSync(dir) || !fs.existsSync(parent)) return;
  const aside = fs.readdirSync(parent).filter((f) => f.startsWith(`.${name}.old-`));
  if (aside.length > 0) fs.renameSync(path.join(parent, aside[0]), dir);
}
