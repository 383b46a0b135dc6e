// SPDX-License-Identifier: Apache-2.0
// The fast attention kernel (DefaultBackend) against its reference twin across head widths,
// group ratios, kv lengths around tile edges, odd query counts, windows, padding, fully masked
// rows and every K/V dtype; and the forced portable path.
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/kernels.h"
#include "attn/layer_weights.h"
#include "attn/threads.h"
#include "kernels/cpu/element_load.h"
#include "kernels/cpu/isa.h"
#include "test_util.h"

namespace attn {
namespace {

struct FlashCase {
  int64_t heads, kv_heads, key_dim, value_dim, queries, length, window;
  bool padding;
  bool aliased;  // values = first value_dim entries of the key rows (absorbed MLA)
  bool causal = true;
};

std::string Name(const FlashCase& c) {
  return "H" + std::to_string(c.heads) + "G" + std::to_string(c.kv_heads) + "D" +
         std::to_string(c.key_dim) + "x" + std::to_string(c.value_dim) + "S" +
         std::to_string(c.queries) + "T" + std::to_string(c.length) + "W" +
         std::to_string(c.window) + (c.padding ? "pad" : "") + (c.aliased ? "alias" : "") +
         (c.causal ? "" : "full");
}

// Options of a case beyond its shape: chunked visibility, ALiBi, the cache layout, and which
// queries run (by default the last `queries` slots).
struct Extra {
  int64_t chunk = 0;
  bool alibi = false;
  bool head_major = false;   // K/V stored [G][T][D] instead of [T][G][D]
  int64_t first_slot = -1;   // -1: length − queries (causal) or 0
  int64_t query_offset = 0;  // use query rows query_offset … of the case's seeded queries
  // Keys and values outside [poison_begin, poison_end) are NaN: a kernel must not read them.
  int64_t poison_begin = -1, poison_end = -1;
  std::atomic<bool>* non_finite_scores = nullptr;
};

// Runs one backend on the case stored as `dtype`, token-major K/V [T][G][D] (or latent rows;
// head-major [G][T][D] with extra.head_major).
std::vector<float> RunCase(const KernelBackend& backend, const FlashCase& c, DType dtype,
                           bool sinks = false, float softcap = 0.0f, const Extra& extra = {}) {
  const Tensor all_q =
      RandomUniform({extra.query_offset + c.queries, c.heads, c.key_dim}, 11, 1.0f);
  const float* q_data = all_q.data() + extra.query_offset * c.heads * c.key_dim;
  // Sink logits around the scores' range (|s| of a few), so they move every row.
  const Tensor sink_logits = RandomUniform({c.heads}, 14, 3.0f);
  const std::vector<float> slopes = testing::TestAlibiSlopes(c.heads);
  const Tensor k = RandomUniform({c.length, c.kv_heads, c.key_dim}, 12, 1.0f);
  const Tensor v = RandomUniform({c.length, c.kv_heads, c.value_dim}, 13, 1.0f);
  // The stored order: token-major as generated, or head-major; NaN outside the poisoned range.
  auto arrange = [&](const Tensor& x, int64_t width) {
    std::vector<float> rows(static_cast<size_t>(x.size()));
    for (int64_t t = 0; t < c.length; ++t) {
      const bool poisoned =
          extra.poison_begin >= 0 && (t < extra.poison_begin || t >= extra.poison_end);
      for (int64_t g = 0; g < c.kv_heads; ++g) {
        const int64_t to =
            extra.head_major ? (g * c.length + t) * width : (t * c.kv_heads + g) * width;
        for (int64_t i = 0; i < width; ++i) {
          rows[static_cast<size_t>(to + i)] = poisoned ? std::numeric_limits<float>::quiet_NaN()
                                                       : x.data()[(t * c.kv_heads + g) * width + i];
        }
      }
    }
    return rows;
  };
  const std::vector<float> k_rows = arrange(k, c.key_dim);
  const std::vector<float> v_rows = arrange(v, c.value_dim);
  const size_t element = DTypeSize(dtype);
  std::vector<std::byte> k_store(k_rows.size() * element);
  std::vector<std::byte> v_store(v_rows.size() * element);
  cpu::StoreRow(dtype, k_store.data(), 0, static_cast<int64_t>(k_rows.size()), k_rows.data());
  cpu::StoreRow(dtype, v_store.data(), 0, static_cast<int64_t>(v_rows.size()), v_rows.data());
  std::vector<uint8_t> keep(static_cast<size_t>(c.length), 1);
  if (c.padding) {
    for (int64_t t = 0; t < c.length; ++t) keep[t] = (t % 7 == 3 || t < 2) ? 0 : 1;
  }
  std::vector<float> out(static_cast<size_t>(c.queries * c.heads * c.value_dim), -7.0f);
  AttentionProblem p;
  p.queries = {q_data, c.queries, c.heads, c.key_dim};
  p.kv.dtype = dtype;
  p.kv.keys = k_store.data();
  p.kv.values = c.aliased ? k_store.data() : v_store.data();
  p.kv.kv_heads = c.kv_heads;
  p.kv.key_dim = c.key_dim;
  p.kv.value_dim = c.value_dim;
  const int64_t value_row = c.aliased ? c.key_dim : c.value_dim;
  if (extra.head_major) {
    p.kv.key_head_stride = c.length * c.key_dim;
    p.kv.key_token_stride = c.key_dim;
    p.kv.value_head_stride = c.length * value_row;
    p.kv.value_token_stride = value_row;
  } else {
    p.kv.key_head_stride = c.key_dim;
    p.kv.key_token_stride = c.kv_heads * c.key_dim;
    p.kv.value_head_stride = value_row;
    p.kv.value_token_stride = c.kv_heads * value_row;
  }
  p.kv.length = c.length;
  p.kv.keep = keep.data();
  const int64_t first_slot =
      extra.first_slot >= 0 ? extra.first_slot : (c.causal ? c.length - c.queries : 0);
  p.visibility = {first_slot, c.window, c.causal, extra.chunk};
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
  if (sinks) p.sinks = sink_logits.data();
  p.softcap = softcap;
  if (extra.alibi) p.alibi_slopes = slopes.data();
  p.non_finite_scores = extra.non_finite_scores;
  p.out = out.data();
  backend.attend(p);
  return out;
}

class FlashAttentionTest : public ::testing::TestWithParam<FlashCase> {};

// Tolerances: f32 and f16 storage compute in fp32 (only summation order differs from the
// reference: 1e-5); bf16 K/V use bf16 dot products with Q rounded to bf16 (8-bit mantissa,
// relative error ~2^-9 per product, growing with the softmax's sensitivity: 2e-2).
TEST_P(FlashAttentionTest, MatchesReferenceKernel) {
  const FlashCase c = GetParam();
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const std::vector<float> expected = RunCase(ReferenceBackend(), c, dtype);
    const std::vector<float> got = RunCase(DefaultBackend(), c, dtype);
    // A few rows per kv head (decode) widen bf16 keys and compute in fp32 like the reference.
    const bool decode_block = c.queries * (c.heads / c.kv_heads) <= 8;
    const double tolerance = dtype == DType::kBF16 && !decode_block ? 2e-2 : 1e-5;
    EXPECT_LT(testing::RelativeError(got.data(), expected.data(), static_cast<int64_t>(got.size())),
              tolerance)
        << DTypeName(dtype);
    for (size_t i = 0; i < got.size(); ++i) ASSERT_FALSE(std::isnan(got[i])) << i;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, FlashAttentionTest,
    ::testing::Values(
        // head widths 64, 96, 128, 192, 256 and 576/512; ratios 1, 2, 4, 8, 16, 128
        FlashCase{4, 4, 64, 64, 7, 63, 0, false, false},
        FlashCase{4, 2, 96, 96, 5, 64, 0, true, false},
        FlashCase{8, 2, 128, 128, 33, 65, 0, false, false},
        FlashCase{16, 2, 128, 128, 1, 1000, 0, true, false},  // decode, split keys
        FlashCase{16, 1, 192, 128, 3, 130, 0, false, false},  // naive-MLA-like widths
        FlashCase{16, 16, 192, 128, 9, 97, 0, true, false},
        FlashCase{32, 2, 256, 256, 2, 129, 0, false, false},
        FlashCase{128, 1, 576, 512, 1, 4097, 0, false, true},  // absorbed MLA decode
        FlashCase{128, 1, 576, 512, 3, 200, 0, true, true},
        FlashCase{4, 4, 64, 64, 1, 1, 0, false, false},  // a single key
        FlashCase{4, 2, 64, 64, 2, 2, 0, false, false},
        FlashCase{8, 8, 64, 64, 40, 100, 16, false, false},  // sliding window
        FlashCase{8, 4, 128, 128, 100, 100, 33, true, false},
        FlashCase{2, 1, 64, 64, 129, 129, 0, true, false},  // full causal prefill, odd S
        // widths that are not multiples of 16 (zero-padded): 56 (D/H of a 1792/32 model),
        // 24, 72/40, and an odd width (bf16 falls back to fp32 products)
        FlashCase{8, 2, 56, 56, 9, 77, 0, true, false},
        FlashCase{4, 4, 24, 24, 3, 40, 0, false, false},
        FlashCase{6, 3, 72, 40, 5, 50, 7, false, false},
        FlashCase{4, 1, 33, 17, 2, 70, 0, true, false},
        FlashCase{16, 1, 80, 48, 1, 600, 0, false, true},  // aliased, split keys
        // decode-sized blocks (<= 8 rows per kv head: keys scored without a transpose)
        FlashCase{32, 32, 128, 128, 1, 2049, 0, false, false},
        FlashCase{8, 2, 128, 128, 2, 777, 0, true, false},   // 4 rows per kv head
        FlashCase{8, 8, 128, 128, 8, 300, 0, false, false},  // speculative: 8 tokens
        FlashCase{4, 4, 72, 40, 3, 90, 0, true, false},      // widths past a multiple of 16
        FlashCase{6, 3, 20, 8, 1, 31, 0, false, false},      // one partial key tile
        FlashCase{4, 4, 64, 64, 5, 5, 3, false, false},      // window in a decode block
        // not causal: every query sees every kept key
        FlashCase{8, 2, 64, 64, 7, 50, 0, true, false, false},
        FlashCase{4, 4, 128, 128, 1, 400, 0, false, false, false},
        FlashCase{8, 1, 96, 64, 130, 70, 0, true, false, false},  // more queries than keys
        FlashCase{16, 1, 576, 512, 2, 100, 0, false, true, false}),
    [](const ::testing::TestParamInfo<FlashCase>& param_info) { return Name(param_info.param); });

// A batch in one attend_batch call equals each problem alone through the reference kernel:
// ragged lengths, 1 to 8 query tokens, padding, causal or not, token-major and head-major K/V,
// every dtype; the fast kernel spreads all of them over one set of tasks and merges splits
// across the batch. With `rules`, each sequence has its own chunk (or none) and ALiBi slopes.
void CheckRaggedBatch(bool rules) {
  // Without AVX-512 both sides are the reference kernel, whose rules kernel_test.cc checks.
  if (rules && cpu::ActiveIsa().isa != cpu::Isa::kAvx512) {
    GTEST_SKIP() << "no AVX-512: nothing to compare";
  }
  constexpr int64_t kHeads = 8, kKvHeads = 2, kDim = 64, kBatch = 8;
  const int64_t lengths[kBatch] = {1, 2500, 33, 700, 4096, 64, 1999, 257};
  const int64_t tokens[kBatch] = {1, 1, 3, 8, 1, 2, 5, 1};
  const int64_t chunks[kBatch] = {1, 1024, 7, 0, 1000, 0, 256, 300};
  const std::vector<float> slopes = testing::TestAlibiSlopes(kHeads);
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (bool head_major : {false, true}) {
      std::vector<std::vector<std::byte>> k_store(kBatch), v_store(kBatch);
      std::vector<Tensor> queries;
      std::vector<std::vector<uint8_t>> keep(kBatch);
      std::vector<std::vector<float>> fast(kBatch), reference(kBatch);
      std::vector<AttentionProblem> problems(kBatch);
      for (int64_t b = 0; b < kBatch; ++b) {
        const int64_t t = lengths[b];
        queries.push_back(RandomUniform({tokens[b], kHeads, kDim}, 100 + b, 1.0f));
        const Tensor k = RandomUniform({t, kKvHeads, kDim}, 200 + b, 1.0f);
        const Tensor v = RandomUniform({t, kKvHeads, kDim}, 300 + b, 1.0f);
        k_store[b].resize(static_cast<size_t>(k.size()) * DTypeSize(dtype));
        v_store[b].resize(static_cast<size_t>(v.size()) * DTypeSize(dtype));
        cpu::StoreRow(dtype, k_store[b].data(), 0, k.size(), k.data());
        cpu::StoreRow(dtype, v_store[b].data(), 0, v.size(), v.data());
        keep[b].assign(static_cast<size_t>(t), 1);
        for (int64_t i = 0; i < t; i += 11) keep[b][static_cast<size_t>(i)] = b % 2;
        fast[b].assign(static_cast<size_t>(tokens[b] * kHeads * kDim), -7.0f);
        reference[b] = fast[b];
        AttentionProblem& p = problems[static_cast<size_t>(b)];
        p.queries = {queries.back().data(), tokens[b], kHeads, kDim};
        p.kv.dtype = dtype;
        p.kv.keys = k_store[b].data();
        p.kv.values = v_store[b].data();
        p.kv.kv_heads = kKvHeads;
        p.kv.key_dim = p.kv.value_dim = kDim;
        // The same bytes read as [T][G][D] or (a different but equally valid cache) [G][T][D].
        p.kv.key_token_stride = p.kv.value_token_stride = head_major ? kDim : kKvHeads * kDim;
        p.kv.key_head_stride = p.kv.value_head_stride = head_major ? t * kDim : kDim;
        p.kv.length = t;
        p.kv.keep = keep[b].data();
        const bool causal = b != 3 && tokens[b] <= t;
        p.visibility = {causal ? t - tokens[b] : 0, 0, causal, causal && rules ? chunks[b] : 0};
        p.scale = 0.125f;
        if (rules && b % 4 != 2) p.alibi_slopes = slopes.data();
      }
      for (int64_t b = 0; b < kBatch; ++b) {
        problems[static_cast<size_t>(b)].out = fast[b].data();
      }
      DefaultBackend().attend_batch(problems.data(), kBatch);
      for (int64_t b = 0; b < kBatch; ++b) {
        AttentionProblem p = problems[static_cast<size_t>(b)];
        p.out = reference[b].data();
        ReferenceBackend().attend(p);
        // bf16 blocks of more than 8 rows per kv head take bf16 dot products (Q rounded).
        const bool bf16_products = dtype == DType::kBF16 && tokens[b] * kHeads / kKvHeads > 8;
        // Sequence 3 is not causal: its ALiBi logits reach m·(T − 1) ≈ 350, where one fp32
        // rounding (ulp 3e-5) of a logit is a relative 1.5e-5 in its weight.
        const double fp32 = rules && b == 3 ? 5e-5 : 1e-5;
        EXPECT_LT(testing::RelativeError(fast[b].data(), reference[b].data(),
                                         static_cast<int64_t>(fast[b].size())),
                  bf16_products ? 2e-2 : fp32)
            << DTypeName(dtype) << (head_major ? " head-major" : " token-major") << " b=" << b;
      }
    }
  }
}

TEST(FlashAttention, RaggedBatchMatchesReferencePerSequence) { CheckRaggedBatch(false); }

// Per-sequence chunks (chunk 1: each query sees itself only) and ALiBi in one batch call.
TEST(FlashAttention, RaggedBatchWithChunkAndAlibiMatchesReference) { CheckRaggedBatch(true); }

// Queries whose visible keys are all padding give zeros, not NaN, on the fast path too.
// Attention sinks (GPT-OSS): one extra logit per head in every row's denominator. The fast
// kernel (single-pass rows, decode rows, split keys merged afterwards, absorbed-MLA widths,
// windows, padding) against the reference; and the sinks do change the result.
TEST(FlashAttention, SinksMatchReference) {
  // Without AVX-512 both sides are the reference kernel (the emulated run of test.sh).
  if (cpu::ActiveIsa().isa != cpu::Isa::kAvx512) GTEST_SKIP() << "no AVX-512: nothing to compare";
  const std::vector<FlashCase> cases = {
      {4, 4, 64, 64, 7, 63, 0, false, false},      {16, 2, 128, 128, 1, 1000, 0, true, false},
      {8, 2, 128, 128, 2, 777, 0, true, false},    {8, 4, 128, 128, 100, 100, 33, true, false},
      {128, 1, 576, 512, 1, 1025, 0, false, true}, {8, 2, 64, 64, 7, 50, 0, true, false, false},
      {4, 4, 64, 64, 5, 5, 3, false, false}};
  for (const FlashCase& c : cases) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(Name(c) + " " + DTypeName(dtype));
      const std::vector<float> expected = RunCase(ReferenceBackend(), c, dtype, true);
      const std::vector<float> got = RunCase(DefaultBackend(), c, dtype, true);
      const bool decode_block = c.queries * (c.heads / c.kv_heads) <= 8;
      const double tolerance = dtype == DType::kBF16 && !decode_block ? 2e-2 : 1e-5;
      const auto n = static_cast<int64_t>(got.size());
      EXPECT_LT(testing::RelativeError(got.data(), expected.data(), n), tolerance);
      const std::vector<float> without = RunCase(ReferenceBackend(), c, dtype, false);
      EXPECT_GT(testing::RelativeError(without.data(), expected.data(), n), 1e-3);
    }
  }
}

