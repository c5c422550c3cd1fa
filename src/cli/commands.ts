/**
 * CLI commands that run the model: `run` (one forward pass), `generate` (the README's main job) and
 * `run-fixture` (the fixture contract: compute every output a golden fixture's manifest lists and write them in
 * the same format). Declarative (./command.ts): their flags are parsed and checked before `run` is called.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { backendOf, defineCommand, sharedFlags, type Command, type Io } from './command';
import { compiledModels } from '../runtime/backend';
import { forwardCompiled } from '../generate/compiled';
import { computeFixture, readManifest, writeComputed } from './fixture';
import { fromPreset, resolvePreset, shippedPresetDir } from '../runtime/preset';
import { SHIPPED_PRESETS } from '../../checkpoints/presets';
import { loadTokenizer } from '../text/tokenizer';
import { convertImage, readImage } from '../preprocess/image';
import { parseDetections } from '../preprocess/outputs';
import { greedy, topK, topP, type Sampler } from '../generate/generate';
import { generateText, loadCausalLM, promptText } from '../generate/causal_lm';
import { packGeneration } from '../preprocess/packing';
import { backbone, checkTokenIds, imageSequenceLength, logits } from '../../models/paligemma';

/** The default preset: the first shipped one (checkpoints/presets.ts, SHIPPED_PRESETS). */
export const DEFAULT_PRESET = SHIPPED_PRESETS[0].name;

/** The picture used when --image is not given: the default preset's own (paligemma_shapes: shapes.png). */
export function defaultImage(): string {
  const p = SHIPPED_PRESETS[0];
  return path.join(shippedPresetDir(p), p.image);
}

/** The directory of the default shipped preset. */
export const defaultPresetDir = (): string => shippedPresetDir(SHIPPED_PRESETS[0]);

const presetFlag = { ...sharedFlags.preset, default: DEFAULT_PRESET } as const;
const imageFlag = { type: 'string', help: "the picture (default: the default preset's own picture)", placeholder: 'png|jpg' } as const;

// ---------------------------------------------------------------------------------------------------------
// run-fixture
// ---------------------------------------------------------------------------------------------------------

export const runFixture = defineCommand({
  name: 'run-fixture',
  summary: "compute every output of a golden fixture's manifest.json from its preset/ and write them as .bin + manifest.json",
  example: 'paligemma run-fixture spec/fixtures/keras_hub/grad --out /tmp/grad --backend cpu',
  positionals: [{ name: 'fixture-dir', help: 'a golden fixture: manifest.json, inputs and preset/' }],
  flags: {
    out: { type: 'string', help: 'where to write the outputs (.bin files and manifest.json)', placeholder: 'dir', required: true },
    backend: sharedFlags.backend,
    threads: sharedFlags.threads,
  },
  async run(flags, [dir], io) {
    const manifest = readManifest(dir);
    const info = await backendOf(flags);
    const t0 = performance.now();
    const computed = await computeFixture(dir, manifest);
    writeComputed(flags.out, computed);
    io.out(`${path.basename(path.resolve(dir))}: wrote ${computed.outputs.size} outputs${computed.gradients.size ? ` and ${computed.gradients.size} gradients` : ''} to ${flags.out} (${info.name}, ${((performance.now() - t0) / 1000).toFixed(2)} s)`);
    return 0;
  },
});

// ---------------------------------------------------------------------------------------------------------
// run
// ---------------------------------------------------------------------------------------------------------

