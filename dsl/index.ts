/** The named-tensor DSL: tensors with axis names in their types, and the ops models are written in. */
export * from './named';
export * from './ops';
export * from './random';
export * from './tree';
export type * from './types';
export { jit, type Jitted, type JitOptions, type CompileStats } from './jit';
export { onnxAvailable, setOnnxThreads, onnxThreads } from './onnx/runtime';
