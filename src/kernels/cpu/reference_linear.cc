// SPDX-License-Identifier: Apache-2.0
// Reference Linear: y = x Wᵀ + b with W stored [out, in]. Each output is one dot product of two
// contiguous rows; the weight row stays hot in cache while every input row passes over it.
#include "attn/kernels.h"

namespace attn::cpu {

void ReferenceLinear(const LinearProblem& p) {
  for (int64_t o = 0; o < p.out; ++o) {
    const float* w_row = p.w + o * p.in;
    const float bias = p.bias != nullptr ? p.bias[o] : 0.0f;
    for (int64_t r = 0; r < p.rows; ++r) {
      const float* x_row = p.x + r * p.in;
      float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
      for (int64_t i = 0; i < p.in; ++i) dot += x_row[i] * w_row[i];
      p.y[r * p.out + o] = dot + bias;
    }
  }
}

}  // namespace attn::cpu
