/** Parity of params loaded some other way with a golden fixture's keras_hub outputs. */
import type { ExecutionContext } from 'ava';
import type { PaliGemmaParams } from '../../models/paligemma';
import { computeFixture, readBin, readManifest } from '../../src/cli/fixture';
import { assertClose } from './numeric';

/** The backbone on the fixture's inputs must give keras_hub's sequence_output within 1e-4. */
export async function assertFixtureOutput(t: ExecutionContext, fixture: string, params: PaliGemmaParams): Promise<void> {
  const m = readManifest(fixture);
  const got = (await computeFixture(fixture, m, params)).outputs.get('sequence_output')!;
  t.deepEqual(got.shape, [...m.outputs.sequence_output.shape]);
  assertClose(t, got.data, readBin(fixture, m.outputs.sequence_output), 1e-4, 0, `${fixture} sequence_output`);
}
