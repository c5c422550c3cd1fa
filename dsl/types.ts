/**
 * Type-level axis bookkeeping. Only comparisons and removals of names: small, non-arithmetic, and each
 * failure becomes a readable string literal in the parameter's expected type, e.g.
 *   Argument of type '"mlp"' is not assignable to parameter of type
 *   '"cannot contract 'mlp': axes of x are [batch, seq, embed]"'.
 */
import type { Axes } from './named';

/** `[batch, seq, embed]` as the string `batch, seq, embed`. */
export type Join<A extends Axes> = A extends readonly [infer H extends string, ...infer R extends Axes]
  ? R extends readonly []
    ? H
    : `${H}, ${Join<R>}`
  : string;

/** The axes of A without those named in N (order kept). */
export type Without<A extends Axes, N> = A extends readonly [infer H extends string, ...infer R extends Axes]
  ? H extends N
    ? Without<R, N>
    : [H, ...Without<R, N>]
  : A extends readonly [] ? [] : string[];

/** Replace the name F by T. */
export type Rename<A extends Axes, F, T extends string> = A extends readonly [infer H extends string, ...infer R extends Axes]
  ? [H extends F ? T : H, ...Rename<R, F, T>]
  : A extends readonly [] ? [] : string[];

/** Replace the name F by the names T (splitting one axis into several). */
export type Splice<A extends Axes, F, T extends Axes> = A extends readonly [infer H extends string, ...infer R extends Axes]
  ? H extends F
    ? [...T, ...Splice<R, F, T>]
    : [H, ...Splice<R, F, T>]
  : A extends readonly [] ? [] : string[];

/** Merge the axes M of A into one axis T, placed where the first of them was. */
export type MergeInto<A extends Axes, M, T extends string, Placed extends boolean = false> = A extends readonly [infer H extends string, ...infer R extends Axes]
  ? H extends M
    ? Placed extends true
      ? MergeInto<R, M, T, true>
      : [T, ...MergeInto<R, M, T, true>]
    : [H, ...MergeInto<R, M, T, Placed>]
  : A extends readonly [] ? [] : string[];

/** The axes of a broadcast: A, then B's axes that A lacks. */
export type Union<A extends Axes, B extends Axes> = [...A, ...Without<B, A[number]>];

/** A name both operands must have, else a message. */
export type Contractible<A extends Axes, B extends Axes, C extends string> = C extends A[number]
  ? C extends B[number]
    ? C
    : `cannot contract '${C}': axes of y are [${Join<B>}]`
  : `cannot contract '${C}': axes of x are [${Join<A>}]`;

/** A name that `x` must have, else a message. */
export type AxisOf<A extends Axes, C extends string> = C extends A[number] ? C : `no axis '${C}' in [${Join<A>}]`;

/** A name that `x` must not have yet, else a message. */
export type FreshAxis<A extends Axes, C extends string> = string extends A[number] ? C : C extends A[number] ? `axis '${C}' already in [${Join<A>}]` : C;
