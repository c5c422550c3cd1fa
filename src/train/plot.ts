/**
 * The loss curve of a run as a standalone SVG (and the same plot rasterized to PNG with pngjs): training
 * loss per step as a line, evaluation loss as dots, axes with min/max labels. Pure functions of the series.
 */
import { PNG } from 'pngjs';

export interface Series {
  readonly name: string;
  /** [step, value] points, in step order. */
  readonly points: readonly (readonly [number, number])[];
  readonly color: string;
  /** Drawn as a line (default) or as dots. */
  readonly dots?: boolean;
}

const W = 640;
const H = 360;
const M = { left: 64, right: 16, top: 28, bottom: 40 };

interface Frame {
  x(step: number): number;
  y(value: number): number;
  readonly x0: number;
  readonly x1: number;
  readonly y0: number;
  readonly y1: number;
}

function frame(series: readonly Series[]): Frame {
  const pts = series.flatMap((s) => s.points).filter(([, v]) => Number.isFinite(v));
  let x0 = Math.min(...pts.map(([s]) => s));
  let x1 = Math.max(...pts.map(([s]) => s));
  let y0 = Math.min(...pts.map(([, v]) => v));
  let y1 = Math.max(...pts.map(([, v]) => v));
  if (pts.length === 0) [x0, x1, y0, y1] = [0, 1, 0, 1];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  return { x: (s) => M.left + ((s - x0) / (x1 - x0)) * pw, y: (v) => M.top + (1 - (v - y0) / (y1 - y0)) * ph, x0, x1, y0, y1 };
}

const num = (v: number): string => (Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3));
const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** The plot as an SVG document. */
export function lossCurveSvg(series: readonly Series[], title = 'loss'): string {
  const f = frame(series);
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="18" text-anchor="middle" font-size="14">${esc(title)}</text>`,
    `<path d="M${M.left} ${M.top}V${H - M.bottom}H${W - M.right}" fill="none" stroke="black"/>`,
    `<text x="${M.left - 6}" y="${f.y(f.y1) + 4}" text-anchor="end">${num(f.y1)}</text>`,
    `<text x="${M.left - 6}" y="${f.y(f.y0) + 4}" text-anchor="end">${num(f.y0)}</text>`,
    `<text x="${M.left}" y="${H - M.bottom + 16}" text-anchor="middle">${f.x0}</text>`,
    `<text x="${W - M.right}" y="${H - M.bottom + 16}" text-anchor="middle">${f.x1}</text>`,
    `<text x="${(M.left + W - M.right) / 2}" y="${H - 8}" text-anchor="middle">step</text>`,
  ];
  series.forEach((s, i) => {
    const pts = s.points.filter(([, v]) => Number.isFinite(v));
    if (s.dots) {
      for (const [x, v] of pts) out.push(`<circle cx="${f.x(x).toFixed(1)}" cy="${f.y(v).toFixed(1)}" r="3" fill="${s.color}"/>`);
    } else if (pts.length > 0) {
      const d = pts.map(([x, v], j) => `${j ? 'L' : 'M'}${f.x(x).toFixed(1)} ${f.y(v).toFixed(1)}`).join('');
      out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="1.5"/>`);
    }
    const ly = M.top + 14 + 16 * i;
    out.push(`<rect x="${W - M.right - 130}" y="${ly - 9}" width="10" height="10" fill="${s.color}"/>`);
    out.push(`<text x="${W - M.right - 114}" y="${ly}">${esc(s.name)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

const rgb = (hex: string): [number, number, number] => {
  const h = hex.replace('#', '');
  return [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)];
};

/** The same plot (lines, dots and axes; no text) as PNG bytes. Colors must be `#rrggbb`. */
export function lossCurvePng(series: readonly Series[]): Uint8Array {
  const f = frame(series);
  const png = new PNG({ width: W, height: H });
  png.data.fill(255);
  const set = (x: number, y: number, c: readonly number[]) => {
    const xi = Math.round(x);
    const yi = Math.round(y);
    if (xi < 0 || yi < 0 || xi >= W || yi >= H) return;
    const o = (yi * W + xi) * 4;
    png.data[o] = c[0];
    png.data[o + 1] = c[1];
    png.data[o + 2] = c[2];
    png.data[o + 3] = 255;
  };
  const line = (ax: number, ay: number, bx: number, by: number, c: readonly number[]) => {
    const n = Math.max(1, Math.ceil(Math.max(Math.abs(bx - ax), Math.abs(by - ay))));
    for (let i = 0; i <= n; i++) set(ax + ((bx - ax) * i) / n, ay + ((by - ay) * i) / n, c);
  };
  line(M.left, M.top, M.left, H - M.bottom, [0, 0, 0]);
  line(M.left, H - M.bottom, W - M.right, H - M.bottom, [0, 0, 0]);
  for (const s of series) {
    const c = rgb(s.color);
    const pts = s.points.filter(([, v]) => Number.isFinite(v));
    if (s.dots) {
      for (const [x, v] of pts) for (let dx = -2; dx <= 2; dx++) for (let dy = -2; dy <= 2; dy++) if (dx * dx + dy * dy <= 5) set(f.x(x) + dx, f.y(v) + dy, c);
    } else {
      for (let i = 1; i < pts.length; i++) line(f.x(pts[i - 1][0]), f.y(pts[i - 1][1]), f.x(pts[i][0]), f.y(pts[i][1]), c);
    }
  }
  return new Uint8Array(PNG.sync.write(png));
}
