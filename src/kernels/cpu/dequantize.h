// SPDX-License-Identifier: Apache-2.0
// Stored weights (F32, BF16, F16, F8_E4M3 with block scales) widened to fp32 or rounded to bf16,
// a few rows at a time: the tiles a GEMM reads (onednn_linear.cc) and the per-head blocks of
// absorbed MLA (layers/mla_attention.cc). Never a whole tensor: callers bound the rows.
#ifndef ATTN_KERNELS_CPU_DEQUANTIZE_H_
#define ATTN_KERNELS_CPU_DEQUANTIZE_H_

#include <cstdint>

#include "attn/kernels.h"

namespace attn::cpu {

// Rows [first, first + count) of p's W (p.x, p.y are not used) into out [count][p.in], fp32.
// AVX-512 when ActiveIsa() allows it; the scalar twin is Weight::DequantizeRows.
void DequantizeWeightRows(const LinearProblem& p, int64_t first, int64_t count, float* out);
// The same rounded to bf16 (nearest even), into out [count][p.in].
void DequantizeWeightRowsBF16(const LinearProblem& p, int64_t first, int64_t count, uint16_t* out);
// out[i] = bf16(x[i]), nearest even; x finite.
void RoundToBF16(const float* x, int64_t count, uint16_t* out);

}  // namespace attn::cpu

#endif  // ATTN_KERNELS_CPU_DEQUANTIZE_H_
