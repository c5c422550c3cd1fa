/**
 * CLI commands that run the model: `run` (the README's main job) and `run-fixture` (the fixture contract:
 * compute every output a golden fixture's manifest lists and write them in the same format).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import type { Command, Io } from './cli';
import { backendFlag, flag } from './cli';
import { setBackend } from '../runtime/backend';
import { computeFixture, readManifest, writeComputed } from './fixture';
import { fromPreset, resolvePreset, shippedPresetDir } from '../runtime/preset';
import { findShippedPreset } from '../../checkpoints/presets';
import { loadTokenizer } from '../text/tokenizer';
import { convertImage, readImage } from '../preprocess/image';
import { parseDetections } from '../preprocess/outputs';
import { greedy, topK, topP, type Sampler } from '../generate/generate';
import { generateText, loadCausalLM } from '../generate/causal_lm';
import { packGeneration } from '../preprocess/packing';
import { backbone, imageSequenceLength, logits } from '../../models/paligemma';

/** The default preset: `paligemma_shapes`, the trained model shipped in the package (checkpoints/shapes). */
export const DEFAULT_PRESET = 'paligemma_shapes';

/** The default preset's directory, found from the installed package's root. */
export function defaultPresetDir(): string {
  return shippedPresetDir(findShippedPreset(DEFAULT_PRESET)!);
}

/** The picture shipped with the default preset (checkpoints/shapes/shapes.png). */
export const defaultImage = (): string => path.join(defaultPresetDir(), findShippedPreset(DEFAULT_PRESET)!.image);

const positional = (args: readonly string[]): string[] => {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i].startsWith('--')) {
      if (!args[i].includes('=')) i++;
    } else out.push(args[i]);
  }
  return out;
};

export const runFixture: Command = {
  name: 'run-fixture',
  usage: 'run-fixture <fixture-dir> --out <out-dir> [--backend cpu|wasm|webgpu]',
  summary: "compute every output of a golden fixture's manifest.json from its preset/ and write them as .bin + manifest.json",
  async run(args, io) {
    const [dir] = positional(args);
    const out = flag(args, 'out');
    if (!dir) throw new Error('missing <fixture-dir>');
    if (!out) throw new Error('missing --out <out-dir>');
    const manifest = readManifest(dir);
    const info = await setBackend(backendFlag(args));
    const t0 = performance.now();
    const computed = await computeFixture(dir, manifest);
    writeComputed(out, computed);
    io.out(`${path.basename(path.resolve(dir))}: wrote ${computed.outputs.size} outputs${computed.gradients.size ? ` and ${computed.gradients.size} gradients` : ''} to ${out} (${info.name}, ${((performance.now() - t0) / 1000).toFixed(2)} s)`);
    return 0;
  },
};

export const run: Command = {
  name: 'run',
  usage: 'run [--preset <dir|name>] [--image <png|jpg>] [--prompt <text>] [--backend auto|cpu|wasm|webgpu]',
  summary: 'one forward pass: image + prompt -> logits; prints the output shape, top tokens of the last position, backend and time',
  async run(args, io) {
    const presetArg = flag(args, 'preset');
    const presetDir = presetArg ?? defaultPresetDir();
    const imagePath = flag(args, 'image') ?? defaultImage();
    const prompt = flag(args, 'prompt') ?? 'caption en\n';
    const info = await setBackend(backendFlag(args));
    const t0 = performance.now();
    const params = fromPreset(presetDir);
    const tokenizer = loadTokenizer(resolvePreset(presetDir).dir ?? presetDir);
    const c = params.config;
    const loaded = performance.now();
    const ids = tokenizer.encode(prompt);
    const length = ids.length + 1;
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
      const seq = backbone(params, inputs);
      const out = logits(params, seq);
      const last = d.slice(out, 'seq', length - 1, 1);
      return { seqShape: seq.shape, logitsShape: out.shape, last: tf.topk(tf.reshape(last.tensor, [-1]), 5) };
    });
    const values = await result.last.values.data();
    const indices = await result.last.indices.data();
    const ms = performance.now() - t1;
    tf.dispose([result.last.values, result.last.indices]);
    d.disposeTree(params);
    io.out(`preset: ${presetDir} (${c.num_layers} decoder layers, ${imageSequenceLength(c)} image tokens, vocabulary ${c.vocabulary_size})`);
    io.out(`image: ${imagePath} -> ${c.image_size}x${c.image_size}; prompt: ${JSON.stringify(prompt)} -> ${length} tokens with <bos>`);
    io.out(`sequence_output: [${result.seqShape.join(', ')}]  logits: [${result.logitsShape.join(', ')}]`);
    io.out('top tokens after the prompt:');
    for (let i = 0; i < indices.length; i++) {
      io.out(`  ${String(indices[i]).padStart(6)}  ${JSON.stringify(tokenizer.idToPiece(indices[i])).padEnd(16)} logit ${values[i].toFixed(3)}`);
    }
    io.out(`backend: ${info.name}; load ${((loaded - t0) / 1000).toFixed(2)} s, forward ${(ms / 1000).toFixed(3)} s`);
    return 0;
  },
};

