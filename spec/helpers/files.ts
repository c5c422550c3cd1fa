/**
 * Temporary directories for specs, all made here and all removed: per test (`tempDir(t)`, removed when the
 * test ends), per spec file (`fileTempDir()`, removed after its last test), or by hand (`makeTempDir()`,
 * for helpers that remove it in a `finally`). Nothing a spec writes outlives it in the temp dir.
 */
import test, { type ExecutionContext } from 'ava';
import { makeTempDir } from './tmp';

export { makeTempDir };

export function tempDir(t: ExecutionContext, prefix = 'paligemma-'): string {
  const { dir, remove } = makeTempDir(prefix);
  t.teardown(remove);
  return dir;
}

/** A directory for the whole spec file, removed after its last test (also when tests fail). */
export function fileTempDir(prefix = 'paligemma-'): string {
  const { dir, remove } = makeTempDir(prefix);
  test.after.always(remove);
  return dir;
}
