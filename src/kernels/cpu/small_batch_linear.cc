// SPDX-License-Identifier: Apache-2.0
// Linear for a few rows (decode): y[r, o] = x[r]·w[o] + b[o]. Reading W dominates, so each
// weight row is read once for all rows, outputs are split across threads, and the dot
// products are compiled for AVX-512 and for baseline x86-64 (GCC target_clones picks at load).
// Unlike a general GEMM call it allocates nothing, which keeps decode allocation-free.
#include <algorithm>
#include <cstdint>

#include "attn/kernels.h"
#include "attn/threads.h"

#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define ATTN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define ATTN_VECTOR_CLONES
#endif

namespace attn::cpu {
namespace {

constexpr int64_t kOutputsPerTask = 64;

ATTN_VECTOR_CLONES
void DotRows(const LinearProblem& p, int64_t first_output, int64_t last_output) {
  for (int64_t o = first_output; o < last_output; ++o) {
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

}  // namespace

void SmallBatchLinear(const LinearProblem& p) {
  const int64_t tasks = (p.out + kOutputsPerTask - 1) / kOutputsPerTask;
  const LinearProblem* shared = &p;
  ParallelFor(tasks, [shared](int64_t task, int /*thread*/) {
    const int64_t first = task * kOutputsPerTask;
    DotRows(*shared, first, std::min(shared->out, first + kOutputsPerTask));
  });
}

}  // namespace attn::cpu
