/** Child of the kill test: writes versions B, A, B, ... of a checkpoint into a directory until it is killed. */
import { writeVersion, type WriterName } from './atomic_writers';

const [writer, dir] = process.argv.slice(2) as [WriterName, string];
process.stdout.write('ready\n');
for (let i = 0; ; i++) {
  const start = performance.now();
  writeVersion(writer, dir, i % 2 === 0 ? 'B' : 'A');
  process.stdout.write(`w ${performance.now() - start}\n`);
}
