// SPDX-License-Identifier: Apache-2.0
#include "attn/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "attn/error.h"

namespace attn {
namespace {

// llama3 (docs/semantics.md §2): wavelength λ_i = 2π/θ_i; short wavelengths keep θ_i, long ones
// get θ_i/s, and the band between blends with m = (L/λ_i - a)/(b - a).
double Llama3Frequency(double theta_i, const RopeScaling& s) {
  const double wavelength = 2.0 * std::numbers::pi / theta_i;
  const double length = static_cast<double>(s.original_max_position_embeddings);
  const double high_freq_wavelength = length / s.high_freq_factor;
  const double low_freq_wavelength = length / s.low_freq_factor;
  if (wavelength < high_freq_wavelength) return theta_i;
  if (wavelength > low_freq_wavelength) return theta_i / s.factor;
  // Equal band edges (a == b): the blend band is the single wavelength L/a, where the ramp is
  // 0/0; it is taken as the scaled side.
  if (s.high_freq_factor == s.low_freq_factor) return theta_i / s.factor;
  const double m =
      (length / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1.0 - m) * theta_i / s.factor + m * theta_i;
}

// yarn correction dimension: corr(β) = r·ln(L/(2π·β)) / (2·ln base).
double YarnCorrectionDim(double beta, int64_t rotary_dim, double base, double length) {
  return static_cast<double>(rotary_dim) * std::log(length / (2.0 * std::numbers::pi * beta)) /
         (2.0 * std::log(base));
}

// yarn: θ'_i = θ_i·(1 - ramp_i) + (θ_i/s)·ramp_i with ramp_i = clamp((i-lo)/(hi-lo), 0, 1).
void ApplyYarn(const RopeConfig& rope, std::vector<double>& theta) {
  const RopeScaling& s = rope.scaling;
  const double length = static_cast<double>(s.original_max_position_embeddings);
  double lo = YarnCorrectionDim(s.beta_fast, rope.rotary_dim, rope.theta, length);
  double hi = YarnCorrectionDim(s.beta_slow, rope.rotary_dim, rope.theta, length);
  if (s.truncate) {
    lo = std::floor(lo);
    hi = std::ceil(hi);
  }
  lo = std::max(lo, 0.0);
  hi = std::min(hi, static_cast<double>(rope.rotary_dim - 1));
  if (lo == hi) hi += 0.001;
  for (size_t i = 0; i < theta.size(); ++i) {
    const double ramp = std::clamp((static_cast<double>(i) - lo) / (hi - lo), 0.0, 1.0);
    theta[i] = theta[i] * (1.0 - ramp) + (theta[i] / s.factor) * ramp;
  }
}

// Whether a scaling type picks its frequencies per call (docs/semantics.md §2).
bool VariesPerCall(RopeScalingType type) {
  return type == RopeScalingType::kDynamic || type == RopeScalingType::kLongrope;
}

}  // namespace

std::vector<double> RopeInverseFrequencies(const RopeConfig& rope) {
  // The frequencies of a call that stays within L: dynamic's base is then unchanged
  // (s·L/L - (s - 1) = 1) and longrope uses its short factors.
  return RopeInverseFrequencies(rope, 0);
}

std::vector<double> RopeInverseFrequencies(const RopeConfig& rope, int64_t sequence_length) {
  Check(rope.rotary_dim > 0 && rope.rotary_dim % 2 == 0, ErrorKind::kInvalidArgument,
        "rotary dimension must be positive and even, got " + std::to_string(rope.rotary_dim));
  const int64_t half = rope.rotary_dim / 2;
  const RopeScaling& scaling = rope.scaling;
  const auto length = static_cast<double>(scaling.original_max_position_embeddings);
  const auto r = static_cast<double>(rope.rotary_dim);
  double base = rope.theta;
  if (scaling.type == RopeScalingType::kDynamic) {
    // Dynamic NTK: n = max(sequence length, L); base' = base·(s·n/L - (s - 1))^(r/(r - 2)).
    const double n = std::max(static_cast<double>(sequence_length), length);
    base *= std::pow(scaling.factor * n / length - (scaling.factor - 1.0), r / (r - 2.0));
  }
  std::vector<double> theta(static_cast<size_t>(half));
  // θ_i = base^(-2i/r)
  for (int64_t i = 0; i < half; ++i) {
    theta[static_cast<size_t>(i)] = std::pow(base, -2.0 * static_cast<double>(i) / r);
  }
  switch (rope.scaling.type) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLinear:
      for (double& t : theta) t /= rope.scaling.factor;
      break;
    case RopeScalingType::kLlama3:
      for (double& t : theta) t = Llama3Frequency(t, rope.scaling);
      break;
    case RopeScalingType::kYarn:
      ApplyYarn(rope, theta);
      break;
    case RopeScalingType::kDynamic:
      break;  // the base above
    case RopeScalingType::kLongrope: {
      // θ_i / f_i, with the long factors once the call's sequence is longer than L.
      const std::vector<double>& factors = static_cast<double>(sequence_length) > length
                                               ? scaling.long_factor
                                               : scaling.short_factor;
      Check(factors.size() == theta.size(), ErrorKind::kInvalidArgument,
            "longrope needs rotary_dim / 2 = " + std::to_string(half) + " factors, got " +
                std::to_string(factors.size()));
      for (size_t i = 0; i < theta.size(); ++i) theta[i] /= factors[i];
      break;
    }
  }
  return theta;
}

