/**
 * `summary(params)`: a parameter tree as a table of blocks (ViT patch embedding, each ViT block, each decoder
 * layer, the token embedding, ...), each with its parameter count and its leaves' named shapes. Runs of blocks
 * with the same shapes (decoder layers 0..25) are one row. For notebooks and logs; reads no tensor values.
 */
import * as d from '../../dsl';

export interface SummaryRow {
  /** `vit.blocks.0`, `layers.1-2` (a run of identical blocks), `token_embedding`. */
  readonly block: string;
  /** How many blocks the row stands for (1 unless it is a run). */
  readonly count: number;
  /** Parameters of one block of the row. */
  readonly params: number;
  /** Each leaf below the block: its path inside the block and its named shape, `query [embed=32, heads=4, head_dim=8]`. */
  readonly shapes: readonly string[];
}

export interface Summary {
  readonly rows: readonly SummaryRow[];
  readonly total: number;
  /** The table (what `console.log(summary(params))` prints). */
  toString(): string;
}

/** The block a leaf belongs to: its path up to the first list index (`layers/3`), else its first two names. */
function blockOf(path: string): { block: string; rest: string } {
  const parts = path.split('/');
  const index = parts.findIndex((p) => /^\d+$/.test(p));
  // a list of blocks (layers/3/...), unless the list holds the leaves themselves (token_embedding/0: row shards)
  const cut = index > 0 && index < parts.length - 1 ? index + 1 : index > 0 ? index : Math.min(2, parts.length - 1);
  const rest = parts.slice(Math.max(cut, 1)).join('.');
  return { block: parts.slice(0, Math.max(cut, 1)).join('.'), rest: /^\d+$/.test(rest) ? `shard ${rest}` : rest };
}

const runKey = (block: string): { list: string; index: number } | undefined => {
  const m = /^(.*)\.(\d+)$/.exec(block);
  return m ? { list: m[1], index: Number(m[2]) } : undefined;
};

/** The blocks of a parameter tree (any tree of Named leaves: PaliGemmaParams, VitParams, a LoRA tree...). */
export function summary(params: unknown): Summary {
  const blocks = new Map<string, { params: number; shapes: string[] }>();
  for (const [path, x] of d.leaves(params)) {
    const { block, rest } = blockOf(path);
    const b = blocks.get(block) ?? { params: 0, shapes: [] };
    b.params += x.tensor.size;
    b.shapes.push(`${rest === '' ? '' : `${rest} `}${d.describe(x)}`);
    blocks.set(block, b);
  }
  const rows: SummaryRow[] = [];
  let run: { list: string; first: number; last: number; params: number; shapes: string[] } | undefined;
  const flush = () => {
    if (run === undefined) return;
    const count = run.last - run.first + 1;
    rows.push({ block: `${run.list}.${run.first}${count > 1 ? `-${run.last}` : ''}`, count, params: run.params, shapes: run.shapes });
    run = undefined;
  };
  for (const [block, b] of blocks) {
    const k = runKey(block);
    const same = run !== undefined && k !== undefined && k.list === run.list && k.index === run.last + 1 && b.shapes.join('|') === run.shapes.join('|');
    if (same) {
      run!.last = k!.index;
      continue;
    }
    flush();
    if (k !== undefined) run = { list: k.list, first: k.index, last: k.index, params: b.params, shapes: b.shapes };
    else rows.push({ block, count: 1, params: b.params, shapes: b.shapes });
  }
  flush();
  const total = rows.reduce((n, r) => n + r.count * r.params, 0);
  const text = () => formatSummary(rows, total);
  // console.log and tslab print the table, not the record (the global symbol Node looks up; no node:util import)
  return { rows, total, toString: text, [Symbol.for('nodejs.util.inspect.custom')]: text } as Summary;
}

const n = (x: number): string => x.toLocaleString('en-US');

function formatSummary(rows: readonly SummaryRow[], total: number): string {
  const counts = rows.map((r) => (r.count > 1 ? `${r.count} x ${n(r.params)}` : n(r.params)));
  const bw = Math.max('block'.length, ...rows.map((r) => r.block.length));
  const cw = Math.max('params'.length, ...counts.map((c) => c.length));
  const lines = [`${'block'.padEnd(bw)}  ${'params'.padStart(cw)}  shapes`];
  rows.forEach((r, i) => {
    const [first, ...others] = r.shapes;
    lines.push(`${r.block.padEnd(bw)}  ${counts[i].padStart(cw)}  ${first}`);
    for (const s of others) lines.push(`${''.padEnd(bw + cw + 4)}${s}`);
  });
  lines.push(`${'total'.padEnd(bw)}  ${n(total).padStart(cw)}  (${(total * 4 / 2 ** 20).toFixed(1)} MiB as float32)`);
  return lines.join('\n');
}
