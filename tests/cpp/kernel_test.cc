// SPDX-License-Identifier: Apache-2.0
// The reference attention kernel against a brute-force evaluation of the definition in double
// precision: full score matrix, mask, softmax, weighted sum. Covers the GQA head mapping,
// causal offsets, sliding windows, chunked (block-local) visibility, ALiBi, padding, fully masked
// rows, aliased values and f16/bf16 K/V.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/kernels.h"
#include "attn/layer_weights.h"
#include "kernels/cpu/element_load.h"
#include "test_util.h"

namespace attn {
namespace {

struct Case {
  int64_t tokens, heads, kv_heads, key_dim, value_dim, length, first_slot, window;
};

// The optional score and visibility rules of a problem, written out for the brute force.
struct Rules {
  int64_t chunk = 0;          // t / chunk == p / chunk
  std::vector<float> slopes;  // ALiBi: + m_h · (t − p); empty: none
  bool causal = true;
  // ALiBi distances from BLOOM's positions (cumulative sum of keep, minus one) instead of slots.
  bool cumulative_positions = false;
};

// out[s,h] by the definition, keys [T][G][Dk], values [T][G][Dv] in fp32.
std::vector<float> BruteForce(const Case& c, const std::vector<float>& q,
                              const std::vector<float>& k, const std::vector<float>& v,
                              const std::vector<uint8_t>& keep, float scale,
                              const Rules& rules = {}) {
  // BLOOM/Falcon: position of slot t = (number of kept slots up to t) − 1.
  std::vector<int64_t> position(static_cast<size_t>(c.length));
  for (int64_t t = 0, kept = 0; t < c.length; ++t) {
    kept += keep[t] != 0 ? 1 : 0;
    position[t] = rules.cumulative_positions ? kept - 1 : t;
  }
  std::vector<float> out(static_cast<size_t>(c.tokens * c.heads * c.value_dim), 0.0f);
  for (int64_t s = 0; s < c.tokens; ++s) {
    const int64_t p = c.first_slot + s;
    for (int64_t h = 0; h < c.heads; ++h) {
      const int64_t g = h * c.kv_heads / c.heads;
      std::vector<double> w(static_cast<size_t>(c.length), 0.0);
      double max_score = -std::numeric_limits<double>::infinity();
      std::vector<bool> visible(static_cast<size_t>(c.length), false);
      for (int64_t t = 0; t < c.length; ++t) {
        visible[t] = keep[t] != 0;
        if (rules.causal) {
          visible[t] = visible[t] && t <= p && (c.window == 0 || p - c.window < t) &&
                       (rules.chunk == 0 || t / rules.chunk == p / rules.chunk);
        }
        if (!visible[t]) continue;
        double dot = 0;
        for (int64_t i = 0; i < c.key_dim; ++i) {
          dot += static_cast<double>(q[(s * c.heads + h) * c.key_dim + i]) *
                 k[(t * c.kv_heads + g) * c.key_dim + i];
        }
        w[t] = scale * dot;
        if (!rules.slopes.empty()) {
          // The query's own position: its slot, or BLOOM's count of kept slots before it.
          const int64_t query_position =
              rules.cumulative_positions ? position[std::min(p, c.length - 1)] : p;
          w[t] += static_cast<double>(rules.slopes[h]) *
                  static_cast<double>(position[t] - query_position);
        }
        max_score = std::max(max_score, w[t]);
      }
      double total = 0;
      for (int64_t t = 0; t < c.length; ++t) {
        w[t] = visible[t] ? std::exp(w[t] - max_score) : 0.0;
        total += w[t];
      }
      if (total == 0) continue;
      for (int64_t i = 0; i < c.value_dim; ++i) {
        double acc = 0;
        for (int64_t t = 0; t < c.length; ++t) {
          acc += w[t] / total * v[(t * c.kv_heads + g) * c.value_dim + i];
        }
        out[(s * c.heads + h) * c.value_dim + i] = static_cast<float>(acc);
      }
    }
  }
  return out;
}

std::vector<float> Random(int64_t n, uint64_t seed) {
  Tensor t = RandomUniform({n}, seed, 1.0f);
  return {t.values().begin(), t.values().end()};
}

// Runs the reference kernel with keys/values stored token-major [T][G][D] in `dtype`.
std::vector<float> RunReference(const Case& c, const std::vector<float>& q,
                                const std::vector<float>& k, const std::vector<float>& v,
                                const std::vector<uint8_t>& keep, float scale, DType dtype,
                                const Rules& rules = {}) {
  std::vector<uint8_t> k_store(k.size() * DTypeSize(dtype)), v_store(v.size() * DTypeSize(dtype));
  cpu::StoreRow(dtype, k_store.data(), 0, static_cast<int64_t>(k.size()), k.data());
  cpu::StoreRow(dtype, v_store.data(), 0, static_cast<int64_t>(v.size()), v.data());
  std::vector<float> out(static_cast<size_t>(c.tokens * c.heads * c.value_dim), -1.0f);
  AttentionProblem p;
  p.queries = {q.data(), c.tokens, c.heads, c.key_dim};
  p.kv = {
      dtype,       k_store.data(), v_store.data(),         c.kv_heads,  c.key_dim,
      c.value_dim, c.key_dim,      c.kv_heads * c.key_dim, c.value_dim, c.kv_heads * c.value_dim,
      c.length,    keep.data()};
  p.visibility = {c.first_slot, c.window, rules.causal, rules.chunk};
  p.scale = scale;
  if (!rules.slopes.empty()) p.alibi_slopes = rules.slopes.data();
  p.out = out.data();
  ReferenceBackend().attend(p);
  return out;
}

class ReferenceKernelTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceKernelTest, MatchesDefinition) {
  const Case c = GetParam();
  const std::vector<float> q = Random(c.tokens * c.heads * c.key_dim, 1);
  const std::vector<float> k = Random(c.length * c.kv_heads * c.key_dim, 2);
  const std::vector<float> v = Random(c.length * c.kv_heads * c.value_dim, 3);
  std::vector<uint8_t> keep(static_cast<size_t>(c.length), 1);
  for (int64_t t = 0; t < c.length; t += 5) keep[t] = 0;  // some padding
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
  const std::vector<float> expected = BruteForce(c, q, k, v, keep, scale);
  const std::vector<float> f32 = RunReference(c, q, k, v, keep, scale, DType::kF32);
  EXPECT_LT(testing::RelativeError(f32.data(), expected.data(), expected.size()), 1e-5);
  // Half-precision storage: K/V rounded to 8 (bf16) or 11 (f16) mantissa bits.
  const std::vector<float> bf16 = RunReference(c, q, k, v, keep, scale, DType::kBF16);
  EXPECT_LT(testing::RelativeError(bf16.data(), expected.data(), expected.size()), 2e-2);
  const std::vector<float> f16 = RunReference(c, q, k, v, keep, scale, DType::kF16);
  EXPECT_LT(testing::RelativeError(f16.data(), expected.data(), expected.size()), 3e-3);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ReferenceKernelTest,
    ::testing::Values(Case{7, 4, 4, 16, 16, 7, 0, 0},     // MHA prefill
                      Case{5, 8, 2, 32, 32, 12, 7, 0},    // GQA after a cached prefix
                      Case{1, 8, 1, 24, 24, 33, 32, 0},   // MQA decode
                      Case{9, 4, 2, 16, 16, 9, 0, 3},     // sliding window
                      Case{3, 6, 3, 40, 12, 20, 17, 0},   // Dk != Dv
                      Case{1, 128, 1, 72, 64, 65, 64, 0}  // absorbed-MLA-like, 128 heads
                      ));

enum class Padding { kNone, kEveryFifth, kLeft };

// Chunked visibility and ALiBi in the reference kernel against the formula in float64.
struct RuleCase {
  const char* name;
  Case shape;
  int64_t chunk;
  bool alibi;
  Padding padding;
  bool causal = true;
};

class ReferenceRulesTest : public ::testing::TestWithParam<RuleCase> {};

TEST_P(ReferenceRulesTest, MatchesDefinition) {
  const RuleCase& rc = GetParam();
  const Case& c = rc.shape;
  const std::vector<float> q = Random(c.tokens * c.heads * c.key_dim, 21);
  const std::vector<float> k = Random(c.length * c.kv_heads * c.key_dim, 22);
  const std::vector<float> v = Random(c.length * c.kv_heads * c.value_dim, 23);
  std::vector<uint8_t> keep(static_cast<size_t>(c.length), 1);
  for (int64_t t = 0; t < c.length; ++t) {
    if (rc.padding == Padding::kEveryFifth && t % 5 == 2) keep[t] = 0;
    if (rc.padding == Padding::kLeft && t < 3) keep[t] = 0;
  }
  Rules rules;
  rules.chunk = rc.chunk;
  rules.causal = rc.causal;
  if (rc.alibi) rules.slopes = testing::TestAlibiSlopes(c.heads);
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.key_dim));
  const std::vector<float> expected = BruteForce(c, q, k, v, keep, scale, rules);
  const auto n = static_cast<int64_t>(expected.size());
  const std::vector<float> f32 = RunReference(c, q, k, v, keep, scale, DType::kF32, rules);
  EXPECT_LT(testing::RelativeError(f32.data(), expected.data(), n), 1e-5);
  const std::vector<float> bf16 = RunReference(c, q, k, v, keep, scale, DType::kBF16, rules);
  EXPECT_LT(testing::RelativeError(bf16.data(), expected.data(), n), 2e-2);
  const std::vector<float> f16 = RunReference(c, q, k, v, keep, scale, DType::kF16, rules);
  EXPECT_LT(testing::RelativeError(f16.data(), expected.data(), n), 3e-3);
  // The rule matters: without it the answer is a different one.
  Rules plain;
  plain.causal = rc.causal;
  const std::vector<float> without = BruteForce(c, q, k, v, keep, scale, plain);
  EXPECT_GT(testing::RelativeError(without.data(), expected.data(), n), 1e-3);
  if (rc.alibi && rc.padding == Padding::kLeft) {
    // Padding only at the start: BLOOM's cumulative-mask positions give the same softmax as
    // slots (the two differ by the same constant for every key a row sees; kernels.h).
    rules.cumulative_positions = true;
    const std::vector<float> bloom = BruteForce(c, q, k, v, keep, scale, rules);
    EXPECT_LT(testing::RelativeError(f32.data(), bloom.data(), n), 1e-5);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Rules, ReferenceRulesTest,
    ::testing::Values(
        // chunks of 3, 5 and 8 over lengths that are not multiples of them
        RuleCase{"Chunk3Prefill", {13, 4, 2, 16, 16, 13, 0, 0}, 3, false, Padding::kNone},
        RuleCase{"Chunk5AfterPrefix", {9, 4, 2, 16, 16, 23, 14, 0}, 5, false, Padding::kEveryFifth},
        RuleCase{"Chunk8Prefill", {30, 4, 2, 32, 24, 30, 0, 0}, 8, false, Padding::kNone},
        RuleCase{"Chunk8Decode", {1, 4, 2, 16, 16, 27, 26, 0}, 8, false, Padding::kNone},
        RuleCase{"Chunk6Window4", {20, 4, 2, 16, 16, 20, 0, 4}, 6, false, Padding::kNone},
        RuleCase{
            "Chunk5Window7Padding", {12, 4, 2, 16, 16, 19, 7, 7}, 5, false, Padding::kEveryFifth},
        // ALiBi, slopes 2^(−8(h+1)/H)
        RuleCase{"AlibiPrefill", {11, 4, 2, 16, 16, 11, 0, 0}, 0, true, Padding::kNone},
        RuleCase{"AlibiPadding", {6, 4, 2, 16, 16, 17, 11, 0}, 0, true, Padding::kEveryFifth},
        RuleCase{"AlibiLeftPadding", {10, 4, 2, 16, 16, 10, 0, 0}, 0, true, Padding::kLeft},
        RuleCase{"AlibiMqaDecode", {1, 8, 1, 24, 24, 40, 39, 0}, 0, true, Padding::kLeft},
        RuleCase{"AlibiWindowChunk", {9, 4, 2, 16, 16, 25, 16, 6}, 4, true, Padding::kEveryFifth},
        RuleCase{
            "AlibiNotCausal", {5, 4, 2, 16, 16, 9, 2, 0}, 0, true, Padding::kEveryFifth, false}),
    [](const ::testing::TestParamInfo<RuleCase>& param_info) {
      return std::string(param_info.param.name);
    });

