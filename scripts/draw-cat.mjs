// Draws checkpoints/tiny/cat.png: a 64 x 64 cartoon cat (orange head, ears, eyes) on a blue background.
import { PNG } from 'pngjs';
import { writeFileSync } from 'node:fs';
const S = 64;
const png = new PNG({ width: S, height: S });
const put = (x, y, [r, g, b]) => { const i = (y * S + x) * 4; png.data[i] = r; png.data[i + 1] = g; png.data[i + 2] = b; png.data[i + 3] = 255; };
const inTri = (px, py, [ax, ay], [bx, by], [cx, cy]) => {
  const s = (x1, y1, x2, y2, x3, y3) => (x1 - x3) * (y2 - y3) - (x2 - x3) * (y1 - y3);
  const d1 = s(px, py, ax, ay, bx, by), d2 = s(px, py, bx, by, cx, cy), d3 = s(px, py, cx, cy, ax, ay);
  return !((d1 < 0 || d2 < 0 || d3 < 0) && (d1 > 0 || d2 > 0 || d3 > 0));
};
for (let y = 0; y < S; y++) for (let x = 0; x < S; x++) {
  let c = [90, 150, 220 - y]; // sky
  const head = (x - 32) ** 2 + ((y - 38) * 1.1) ** 2 < 17 ** 2;
  const ear = inTri(x, y, [16, 30], [22, 10], [30, 24]) || inTri(x, y, [48, 30], [42, 10], [34, 24]);
  if (head || ear) c = [235, 140, 40];
  if (((x - 25) ** 2 + (y - 35) ** 2 < 9) || ((x - 39) ** 2 + (y - 35) ** 2 < 9)) c = [30, 120, 40]; // eyes
  if (inTri(x, y, [30, 42], [34, 42], [32, 45])) c = [230, 90, 120]; // nose
  put(x, y, c);
}
writeFileSync(new URL('../checkpoints/tiny/cat.png', import.meta.url), PNG.sync.write(png));
