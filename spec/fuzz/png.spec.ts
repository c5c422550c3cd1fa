import test from 'ava';
import { fuzzReader } from './readers';

test('png: mutated files give a typed error naming the file, or load what the seed holds', (t) => fuzzReader(t, 'png', 300));