TEST(ReferenceKernel, RejectsBadChunkAndSlopes) {
  const std::vector<float> q(64), kv(64);
  std::vector<float> out(64);
  AttentionProblem p;
  p.queries = {q.data(), 1, 4, 8};
  p.kv = {DType::kF32, kv.data(), kv.data(), 2, 8, 8, 8, 16, 8, 16, 2, nullptr};
  p.visibility = {1, 0, true, 4};
  p.out = out.data();
  EXPECT_NO_THROW(ReferenceBackend().attend(p));
  EXPECT_NO_THROW(ValidateAttentionProblem(p));
  p.visibility.chunk = -1;
  testing::ExpectError([&] { ValidateAttentionProblem(p); }, ErrorKind::kInvalidArgument,
                       {"chunk", ">= 0"});
  p.visibility = {0, 0, false, 4};
  testing::ExpectError([&] { ReferenceBackend().attend(p); }, ErrorKind::kInvalidArgument,
                       {"chunk", "causal"});
  p.visibility = {1, 0, true, 0};
  std::vector<float> slopes = {0.5f, 0.25f, std::numeric_limits<float>::quiet_NaN(), 0.0625f};
  p.alibi_slopes = slopes.data();
  testing::ExpectError([&] { ReferenceBackend().attend(p); }, ErrorKind::kInvalidArgument,
                       {"alibi_slopes[2]", "finite"});
  slopes[2] = 0.125f;
  slopes[3] = -std::numeric_limits<float>::infinity();
  testing::ExpectError([&] { ValidateAttentionProblem(p); }, ErrorKind::kInvalidArgument,
                       {"alibi_slopes[3]", "finite"});
  slopes[3] = -0.5f;  // any finite slope is accepted
  EXPECT_NO_THROW(ReferenceBackend().attend(p));
}