// Logit soft-capping (Gemma 2): c·tanh(s/c) on every scaled score, in both kernels, with a cap
// small enough (c = 1.5 on scores of a few units) to move every row; decode rows, split keys,
// prefill tiles, windows and padding; with sinks too.
TEST(FlashAttention, SoftCapMatchesReference) {
  if (cpu::ActiveIsa().isa != cpu::Isa::kAvx512) GTEST_SKIP() << "no AVX-512: nothing to compare";
  const std::vector<FlashCase> cases = {{4, 4, 64, 64, 7, 63, 0, false, false},
                                        {16, 2, 128, 128, 1, 1000, 0, true, false},
                                        {8, 2, 128, 128, 2, 777, 0, true, false},
                                        {8, 4, 128, 128, 100, 100, 33, true, false},
                                        {8, 2, 64, 64, 7, 50, 0, true, false, false}};
  for (const FlashCase& c : cases) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      for (const bool sinks : {false, true}) {
        SCOPED_TRACE(Name(c) + " " + DTypeName(dtype) + (sinks ? " sinks" : ""));
        const std::vector<float> expected = RunCase(ReferenceBackend(), c, dtype, sinks, 1.5f);
        const std::vector<float> got = RunCase(DefaultBackend(), c, dtype, sinks, 1.5f);
        const bool decode_block = c.queries * (c.heads / c.kv_heads) <= 8;
        const double tolerance = dtype == DType::kBF16 && !decode_block ? 2e-2 : 2e-5;
        const auto n = static_cast<int64_t>(got.size());
        EXPECT_LT(testing::RelativeError(got.data(), expected.data(), n), tolerance);
        const std::vector<float> uncapped = RunCase(ReferenceBackend(), c, dtype, sinks, 0.0f);
        EXPECT_GT(testing::RelativeError(uncapped.data(), expected.data(), n), 1e-3);
      }
    }
  }
}

