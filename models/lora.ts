/**
 * LoRA (Hu et al. 2021) as keras' Dense / EinsumDense apply it (keras_hub `Backbone.enable_lora`): a layer
 * whose params hold `lora_kernel_a` and `lora_kernel_b` multiplies with
 *
 *   kernel + scale * (A . B)        scale = alpha / rank (keras_hub: alpha = rank, so 1)
 *
 * A has the kernel's axes except its output (last keras) axis, plus `lora_rank`; B is [lora_rank, output].
 * For the decoder's [embed, heads, head_dim] kernels that is A per head and one B shared by all heads. The
 * merged kernel is what keras' `kernel` property returns, so the layer computes exactly what keras does.
 */
import * as d from '../dsl';
import type { Named } from '../dsl';

/** The adapter of one kernel. `lora_scale` (alpha / rank) is a plain number: it never trains. */
export interface LoraParams {
  readonly lora_kernel_a: Named;
  readonly lora_kernel_b: Named;
  readonly lora_scale?: number;
}

/** The kernel a layer multiplies with: `kernel` itself, or kernel + scale * A.B when `lora` has an adapter. */
export function loraKernel<A extends readonly string[]>(kernel: Named<A>, lora?: Partial<LoraParams>): Named<A> {
  if (!lora?.lora_kernel_a || !lora.lora_kernel_b) return kernel;
  const { lora_kernel_a: a, lora_kernel_b: b } = lora;
  return d.scoped(() => {
    const delta = d.dot(a, b, 'lora_rank' as never); // the kernel's axes
    const scaled = lora.lora_scale === undefined || lora.lora_scale === 1 ? delta : d.scale(delta, lora.lora_scale);
    return d.align(d.add(kernel as Named, scaled), kernel.axes as never) as unknown as Named<A>;
  });
}