export const run = defineCommand({
  name: 'run',
  summary: 'one forward pass: image + prompt -> logits; prints the output shape, top tokens of the last position, backend and time',
  example: 'paligemma run --preset paligemma_shapes --prompt "answer en how many shapes?" --backend wasm',
  flags: {
    preset: presetFlag,
    image: imageFlag,
    prompt: { type: 'string', help: 'the prompt (a newline is added where it has none)', default: 'caption en' },
    backend: sharedFlags.backend,
    threads: sharedFlags.threads,
  },
  async run(flags, _positionals, io) {
    const presetDir = resolvePreset(flags.preset).dir ?? flags.preset;
    const imagePath = flags.image ?? defaultImage();
    const prompt = promptText(flags.prompt); // "\n" appended when missing, as generateText does
    const info = await backendOf(flags);
    const t0 = performance.now();
    const params = fromPreset(flags.preset);
    const tokenizer = loadTokenizer(presetDir);
    const c = params.config;
    const loaded = performance.now();
    const ids = tokenizer.encode(prompt);
    const length = ids.length + 1;
    checkTokenIds(c, [ids], undefined, 'run');
    const packed = packGeneration(ids, undefined, length);
    const image = convertImage(imagePath, c.image_size);
    const t1 = performance.now();
    const result = d.scoped(() => {
      const inputs = {
        images: d.named(tf.tensor(image, [1, c.image_size, c.image_size, 3]), ['batch', 'height', 'width', 'channels'] as const),
        token_ids: d.named(tf.tensor(packed.tokenIds, [1, length], 'int32'), ['batch', 'seq'] as const),
        padding_mask: d.named(tf.tensor(packed.paddingMask, [1, length], 'int32'), ['batch', 'seq'] as const),
        response_mask: d.named(tf.tensor(packed.responseMask, [1, length], 'int32'), ['batch', 'seq'] as const),
      };
      // the onnx backend: one compiled graph (its outputs are freed by this scope like eager ones)
      const both = compiledModels() ? forwardCompiled(params, inputs) : undefined;
      const seq = both?.sequence_output ?? backbone(params, inputs);
      const out = both?.logits ?? logits(params, seq);
      const last = d.slice(out, 'seq', length - 1, 1);
      return { seqShape: seq.shape, logitsShape: out.shape, last: tf.topk(tf.reshape(last.tensor, [-1]), 5) };
    });
    const values = await result.last.values.data();
    const indices = await result.last.indices.data();
    const ms = performance.now() - t1;
    tf.dispose([result.last.values, result.last.indices]);
    d.disposeTree(params);
    io.out(`preset: ${flags.preset} (${c.num_layers} decoder layers, ${imageSequenceLength(c)} image tokens, vocabulary ${c.vocabulary_size})`);
    io.out(`image: ${imagePath} -> ${c.image_size}x${c.image_size}; prompt: ${JSON.stringify(prompt)} -> ${length} tokens with <bos>`);
    io.out(`sequence_output: [${result.seqShape.join(', ')}]  logits: [${result.logitsShape.join(', ')}]`);
    io.out('top tokens after the prompt:');
    for (let i = 0; i < indices.length; i++) {
      io.out(`  ${String(indices[i]).padStart(6)}  ${JSON.stringify(tokenizer.idToPiece(indices[i])).padEnd(16)} logit ${values[i].toFixed(3)}`);
    }
    io.out(`backend: ${info.name}; load ${((loaded - t0) / 1000).toFixed(2)} s, forward ${(ms / 1000).toFixed(3)} s`);
    return 0;
  },
});

// ---------------------------------------------------------------------------------------------------------
// generate
// ---------------------------------------------------------------------------------------------------------

type SamplerFlags = { sampler: 'greedy' | 'top_k' | 'top_p'; k: number; p: number; temperature: number | undefined };

function samplerOf(flags: SamplerFlags): Sampler {
  if (flags.sampler === 'top_k') return topK(flags.k, flags.temperature);
  if (flags.sampler === 'top_p') return topP(flags.p, { temperature: flags.temperature });
  return greedy(flags.temperature);
}

