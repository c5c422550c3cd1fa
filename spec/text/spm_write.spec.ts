import test from 'ava';
import * as fs from 'node:fs';
import { loadSentencePiece, readModelProto, type ModelProto } from '../../src/text/tokenizer';
import { encodeModelProto } from '../../src/text/spm_write';

test('encodeModelProto: read back, the same ModelProto and the same tokenizer', (t) => {
  for (const f of ['checkpoints/tiny/assets/tokenizer/vocabulary.spm', 'spec/fixtures/train/preprocess_train/preset/assets/tokenizer/vocabulary.spm']) {
    const bytes = new Uint8Array(fs.readFileSync(f));
    const m = readModelProto(bytes, f);
    const again = encodeModelProto(m);
    t.deepEqual(readModelProto(again), m, f);
    const a = loadSentencePiece(bytes);
    const b = loadSentencePiece(again);
    for (const s of ['caption en\n', '<loc0012> cat ; dog  ', 'Un perro muy grande corre por la playa', 'ünïcödé 漢字 🙂']) {
      t.deepEqual(b.encode(s), a.encode(s), s);
    }
  }
});

test('encodeModelProto: negative ids are int32 varints; booleans and normalizer fields are explicit', (t) => {
  const m = readModelProto(new Uint8Array(fs.readFileSync('checkpoints/tiny/assets/tokenizer/vocabulary.spm')));
  const changed: ModelProto = {
    ...m,
    trainerSpec: { ...m.trainerSpec, padId: -1, treatWhitespaceAsSuffix: true },
    normalizerSpec: { ...m.normalizerSpec, addDummyPrefix: false, precompiledCharsmap: new Uint8Array([1, 2, 3]) },
    denormalizerSpec: { ...m.normalizerSpec, name: 'identity' },
  };
  t.deepEqual(readModelProto(encodeModelProto(changed)), changed);
});