// Tolerance of the fast kernel against the reference: f32 and f16 compute in fp32 (summation
// order only); bf16 blocks of more than 8 rows per kv head take bf16 dot products (Q rounded).
double FastTolerance(const FlashCase& c, DType dtype) {
  const bool decode_block = c.queries * (c.heads / c.kv_heads) <= 8;
  return dtype == DType::kBF16 && !decode_block ? 2e-2 : 2e-5;
}

// Chunked visibility (Llama 4) and ALiBi, alone and together (and with soft-capping and sinks),
// in the fast kernel against the reference: prefill tiles (transposed K), decode rows (row dot),
// split keys, absorbed-MLA widths, windows, padding, both cache layouts and every K/V dtype.
TEST(FlashAttention, ChunkAndAlibiMatchReference) {
  if (cpu::ActiveIsa().isa != cpu::Isa::kAvx512) GTEST_SKIP() << "no AVX-512: nothing to compare";
  struct RuleCase {
    FlashCase c;
    std::vector<int64_t> chunks;  // each with and without ALiBi; 0: ALiBi alone
  };
  const std::vector<RuleCase> cases = {
      {{4, 4, 64, 64, 7, 63, 0, false, false}, {0, 5, 32}},         // prefill after a prefix
      {{8, 2, 128, 128, 33, 65, 0, false, false}, {0, 7, 40}},      // 132 rows per kv head
      {{2, 1, 64, 64, 129, 129, 0, true, false}, {0, 3, 33, 64}},   // full causal prefill, odd S
      {{8, 4, 128, 128, 100, 100, 33, true, false}, {0, 24, 50}},   // chunk + window
      {{16, 1, 192, 128, 3, 130, 0, false, false}, {0, 64}},        // MQA: transposed, few tokens
      {{16, 2, 128, 128, 1, 1000, 0, true, false}, {0, 100, 512}},  // decode, split keys
      {{8, 2, 128, 128, 2, 777, 0, true, false}, {0, 9, 388}},      // 4 rows per kv head
      {{8, 8, 128, 128, 8, 300, 0, false, false}, {0, 5, 296}},     // speculative: 8 tokens
      {{4, 4, 72, 40, 3, 90, 0, true, false}, {0, 11}},             // widths past a multiple of 16
      {{4, 4, 64, 64, 5, 5, 3, false, false}, {0, 2}},              // window in a decode block
      {{128, 1, 576, 512, 1, 1025, 0, false, true}, {0, 1000}},     // absorbed MLA decode
      {{128, 1, 576, 512, 3, 200, 0, true, true}, {0, 64}},         // absorbed MLA, 3 tokens
      {{8, 2, 64, 64, 7, 50, 0, true, false, false}, {0}},          // not causal: ALiBi only
      {{8, 1, 96, 64, 130, 70, 0, true, false, false}, {0}}};
  for (const RuleCase& rc : cases) {
    const FlashCase& c = rc.c;
    for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (const bool head_major : {false, true}) {
        for (const int64_t chunk : rc.chunks) {
          for (const bool alibi : {false, true}) {
            if (chunk == 0 && !alibi) continue;  // neither: the plain cases above
            const Extra extra{.chunk = chunk, .alibi = alibi, .head_major = head_major};
            SCOPED_TRACE(Name(c) + " " + DTypeName(dtype) + (head_major ? " head-major" : "") +
                         " chunk " + std::to_string(chunk) + (alibi ? " alibi" : ""));
            const std::vector<float> expected =
                RunCase(ReferenceBackend(), c, dtype, false, 0.0f, extra);
            const std::vector<float> got = RunCase(DefaultBackend(), c, dtype, false, 0.0f, extra);
            const auto n = static_cast<int64_t>(got.size());
            EXPECT_LT(testing::RelativeError(got.data(), expected.data(), n),
                      FastTolerance(c, dtype));
            for (size_t i = 0; i < got.size(); ++i) ASSERT_FALSE(std::isnan(got[i])) << i;
          }
        }
      }
    }
  }
  // Everything at once: chunk, window, ALiBi, soft-capping and sinks, prefill and decode.
  for (const FlashCase& c : {FlashCase{8, 4, 128, 128, 100, 100, 33, true, false},
                             FlashCase{16, 2, 128, 128, 1, 1000, 0, true, false}}) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      SCOPED_TRACE(Name(c) + " " + DTypeName(dtype) + " all rules");
      const Extra extra{.chunk = 40, .alibi = true};
      const std::vector<float> expected = RunCase(ReferenceBackend(), c, dtype, true, 1.5f, extra);
      const std::vector<float> got = RunCase(DefaultBackend(), c, dtype, true, 1.5f, extra);
      EXPECT_LT(
          testing::RelativeError(got.data(), expected.data(), static_cast<int64_t>(got.size())),
          FastTolerance(c, dtype));
    }
  }
}

