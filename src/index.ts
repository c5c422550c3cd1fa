export { tf } from './tf';
export * from './runtime';
export { main } from './cli';
