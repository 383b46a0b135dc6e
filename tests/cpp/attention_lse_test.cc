// SPDX-License-Identifier: Apache-2.0
// AttentionProblem::lse, the log-sum-exp a kernel returns so that partial attentions over
// disjoint key sets merge exactly (context parallelism, docs/distributed.md): every kernel path
// (reference; AVX-512 transposed, row-dot and split-key decode) against a float64 computation
// written here from the formula, over windows, padding, rows with no visible key, sinks,
// soft-capping, ALiBi, query slots before and past the keys, f32/bf16/int8 and paged views; and
// the split-merge identity: attending to keys [0, T) equals merging the states of [0, a) and
// [a, T).
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "attn/kernels.h"
#include "attn/layer_weights.h"
#include "kernels/cpu/element_load.h"
#include "kernels/cpu/flash_attention.h"
#include "kernels/cpu/isa.h"
#include "test_util.h"

namespace attn {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct LseCase {
  std::string name;
  int64_t heads, kv_heads, key_dim, value_dim, queries, length;
  int64_t first_slot;  // of the first query
  int64_t window = 0;
  bool causal = true;
  bool padding = false;          // every 7th key and keys 0, 1 hidden
  bool leading_padding = false;  // keys 0 … 9 hidden: early rows see nothing
  bool sinks = false;
  float softcap = 0.0f;
  bool alibi = false;
  DType dtype = DType::kF32;  // f32, bf16 or int8 (with scales)
  bool paged = false;         // pages of 16 in reverse order
  bool aliased = false;       // values = the first value_dim entries of the key rows
};

// gtest prints a failing case by name.
void PrintTo(const LseCase& c, std::ostream* os) { *os << c.name; }

// A case's inputs as a kernel sees them, plus the stored values as fp32 for the float64 oracle.
struct Inputs {
  Tensor q;
  std::vector<float> k_values, v_values;  // [G][T][D] as stored (dequantized)
  std::vector<std::byte> k_store, v_store;
  std::vector<float> k_scales, v_scales;
  std::vector<uint8_t> keep;
  std::vector<int32_t> page_table;
  Tensor sinks;
  std::vector<float> slopes;
  AttentionProblem problem;
};

Inputs Build(const LseCase& c) {
  Inputs in;
  in.q = RandomUniform({c.queries, c.heads, c.key_dim}, 21, 1.0f);
  const Tensor k = RandomUniform({c.kv_heads, c.length, c.key_dim}, 22, 1.0f);
  const Tensor v = RandomUniform({c.kv_heads, c.length, c.value_dim}, 23, 1.0f);
  in.sinks = RandomUniform({c.heads}, 24, 3.0f);
  in.slopes = testing::TestAlibiSlopes(c.heads);
  const int64_t value_row = c.aliased ? c.key_dim : c.value_dim;
  const int64_t page = 16;
  const int64_t pages = (c.length + page - 1) / page;
  const int64_t slots = c.paged ? pages * page : c.length;
  const size_t element = DTypeSize(c.dtype);
  in.k_store.resize(static_cast<size_t>(c.kv_heads * slots * c.key_dim) * element);
  in.v_store.resize(static_cast<size_t>(c.kv_heads * slots * value_row) * element);
  in.k_values.resize(static_cast<size_t>(c.kv_heads * c.length * c.key_dim));
  in.v_values.resize(static_cast<size_t>(c.kv_heads * c.length * c.value_dim));
  const bool quantized = IsQuantizedKV(c.dtype);
  if (quantized) {
    in.k_scales.resize(static_cast<size_t>(c.kv_heads * slots));
    in.v_scales.resize(static_cast<size_t>(c.kv_heads * slots));
  }
  in.keep.assign(static_cast<size_t>(slots), 1);
  for (int64_t p = 0; p < pages; ++p) in.page_table.push_back(static_cast<int32_t>(pages - 1 - p));

  AttentionProblem& p = in.problem;
  p.kv.dtype = c.dtype;
  p.kv.keys = in.k_store.data();
  p.kv.values = c.aliased ? in.k_store.data() : in.v_store.data();
  p.kv.kv_heads = c.kv_heads;
  p.kv.key_dim = c.key_dim;
  p.kv.value_dim = c.value_dim;
  p.kv.key_token_stride = c.key_dim;
  p.kv.value_token_stride = value_row;
  p.kv.key_head_stride = (c.paged ? page : c.length) * c.key_dim;
  p.kv.value_head_stride = (c.paged ? page : c.length) * value_row;
  p.kv.length = c.length;
  p.kv.keep = in.keep.data();
  if (c.paged) {
    p.kv.page_size = page;
    p.kv.page_table = in.page_table.data();
    p.kv.key_page_stride = c.kv_heads * page * c.key_dim;
    p.kv.value_page_stride = c.kv_heads * page * value_row;
  }
  if (quantized) {
    p.kv.key_scales = in.k_scales.data();
    p.kv.value_scales = c.aliased ? in.k_scales.data() : in.v_scales.data();
    p.kv.scale_head_stride = c.length;
  }
  // Stores each row and reads back what the kernels will see.
  std::vector<float> row(static_cast<size_t>(value_row));
  for (int64_t g = 0; g < c.kv_heads; ++g) {
    for (int64_t t = 0; t < c.length; ++t) {
      const float* key = k.data() + (g * c.length + t) * c.key_dim;
      const int64_t key_at = KeyOffset(p.kv, g, t);
      float* key_value = in.k_values.data() + (g * c.length + t) * c.key_dim;
      float key_scale = 1.0f;
      if (quantized) {
        key_scale = cpu::QuantizeRow(c.dtype, in.k_store.data(), key_at, c.key_dim, key);
        in.k_scales[static_cast<size_t>(ScaleOffset(p.kv, g, t))] = key_scale;
      } else {
        cpu::StoreRow(c.dtype, in.k_store.data(), key_at, c.key_dim, key);
      }
      cpu::LoadRow(c.dtype, in.k_store.data(), key_at, c.key_dim, key_value);
      for (int64_t i = 0; i < c.key_dim; ++i) key_value[i] *= key_scale;
      float* value_value = in.v_values.data() + (g * c.length + t) * c.value_dim;
      if (c.aliased) {
        std::copy_n(key_value, c.value_dim, value_value);
        continue;
      }
      const int64_t value_at = ValueOffset(p.kv, g, t);
      const float* value = v.data() + (g * c.length + t) * c.value_dim;
      float value_scale = 1.0f;
      if (quantized) {
        value_scale = cpu::QuantizeRow(c.dtype, in.v_store.data(), value_at, c.value_dim, value);
        in.v_scales[static_cast<size_t>(ScaleOffset(p.kv, g, t))] = value_scale;
      } else {
        cpu::StoreRow(c.dtype, in.v_store.data(), value_at, c.value_dim, value);
      }
      cpu::LoadRow(c.dtype, in.v_store.data(), value_at, c.value_dim, value_value);
      for (int64_t i = 0; i < c.value_dim; ++i) value_value[i] *= value_scale;
    }
  }
  for (int64_t t = 0; t < c.length; ++t) {
    const bool hidden = (c.padding && (t % 7 == 3 || t < 2)) || (c.leading_padding && t < 10);
    in.keep[static_cast<size_t>(KeepOffset(p.kv, t))] = hidden ? 0 : 1;
  }
  p.queries = {in.q.data(), c.queries, c.heads, c.key_dim};
  p.visibility = {c.first_slot, c.window, c.causal};
  p.scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
  p.sinks = c.sinks ? in.sinks.data() : nullptr;
  p.softcap = c.softcap;
  p.alibi_slopes = c.alibi ? in.slopes.data() : nullptr;
  return in;
}

// The float64 oracle: lse [S][H] and out [S][H][Dv] from the definition in kernels.h.
void Oracle(const LseCase& c, const Inputs& in, std::vector<double>& lse,
            std::vector<double>& out) {
  const AttentionProblem& p = in.problem;
  lse.assign(static_cast<size_t>(c.queries * c.heads), -INFINITY);
  out.assign(static_cast<size_t>(c.queries * c.heads * c.value_dim), 0.0);
  const int64_t group = c.heads / c.kv_heads;
  for (int64_t s = 0; s < c.queries; ++s) {
    const int64_t slot = c.first_slot + s;
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t g = h / group;
      std::vector<double> scores;
      std::vector<int64_t> keys;
      for (int64_t t = 0; t < c.length; ++t) {
        if (in.keep[static_cast<size_t>(KeepOffset(p.kv, t))] == 0) continue;
        if (c.causal && (t > slot || (c.window > 0 && t <= slot - c.window))) continue;
        double dot = 0.0;
        for (int64_t i = 0; i < c.key_dim; ++i) {
          dot += static_cast<double>(in.q.data()[(s * c.heads + h) * c.key_dim + i]) *
                 in.k_values[static_cast<size_t>((g * c.length + t) * c.key_dim + i)];
        }
        double score = p.scale * dot;
        if (c.softcap > 0.0f) score = c.softcap * std::tanh(score / c.softcap);
        if (c.alibi) score += in.slopes[static_cast<size_t>(h)] * static_cast<double>(t - slot);
        scores.push_back(score);
        keys.push_back(t);
      }
      if (scores.empty()) continue;
      double top = c.sinks ? in.sinks.data()[h] : -INFINITY;
      for (const double score : scores) top = std::max(top, score);
      double total = c.sinks ? std::exp(in.sinks.data()[h] - top) : 0.0;
      for (const double score : scores) total += std::exp(score - top);
      const double row_lse = top + std::log(total);
      lse[static_cast<size_t>(s * c.heads + h)] = row_lse;
      for (size_t j = 0; j < keys.size(); ++j) {
        const double weight = std::exp(scores[j] - row_lse);
        for (int64_t i = 0; i < c.value_dim; ++i) {
          out[static_cast<size_t>((s * c.heads + h) * c.value_dim + i)] +=
              weight * in.v_values[static_cast<size_t>((g * c.length + keys[j]) * c.value_dim + i)];
        }
      }
    }
  }
}