// A query whose only visible key is padding gets zeros, not NaN.
TEST(ReferenceKernel, FullyMaskedRowIsZero) {
  const Case c{2, 2, 1, 8, 8, 2, 0, 0};
  const std::vector<float> q = Random(2 * 2 * 8, 4), k = Random(2 * 8, 5), v = Random(2 * 8, 6);
  const std::vector<uint8_t> keep = {0, 1};
  const std::vector<float> out = RunReference(c, q, k, v, keep, 0.3f, DType::kF32);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(out[i], 0.0f) << i;             // token 0 sees only key 0
  for (int i = 16; i < 24; ++i) EXPECT_FLOAT_EQ(out[i], v[i - 16 + 8]);  // token 1: key 1 only
}

// Absorbed MLA: the value row is the first Dv entries of the key row (same pointer).
TEST(ReferenceKernel, ValuesMayAliasKeys) {
  const int64_t length = 10, key_dim = 24, value_dim = 16;
  const std::vector<float> q = Random(3 * key_dim, 7);
  const std::vector<float> rows = Random(length * key_dim, 8);
  std::vector<float> values(length * value_dim);
  for (int64_t t = 0; t < length; ++t) {
    for (int64_t i = 0; i < value_dim; ++i) values[t * value_dim + i] = rows[t * key_dim + i];
  }
  const Case c{1, 3, 1, key_dim, value_dim, length, length - 1, 0};
  const std::vector<uint8_t> keep(length, 1);
  const std::vector<float> expected = BruteForce(c, q, rows, values, keep, 0.2f);
  std::vector<float> out(3 * value_dim);
  AttentionProblem p;
  p.queries = {q.data(), 1, 3, key_dim};
  p.kv = {DType::kF32, rows.data(), rows.data(), 1,       key_dim, value_dim,
          0,           key_dim,     0,           key_dim, length,  nullptr};
  p.visibility = {length - 1, 0};
  p.scale = 0.2f;
  p.out = out.data();
  ReferenceBackend().attend(p);
  EXPECT_LT(testing::RelativeError(out.data(), expected.data(), expected.size()), 1e-5);
}

TEST(ReferenceKernel, RejectsInconsistentProblems) {
  const std::vector<float> q(64), kv(64);
  std::vector<float> out(64);
  AttentionProblem p;
  p.queries = {q.data(), 1, 3, 8};
  p.kv = {DType::kF32, kv.data(), kv.data(), 2, 8, 8, 8, 16, 8, 16, 1, nullptr};
  p.out = out.data();
  EXPECT_THROW(ReferenceBackend().attend(p), Error);  // 3 heads, 2 kv heads
  p.queries.heads = 4;
  p.kv.key_dim = 6;
  EXPECT_THROW(ReferenceBackend().attend(p), Error);  // key dim != query dim
  p.kv.key_dim = 8;
  p.visibility.first_query_slot = 1;
  EXPECT_THROW(ReferenceBackend().attend(p), Error);  // query slot beyond the keys
  p.visibility.first_query_slot = 0;
  p.kv.dtype = DType::kI64;
  EXPECT_THROW(ReferenceBackend().attend(p), Error);
  p.kv.dtype = DType::kF32;
  EXPECT_NO_THROW(ReferenceBackend().attend(p));
}

}  // namespace
}  // namespace attn
