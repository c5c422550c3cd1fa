/**
 * Learning-rate schedules (`Schedule` of src/train/api.ts: the rate of optimizer step `step`, from 0).
 *
 *   constant(lr)                                     lr at every step
 *   warmupLinear({ peak, warmupSteps, totalSteps, final = 0 })
 *     step < warmupSteps: peak * (step + 1) / warmupSteps      (the first step is not wasted at rate 0)
 *     then linear from peak to final at step totalSteps - 1, and final afterwards
 *   warmupCosine({ peak, warmupSteps, totalSteps, final = 0 })
 *     the same warmup, then final + (peak - final) * (1 + cos(pi * progress)) / 2
 *     with progress = (step - warmupSteps) / (totalSteps - 1 - warmupSteps), clamped to [0, 1]
 */
import type { Schedule } from './api';

export function constant(lr: number): Schedule {
  if (!(lr >= 0) || !Number.isFinite(lr)) throw new Error(`constant: learning rate must be a finite number >= 0, got ${lr}`);
  return () => lr;
}

export interface WarmupOptions {
  /** The rate reached at the end of the warmup. */
  readonly peak: number;
  /** Steps of linear warmup (0: start at the peak). */
  readonly warmupSteps: number;
  /** Steps in the whole run; the decay reaches `final` at step totalSteps - 1. */
  readonly totalSteps: number;
  /** The rate at the end (default 0). */
  readonly final?: number;
}

function checked(name: string, o: WarmupOptions): Required<WarmupOptions> {
  const final = o.final ?? 0;
  if (!(o.peak >= 0) || !Number.isFinite(o.peak)) throw new Error(`${name}: peak must be a finite number >= 0, got ${o.peak}`);
  if (!(final >= 0) || !Number.isFinite(final)) throw new Error(`${name}: final must be a finite number >= 0, got ${final}`);
  if (!Number.isInteger(o.warmupSteps) || o.warmupSteps < 0) throw new Error(`${name}: warmupSteps must be an integer >= 0, got ${o.warmupSteps}`);
  if (!Number.isInteger(o.totalSteps) || o.totalSteps < 1) throw new Error(`${name}: totalSteps must be an integer >= 1, got ${o.totalSteps}`);
  if (o.warmupSteps > o.totalSteps) throw new Error(`${name}: warmupSteps (${o.warmupSteps}) exceeds totalSteps (${o.totalSteps})`);
  return { ...o, final };
}

const checkStep = (name: string, step: number) => {
  if (!Number.isInteger(step) || step < 0) throw new Error(`${name}: step must be an integer >= 0, got ${step}`);
};

/** Progress of the decay phase in [0, 1], or -1 during warmup. */
function progress(o: Required<WarmupOptions>, step: number): number {
  if (step < o.warmupSteps) return -1;
  const span = o.totalSteps - 1 - o.warmupSteps;
  return span <= 0 ? 1 : Math.min(1, (step - o.warmupSteps) / span);
}

export function warmupLinear(options: WarmupOptions): Schedule {
  const o = checked('warmupLinear', options);
  return (step) => {
    checkStep('warmupLinear', step);
    const p = progress(o, step);
    if (p < 0) return (o.peak * (step + 1)) / o.warmupSteps;
    return p >= 1 ? o.final : o.peak + (o.final - o.peak) * p; // exactly `final` at the end
  };
}

export function warmupCosine(options: WarmupOptions): Schedule {
  const o = checked('warmupCosine', options);
  return (step) => {
    checkStep('warmupCosine', step);
    const p = progress(o, step);
    if (p < 0) return (o.peak * (step + 1)) / o.warmupSteps;
    return p >= 1 ? o.final : o.final + ((o.peak - o.final) * (1 + Math.cos(Math.PI * p))) / 2;
  };
}
