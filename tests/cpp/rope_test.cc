// SPDX-License-Identifier: Apache-2.0
// RoPE: frequencies for each scaling type against the reference formulas (docs/semantics.md
// §2), the pairings, partial rotary width, and the property RoPE exists for: scores depend only
// on the distance between positions.
#include "attn/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <vector>

namespace attn {
namespace {

RopeConfig Rope(int64_t dim, double theta, RopePairing pairing) {
  RopeConfig rope;
  rope.rotary_dim = dim;
  rope.theta = theta;
  rope.pairing = pairing;
  return rope;
}

TEST(RopeFrequencies, UnscaledIsBasePowerMinusTwoIOverR) {
  const std::vector<double> theta =
      RopeInverseFrequencies(Rope(8, 10000.0, RopePairing::kRotateHalf));
  ASSERT_EQ(theta.size(), 4u);
  EXPECT_DOUBLE_EQ(theta[0], 1.0);
  EXPECT_NEAR(theta[1], 0.1, 1e-15);
  EXPECT_NEAR(theta[2], 0.01, 1e-16);
  EXPECT_NEAR(theta[3], 0.001, 1e-17);
}

TEST(RopeFrequencies, LinearDividesByFactor) {
  RopeConfig rope = Rope(8, 10000.0, RopePairing::kRotateHalf);
  rope.scaling.type = RopeScalingType::kLinear;
  rope.scaling.factor = 4.0;
  const std::vector<double> theta = RopeInverseFrequencies(rope);
  EXPECT_NEAR(theta[1], 0.025, 1e-15);
}

// Llama-3.1-8B: base 5e5, r 128, factor 8, low 1, high 4, L 8192.
TEST(RopeFrequencies, Llama3KeepsHighBandScalesLowBandBlendsMiddle) {
  RopeConfig rope = Rope(128, 500000.0, RopePairing::kRotateHalf);
  rope.scaling.type = RopeScalingType::kLlama3;
  rope.scaling.factor = 8.0;
  rope.scaling.low_freq_factor = 1.0;
  rope.scaling.high_freq_factor = 4.0;
  rope.scaling.original_max_position_embeddings = 8192;
  const std::vector<double> theta = RopeInverseFrequencies(rope);
  const auto base = [](int i) { return std::pow(500000.0, -2.0 * i / 128.0); };
  // i = 0: wavelength 2π < 8192/4 -> unchanged.
  EXPECT_DOUBLE_EQ(theta[0], 1.0);
  // i = 63: wavelength ≈ 2.6e6 > 8192 -> θ/8.
  EXPECT_NEAR(theta[63], base(63) / 8.0, 1e-20);
  // Find a band index (2048 <= λ <= 8192) and check the blend by hand.
  int checked = 0;
  for (int i = 0; i < 64; ++i) {
    const double wavelength = 2.0 * std::numbers::pi / base(i);
    if (wavelength >= 2048.0 && wavelength <= 8192.0) {
      const double m = (8192.0 / wavelength - 1.0) / 3.0;
      EXPECT_NEAR(theta[i], (1 - m) * base(i) / 8.0 + m * base(i), 1e-15) << i;
      ++checked;
    }
  }
  EXPECT_GT(checked, 0);
}

// DeepSeek-V3: r = 64, L = 4096, βf = 32, βs = 1, base 1e4 -> lo = 10, hi = 23 (docs/semantics.md
// §2).
TEST(RopeFrequencies, YarnRampMatchesDeepSeekV3Range) {
  RopeConfig rope = Rope(64, 10000.0, RopePairing::kInterleaved);
  rope.scaling.type = RopeScalingType::kYarn;
  rope.scaling.factor = 40.0;
  rope.scaling.original_max_position_embeddings = 4096;
  const std::vector<double> theta = RopeInverseFrequencies(rope);
  const auto base = [](int i) { return std::pow(10000.0, -2.0 * i / 64.0); };
  for (int i = 0; i <= 10; ++i) EXPECT_DOUBLE_EQ(theta[i], base(i)) << i;
  for (int i = 23; i < 32; ++i) EXPECT_NEAR(theta[i], base(i) / 40.0, 1e-18) << i;
  const double ramp = (16.0 - 10.0) / 13.0;
  EXPECT_NEAR(theta[16], base(16) * (1 - ramp) + base(16) / 40.0 * ramp, 1e-16);
}

TEST(RopeAttentionFactor, FollowsMscaleKeys) {
  RopeScaling s;
  EXPECT_EQ(RopeAttentionFactor(s), 1.0);  // no scaling
  s.type = RopeScalingType::kYarn;
  s.factor = 40.0;
  s.mscale = 1.0;
  s.mscale_all_dim = 1.0;
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(s), 1.0);  // DeepSeek: ratio of equal mscales
  s.mscale = 0.0;
  s.mscale_all_dim = 0.0;
  s.factor = 4.0;
  EXPECT_NEAR(RopeAttentionFactor(s), 0.1 * std::log(4.0) + 1.0, 1e-15);  // Qwen-style yarn
  s.attention_factor = 0.5;
  EXPECT_EQ(RopeAttentionFactor(s), 0.5);  // explicit key wins
}

// LongRoPE (Phi-3, docs/semantics.md §2): θ_i / f_i with the short factors while the call's
// sequence fits in L, the long ones beyond; cos/sin scaled by sqrt(1 + ln s / ln L).
TEST(RopeFrequencies, LongropeChoosesShortOrLongFactorsByCallLength) {
  RopeConfig rope = Rope(8, 10000.0, RopePairing::kRotateHalf);
  rope.scaling.type = RopeScalingType::kLongrope;
  rope.scaling.original_max_position_embeddings = 4096;
  rope.scaling.factor = 32.0;  // 131072 / 4096
  rope.scaling.short_factor = {1.0, 1.5, 2.0, 4.0};
  rope.scaling.long_factor = {1.0, 3.0, 9.0, 27.0};
  const std::vector<double> base =
      RopeInverseFrequencies(Rope(8, 10000.0, RopePairing::kRotateHalf));
  const std::vector<double> unchanged = RopeInverseFrequencies(rope);
  const std::vector<double> at_length = RopeInverseFrequencies(rope, 4096);
  const std::vector<double> beyond = RopeInverseFrequencies(rope, 4097);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_DOUBLE_EQ(unchanged[i], base[i] / rope.scaling.short_factor[i]);
    EXPECT_DOUBLE_EQ(at_length[i], base[i] / rope.scaling.short_factor[i]);
    EXPECT_DOUBLE_EQ(beyond[i], base[i] / rope.scaling.long_factor[i]);
  }
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(rope.scaling),
                   std::sqrt(1.0 + std::log(32.0) / std::log(4096.0)));
  rope.scaling.attention_factor = 1.25;  // given: used as is
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(rope.scaling), 1.25);
  rope.scaling.attention_factor = 0.0;
  rope.scaling.factor = 1.0;  // no extension: no scaling of cos/sin
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(rope.scaling), 1.0);
}

