/**
 * Positioned reads of stored arrays, shared by the HDF5 and safetensors readers: whole reads at a 64-bit
 * offset (exact to 2^53) and float arrays (bfloat16, float16, float32, float64, either byte order) widened to
 * float32 piece by piece, so a multi-GB tensor is never held twice. bfloat16 and float16 widen exactly;
 * float64 rounds to nearest.
 */
import * as fs from 'node:fs';

export type FloatDType = 'float16' | 'bfloat16' | 'float32' | 'float64';

/** True on little-endian hosts (typed arrays use the host's byte order). */
export const HOST_LE = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Convert `src` (n elements of `dtype`) into `out` (n float32s). */
export function widenInto(dtype: FloatDType, le: boolean, src: Uint8Array, out: Float32Array): void {
  const n = out.length;
  if (le === HOST_LE && dtype === 'bfloat16') {
    // bf16 bits are float32's upper half: shift them into place.
    const bits = new Uint16Array(src.buffer, src.byteOffset, n);
    const outBits = new Uint32Array(out.buffer, out.byteOffset, n);
    for (let i = 0; i < n; i++) outBits[i] = bits[i] << 16;
    return;
  }
  if (le === HOST_LE && dtype === 'float16') {
    const bits = new Uint16Array(src.buffer, src.byteOffset, n);
    for (let i = 0; i < n; i++) out[i] = halfToNumber(bits[i]);
    return;
  }
  const view = new DataView(src.buffer, src.byteOffset, src.byteLength);
  for (let i = 0; i < n; i++) {
    switch (dtype) {
      case 'bfloat16':
        out[i] = bfloat16ToNumber(view.getUint16(2 * i, le));
        break;
      case 'float16':
        out[i] = halfToNumber(view.getUint16(2 * i, le));
        break;
      case 'float32':
        out[i] = view.getFloat32(4 * i, le);
        break;
      case 'float64':
        out[i] = view.getFloat64(8 * i, le);
        break;
    }
  }
}

const bitsScratch = new DataView(new ArrayBuffer(4));

/** bfloat16 bits -> value: they are the upper 16 bits of a float32. */
export function bfloat16ToNumber(bits: number): number {
  bitsScratch.setUint32(0, bits << 16);
  return bitsScratch.getFloat32(0);
}

/** IEEE half-precision bits -> value (exact). */
export function halfToNumber(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 31) return mantissa === 0 ? sign * Infinity : Number.NaN;
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15);
}

/** Read all of `dst` from `fd` at `pos` (fs.readSync may return less than asked). */
export function readFully(fd: number, file: string, dst: Uint8Array, pos: number): void {
  for (let done = 0; done < dst.length; ) {
    const n = fs.readSync(fd, dst, done, Math.min(dst.length - done, 1 << 30), pos + done);
    if (n === 0) throw new Error(`${file}: unexpected end of file at byte ${pos + done}`);
    done += n;
  }
}

const PIECE_BYTES = 1 << 26;
const ELEMENT_BYTES: Readonly<Record<FloatDType, number>> = { float16: 2, bfloat16: 2, float32: 4, float64: 8 };

/** `count` stored floats at `offset` of `fd`, widened to float32 (64 MiB pieces through one scratch buffer). */
export function readFloatsAt(fd: number, file: string, offset: number, count: number, dtype: FloatDType, littleEndian: boolean): Float32Array {
  const out = new Float32Array(count);
  if (dtype === 'float32' && littleEndian === HOST_LE) {
    readFully(fd, file, new Uint8Array(out.buffer), offset);
    return out;
  }
  const elem = ELEMENT_BYTES[dtype];
  const perPiece = Math.floor(PIECE_BYTES / elem);
  const scratch = new Uint8Array(Math.min(count, perPiece) * elem);
  for (let start = 0; start < count; start += perPiece) {
    const n = Math.min(perPiece, count - start);
    const piece = scratch.subarray(0, n * elem);
    readFully(fd, file, piece, offset + start * elem);
    widenInto(dtype, littleEndian, piece, out.subarray(start, start + n));
  }
  return out;
}