struct Result {
  std::vector<float> out, lse;
};

Result Solve(const KernelBackend& backend, AttentionProblem problem, bool batch) {
  Result r;
  r.out.assign(
      static_cast<size_t>(problem.queries.tokens * problem.queries.heads * problem.kv.value_dim),
      -7.0f);
  r.lse.assign(static_cast<size_t>(problem.queries.tokens * problem.queries.heads), 7.0f);
  problem.out = r.out.data();
  problem.lse = r.lse.data();
  if (batch) {
    backend.attend_batch(&problem, 1);
  } else {
    backend.attend(problem);
  }
  return r;
}

// lse agrees within `tolerance` (absolute, natural-log units; -inf exactly), out within
// `tolerance` relative to its largest entry.
void ExpectMatches(const Result& got, const std::vector<double>& lse,
                   const std::vector<double>& out, double tolerance, const std::string& what) {
  ASSERT_EQ(got.lse.size(), lse.size());
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(lse[i])) {
      EXPECT_EQ(got.lse[i], kNegInf) << what << " row " << i;
    } else {
      EXPECT_NEAR(got.lse[i], lse[i], tolerance) << what << " row " << i;
    }
  }
  double max_diff = 0.0, max_ref = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(got.out[i] - out[i]));
    max_ref = std::max(max_ref, std::fabs(out[i]));
  }
  EXPECT_LE(max_diff, tolerance * std::max(1.0, max_ref)) << what;
}

