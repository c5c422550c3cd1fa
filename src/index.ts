export { tf } from './tf';
export * from './runtime';