// Dynamic NTK: base·(s·n/L - (s - 1))^(r/(r-2)) with n = max(sequence length, L).
TEST(RopeFrequencies, DynamicGrowsTheBaseOnlyPastL) {
  RopeConfig rope = Rope(8, 10000.0, RopePairing::kRotateHalf);
  rope.scaling.type = RopeScalingType::kDynamic;
  rope.scaling.factor = 4.0;
  rope.scaling.original_max_position_embeddings = 2048;
  const std::vector<double> base =
      RopeInverseFrequencies(Rope(8, 10000.0, RopePairing::kRotateHalf));
  EXPECT_EQ(RopeInverseFrequencies(rope), base);
  EXPECT_EQ(RopeInverseFrequencies(rope, 2048), base);
  const std::vector<double> grown = RopeInverseFrequencies(rope, 8192);
  const double new_base = 10000.0 * std::pow(4.0 * 8192.0 / 2048.0 - 3.0, 8.0 / 6.0);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(grown[i], std::pow(new_base, -2.0 * static_cast<double>(i) / 8.0), 1e-15 * base[i]);
  }
  EXPECT_DOUBLE_EQ(RopeAttentionFactor(rope.scaling), 1.0);
}

TEST(RotaryEmbedding, ForCallUsesTheLargestPositionPlusOne) {
  RopeConfig rope = Rope(4, 10000.0, RopePairing::kRotateHalf);
  EXPECT_FALSE(RotaryEmbedding(rope).varies_per_call());
  rope.scaling.type = RopeScalingType::kLongrope;
  rope.scaling.original_max_position_embeddings = 16;
  rope.scaling.factor = 4.0;
  rope.scaling.short_factor = {1.0, 2.0};
  rope.scaling.long_factor = {1.0, 8.0};
  const RotaryEmbedding embedding(rope);
  ASSERT_TRUE(embedding.varies_per_call());
  // Position 15 is the 16th token: still short. Position 16 makes the sequence 17 long.
  std::vector<float> cos_short(2), sin_short(2), cos_long(2), sin_long(2), cos_call(2), sin_call(2);
  embedding.ForCall(15).Angles(10, cos_short, sin_short);
  embedding.ForCall(16).Angles(10, cos_long, sin_long);
  embedding.Angles(10, cos_call, sin_call);  // the plain embedding is the short one
  const double factor = std::sqrt(1.0 + std::log(4.0) / std::log(16.0));
  EXPECT_NEAR(cos_short[1], std::cos(10.0 * 0.01 / 2.0) * factor, 1e-6);
  EXPECT_NEAR(cos_long[1], std::cos(10.0 * 0.01 / 8.0) * factor, 1e-6);
  EXPECT_EQ(cos_call, cos_short);
  EXPECT_EQ(sin_call, sin_short);
}