// Long decode, split across tasks: T = 5000 with chunks of 1024 and 4096 (the query sees the
// last 904 keys), a chunk boundary just behind the query (one key) and ALiBi on top; both
// layouts. One thread and several give the same result.
TEST(FlashAttention, ChunkedLongDecodeMatchesReference) {
  if (cpu::ActiveIsa().isa != cpu::Isa::kAvx512) GTEST_SKIP() << "no AVX-512: nothing to compare";
  const FlashCase c{16, 2, 128, 128, 1, 5000, 0, true, false};
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    for (const bool head_major : {false, true}) {
      for (const int64_t chunk : {1024, 4096, 4999, 2500}) {
        for (const bool alibi : {false, true}) {
          const Extra extra{.chunk = chunk, .alibi = alibi, .head_major = head_major};
          SCOPED_TRACE(std::string(DTypeName(dtype)) + (head_major ? " head-major" : "") +
                       " chunk " + std::to_string(chunk) + (alibi ? " alibi" : ""));
          const std::vector<float> expected =
              RunCase(ReferenceBackend(), c, dtype, false, 0.0f, extra);
          const std::vector<float> got = RunCase(DefaultBackend(), c, dtype, false, 0.0f, extra);
          EXPECT_LT(
              testing::RelativeError(got.data(), expected.data(), static_cast<int64_t>(got.size())),
              2e-5);
        }
      }
    }
  }
  const int before = NumThreads();
  SetNumThreads(1);
  const Extra extra{.chunk = 1024, .alibi = true};
  const std::vector<float> one = RunCase(DefaultBackend(), c, DType::kF32, false, 0.0f, extra);
  SetNumThreads(3);
  const std::vector<float> three = RunCase(DefaultBackend(), c, DType::kF32, false, 0.0f, extra);
  SetNumThreads(before);
  EXPECT_LT(testing::RelativeError(three.data(), one.data(), static_cast<int64_t>(one.size())),
            1e-5);
}

