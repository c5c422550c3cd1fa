/**
 * Training progress for people: one status line (step, loss, steps/s, tokens/s, ETA) redrawn in place on a
 * TTY, or printed every few steps to a log. `formatProgress` is pure (tested literally); `progressPrinter`
 * decides where and how often to print.
 */

export interface ProgressInfo {
  /** Steps done (1-based after the first step) and the total. */
  readonly step: number;
  readonly steps: number;
  readonly loss: number;
  /** Measured over the steps this process ran. */
  readonly stepsPerSecond: number;
  readonly tokensPerSecond: number;
  /** The last evaluation's exact match, when there is one. */
  readonly evalAccuracy?: number;
}

/** `1m05s`, `2h03m`, `42s`. */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

const rate = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

/** `[#####.....] step 12/200 loss 1.2345 2.10 steps/s 340 tok/s ETA 1m30s`; `width` is the bar's cells (0: none). */
export function formatProgress(p: ProgressInfo, width = 20): string {
  const filled = p.steps > 0 ? Math.min(width, Math.round((width * p.step) / p.steps)) : 0;
  const bar = width > 0 ? `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ` : '';
  const eta = p.stepsPerSecond > 0 ? formatDuration((p.steps - p.step) / p.stepsPerSecond) : '?';
  const digits = String(p.steps).length;
  return (
    `${bar}step ${String(p.step).padStart(digits)}/${p.steps} loss ${p.loss.toFixed(4)} ` +
    `${rate(p.stepsPerSecond)} steps/s ${rate(p.tokensPerSecond)} tok/s ETA ${eta}` +
    (p.evalAccuracy !== undefined ? ` eval ${p.evalAccuracy.toFixed(3)}` : '')
  );
}

export interface Stream {
  write(s: string): unknown;
  readonly isTTY?: boolean;
}

/**
 * A printer for `fit`'s progress: on a TTY the line is redrawn (`\r`, cleared to the end) at most every
 * 100 ms and at the last step; elsewhere a full line every `every` steps (default: 20 lines per run).
 */
export function progressPrinter(stream: Stream, options: { every?: number } = {}): { update(p: ProgressInfo): void; message(line: string): void; done(): void } {
  let last = 0;
  let drawn = false;
  return {
    update(p) {
      if (stream.isTTY) {
        const now = Date.now();
        if (now - last < 100 && p.step < p.steps) return;
        last = now;
        stream.write(`\r${formatProgress(p)}\x1b[K`);
        drawn = true;
      } else {
        const every = options.every ?? Math.max(1, Math.floor(p.steps / 20));
        if (p.step % every === 0 || p.step === p.steps || p.step === 1) stream.write(`${formatProgress(p, 0)}\n`);
      }
    },
    message(line) {
      // a message on a TTY goes above the bar: end the bar's line first
      stream.write(`${drawn && stream.isTTY ? '\r\x1b[K' : ''}${line}\n`);
    },
    done() {
      if (drawn && stream.isTTY) stream.write('\n');
      drawn = false;
    },
  };
}
