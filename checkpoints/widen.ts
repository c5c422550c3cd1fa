/**
 * Widening stored floats (bfloat16, float16, float32, float64, either byte order) to float32: shared by the
 * HDF5 and safetensors readers. bfloat16 and float16 widen exactly; float64 rounds to nearest.
 */

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