// The fast kernel skips the keys outside a query's chunk instead of computing and masking them:
// with every key outside the visible range NaN, no score is flagged non-finite and the output
// is that of clean keys. Decode (split keys, both layouts) and a prefill whose queries all lie
// in one chunk.
TEST(FlashAttention, ChunkedKernelNeverReadsKeysOutsideTheChunk) {
  if (cpu::ActiveIsa().isa != cpu::Isa::kAvx512) GTEST_SKIP() << "no AVX-512: nothing to compare";
  struct ReadCase {
    FlashCase c;
    int64_t chunk, visible_begin;
  };
  const std::vector<ReadCase> cases = {
      {{16, 2, 128, 128, 1, 5000, 0, false, false}, 1024, 4096},  // keys 4096 … 4999
      {{8, 8, 64, 64, 1, 3000, 0, false, false}, 2048, 2048},
      {{8, 2, 128, 128, 2, 777, 0, false, false}, 388, 388},      // slots 775 | 776: two chunks
      {{4, 2, 64, 64, 40, 700, 0, false, false}, 256, 512},       // prefill, slots 660 … 699
      {{128, 1, 576, 512, 1, 1025, 0, false, true}, 512, 1024}};  // MLA: one key
  for (const ReadCase& rc : cases) {
    for (const bool head_major : {false, true}) {
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(Name(rc.c) + (head_major ? " head-major " : " ") + DTypeName(dtype));
        Extra clean{.chunk = rc.chunk, .alibi = true, .head_major = head_major};
        const std::vector<float> expected =
            RunCase(DefaultBackend(), rc.c, dtype, false, 0.0f, clean);
        std::atomic<bool> non_finite{false};
        Extra poisoned = clean;
        poisoned.poison_begin = rc.visible_begin;
        poisoned.poison_end = rc.c.length;
        poisoned.non_finite_scores = &non_finite;
        const std::vector<float> got =
            RunCase(DefaultBackend(), rc.c, dtype, false, 0.0f, poisoned);
        EXPECT_FALSE(non_finite.load());
        // The tiles cover the same keys: equal up to the split points of the key range.
        EXPECT_LT(
            testing::RelativeError(got.data(), expected.data(), static_cast<int64_t>(got.size())),
            1e-6);
      }
    }
  }
}