// BLOOM's build_alibi_tensor slopes: 2^(-8(h+1)/n') for the largest power of two n' <= H, then
// the odd powers of 2^(-4/n') for the rest (H = 12: n' = 8, four extra heads).
TEST(AlibiSlopes, PowerOfTwoAndRemainderHeads) {
  const std::vector<double> eight = AlibiSlopes(8);
  ASSERT_EQ(eight.size(), 8u);
  for (size_t h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(eight[h], std::pow(0.5, h + 1.0));
  const std::vector<double> twelve = AlibiSlopes(12);
  ASSERT_EQ(twelve.size(), 12u);
  for (size_t h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(twelve[h], eight[h]);
  for (size_t j = 0; j < 4; ++j) {
    EXPECT_DOUBLE_EQ(twelve[8 + j], std::pow(2.0, -0.5 * (2.0 * static_cast<double>(j) + 1.0)));
  }
  EXPECT_DOUBLE_EQ(AlibiSlopes(1)[0], 1.0 / 256.0);
}

TEST(RotaryEmbedding, PairingsRotateDifferentCoordinates) {
  // r = 4 with a huge base: θ_0 = 1, θ_1 ≈ 0, so only pair 0 turns (by 7 rad at position 7).
  for (RopePairing pairing : {RopePairing::kInterleaved, RopePairing::kRotateHalf}) {
    RotaryEmbedding rope(Rope(4, 1e12, pairing));
    std::vector<float> cos(2), sin(2);
    rope.Angles(7, cos, sin);
    std::vector<float> x = {1.0f, 0.0f, 0.0f, 0.0f, 5.0f};  // last entry: beyond r, untouched
    rope.Rotate(cos, sin, x.data(), 1, 5);
    const int partner = pairing == RopePairing::kInterleaved ? 1 : 2;
    EXPECT_NEAR(x[0], std::cos(7.0), 1e-6);
    EXPECT_NEAR(x[partner], std::sin(7.0), 1e-6);
    for (int i = 1; i < 4; ++i) {
      if (i != partner) {
        EXPECT_EQ(x[i], 0.0f) << i;
      }
    }
    EXPECT_EQ(x[4], 5.0f);
  }
}

// q(p)·k(t) depends only on p - t, for both pairings and with yarn scaling.
TEST(RotaryEmbedding, ScoresAreShiftInvariant) {
  for (RopePairing pairing : {RopePairing::kInterleaved, RopePairing::kRotateHalf}) {
    RopeConfig config = Rope(16, 10000.0, pairing);
    config.scaling.type = RopeScalingType::kYarn;
    config.scaling.factor = 8.0;
    config.scaling.original_max_position_embeddings = 64;
    RotaryEmbedding rope(config);
    std::vector<float> cos(8), sin(8);
    auto rotated = [&](std::vector<float> v, int64_t position) {
      rope.Angles(position, cos, sin);
      rope.Rotate(cos, sin, v.data(), 1, 16);
      return v;
    };
    std::vector<float> q(16), k(16);
    for (int i = 0; i < 16; ++i) {
      q[i] = std::sin(1.3f * i + 0.2f);
      k[i] = std::cos(0.7f * i - 0.4f);
    }
    auto dot = [](const std::vector<float>& a, const std::vector<float>& b) {
      double sum = 0;
      for (size_t i = 0; i < a.size(); ++i) sum += static_cast<double>(a[i]) * b[i];
      return sum;
    };
    const double near = dot(rotated(q, 9), rotated(k, 4));
    const double far = dot(rotated(q, 100009), rotated(k, 100004));
    EXPECT_NEAR(near, far, 2e-5 * std::fabs(near) + 1e-6);
    // and it is not trivially constant: another distance gives another score
    EXPECT_GT(std::fabs(near - dot(rotated(q, 9), rotated(k, 2))), 1e-3);
  }
}

}  // namespace
}  // namespace attn