class LseTest : public ::testing::TestWithParam<LseCase> {};

TEST_P(LseTest, EveryPathMatchesFloat64) {
  const LseCase& c = GetParam();
  const Inputs in = Build(c);
  std::vector<double> lse, out;
  Oracle(c, in, lse, out);
  // Rows with many queries per kv head in bf16 take bf16 dot products (Q rounded to bf16).
  const bool bf16_products =
      c.dtype == DType::kBF16 && c.queries * (c.heads / c.kv_heads) > 8 && c.key_dim % 2 == 0;
  const double fast_tolerance = bf16_products ? 3e-2 : 2e-5;
  ExpectMatches(Solve(ReferenceBackend(), in.problem, false), lse, out, 2e-5, "reference");
  ExpectMatches(Solve(ReferenceBackend(), in.problem, true), lse, out, 2e-5, "reference batch");
  ExpectMatches(Solve(DefaultBackend(), in.problem, false), lse, out, fast_tolerance, "default");
  ExpectMatches(Solve(DefaultBackend(), in.problem, true), lse, out, fast_tolerance,
                "default batch");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, LseTest,
    ::testing::Values(
        LseCase{"PrefillMha", 4, 4, 32, 32, 40, 40, 0},
        LseCase{"ChunkedPrefillGqa", 8, 2, 64, 64, 33, 90, 57},
        LseCase{"DecodeSplitKeys", 8, 2, 64, 64, 1, 1500, 1499},
        LseCase{"DecodeSpeculative", 4, 4, 48, 48, 3, 700, 697, 0, true, true},
        LseCase{"Window", 8, 4, 32, 32, 50, 80, 30, 17, true, true},
        LseCase{"NoVisibleKey", 4, 2, 32, 32, 20, 20, 0, 0, true, false, true},
        LseCase{"NoVisibleKeyWithSinks", 4, 2, 32, 32, 20, 20, 0, 0, true, false, true, true},
        LseCase{"Sinks", 8, 2, 32, 32, 12, 300, 288, 0, true, true, false, true},
        LseCase{"SinksDecode", 8, 2, 32, 32, 1, 900, 899, 0, true, false, false, true},
        LseCase{"Softcap", 4, 4, 32, 32, 24, 24, 0, 0, true, false, false, false, 0.5f},
        LseCase{"Alibi", 8, 8, 32, 32, 20, 64, 44, 0, true, false, false, false, 0.0f, true},
        LseCase{"AlibiWindowSinksCap", 8, 2, 32, 32, 30, 60, 30, 9, true, true, false, true, 0.7f,
                true},
        // slices of a longer sequence: queries before the view's keys, or past them
        LseCase{"QueriesBeforeKeys", 4, 2, 32, 32, 10, 30, -6, 0, true, true},
        LseCase{"QueriesPastKeys", 4, 2, 32, 32, 5, 30, 40, 12, true, false, false, false, 0.0f,
                true},
        LseCase{"DecodePastKeys", 8, 2, 64, 64, 1, 1200, 5000},
        LseCase{"NotCausal", 8, 2, 32, 32, 7, 50, 0, 0, false, true},
        LseCase{"Bf16Prefill", 8, 2, 64, 64, 40, 100, 60, 0, true, true, false, true, 0.0f, false,
                DType::kBF16},
        LseCase{"Bf16Decode", 8, 2, 64, 64, 1, 800, 799, 0, true, false, false, false, 0.0f, false,
                DType::kBF16},
        LseCase{"Int8Decode", 8, 2, 64, 64, 2, 600, 598, 0, true, true, false, true, 0.0f, false,
                DType::kI8},
        LseCase{"PagedPrefill", 4, 2, 32, 32, 30, 70, 40, 0, true, true, false, false, 0.0f, false,
                DType::kF32, true},
        LseCase{"PagedDecodeInt8", 8, 2, 32, 32, 1, 900, 899, 0, true, false, false, true, 0.0f,
                false, DType::kI8, true},
        LseCase{"AbsorbedMlaDecode", 16, 1, 80, 48, 1, 1000, 999, 0, true, false, false, false,
                0.0f, false, DType::kF32, false, true},
        LseCase{"AbsorbedMlaPrefill", 16, 1, 80, 48, 9, 60, 51, 0, true, true, false, false, 0.0f,
                false, DType::kF32, false, true}),
    [](const ::testing::TestParamInfo<LseCase>& param_info) { return param_info.param.name; });