// The last row of a prefill equals a one-row decode at its slot (and so does any row): the
// same keys, bias and chunk, reached through the transposed-tile path in one case and the
// row-dot path (split keys when long) in the other.
TEST(FlashAttention, DecodeEqualsPrefillRowWithChunkAndAlibi) {
  if (cpu::ActiveIsa().isa != cpu::Isa::kAvx512) GTEST_SKIP() << "no AVX-512: nothing to compare";
  const int64_t length = 700;
  const FlashCase prefill{8, 2, 64, 64, length, length, 0, true, false};
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    for (const int64_t chunk : {0, 128, 300}) {
      for (const bool alibi : {false, true}) {
        if (chunk == 0 && !alibi) continue;
        const Extra extra{.chunk = chunk, .alibi = alibi};
        const std::vector<float> all =
            RunCase(DefaultBackend(), prefill, dtype, false, 0.0f, extra);
        const int64_t row = prefill.heads * prefill.value_dim;
        for (const int64_t slot : {int64_t{0}, int64_t{127}, int64_t{128}, int64_t{299},
                                   int64_t{300}, int64_t{601}, length - 1}) {
          SCOPED_TRACE(std::string(DTypeName(dtype)) + " chunk " + std::to_string(chunk) +
                       (alibi ? " alibi" : "") + " slot " + std::to_string(slot));
          FlashCase decode = prefill;
          decode.queries = 1;
          Extra one = extra;
          one.first_slot = slot;
          one.query_offset = slot;
          const std::vector<float> got = RunCase(DefaultBackend(), decode, dtype, false, 0.0f, one);
          // bf16 prefill rounds Q to bf16 for its dot products; decode keeps fp32.
          EXPECT_LT(testing::RelativeError(got.data(), all.data() + slot * row, row),
                    dtype == DType::kBF16 ? 2e-2 : 2e-5);
        }
      }
    }
  }
}

