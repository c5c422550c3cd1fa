import test from 'ava';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { tf } from '../../dsl/tf';
import * as d from '../../dsl';
import { main } from '../../src/cli/cli';
import { setBackend } from '../../src/runtime/backend';
import { loadCausalLM } from '../../src/generate/causal_lm';
import { readJsonl } from '../../src/train/data';
import { evaluate } from '../../src/train/evaluate';
import { tempDir } from '../helpers/files';
import { tinyJsonl } from '../helpers/train';

const preset = 'spec/fixtures/train/preprocess_train/preset';

async function cli(args: string[]): Promise<{ code: number; out: string[]; err: string[] }> {
  const out: string[] = [];
  const err: string[] = [];
  const code = await main(args, { out: (l) => out.push(l), err: (l) => err.push(l) });
  return { code, out, err };
}

test.serial('eval: exact match per prefix, then `accuracy: 0.667 (2/3)` as the last line', async (t) => {
  const dir = tempDir(t);
  const file = tinyJsonl(dir, 3, 'eval');
  // make two of the three suffixes what the model answers (greedy, 3 new tokens), the third a wrong one
  await setBackend('cpu');
  const lm = loadCausalLM(preset);
  const { predictions } = await evaluate(lm, readJsonl(file), { loss: false, maxNewTokens: 3 });
  d.disposeTree(lm.params);
  t.true(predictions!.every((p) => p !== ''), `predictions ${JSON.stringify(predictions)}`);
  const lines = fs.readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
  lines[0].suffix = predictions![0];
  lines[1].suffix = predictions![1];
  lines[2].suffix = 'not what a random model says';
  fs.writeFileSync(file, lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  const before = tf.memory().numTensors;
  const r = await cli(['eval', '--preset', preset, '--data', file, '--max-new-tokens', '3', '--backend', 'cpu']);
  t.is(r.code, 0, r.err.join('\n'));
  t.deepEqual(r.out, ['  "answer en what colour?": 0.500 (1/2)', '  "caption en"            : 1.000 (1/1)', 'accuracy: 0.667 (2/3)']);
  t.is(tf.memory().numTensors, before);
});

test.serial('eval: errors name the flag or the record', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'e.jsonl');
  fs.writeFileSync(file, '{"image": "x.png", "prefix": "a", "suffix": "b"}\n');
  t.deepEqual((await cli(['eval', '--data', file])).err, [`paligemma eval: ${file}:1: image 'x.png' does not exist (looked for ${path.join(dir, 'x.png')})`]);
  t.deepEqual((await cli(['eval'])).err, ['paligemma eval: missing --data <eval.jsonl>']);
  // usage errors (exit 2) come from the strict parser (src/cli/parse.ts), with the flag's help hint
  t.deepEqual(await cli(['eval', '--data', file, '--batch-size', '0']), {
    code: 2,
    out: [],
    err: ["paligemma eval: --batch-size must be an integer >= 1; got '0'", "run 'paligemma eval --help' for its flags"],
  });
  t.deepEqual((await cli(['eval', '--dta', file])).err[0], 'paligemma eval: unknown flag --dta; did you mean --data?');
});

