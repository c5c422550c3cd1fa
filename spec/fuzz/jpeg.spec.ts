import test from 'ava';
import { fuzzReader } from './readers';

test('jpeg: mutated files give a typed error naming the file, or load what the seed holds', (t) => fuzzReader(t, 'jpeg', 300));
