import test from 'ava';
import { fuzzReader } from './readers';

test('lora.h5: mutated files give a typed error naming the file, or load what the seed holds', (t) => fuzzReader(t, 'lora.h5', 300));
