// SPDX-License-Identifier: Apache-2.0
// Tiled attention with online softmax for AVX-512 CPUs (FlashAttention's algorithm on a CPU):
// the S×T score matrix is never materialised, causal tiles past the diagonal are skipped, every
// query head of a kv group shares each loaded K/V tile, and decode splits the key range across
// threads with an exact merge of the partial softmax states.
#ifndef ATTN_KERNELS_CPU_FLASH_ATTENTION_H_
#define ATTN_KERNELS_CPU_FLASH_ATTENTION_H_

#include "attn/kernels.h"
#include "kernels/cpu/isa.h"

namespace attn::cpu {

// Whether FlashAttendAvx512 handles `problem` on `isa`: an AVX-512 CPU and K/V in f32, f16 or
// bf16 (any head widths: widths that are not multiples of 16 are zero-padded in scratch).
// Anything else goes to the reference kernel.
bool FlashAttendSupports(const AttentionProblem& problem, const IsaSupport& isa);

// Same contract as ReferenceAttend. With bf16 K/V of even width and `bf16_dot`, Q·Kᵀ runs as
// bf16 dot products (Q rounded to bf16) with fp32 accumulation; everything else computes in
// fp32.
void FlashAttendAvx512(const AttentionProblem& problem, bool bf16_dot);

}  // namespace attn::cpu

#endif  // ATTN_KERNELS_CPU_FLASH_ATTENTION_H_
