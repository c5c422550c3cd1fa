/**
 * Multi-file writes are atomic as a whole: a child process writing a checkpoint over and over is SIGKILLed at
 * a random moment, 50 times per writer; each time the directory holds version A or B, complete and unmixed
 * (after `recoverDir`, which the next write also calls), and after the next write no temporary file remains.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pidAlive, recoverDir, writeDirAtomic, writeFileAtomic } from '../../checkpoints/atomic';
import { tempDir } from '../helpers/files';
import * as d from '../../dsl';
import { fromPreset } from '../../src/runtime/preset';
import { WRITERS, readVersion, writeVersion } from './atomic_writers';

const CHILD = path.resolve('dist/spec/checkpoints/atomic_child.main.js');
const KILLS = 50;

/**
 * Start the child; once it is writing, let it run `fraction` (0..2.5) of one write's duration `writeMs` (as
 * the child measured it last time: the machine's load changes it), then SIGKILL it. Resolves with the
 * duration the child reported this time, if it finished a write.
 */
function killDuringWrites(writer: string, dir: string, fraction: number, writeMs: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CHILD, writer, dir], { stdio: ['ignore', 'pipe', 'inherit'] });
    let measured = writeMs;
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      for (const line of chunk.split('\n')) {
        if (line === 'ready') setTimeout(() => child.kill('SIGKILL'), fraction * writeMs);
        else if (line.startsWith('w ')) measured = Number(line.slice(2));
      }
    });
    child.on('exit', (_code, signal) => (signal === 'SIGKILL' ? resolve(measured) : reject(new Error(`child exited without being killed (${signal})`))));
    child.on('error', reject);
  });
}

/** Leftovers of writes: hidden temporaries beside the checkpoint or inside it. */
const leftovers = (dir: string): string[] => [
  ...fs.readdirSync(path.dirname(dir)).filter((n) => n.startsWith(`.${path.basename(dir)}.`)),
  ...fs.readdirSync(dir).filter((n) => n.startsWith('.')),
];

for (const writer of WRITERS) {
  test.serial(`${writer}: killed at random moments ${KILLS} times, the directory is always version A or B, complete`, async (t) => {
    const dir = path.join(tempDir(t, 'paligemma-kill-'), 'ckpt');
    writeVersion(writer, dir, 'A');
    fs.writeFileSync(path.join(dir, 'README.md'), 'kept across saves');
    const seen = { A: 0, B: 0 };
    let random = 12345;
    let writeMs = 30;
    for (let i = 0; i < KILLS; i++) {
      random = (random * 1103515245 + 12345) % 2 ** 31;
      writeMs = await killDuringWrites(writer, dir, (random % 1000) / 400, writeMs);
      recoverDir(dir);
      seen[readVersion(writer, dir)]++;
      t.is(fs.readFileSync(path.join(dir, 'README.md'), 'utf8'), 'kept across saves');
    }
    // the next write removes what the killed writers left
    writeVersion(writer, dir, 'B');
    t.deepEqual(leftovers(dir), []);
    t.is(readVersion(writer, dir), 'B');
    t.log(`${writer}: after the kills, A ${seen.A} times, B ${seen.B} times`);
  });
}

test('writeDirAtomic: an error in fill leaves the old directory and no temporary', (t) => {
  const dir = path.join(tempDir(t), 'ckpt');
  writeDirAtomic(dir, (tmp) => fs.writeFileSync(path.join(tmp, 'a.txt'), 'old'));
  t.throws(
    () =>
      writeDirAtomic(dir, (tmp) => {
        fs.writeFileSync(path.join(tmp, 'a.txt'), 'new');
        throw new Error('disk full');
      }),
    { message: 'disk full' },
  );
  t.is(fs.readFileSync(path.join(dir, 'a.txt'), 'utf8'), 'old');
  t.deepEqual(leftovers(dir), []);
});

test('recoverDir: a directory left aside by a dead writer is put back; a live writer\'s is left alone', (t) => {
  const parent = tempDir(t);
  const dir = path.join(parent, 'ckpt');
  // a pid that is not alive: the highest possible one is never used on Linux
  const dead = 4194304;
  t.false(pidAlive(dead));
  fs.mkdirSync(path.join(parent, `.ckpt.old-${dead}.abc`));
  fs.writeFileSync(path.join(parent, `.ckpt.old-${dead}.abc`, 'w'), 'old');
  fs.mkdirSync(path.join(parent, `.ckpt.tmp-${dead}.def`));
  recoverDir(dir);
  t.is(fs.readFileSync(path.join(dir, 'w'), 'utf8'), 'old');
  fs.mkdirSync(path.join(parent, `.ckpt.old-${process.pid}.ghi`));
  recoverDir(dir);
  t.true(fs.existsSync(path.join(parent, `.ckpt.old-${process.pid}.ghi`)));
  fs.rmSync(path.join(parent, `.ckpt.old-${process.pid}.ghi`), { recursive: true });
  // the next write removes the dead writer's temporary
  writeDirAtomic(dir, (tmp) => fs.writeFileSync(path.join(tmp, 'w'), 'new'));
  t.deepEqual(fs.readdirSync(parent), ['ckpt']);
});

test('fromPreset of a preset whose save was killed between its renames loads the previous version (put back from aside)', async (t) => {
  const parent = tempDir(t);
  const dir = path.join(parent, 'tiny');
  const dead = 4194304;
  fs.cpSync('checkpoints/tiny', path.join(parent, `.tiny.old-${dead}.abc`), { recursive: true });
  const params = fromPreset(dir);
  const shipped = fromPreset('checkpoints/tiny');
  t.deepEqual(params.config, shipped.config);
  t.deepEqual(await params.token_embedding[0].tensor.data(), await shipped.token_embedding[0].tensor.data());
  t.deepEqual(fs.readdirSync(parent), ['tiny']);
  d.disposeTree(params);
  d.disposeTree(shipped);
});

test('writeFileAtomic: temporaries of dead writers are removed by the next write of the same file', (t) => {
  const dir = tempDir(t);
  fs.writeFileSync(path.join(dir, '.model.weights.h5.4194304.zzz.tmp'), 'half of a 55 GB file');
  fs.writeFileSync(path.join(dir, `.model.weights.h5.${process.pid}.live.tmp`), 'a live writer');
  writeFileAtomic(path.join(dir, 'model.weights.h5'), 'done');
  t.deepEqual(fs.readdirSync(dir).sort(), [`.model.weights.h5.${process.pid}.live.tmp`, 'model.weights.h5']);
});
