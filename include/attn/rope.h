// SPDX-License-Identifier: Apache-2.0
// Rotary position embedding (docs/semantics.md §2): scaled inverse frequencies, the YaRN attention
// factor on cos/sin, and rotation with either pairing.
#ifndef ATTN_ROPE_H_
#define ATTN_ROPE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "attn/config.h"

namespace attn {

// θ'_i for i = 0 … r/2-1 after the config's scaling, in double, for a call whose sequence
// stays within the scaling's L (dynamic: the unscaled base; longrope: the short factors).
std::vector<double> RopeInverseFrequencies(const RopeConfig& rope);
// The same for a call whose largest position is sequence_length - 1: dynamic NTK grows its base
// for n = max(sequence_length, L), longrope takes its long factors when sequence_length > L
// (docs/semantics.md §2). Other scalings ignore sequence_length.
std::vector<double> RopeInverseFrequencies(const RopeConfig& rope, int64_t sequence_length);

// The factor cos and sin are multiplied by (1 for the scalings without one). YaRN:
// attention_factor if given, else mscale(s, mscale)/mscale(s, mscale_all_dim) when both are
// nonzero, else mscale(s, 1). LongRoPE: attention_factor if given, else sqrt(1 + ln s / ln L)
// for s > 1, else 1.
double RopeAttentionFactor(const RopeScaling& scaling);

// ALiBi's per-head slopes as BLOOM's build_alibi_tensor (which Falcon uses) defines them
// (docs/semantics.md §1): with n' = the largest power of two <= heads, head h < n' has slope
// 2^(-8(h+1)/n'), and the remaining heads take the odd powers 2^(-4(2j+1)/n'), j = 0, 1, ….
std::vector<double> AlibiSlopes(int64_t heads);

// Applies RoPE at explicit positions. Angles p·θ_i are formed in double: in fp32 they drift
// by ~1e-4 relative around position 1e5, which is where YaRN checkpoints are used.
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const RopeConfig& rope);

  int64_t rotary_dim() const { return rotary_dim_; }

  // Whether the frequencies depend on the call (dynamic, longrope). The reference code picks
  // them from the largest position in the whole call (max(position_ids) + 1 over the batch),
  // and so does attn: a layer rotates a call's queries and new keys with ForCall(largest), and
  // keys cached by earlier calls keep the rotation they were stored with (docs/semantics.md §2).
  bool varies_per_call() const;
  RotaryEmbedding ForCall(int64_t largest_position) const;

  // Fills cos/sin (r/2 values each, attention factor included) for `position`.
  void Angles(int64_t position, std::span<float> cos, std::span<float> sin) const;

  // Rotates the first r entries of each of `count` vectors spaced `stride` floats apart,
  // starting at `x`, by the angles from Angles().
  //   interleaved:  (x[2i], x[2i+1])   <- rotate by angle_i
  //   rotate-half:  (x[i],  x[i+r/2])  <- rotate by angle_i
  void Rotate(std::span<const float> cos, std::span<const float> sin, float* x, int64_t count,
              int64_t stride) const;

 private:
  RotaryEmbedding(const RopeConfig& rope, std::vector<double> inverse_frequencies);

  RopeConfig rope_;
  int64_t rotary_dim_;
  RopePairing pairing_;
  double attention_factor_;
  std::vector<double> inverse_frequencies_;
};

}  // namespace attn

#endif  // ATTN_ROPE_H_