test.serial('fine-tune: full and LoRA runs write a loadable preset, checkpoints, history and loss curve; --resume continues', async (t) => {
  const dir = tempDir(t);
  const train = tinyJsonl(dir, 4);
  const held = tinyJsonl(dir, 2, 'eval');
  const out = path.join(dir, 'run');
  const before = tf.memory().numTensors;
  const common = ['--preset', preset, '--data', train, '--batch-size', '2', '--learning-rate', '1e-2', '--backend', 'cpu'];
  const r = await cli(['fine-tune', ...common, '--eval', held, '--steps', '4', '--eval-every', '2', '--checkpoint-every', '2', '--out', out]);
  t.is(r.code, 0, r.err.join('\n'));
  t.is(r.out[0], `preset: ${preset} (cpu); data: 4 examples, eval: 2`);
  t.is(r.out[1], 'trainable: 20,432 parameters in 34 tensors (100.00% of 20,432)');
  t.is(r.out[2], 'frozen:    0 parameters in 0 tensors');
  t.true(r.out.includes('done: 4 steps (4 in this run), final loss ' + r.out.find((l) => l.startsWith('done:'))!.split('final loss ')[1]));
  t.regex(r.out[r.out.length - 1], /^eval accuracy: \d\.\d{3} \(\d\/2\)$/);
  for (const f of ['preset/config.json', 'preset/model.weights.h5', 'preset/preprocessor.json', 'checkpoint/state.json', 'history.json', 'loss.svg', 'loss.png']) {
    t.true(fs.existsSync(path.join(out, f)), f);
  }
  const history = JSON.parse(fs.readFileSync(path.join(out, 'history.json'), 'utf8'));
  t.deepEqual(history.steps.map((s: { step: number }) => s.step), [1, 2, 3, 4]);
  t.deepEqual(history.evals.map((s: { step: number }) => s.step), [2, 4]);
  const lm = loadCausalLM(path.join(out, 'preset'));
  d.disposeTree(lm.params);
  t.deepEqual((await cli(['fine-tune', ...common, '--steps', '4', '--out', out])).err, [
    `paligemma fine-tune: ${path.join(out, 'checkpoint')} holds a checkpoint of an earlier run: pass --resume ${out} to continue it, or another --out`,
  ]);

  const lora = path.join(dir, 'lora');
  const a = await cli(['fine-tune', ...common, '--lora-rank', '2', '--steps', '2', '--out', lora]);
  t.is(a.code, 0, a.err.join('\n'));
  t.true(a.out[1].startsWith('trainable: ') && a.out[1].includes(' parameters in 10 tensors'), a.out[1]);
  t.true(fs.existsSync(path.join(lora, 'adapters.lora.h5')));
  const b = await cli(['fine-tune', ...common, '--lora-rank', '2', '--steps', '2', '--out', lora, '--resume', lora]);
  t.true(b.out.some((l) => l.startsWith('done: 2 steps (0 in this run)')), b.out.join('\n'));
  t.deepEqual((await cli(['fine-tune', ...common, '--lora-rank', '2', '--steps', '3', '--out', lora, '--resume', lora])).err, [
    `paligemma fine-tune: checkpoint ${path.join(lora, 'checkpoint')} belongs to another run: totalSteps is 2 there, 3 here`,
  ]);
  const merged = loadCausalLM(path.join(lora, 'preset'));
  t.is(d.leaves(merged.params).length, 34, 'LoRA merged into the kernels, no adapter leaves');
  d.disposeTree(merged.params);
  t.is(tf.memory().numTensors, before);
});

test.serial('fine-tune, then eval the saved preset: the tiny preset answers 0/2, after 20 steps 2/2', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'memo.jsonl');
  const cat = path.resolve('checkpoints/tiny/cat.png');
  fs.writeFileSync(file, [{ image: cat, prefix: 'caption en', suffix: 'a cat' }, { image: cat, prefix: 'answer en what colour?', suffix: 'grey' }].map((r) => JSON.stringify(r)).join('\n') + '\n');
  const before = await cli(['eval', '--preset', 'tiny', '--data', file, '--backend', 'wasm']);
  t.is(before.out[before.out.length - 1], 'accuracy: 0.000 (0/2)');
  const out = path.join(dir, 'run');
  const ft = await cli(['fine-tune', '--preset', 'tiny', '--data', file, '--steps', '20', '--batch-size', '2', '--learning-rate', '3e-2', '--out', out, '--backend', 'wasm']);
  t.is(ft.code, 0, ft.err.join('\n'));
  const after = await cli(['eval', '--preset', path.join(out, 'preset'), '--data', file, '--backend', 'wasm']);
  t.deepEqual(after.out, ['  "caption en"            : 1.000 (1/1)', '  "answer en what colour?": 1.000 (1/1)', 'accuracy: 1.000 (2/2)']);
  await setBackend('cpu');
});

test.serial('LoRA: the merged preset fine-tune saves scores what the adapted model scored in training (loss within 1e-4, same exact match)', async (t) => {
  const dir = tempDir(t);
  const file = path.join(dir, 'memo.jsonl');
  const cat = path.resolve('checkpoints/tiny/cat.png');
  fs.writeFileSync(file, [{ image: cat, prefix: 'caption en', suffix: 'a cat' }, { image: cat, prefix: 'answer en what colour?', suffix: 'grey' }].map((r) => JSON.stringify(r)).join('\n') + '\n');
  const out = path.join(dir, 'lora');
  const ft = await cli(['fine-tune', '--data', file, '--eval', file, '--lora-rank', '4', '--steps', '12', '--batch-size', '2', '--learning-rate', '3e-2', '--out', out, '--backend', 'wasm']);
  t.is(ft.code, 0, ft.err.join('\n'));
  const history = JSON.parse(fs.readFileSync(path.join(out, 'history.json'), 'utf8'));
  const last = history.evals.pop();
  const lm = loadCausalLM(path.join(out, 'preset'));
  const r = await evaluate(lm, readJsonl(file));
  d.disposeTree(lm.params);
  t.true(Math.abs(r.loss! - last.loss) < 1e-4, `saved ${r.loss} vs in training ${last.loss}`);
  t.is(r.exactMatch!.correct, last.correct);
  t.true(last.loss < history.steps[0].loss / 2, `the adapters trained: loss ${history.steps[0].loss} -> eval loss ${last.loss}`);
  await setBackend('cpu');
});