// A problem that returns its lse never takes the AMX kernel (which keeps no such state).
TEST(LseTest, AmxLeavesLseProblemsToAvx512) {
  LseCase c{"Bf16", 8, 2, 64, 64, 64, 64, 0};
  c.dtype = DType::kBF16;
  Inputs in = Build(c);
  std::vector<float> out(64 * 8 * 64), lse(64 * 8);
  in.problem.out = out.data();
  in.problem.lse = lse.data();
  EXPECT_FALSE(cpu::FlashAttendAmxSupports(in.problem, cpu::ActiveIsa()));
}

// The keys of `p` from slot `begin` on, `count` of them, with its queries' slots shifted to
// match: the view a rank holding only those keys attends to (contiguous views only).
AttentionProblem Slice(const AttentionProblem& p, int64_t begin, int64_t count) {
  AttentionProblem slice = p;
  const auto element = static_cast<int64_t>(DTypeSize(p.kv.dtype));
  slice.kv.keys =
      static_cast<const std::byte*>(p.kv.keys) + begin * p.kv.key_token_stride * element;
  slice.kv.values =
      static_cast<const std::byte*>(p.kv.values) + begin * p.kv.value_token_stride * element;
  slice.kv.keep = p.kv.keep + begin;
  if (p.kv.key_scales != nullptr) {
    slice.kv.key_scales = p.kv.key_scales + begin;
    slice.kv.value_scales = p.kv.value_scales + begin;
  }
  slice.kv.length = count;
  slice.visibility.first_query_slot -= begin;
  slice.sinks = nullptr;
  return slice;
}

