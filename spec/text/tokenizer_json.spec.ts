/**
 * Hugging Face `tokenizer.json` support (src/text/tokenizer_json.ts): the fixture's SentencePiece model
 * (spec/fixtures/text/tokenizer/vocabulary.spm) is converted here to a tokenizer.json the way transformers'
 * GemmaConverter does (convert_slow_tokenizer.py: vocab from the pieces, `<0x09>` named "\t", merges from every
 * split of every entry into two entries, ordered by score; added tokens for CONTROL / USER_DEFINED pieces;
 * Gemma's normalizer, pre-tokenizer and decoder), written to a temporary folder with nothing else, and loaded
 * with `loadTokenizer(dir)`. Every sentencepiece encode and decode case of the fixture must come out exactly.
 */
import test from 'ava';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { fileTempDir } from '../helpers/files';
import { join } from 'node:path';
import { loadSentencePiece, loadTokenizer, loadTokenizerJson, readModelProto, type ModelProto } from '../../src/text/tokenizer';

const DIR = 'spec/fixtures/text/tokenizer';
const SPM = `${DIR}/vocabulary.spm`;

interface Cases {
  encode_cases: { id: number; category: string; text: string; ids: number[]; pieces: string[] }[];
  decode_cases: { note: string; ids: number[]; decoded: string }[];
}
const cases: Cases = JSON.parse(readFileSync(`${DIR}/cases.json`, 'utf8'));
const spmBytes = new Uint8Array(readFileSync(SPM));
const spm = readModelProto(spmBytes, SPM);

// ---------------------------------------------------------------------------------------------------------
// The converter, restated (transformers convert_slow_tokenizer.py: GemmaConverter, SpmConverter, generate_merges)
// ---------------------------------------------------------------------------------------------------------

type MergeOrder = 'score-then-split-length' | 'score-stable';

/**
 * A tokenizer.json as GemmaConverter writes it for `m`. `order`: newer transformers sort the merges by
 * (score, len(left), len(right)) descending, older ones by score alone (a stable sort, so in vocabulary order);
 * within one entry the splits are sorted by (id(left), id(right)) first. `pairs`: merges as [l, r] (tokenizers
 * >= 0.20) or as "l r" strings (older files).
 */
function gemmaTokenizerJson(m: ModelProto, order: MergeOrder, pairs: boolean): Record<string, unknown> {
  // The extractor's vocabulary: sentencepiece's id_to_piece, plus "\t" standing for <0x09>.
  const extractorVocab = new Map(m.pieces.map((p, id) => [p.piece, id]));
  if (!extractorVocab.has('\t')) extractorVocab.set('\t', extractorVocab.get('<0x09>') as number);
  // GemmaConverter.vocab: the pieces in id order, <0x09> renamed "\t" (score 0).
  const vocabScores: [string, number][] = m.pieces.map((p) => (p.piece === '<0x09>' ? ['\t', 0] : [p.piece, p.score]));
  const merges: { l: string; r: string; score: number }[] = [];
  for (const [piece, score] of vocabScores) {
    const chars = Array.from(piece); // Python's len / slicing count code points
    const local: { l: string; r: string; score: number }[] = [];
    for (let k = 1; k < chars.length; k++) {
      const l = chars.slice(0, k).join('');
      const r = chars.slice(k).join('');
      if (extractorVocab.has(l) && extractorVocab.has(r)) local.push({ l, r, score });
    }
    const id = (s: string): number => extractorVocab.get(s) as number;
    local.sort((a, b) => id(a.l) - id(b.l) || id(a.r) - id(b.r));
    merges.push(...local);
  }
  const len = (s: string): number => Array.from(s).length;
  merges.sort((a, b) =>
    order === 'score-stable'
      ? b.score - a.score
      : b.score - a.score || len(b.l) - len(a.l) || len(b.r) - len(a.r),
  ); // Array.prototype.sort is stable, as Python's sorted
  const vocab = Object.fromEntries(vocabScores.map(([piece], id) => [piece, id]));
  const turn = new Set(['<start_of_turn>', '<end_of_turn>']);
  const added = m.pieces
    .map((p, id) => ({ ...p, id }))
    .filter((p) => p.type === 'CONTROL' || p.type === 'USER_DEFINED' || p.type === 'UNKNOWN') // transformers adds <unk>
    .map((p) => ({
      id: p.id,
      content: p.piece,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: p.type !== 'USER_DEFINED' || turn.has(p.piece),
    }));
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' },
    pre_tokenizer: { type: 'Split', pattern: { String: ' ' }, behavior: 'MergedWithPrevious', invert: false },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<bos>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [],
      special_tokens: { '<bos>': { id: '<bos>', ids: [2], tokens: ['<bos>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
      ],
    },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab,
      merges: merges.map(({ l, r }) => (pairs ? [l, r] : `${l} ${r}`)),
    },
  };
}

