// SPDX-License-Identifier: Apache-2.0
// Tiled attention with online softmax for AVX-512 CPUs (FlashAttention's algorithm on a CPU):
// the S×T score matrix is never materialised, causal tiles past the diagonal are skipped, every
// query head of a kv group shares each loaded K/V tile, and decode splits the key range across
// threads with an exact merge of the partial softmax states. Decode-sized blocks (a few rows per
// kv head) score keys without transposing them and compute in fp32 whatever the K/V dtype.
#ifndef ATTN_KERNELS_CPU_FLASH_ATTENTION_H_
#define ATTN_KERNELS_CPU_FLASH_ATTENTION_H_

#include <cstdint>

#include "attn/kernels.h"
#include "kernels/cpu/isa.h"

namespace attn::cpu {

// Whether FlashAttendAvx512 handles `problem` on `isa`: an AVX-512 CPU and K/V in f32, f16 or
// bf16 (any head widths: widths that are not multiples of 16 are zero-padded in scratch).
// Anything else goes to the reference kernel.
bool FlashAttendSupports(const AttentionProblem& problem, const IsaSupport& isa);

// Same contract as ReferenceAttend. With bf16 K/V of even width, `bf16_dot` and many query rows
// per kv head (prefill, absorbed MLA), Q·Kᵀ runs as bf16 dot products (Q rounded to bf16) with
// fp32 accumulation; everything else computes in fp32.
void FlashAttendAvx512(const AttentionProblem& problem, bool bf16_dot);

// The same for `count` problems at once (a batch, ragged lengths welcome): one parallel pass
// whose tasks cover every problem, so a decode step of a batch keeps all threads busy without
// one barrier per sequence. Each problem must be supported and valid.
void FlashAttendBatchAvx512(const AttentionProblem* problems, int64_t count, bool bf16_dot);

// The AMX kernel (flash_attention_amx.cc) takes bf16 K/V (contiguous or paged, even key width)
// when the CPU has AMX (isa.amx) and an item holds at least kAmxMinRows query rows per kv head
// (prefill, chunked prefill): Q·Kᵀ and P·V as bf16 tile products (Q and P rounded to bf16) with
// fp32 accumulation, masking, soft-capping, ALiBi, sinks and the online softmax as in the
// AVX-512 kernel. Fewer rows (decode) stay on the AVX-512 kernel.
constexpr int64_t kAmxMinRows = 16;
bool FlashAttendAmxSupports(const AttentionProblem& problem, const IsaSupport& isa);
// Same contract as ReferenceAttend; the problem must be valid and supported.
void FlashAttendAmx(const AttentionProblem& problem);

}  // namespace attn::cpu

#endif  // ATTN_KERNELS_CPU_FLASH_ATTENTION_H_