export const generateCommand = defineCommand({
  name: 'generate',
  summary: 'image + prompt -> text (PaliGemmaCausalLM.generate), with a tokens/s figure; detection answers are parsed into boxes',
  example: 'paligemma generate --preset paligemma_shapes --image shapes.png --prompt "caption en" --max-new-tokens 16',
  flags: {
    preset: presetFlag,
    image: imageFlag,
    prompt: { type: 'string', help: 'the prompt, e.g. "caption en" or "detect cat" (a newline is added where it has none)', placeholder: 'text', required: true },
    'max-new-tokens': sharedFlags['max-new-tokens'],
    'max-length': { type: 'integer', help: 'at most this many tokens in all, <bos> and prompt included (keras_hub\'s max_length)', min: 2 },
    sampler: { type: 'string', help: 'how the next token is chosen', default: 'greedy', choices: ['greedy', 'top_k', 'top_p'] },
    k: { type: 'integer', help: 'top_k: sample among the k most likely tokens', default: 5, min: 1 },
    p: { type: 'number', help: 'top_p: sample among the most likely tokens whose probabilities sum to p', default: 0.9, min: 0, max: 1 },
    temperature: { type: 'number', help: 'divides the logits before sampling (default: 1)', min: 0 },
    seed: { type: 'integer', help: 'seed of the sampler\'s random numbers', default: 0 },
    int8: sharedFlags.int8,
    backend: sharedFlags.backend,
    threads: sharedFlags.threads,
  },
  async run(flags, _positionals, io) {
    const image = flags.image ?? defaultImage();
    const prompt = promptText(flags.prompt);
    const sampler = samplerOf(flags);
    if (!fs.existsSync(image)) throw new Error(`--image ${image}: no such file`);
    const info = await backendOf(flags);
    const t0 = performance.now();
    let last = -1;
    const lm = loadCausalLM(flags.preset, {
      onProgress: (done, total, what) => {
        const pct = Math.floor((100 * done) / Math.max(total, 1));
        if (pct >= last + 10 || done === total) {
          io.err(`loading ${flags.preset}: ${pct}% (${what})`);
          last = pct;
        }
      },
    });
    try {
      io.err(`loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s on ${info.name}`);
      const pixels = readImage(image);
      // streamed piece by piece where the output takes partial lines (a terminal), else printed whole
      const write = io.write?.bind(io);
      const out = await generateText(lm, { images: [pixels], prompts: [prompt] }, {
        maxNewTokens: flags['max-new-tokens'],
        maxLength: flags['max-length'],
        sampler,
        seed: flags.seed,
        stripPrompt: true,
        quantize: flags.int8 ? 'int8' : undefined,
        onToken: write ? ({ piece }) => write(piece) : undefined,
      });
      if (write) write('\n');
      else io.out(out.texts[0]);
      if (/^detect\b/.test(prompt)) printDetections(io, out.texts[0], pixels);
      const reason = out.finishReasons[0];
      const budget = flags['max-length'] === undefined ? `--max-new-tokens ${flags['max-new-tokens']}` : `--max-new-tokens ${flags['max-new-tokens']} or --max-length ${flags['max-length']}`;
      io.err(`finish: ${reason} (${reason === 'stop' ? 'a stop token: <eos>' : `the token budget: ${budget}`})`);
      io.err(`${out.generatedTokens} tokens in ${out.seconds.toFixed(2)} s: ${(out.generatedTokens / out.seconds).toFixed(1)} tokens/s (${info.name}${flags.int8 ? ', int8 weights' : ''}, prefill included)`);
    } finally {
      d.disposeTree(lm.params);
    }
    return 0;
  },
});

function printDetections(io: Io, text: string, pixels: { height: number; width: number }): void {
  for (const o of parseDetections(text, { height: pixels.height, width: pixels.width })) {
    const b = o.box;
    io.out(`  ${o.label || '(no label)'}: y ${b.yMin.toFixed(1)}..${b.yMax.toFixed(1)}, x ${b.xMin.toFixed(1)}..${b.xMax.toFixed(1)} px`);
  }
}

export const modelCommands: readonly Command[] = [run, generateCommand, runFixture];
