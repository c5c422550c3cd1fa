export { tf } from './tf';
