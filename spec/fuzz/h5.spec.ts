import test from 'ava';
import { fuzzReader } from './readers';

test('h5: mutated files give a typed error naming the file, or load what the seed holds', (t) => fuzzReader(t, 'h5', 300));
