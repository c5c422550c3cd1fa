/** Child of the kill test: writes versions B, A, B, ... of a checkpoint into a directory until it is killed. */
import { WRITERS, writeVersion, type WriterName } from './atomic_writers';

const [writer, dir] = process.argv.slice(2) as [WriterName, string];
if (!WRITERS.includes(writer) || dir === undefined) {
  process.stderr.write(`usage: atomic_child.main.js <${WRITERS.join('|')}> <dir>\n`);
  process.exit(2);
}
process.stdout.write('ready\n');
for (let i = 0; ; i++) {
  const start = performance.now();
  writeVersion(writer, dir, i % 2 === 0 ? 'B' : 'A');
  process.stdout.write(`w ${performance.now() - start}\n`);
}