const numberFlag = (args: readonly string[], name: string): number | undefined => {
  const v = flag(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`--${name} must be a number; got '${v}'`);
  return n;
};

function samplerFlags(args: readonly string[]): Sampler {
  const kind = flag(args, 'sampler') ?? 'greedy';
  const temperature = numberFlag(args, 'temperature');
  if (kind === 'greedy') return greedy(temperature);
  if (kind === 'top_k') return topK(numberFlag(args, 'k') ?? 5, temperature);
  if (kind === 'top_p') return topP(numberFlag(args, 'p') ?? 0.9, { temperature });
  throw new Error(`--sampler must be greedy, top_k or top_p; got '${kind}'`);
}

export const generateCommand: Command = {
  name: 'generate',
  usage: 'generate [--preset <dir|name>] --image <png|jpg> --prompt <text> [--max-length 64] [--sampler greedy|top_k|top_p] [--k 5] [--p 0.9] [--temperature 1] [--seed 0] [--backend ...]',
  summary: 'image + prompt -> text (PaliGemmaCausalLM.generate), with a tokens/s figure; detection answers are parsed into boxes',
  async run(args, io) {
    const preset = flag(args, 'preset') ?? defaultPresetDir();
    const image = flag(args, 'image') ?? defaultImage();
    const raw = flag(args, 'prompt');
    if (raw === undefined) throw new Error('missing --prompt, e.g. --prompt "caption en"');
    // PaliGemma's prompts end with a newline (big_vision and Hugging Face add it too)
    const prompt = raw.endsWith('\n') ? raw : `${raw}\n`;
    const maxLength = numberFlag(args, 'max-length') ?? 64;
    const sampler = samplerFlags(args);
    if (!fs.existsSync(image)) throw new Error(`--image ${image}: no such file`);
    const info = await setBackend(backendFlag(args));
    const t0 = performance.now();
    let last = -1;
    const lm = loadCausalLM(preset, {
      onProgress: (done, total, what) => {
        const pct = Math.floor((100 * done) / Math.max(total, 1));
        if (pct >= last + 10 || done === total) {
          io.err(`loading ${path.basename(preset)}: ${pct}% (${what})`);
          last = pct;
        }
      },
    });
    try {
      io.err(`loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s on ${info.name}`);
      const pixels = readImage(image);
      const out = await generateText(lm, { images: [pixels], prompts: [prompt] }, { maxLength, sampler, seed: numberFlag(args, 'seed') ?? 0, stripPrompt: true });
      io.out(out.texts[0]);
      if (/^detect\b/.test(prompt)) {
        for (const o of parseDetections(out.texts[0], { height: pixels.height, width: pixels.width })) {
          const b = o.box;
          io.out(`  ${o.label || '(no label)'}: y ${b.yMin.toFixed(1)}..${b.yMax.toFixed(1)}, x ${b.xMin.toFixed(1)}..${b.xMax.toFixed(1)} px`);
        }
      }
      io.err(`${out.generatedTokens} tokens in ${out.seconds.toFixed(2)} s: ${(out.generatedTokens / out.seconds).toFixed(1)} tokens/s (${info.name}, prefill included)`);
    } finally {
      d.disposeTree(lm.params);
    }
    return 0;
  },
};

export const modelCommands: readonly Command[] = [run, generateCommand, runFixture];
export type { Io };
