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

/** Whether process `pid` is alive on this machine (EPERM: alive, someone else's). */
export function pidAlive(pid: number): boolean {
  if (pid === process.pid) return true;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Remove the temporaries that writers of `dir/base` killed mid-write left (`.<base>.<pid>.<rand>.tmp` files,
 * `.<base>.tmp-<pid>.<rand>` directories): those whose pid is not alive. A live writer's are left alone.
 */
export function removeStaleTemps(dir: string, base: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    return;
  }
  const prefix = `.${base}.`;
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(?:tmp-)?(\d+)\.[a-z0-9]+(?:\.tmp)?$/.exec(n.slice(prefix.length));
    if (m === null || !(n.endsWith('.tmp') || n.slice(prefix.length).startsWith('tmp-'))) continue;
    if (!pidAlive(Number(m[1]))) fs.rmSync(path.join(dir, n), { recursive: true, force: true });
  }
}

/** fsync a directory, so the renames in it are durable (not possible on every platform: then skipped). */
function fsyncDir(dir: string): void {
  let fd: number;
  try {
    fd = fs.openSync(dir, 'r');
  } catch {
    return;
  }
  try {
    fs.fsyncSync(fd);
  } catch {
    // Windows cannot fsync a directory
  } finally {
    fs.closeSync(fd);
  }
}

/** Run `write(fd)` on a temporary file next to `file`, then fsync it and rename it over `file`. */
export function writeAtomically(file: string, write: (fd: number) => void): void {
  const dir = path.dirname(file);
  fs.mkdirSync(dir, { recursive: true });
  removeStaleTemps(dir, path.basename(file));
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
  fsyncDir(dir);
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

export interface WriteDirOptions {
  /**
   * Top-level entries of the old `dir` to carry into the new one when `fill` did not write them (hard links,
   * else copies): the files that are not part of what is being written (a tokenizer beside the weights).
   * Default: none; the new directory holds exactly what `fill` wrote.
   */
  readonly keep?: (name: string) => boolean;
}

/**
 * Build the directory `dir` as a whole: `fill(tmp)` writes every file into a sibling temporary directory
 * (`.<name>.tmp-<pid>.<rand>`), which is fsync'ed and renamed into place; an existing `dir` is first renamed
 * aside (`.<name>.old-<pid>.<rand>`) and removed after. A kill at any moment leaves the old directory or the
 * new one, complete: in the instant between the two renames only the old one exists, aside, and `recoverDir`
 * (called by the next `writeDirAtomic`, and by readers that want to) puts it back. Temporaries of writers that
 * died are removed by the next write.
 */
export function writeDirAtomic(dir: string, fill: (tmp: string) => void, options: WriteDirOptions = {}): void {
  const parent = path.dirname(path.resolve(dir));
  const name = path.basename(path.resolve(dir));
  fs.mkdirSync(parent, { recursive: true });
  recoverDir(dir);
  removeStaleTemps(parent, name);
  const tag = `${process.pid}.${Math.random().toString(36).slice(2)}`;
  const tmp = path.join(parent, `.${name}.tmp-${tag}`);
  fs.mkdirSync(tmp);
  try {
    fill(tmp);
    if (options.keep !== undefined && fs.existsSync(dir)) carryOver(dir, tmp, options.keep);
    for (const f of fs.readdirSync(tmp, { recursive: true, encoding: 'utf8' })) {
      const p = path.join(tmp, f);
      if (fs.lstatSync(p).isFile()) {
        const fd = fs.openSync(p, 'r');
        fs.fsyncSync(fd);
        fs.closeSync(fd);
      }
    }
    fsyncDir(tmp);
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  const old = path.join(parent, `.${name}.old-${tag}`);
  const hadOld = fs.existsSync(dir);
  if (hadOld) fs.renameSync(dir, old);
  fs.renameSync(tmp, dir);
  fsyncDir(parent);
  if (hadOld) fs.rmSync(old, { recursive: true, force: true });
}

/** Hard-link (else copy) the kept top-level entries of `from` that `to` does not have. */
function carryOver(from: string, to: string, keep: (name: string) => boolean): void {
  for (const n of fs.readdirSync(from)) {
    if (!keep(n) || fs.existsSync(path.join(to, n))) continue;
    const src = path.join(from, n);
    if (fs.lstatSync(src).isFile()) {
      try {
        fs.linkSync(src, path.join(to, n));
      } catch {
        fs.copyFileSync(src, path.join(to, n));
      }
    } else fs.cpSync(src, path.join(to, n), { recursive: true });
  }
}

/**
 * Put back a directory a killed `writeDirAtomic` left renamed aside (`.<name>.old-<pid>.*`) when `dir` itself
 * is missing; remove such leftovers when `dir` exists (the rename into place happened). A live writer's are
 * left alone.
 */
export function recoverDir(dir: string): void {
  const parent = path.dirname(path.resolve(dir));
  const name = path.basename(path.resolve(dir));
  if (!fs.existsSync(parent)) return;
  const prefix = `.${name}.old-`;
  const aside = fs
    .readdirSync(parent)
    .filter((f) => f.startsWith(prefix))
    .filter((f) => !pidAlive(Number(/^(\d+)\./.exec(f.slice(prefix.length))?.[1] ?? 0)));
  for (const f of aside) {
    if (!fs.existsSync(dir)) fs.renameSync(path.join(parent, f), dir);
    else fs.rmSync(path.join(parent, f), { recursive: true, force: true });
  }
}