const tmp = fileTempDir('tokenizer-json-');
/** A fresh folder holding `files` (name -> JSON value, or bytes). */
function folder(name: string, files: Record<string, unknown>): string {
  const dir = join(tmp, name);
  for (const [file, content] of Object.entries(files)) {
    mkdirSync(join(dir, file, '..'), { recursive: true });
    writeFileSync(join(dir, file), content instanceof Uint8Array ? content : JSON.stringify(content, null, 1));
  }
  return dir;
}

const hfJson = gemmaTokenizerJson(spm, 'score-then-split-length', true);
const hfDir = folder('hf', { 'tokenizer.json': hfJson });
const tok = loadTokenizer(hfDir);
const withModel = (edit: (model: Record<string, unknown>) => void): Record<string, unknown> => {
  const json = structuredClone(hfJson);
  edit(json.model as Record<string, unknown>);
  return json;
};

// ---------------------------------------------------------------------------------------------------------
// Fixture parity through tokenizer.json alone
// ---------------------------------------------------------------------------------------------------------

test('the converted tokenizer.json is the Gemma form: 2352 tokens, "\\t" for <0x09>, 352 + 27 cases', (t) => {
  const model = hfJson.model as { vocab: Record<string, number>; merges: unknown[] };
  t.is(Object.keys(model.vocab).length, 2352);
  t.is(model.vocab['\t'], 15 + 9);
  t.false('<0x09>' in model.vocab);
  t.true(model.merges.length >= 518); // at least one per multi-character NORMAL piece
  t.deepEqual(model.merges.slice(0, 4), [['\n\n', '\n'], ['\n', '\n\n'], ['\n', '\n'], ['\u2581', 't']]);
  t.is(cases.encode_cases.length, 352);
  t.is(cases.decode_cases.length, 27);
});

for (const c of cases.encode_cases) {
  test(`encode #${c.id} ${c.category} ${JSON.stringify(c.text).slice(0, 40)}`, (t) => {
    t.deepEqual(tok.encode(c.text), c.ids);
    t.deepEqual(tok.encodePieces(c.text), c.pieces);
  });
}

for (const c of cases.decode_cases) {
  test(`decode ${c.note}`, (t) => {
    t.is(tok.decode(c.ids), c.decoded);
  });
}

test('pieces, types, special ids and loc/seg offsets equal the SentencePiece model\'s', (t) => {
  t.deepEqual(
    tok.model.pieces.map((p) => [p.piece, p.type]),
    spm.pieces.map((p) => [p.piece, p.type]),
  );
  const s = loadSentencePiece(spmBytes, SPM);
  for (const k of ['vocabularySize', 'bosId', 'eosId', 'padId', 'unkId', 'locOffset', 'segOffset'] as const) {
    t.is(tok[k], s[k], k);
  }
  t.deepEqual([tok.bosId, tok.eosId, tok.padId, tok.unkId, tok.locOffset, tok.segOffset], [2, 1, 0, 3, 1200, 2224]);
  t.is(tok.idToPiece(24), '<0x09>');
  t.is(tok.pieceToId('<start_of_turn>'), 10);
});