// Merging the states of [0, a) and [a, T) (and the sink, once) gives attention over [0, T):
// M = max(lse_1, lse_2), out = Σ e^(lse_i − M) out_i / (Σ e^(lse_i − M) + e^(sink − M)).
void CheckSplitMerge(const KernelBackend& backend, const LseCase& c, int64_t a) {
  const Inputs in = Build(c);
  const Result whole = Solve(backend, in.problem, true);
  const Result left = Solve(backend, Slice(in.problem, 0, a), true);
  const Result right = Solve(backend, Slice(in.problem, a, c.length - a), true);
  for (int64_t row = 0; row < c.queries * c.heads; ++row) {
    const auto i = static_cast<size_t>(row);
    const float sink = c.sinks ? in.sinks.data()[row % c.heads] : kNegInf;
    float top = std::max(left.lse[i], right.lse[i]);
    if (top == kNegInf) {
      EXPECT_EQ(whole.lse[i], kNegInf) << row;
      for (int64_t d = 0; d < c.value_dim; ++d) {
        EXPECT_EQ(whole.out[i * c.value_dim + d], 0.0f);
      }
      continue;
    }
    top = std::max(top, sink);
    const float w_left = std::exp(left.lse[i] - top);
    const float w_right = std::exp(right.lse[i] - top);
    const float total = w_left + w_right + std::exp(sink - top);
    EXPECT_NEAR(top + std::log(total), whole.lse[i], 1e-5f * std::max(1.0f, std::fabs(top))) << row;
    for (int64_t d = 0; d < c.value_dim; ++d) {
      const size_t e = i * c.value_dim + d;
      const float merged = (w_left * left.out[e] + w_right * right.out[e]) / total;
      EXPECT_NEAR(merged, whole.out[e], 1e-5f) << row << "," << d;
    }
  }
}

TEST(LseTest, SplitMergeIdentity) {
  for (const KernelBackend* backend : {&ReferenceBackend(), &DefaultBackend()}) {
    SCOPED_TRACE(backend->name);
    CheckSplitMerge(*backend, LseCase{"Prefill", 8, 2, 64, 64, 50, 50, 0}, 17);
    CheckSplitMerge(*backend, LseCase{"Chunk", 8, 2, 64, 64, 20, 80, 60, 0, true, true}, 33);
    CheckSplitMerge(*backend, LseCase{"Decode", 8, 2, 64, 64, 1, 1400, 1399}, 700);
    CheckSplitMerge(*backend,
                    LseCase{"WindowSinksAlibi", 8, 4, 32, 32, 40, 90, 50, 20, true, true, false,
                            true, 0.6f, true},
                    64);
    CheckSplitMerge(*backend,
                    LseCase{"LeadingPadding", 4, 2, 32, 32, 30, 30, 0, 0, true, false, true, true},
                    12);
    CheckSplitMerge(*backend,
                    LseCase{"AbsorbedDecode", 16, 1, 80, 48, 2, 900, 898, 0, true, false, false,
                            false, 0.0f, false, DType::kF32, false, true},
                    450);
  }
}

}  // namespace
}  // namespace attn
