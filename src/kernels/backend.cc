// SPDX-License-Identifier: Apache-2.0
// The backend table and the checks every attention kernel relies on.
#include <cmath>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/kernels.h"
#include "kernels/cpu/dequantize.h"
#include "kernels/cpu/flash_attention.h"
#include "kernels/cpu/isa.h"

namespace attn {
namespace cpu {
void ReferenceAttend(const AttentionProblem& problem);
void ReferenceLinear(const LinearProblem& problem);
void ReferenceDequantize(const LinearProblem& problem, int64_t first, int64_t count, float* out);
void OneDnnLinear(const LinearProblem& problem);
void SmallBatchLinear(const LinearProblem& problem);

namespace {

// The fast attention kernel where it applies; the reference kernel for every other shape,
// dtype or CPU.
void Attend(const AttentionProblem& problem) {
  const IsaSupport& isa = ActiveIsa();
  if (FlashAttendAmxSupports(problem, isa)) {
    ValidateAttentionProblem(problem);
    FlashAttendAmx(problem);
  } else if (FlashAttendSupports(problem, isa)) {
    ValidateAttentionProblem(problem);
    FlashAttendAvx512(problem, isa.bf16_dot);
  } else {
    ReferenceAttend(problem);
  }
}

// A batch goes to the fast kernel in one call when it takes every problem; a mixed batch (which
// no layer makes: one cache has one dtype) is served problem by problem. Prefill-sized problems
// that the AMX kernel takes run first, one call each; the rest go to the AVX-512 kernel together.
void AttendBatch(const AttentionProblem* problems, int64_t count) {
  const IsaSupport& isa = ActiveIsa();
  bool all_fast = true;
  bool any_amx = false;
  for (int64_t i = 0; i < count; ++i) {
    ValidateAttentionProblem(problems[i]);
    all_fast = all_fast && FlashAttendSupports(problems[i], isa);
    any_amx = any_amx || FlashAttendAmxSupports(problems[i], isa);
  }
  if (all_fast && any_amx) {
    thread_local std::vector<AttentionProblem> rest;
    rest.clear();
    for (int64_t i = 0; i < count; ++i) {
      if (FlashAttendAmxSupports(problems[i], isa)) {
        FlashAttendAmx(problems[i]);
      } else {
        rest.push_back(problems[i]);
      }
    }
    if (!rest.empty()) {
      FlashAttendBatchAvx512(rest.data(), static_cast<int64_t>(rest.size()), isa.bf16_dot);
    }
    return;
  }
  if (all_fast) {
    FlashAttendBatchAvx512(problems, count, isa.bf16_dot);
    return;
  }
  for (int64_t i = 0; i < count; ++i) Attend(problems[i]);
}

void CheckedReferenceLinear(const LinearProblem& problem) {
  ValidateLinearProblem(problem);
  ReferenceLinear(problem);
}

void ReferenceAttendBatch(const AttentionProblem* problems, int64_t count) {
  for (int64_t i = 0; i < count; ++i) ReferenceAttend(problems[i]);
}

// A few rows (decode, speculative decode) are bound by reading W once: the small-batch kernel
// reads each weight once for up to 8 rows and allocates nothing. More rows are a real GEMM:
// oneDNN. At 5 to 8 rows the small-batch kernel measured faster than oneDNN's matmul
// (docs/performance.md, "Decode projections").
constexpr int64_t kSmallBatchRows = 8;  // kSmallBatchMaxRows: one pass over W

void Linear(const LinearProblem& problem) {
  ValidateLinearProblem(problem);
  if (problem.rows <= kSmallBatchRows) {
    SmallBatchLinear(problem);
  } else {
    OneDnnLinear(problem);
  }
}

}  // namespace
}  // namespace cpu

const KernelBackend& ReferenceBackend() {
  static const KernelBackend backend{"cpu-reference", &cpu::ReferenceAttend,
                                     &cpu::ReferenceAttendBatch, &cpu::CheckedReferenceLinear,
                                     &cpu::ReferenceDequantize};
  return backend;
}

const KernelBackend& DefaultBackend() {
  static const KernelBackend backend{"cpu", &cpu::Attend, &cpu::AttendBatch, &cpu::Linear,
                                     &cpu::DequantizeWeightRows};
  return backend;
}

LinearProblem MakeLinearProblem(const float* x, int64_t rows, const Weight& w, const float* bias,
                                float* y) {
  LinearProblem problem;
  problem.x = x;
  problem.w = w.data();
  problem.w_dtype = w.dtype();
  problem.w_scales = w.block_scales();
  problem.scale_block_rows = w.block_rows();
  problem.scale_block_cols = w.block_cols();
  problem.bias = bias;
  problem.rows = rows;
  problem.in = w.dim(1);
  problem.out = w.dim(0);
  problem.y = y;
  return problem;
}

void ValidateLinearProblem(const LinearProblem& p) {
  ATTN_CHECK(p.rows >= 0 && p.in >= 0 && p.out >= 0, ErrorKind::kInvalidArgument,
             "linear problem: rows, in and out must be >= 0");
  ATTN_CHECK(p.w_dtype == DType::kF32 || p.w_dtype == DType::kBF16 || p.w_dtype == DType::kF16 ||
                 p.w_dtype == DType::kF8E4M3,
             ErrorKind::kInvalidArgument,
             std::string("linear problem: weights must be F32, BF16, F16 or F8_E4M3, got ") +
                 DTypeName(p.w_dtype));
  ATTN_CHECK(p.w_dtype != DType::kF8E4M3 ||
                 (p.w_scales != nullptr && p.scale_block_rows > 0 && p.scale_block_cols > 0),
             ErrorKind::kInvalidArgument,
             "linear problem: F8_E4M3 weights need block scales and positive block sizes");
}

// Runs once per kernel call: the message is only built on failure.
#define ATTN_REQUIRE(ok, what) \
  ATTN_CHECK(ok, ErrorKind::kInvalidArgument, std::string("attention problem: ") + (what))

void ValidateAttentionProblem(const AttentionProblem& p) {
  const QueryRows& q = p.queries;
  const KVView& kv = p.kv;
  ATTN_REQUIRE(q.tokens >= 0 && q.heads > 0 && q.dim > 0,
               "queries need tokens >= 0, heads > 0, dim > 0");
  ATTN_REQUIRE(kv.kv_heads > 0 && q.heads % kv.kv_heads == 0,
               "query heads (" + std::to_string(q.heads) + ") must be a multiple of kv heads (" +
                   std::to_string(kv.kv_heads) + ")");
  ATTN_REQUIRE(kv.key_dim == q.dim, "key dim (" + std::to_string(kv.key_dim) +
                                        ") differs from query dim (" + std::to_string(q.dim) + ")");
  ATTN_REQUIRE(kv.value_dim > 0, "value dim must be positive");
  ATTN_REQUIRE(
      kv.dtype == DType::kF32 || kv.dtype == DType::kF16 || kv.dtype == DType::kBF16 ||
          IsQuantizedKV(kv.dtype),
      std::string("K/V dtype must be F32, F16, BF16, F8_E4M3 or I8, got ") + DTypeName(kv.dtype));
  if (IsQuantizedKV(kv.dtype)) {
    ATTN_REQUIRE(
        kv.length == 0 || (kv.key_scales != nullptr && kv.value_scales != nullptr),
        std::string("a ") + DTypeName(kv.dtype) + " K/V view needs key_scales and value_scales");
    ATTN_REQUIRE(
        kv.page_size > 0 || kv.length == 0 || kv.kv_heads == 1 || kv.scale_head_stride >= kv.length,
        "a contiguous quantized view needs scale_head_stride >= its length");
  } else {
    ATTN_REQUIRE(kv.key_scales == nullptr && kv.value_scales == nullptr,
                 std::string("scales are for F8_E4M3 / I8 K/V only, got ") + DTypeName(kv.dtype));
  }
  ATTN_REQUIRE(kv.length >= 0, "kv length must be >= 0");
  ATTN_REQUIRE(kv.page_size >= 0, "page size must be >= 0 (0: contiguous)");
  if (kv.page_size > 0 && kv.length > 0) {
    ATTN_REQUIRE(kv.page_table != nullptr, "a paged view needs a page table");
    ATTN_REQUIRE(kv.key_page_stride > 0 && kv.value_page_stride > 0,
                 "a paged view needs positive page strides");
    const int64_t pages = (kv.length + kv.page_size - 1) / kv.page_size;
    for (int64_t i = 0; i < pages; ++i) {
      ATTN_REQUIRE(kv.page_table[i] >= 0, "page table entry " + std::to_string(i) + " is " +
                                              std::to_string(kv.page_table[i]));
    }
  }
  ATTN_REQUIRE(std::isfinite(p.softcap) && p.softcap >= 0.0f,
               "softcap must be finite and >= 0 (0: none)");
  ATTN_REQUIRE(p.visibility.window >= 0, "window must be >= 0");
  ATTN_REQUIRE(p.visibility.causal || p.visibility.window == 0,
               "a sliding window needs causal visibility (it is counted back from each query's "
               "slot)");
  ATTN_REQUIRE(p.visibility.chunk >= 0,
               "chunk must be >= 0 (0: none), got " + std::to_string(p.visibility.chunk));
  ATTN_REQUIRE(p.visibility.causal || p.visibility.chunk == 0,
               "chunk (block-local attention) needs causal visibility (blocks are counted in "
               "query slots)");
  if (p.alibi_slopes != nullptr) {
    for (int64_t h = 0; h < q.heads; ++h) {
      ATTN_REQUIRE(std::isfinite(p.alibi_slopes[h]), "alibi_slopes[" + std::to_string(h) +
                                                         "] must be finite, got " +
                                                         std::to_string(p.alibi_slopes[h]));
    }
  }
  // A problem that returns its log-sum-exp may be a slice of a longer sequence's keys: its
  // queries may sit before or after the slice (kernels.h, AttentionProblem::lse).
  ATTN_REQUIRE(!p.visibility.causal || p.lse != nullptr ||
                   (p.visibility.first_query_slot >= 0 &&
                    p.visibility.first_query_slot + q.tokens <= kv.length),
               "query slots [" + std::to_string(p.visibility.first_query_slot) + ", " +
                   std::to_string(p.visibility.first_query_slot + q.tokens) +
                   ") must lie within the kv length " + std::to_string(kv.length));
  ATTN_REQUIRE(q.tokens == 0 || (q.data != nullptr && p.out != nullptr), "null query or output");
  ATTN_REQUIRE(kv.length == 0 || (kv.keys != nullptr && kv.values != nullptr),
               "null keys or values");
}

}  // namespace attn