test('scores: a merged piece scores -(rank of the first merge making it), in the SentencePiece order', (t) => {
  const merges = (hfJson.model as { merges: [string, string][] }).merges;
  const first = new Map<string, number>();
  merges.forEach(([l, r], rank) => first.has(l + r) || first.set(l + r, rank));
  const normal = tok.model.pieces.filter((p) => p.type === 'NORMAL' && first.has(p.piece));
  t.is(normal.length, 518); // every multi-character NORMAL piece
  for (const p of normal) t.is(p.score, -(first.get(p.piece) as number) || 0);
  // Ranks follow the SentencePiece scores: sorting by either gives the same list.
  const bySpm = [...normal].sort((a, b) => spm.pieces[tok.pieceToId(b.piece)!].score - spm.pieces[tok.pieceToId(a.piece)!].score);
  t.deepEqual(bySpm.map((p) => p.piece), [...normal].sort((a, b) => b.score - a.score).map((p) => p.piece));
});

test('older converters: merges as "l r" strings, sorted by score alone, give the same ids', (t) => {
  const dir = folder('hf-legacy', { 'tokenizer.json': gemmaTokenizerJson(spm, 'score-stable', false) });
  const legacy = loadTokenizer(dir);
  for (const c of cases.encode_cases) t.deepEqual(legacy.encode(c.text), c.ids, `#${c.id}`);
});

test('loadTokenizerJson takes the text or the parsed object; loadTokenizer takes the file', (t) => {
  const text = JSON.stringify(hfJson);
  const fromFile = loadTokenizer(join(hfDir, 'tokenizer.json'));
  for (const x of [loadTokenizerJson(text, 'tokenizer.json'), loadTokenizerJson(hfJson), fromFile]) {
    t.deepEqual(x.encode('detect cat ; dog\n<loc0001>\tx'), tok.encode('detect cat ; dog\n<loc0001>\tx'));
  }
});

// ---------------------------------------------------------------------------------------------------------
// Which file a directory uses
// ---------------------------------------------------------------------------------------------------------

const unigram = {
  added_tokens: [],
  normalizer: null,
  pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true },
  decoder: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'always', split: true },
  model: { type: 'Unigram', unk_id: 0, vocab: [['<unk>', 0], ['a', -1]], byte_fallback: false },
};
const kerasConfig = {
  module: 'keras_hub.src.models.pali_gemma.pali_gemma_tokenizer',
  class_name: 'PaliGemmaTokenizer',
  config: { name: 'pali_gemma_tokenizer', trainable: true, dtype: 'int32', proto: null, sequence_length: null },
  registered_name: 'keras_hub>PaliGemmaTokenizer',
};

test('a directory with tokenizer.model and tokenizer.json uses tokenizer.model', (t) => {
  // The json here would be refused if it were read.
  const dir = folder('both', { 'tokenizer.model': spmBytes, 'tokenizer.json': unigram });
  t.deepEqual(loadTokenizer(dir).encode('caption en\n'), [799, 792, 498, 569, 12]);
});

test('a Keras preset directory uses assets/tokenizer/vocabulary.spm, not its own tokenizer.json', (t) => {
  const dir = folder('keras', { 'assets/tokenizer/vocabulary.spm': spmBytes, 'tokenizer.json': kerasConfig });
  t.deepEqual(loadTokenizer(dir).encode('caption en\n'), [799, 792, 498, 569, 12]);
});

// ---------------------------------------------------------------------------------------------------------
// Literal errors
// ---------------------------------------------------------------------------------------------------------

test('a Keras tokenizer.json without its assets is refused as a Keras config', (t) => {
  const dir = folder('keras-no-assets', { 'tokenizer.json': kerasConfig });
  t.throws(() => loadTokenizer(dir), {
    message:
      `tokenizer: ${dir}/tokenizer.json is a Keras tokenizer config (class_name PaliGemmaTokenizer), not a Hugging ` +
      `Face tokenizer.json; the preset's vocabulary is ${dir}/assets/tokenizer/vocabulary.spm, which is missing`,
  });
  t.throws(() => loadTokenizer(`${dir}/tokenizer.json`), {
    message:
      `tokenizer: ${dir}/tokenizer.json is a Keras tokenizer config (class_name PaliGemmaTokenizer), not a Hugging ` +
      `Face tokenizer.json; the preset's vocabulary is its assets/tokenizer/vocabulary.spm`,
  });
});

test('a unigram tokenizer.json is refused, naming the file and model.type', (t) => {
  const dir = folder('unigram', { 'tokenizer.json': unigram });
  t.throws(() => loadTokenizer(dir), {
    message: `tokenizer: ${dir}/tokenizer.json: model.type is "Unigram"; only BPE with byte_fallback (Gemma, PaliGemma) is supported`,
  });
});