double RopeAttentionFactor(const RopeScaling& scaling) {
  if (scaling.type == RopeScalingType::kLongrope) {
    // LongRoPE: sqrt(1 + ln s / ln L) for a context ratio s > 1, unless given.
    if (scaling.attention_factor != 0.0) return scaling.attention_factor;
    if (scaling.factor <= 1.0) return 1.0;
    return std::sqrt(1.0 +
                     std::log(scaling.factor) /
                         std::log(static_cast<double>(scaling.original_max_position_embeddings)));
  }
  if (scaling.type != RopeScalingType::kYarn) return 1.0;
  if (scaling.attention_factor != 0.0) return scaling.attention_factor;
  if (scaling.mscale != 0.0 && scaling.mscale_all_dim != 0.0) {
    return YarnMscale(scaling.factor, scaling.mscale) /
           YarnMscale(scaling.factor, scaling.mscale_all_dim);
  }
  return YarnMscale(scaling.factor, 1.0);
}

std::vector<double> AlibiSlopes(int64_t heads) {
  Check(heads > 0, ErrorKind::kInvalidArgument, "ALiBi needs a positive head count");
  int64_t power = 1;
  while (power * 2 <= heads) power *= 2;
  std::vector<double> slopes;
  slopes.reserve(static_cast<size_t>(heads));
  const auto n = static_cast<double>(power);
  for (int64_t h = 0; h < power; ++h) {
    slopes.push_back(std::exp2(-8.0 * static_cast<double>(h + 1) / n));
  }
  for (int64_t j = 0; j < heads - power; ++j) {
    slopes.push_back(std::exp2(-4.0 * static_cast<double>(2 * j + 1) / n));
  }
  return slopes;
}

RotaryEmbedding::RotaryEmbedding(const RopeConfig& rope)
    : RotaryEmbedding(rope, RopeInverseFrequencies(rope)) {}

RotaryEmbedding::RotaryEmbedding(const RopeConfig& rope, std::vector<double> inverse_frequencies)
    : rope_(rope),
      rotary_dim_(rope.rotary_dim),
      pairing_(rope.pairing),
      attention_factor_(RopeAttentionFactor(rope.scaling)),
      inverse_frequencies_(std::move(inverse_frequencies)) {}

bool RotaryEmbedding::varies_per_call() const { return VariesPerCall(rope_.scaling.type); }

RotaryEmbedding RotaryEmbedding::ForCall(int64_t largest_position) const {
  // HF's dynamic_rope_update: seq_len = max(position_ids) + 1.
  const int64_t sequence_length = largest_position < 0 ? 0 : largest_position + 1;
  return RotaryEmbedding(rope_, RopeInverseFrequencies(rope_, sequence_length));
}

void RotaryEmbedding::Angles(int64_t position, std::span<float> cos, std::span<float> sin) const {
  const double p = static_cast<double>(position);
  for (size_t i = 0; i < inverse_frequencies_.size(); ++i) {
    const double angle = p * inverse_frequencies_[i];
    cos[i] = static_cast<float>(std::cos(angle) * attention_factor_);
    sin[i] = static_cast<float>(std::sin(angle) * attention_factor_);
  }
}

void RotaryEmbedding::Rotate(std::span<const float> cos, std::span<const float> sin, float* x,
                             int64_t count, int64_t stride) const {
  const int64_t half = rotary_dim_ / 2;
  // Which two coordinates form pair i.
  const int64_t first_step = pairing_ == RopePairing::kInterleaved ? 2 : 1;
  const int64_t partner_offset = pairing_ == RopePairing::kInterleaved ? 1 : half;
  for (int64_t n = 0; n < count; ++n) {
    float* v = x + n * stride;
    for (int64_t i = 0; i < half; ++i) {
      float& a = v[i * first_step];
      float& b = v[i * first_step + partner_offset];
      const float c = cos[static_cast<size_t>(i)];
      const float s = sin[static_cast<size_t>(i)];
      // [a', b'] = [a·cos - b·sin, b·cos + a·sin]
      const float rotated_a = a * c - b * s;
      const float rotated_b = b * c + a * s;
      a = rotated_a;
      b = rotated_b;
    }
  }
}

}  // namespace attn
