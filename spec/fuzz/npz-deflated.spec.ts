import test from 'ava';
import { fuzzReader } from './readers';

test('npz-deflated: mutated files give a typed error naming the file, or load what the seed holds', (t) => fuzzReader(t, 'npz-deflated', 300));
