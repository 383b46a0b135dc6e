// SPDX-License-Identifier: Apache-2.0
// Reference Linear: y = x Wᵀ + b with W stored [out, in] in any weight dtype. Each weight row is
// dequantized element by element (scalar conversions of dtype.h, times its block scale) into a
// row buffer, then each output is one dot product of two contiguous rows; the weight row stays
// hot in cache while every input row passes over it.
#include <vector>

#include "attn/kernels.h"
#include "kernels/cpu/element_load.h"

namespace attn::cpu {

// w[o, i] as fp32: the stored value times its block's scale.
void ReferenceDequantize(const LinearProblem& p, int64_t first, int64_t count, float* out) {
  const int64_t scale_cols =
      p.w_scales != nullptr ? (p.in + p.scale_block_cols - 1) / p.scale_block_cols : 0;
  for (int64_t o = first; o < first + count; ++o) {
    for (int64_t i = 0; i < p.in; ++i) {
      float value = StoredWeightValue(p.w_dtype, p.w, o * p.in + i);
      if (p.w_scales != nullptr) {
        value *= p.w_scales[o / p.scale_block_rows * scale_cols + i / p.scale_block_cols];
      }
      out[(o - first) * p.in + i] = value;
    }
  }
}

void ReferenceLinear(const LinearProblem& p) {
  std::vector<float> w_row(static_cast<size_t>(p.in));
  for (int64_t o = 0; o < p.out; ++o) {
    ReferenceDequantize(p, o, 1, w_row.data());
    const float bias = p.bias != nullptr ? p.bias[o] : 0.0f;
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* x_row = p.x + r * p.in;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < p.in; ++i) dot += x_row[i] * w_row[static_cast<size_t>(i)];
      p.y[r * p.out + o] = dot + bias;
    }
  }
}

}  // namespace attn::cpu