test('other forms are refused, naming the field', (t) => {
  const refused = (json: unknown, message: string): void => {
    t.throws(() => loadTokenizerJson(json, 'x/tokenizer.json'), { message: `tokenizer: x/tokenizer.json: ${message}` });
  };
  refused(
    { ...hfJson, model: { type: 'WordPiece', vocab: {}, unk_token: '[UNK]' } },
    'model.type is "WordPiece"; only BPE with byte_fallback (Gemma, PaliGemma) is supported',
  );
  refused(
    withModel((m) => (m.byte_fallback = false)),
    'model.byte_fallback is false; only BPE with byte_fallback (Gemma, PaliGemma) is supported',
  );
  refused(withModel((m) => (m.dropout = 0.1)), 'model.dropout is 0.1; only deterministic BPE (null) is supported');
  // Llama's legacy normalizer prepends '▁' (a dummy prefix), which Gemma's does not.
  const llama = {
    type: 'Sequence',
    normalizers: [{ type: 'Prepend', prepend: '\u2581' }, { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' }],
  };
  refused(
    { ...hfJson, normalizer: llama },
    `normalizer is ${JSON.stringify(llama).slice(0, 77)}...; only Replace(" " -> "▁") (Gemma) is supported`,
  );
  refused({ ...hfJson, normalizer: { type: 'NFKC' } }, 'normalizer is {"type":"NFKC"}; only Replace(" " -> "▁") (Gemma) is supported');
  const metaspace = { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false };
  refused(
    { ...hfJson, pre_tokenizer: metaspace },
    `pre_tokenizer is ${JSON.stringify(metaspace)}; only none or a Split on " " (Gemma) is supported`,
  );
  const strip = { type: 'Strip', content: ' ', start: 1, stop: 0 };
  const decoders = [...(hfJson.decoder as { decoders: unknown[] }).decoders, strip];
  refused(
    { ...hfJson, decoder: { type: 'Sequence', decoders } },
    `decoder is ${JSON.stringify({ type: 'Sequence', decoders }).slice(0, 77)}...; only Replace("▁" -> " "), ByteFallback, Fuse (Gemma) is supported`,
  );
  // A merge list that lacks a split our encoder would make (HF merges only listed pairs).
  refused(
    withModel((m) => (m.merges = (m.merges as [string, string][]).filter(([l, r]) => !(l === '\u2581' && r === 't')))),
    'model.merges lacks "▁ t", a split of "▁t" into two tokens',
  );
  refused(withModel((m) => (m.merges as unknown[]).push(['q', 'zz'])), `model.merges[${(hfJson.model as { merges: unknown[] }).merges.length}] ["q","zz"]: "zz" is not in model.vocab`);
  refused(
    withModel((m) => delete (m.vocab as Record<string, number>)['<0x41>']),
    'model.vocab has no token with id 80 (ids must be 0..2351)',
  );
  refused(
    { ...hfJson, added_tokens: [{ id: 2352, content: '<image>', special: true, lstrip: true }] },
    'added_tokens[0].lstrip is true ("<image>"); only false is supported',
  );
  t.throws(() => loadTokenizerJson('{"model":', 'bad.json'), { message: /^tokenizer: bad\.json is not JSON \(/ });
  t.throws(() => loadTokenizerJson({ pieces: [] }, 'vocab.json'), {
    message: 'tokenizer: vocab.json is not a Hugging Face tokenizer.json (no model.type)',
  });
});

test('an added token beyond the vocabulary (PaliGemma\'s <image>) is matched in text', (t) => {
  const json = structuredClone(hfJson);
  (json.added_tokens as unknown[]).push({
    id: 2352, content: '<image>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  const withImage = loadTokenizerJson(json, 'image.json');
  t.is(withImage.vocabularySize, 2353);
  t.deepEqual(withImage.encode('<image><image><bos>caption en\n'), [2352, 2352, ...tok.encode('<bos>caption en\n')]);
  t.is(withImage.decode([2, 2352, 799]), '<image>' + tok.decode([799]));
});
