import test from 'ava';
import { fuzzReader } from './readers';

test('hf-index: mutated files give a typed error naming the file, or load what the seed holds', (t) => fuzzReader(t, 'hf-index', 300));
