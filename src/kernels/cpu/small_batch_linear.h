// SPDX-License-Identifier: Apache-2.0
// Linear for a few rows (decode), where reading W once from DRAM is the whole cost.
#ifndef ATTN_KERNELS_CPU_SMALL_BATCH_LINEAR_H_
#define ATTN_KERNELS_CPU_SMALL_BATCH_LINEAR_H_

#include <cstdint>

#include "attn/kernels.h"

namespace attn::cpu {

// Rows one pass over W serves. More rows are served in groups of this many, each reading W again,
// so past it a GEMM (oneDNN) is the better kernel.
constexpr int64_t kSmallBatchMaxRows = 8;

// y = x Wᵀ + b on the thread pool, allocating nothing: AVX-512 when ActiveIsa() allows it, else
// portable C++. Any row count is correct; it is fast for up to kSmallBatchMaxRows.
void SmallBatchLinear(const LinearProblem& problem);

}  // namespace attn::cpu

#endif  // ATTN_KERNELS_CPU_SMALL_BATCH_LINEAR_H_
