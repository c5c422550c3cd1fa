import test from 'ava';
import { fuzzReader } from './readers';
import { TARGETS } from './targets';
import { readModelProto } from '../../src/text/tokenizer';

test('spm: mutated files give a typed error naming the file, or load what the seed holds', (t) => fuzzReader(t, 'spm', 300));

test('a first piece whose length swallows the next two pieces is refused (protobuf would read "last wins")', (t) => {
  const { seed } = TARGETS.spm();
  const bytes = Uint8Array.from(seed);
  bytes[1] ^= 32; // the first piece's length, 14 -> 46
  t.throws(() => readModelProto(bytes, 'tokenizer.model'), { message: /\(piece "<pad>" has field 1 twice\)$/ });
});