// A chunk without causal visibility, or a negative one, or a non-finite slope, is an error on
// the fast path too (attend and attend_batch).
TEST(FlashAttention, RejectsBadChunkAndSlopes) {
  const Tensor q = RandomUniform({2, 4, 64}, 1, 1.0f);
  const Tensor kv = RandomUniform({8, 2, 64}, 2, 1.0f);
  std::vector<float> out(2 * 4 * 64);
  AttentionProblem p;
  p.queries = {q.data(), 2, 4, 64};
  p.kv = {DType::kF32, kv.data(), kv.data(), 2, 64, 64, 64, 128, 64, 128, 8, nullptr};
  p.visibility = {6, 0, true, 4};
  p.out = out.data();
  EXPECT_NO_THROW(DefaultBackend().attend(p));
  p.visibility = {0, 0, false, 4};
  testing::ExpectError([&] { DefaultBackend().attend(p); }, ErrorKind::kInvalidArgument,
                       {"chunk", "causal"});
  testing::ExpectError([&] { DefaultBackend().attend_batch(&p, 1); }, ErrorKind::kInvalidArgument,
                       {"chunk", "causal"});
  p.visibility = {6, 0, true, -3};
  testing::ExpectError([&] { DefaultBackend().attend(p); }, ErrorKind::kInvalidArgument,
                       {"chunk", ">= 0"});
  p.visibility = {6, 0, true, 0};
  const std::vector<float> slopes = {0.5f, std::numeric_limits<float>::infinity(), 0.1f, 0.2f};
  p.alibi_slopes = slopes.data();
  testing::ExpectError([&] { DefaultBackend().attend_batch(&p, 1); }, ErrorKind::kInvalidArgument,
                       {"alibi_slopes[1]", "finite"});
}

TEST(FlashAttention, FullyMaskedRowsAreZero) {
  const FlashCase c{4, 2, 64, 64, 3, 3, 0, true, false};  // keys 0 and 1 are padding
  const std::vector<float> got = RunCase(DefaultBackend(), c, DType::kF32);
  for (int64_t i = 0; i < 2 * 4 * 64; ++i) EXPECT_EQ(got[i], 0.0f) << i;  // queries 0, 1
  EXPECT_NE(got[2 * 4 * 64], 0.0f);
}

// One thread and several give the same numbers: the split-key merge is exact, only the order of
// fp32 sums changes (hence 1e-5, not bitwise).
TEST(FlashAttention, ThreadCountDoesNotChangeResults) {
  const FlashCase c{16, 2, 128, 128, 1, 3000, 0, true, false};
  const int before = NumThreads();
  SetNumThreads(1);
  const std::vector<float> one = RunCase(DefaultBackend(), c, DType::kF32);
  SetNumThreads(3);
  const std::vector<float> three = RunCase(DefaultBackend(), c, DType::kF32);
  SetNumThreads(before);
  EXPECT_LT(testing::RelativeError(three.data(), one.data(), static_cast<int64_t>(one.size())),
            1e-5);
}

// The portable path, forced, is the reference kernel exactly: the same binary runs on an
// x86-64 without AVX-512.
TEST(FlashAttention, ForcedReferenceIsaUsesReferenceKernel) {
  const cpu::IsaSupport saved = cpu::ActiveIsa();
  cpu::ForceIsa(cpu::Isa::kReference, false);
  const FlashCase c{8, 2, 128, 128, 5, 70, 0, true, false};
  const std::vector<float> forced = RunCase(DefaultBackend(), c, DType::kBF16);
  const std::vector<float> reference = RunCase(ReferenceBackend(), c, DType::kBF16);
  cpu::ForceIsa(saved.isa, saved.bf16_dot);
  EXPECT_EQ(forced, reference);
}

}  // namespace
}  // namespace attn
