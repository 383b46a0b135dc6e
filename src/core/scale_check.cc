// SPDX-License-Identifier: Apache-2.0
// The pitfalls of docs/semantics.md §7 as checks on one config. Each computes the value a framework
// making that mistake would use, and counts as triggered when that value differs from the
// math by more than rounding (relative 1e-9).
#include "attn/scale_check.h"

#include <cmath>
#include <cstdio>

#include "attn/rope.h"

namespace attn {
namespace {

std::string Num(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.7g", value);
  return buffer;
}

bool Differs(double a, double b) { return std::fabs(a - b) > 1e-9 * std::fabs(b); }

bool IsYarn(const ModelConfig& c) { return c.rope.scaling.type == RopeScalingType::kYarn; }

Pitfall KvChannels(const ModelConfig& c, const MegatronExtras& megatron, double scale,
                   double mscale_squared) {
  Pitfall p;
  p.id = "kv-channels";
  const int64_t width = c.QueryKeyHeadDim();
  const bool divisible = c.hidden_size % c.num_heads == 0;
  const int64_t channels =
      megatron.kv_channels ? *megatron.kv_channels : (divisible ? c.hidden_size / c.num_heads : 0);
  const std::string origin =
      megatron.kv_channels
          ? "kv_channels (" + std::to_string(channels) + ")"
          : "kv_channels default hidden/heads = " + std::to_string(c.hidden_size) + "/" +
                std::to_string(c.num_heads) + " = " + std::to_string(channels);
  if (channels == 0) {
    p.explanation = "hidden/heads is not an integer; no framework default to compare";
    return p;
  }
  p.wrong_value = mscale_squared / std::sqrt(static_cast<double>(channels));
  p.triggered = channels != width && Differs(*p.wrong_value, scale);
  p.explanation = p.triggered ? "a framework taking the scale from " + origin + " would use " +
                                    Num(*p.wrong_value) + " instead of " + Num(scale) +
                                    " (query/key width is " + std::to_string(width) + ")"
                              : origin + " equals the query/key width " + std::to_string(width);
  return p;
}

}  // namespace

ScaleReport CheckScale(const ModelConfig& config, const MegatronExtras& megatron) {
  ValidateConfig(config);
  ScaleReport r;
  const bool mla = config.kind == AttentionKind::kMla;
  const RopeScaling& s = config.rope.scaling;
  const int64_t width = config.QueryKeyHeadDim();
  r.base_scale = 1.0 / std::sqrt(static_cast<double>(width));
  r.softmax_scale = SoftmaxScale(config);
  r.rope_attention_factor = RopeAttentionFactor(s);
  const bool has_mscale_squared = mla && IsYarn(config) && s.mscale_all_dim != 0.0;
  if (has_mscale_squared) {
    const double m = YarnMscale(s.factor, s.mscale_all_dim);
    r.mscale_squared = m * m;
  }
  if (mla) {
    r.formula = "(qk_nope_head_dim " + std::to_string(config.mla.qk_nope_head_dim) +
                " + qk_rope_head_dim " + std::to_string(config.mla.qk_rope_head_dim) +
                ")^-0.5 = " + Num(r.base_scale);
    if (has_mscale_squared) {
      r.formula += " x mscale(" + Num(s.factor) + ", mscale_all_dim " + Num(s.mscale_all_dim) +
                   ")^2 = " + Num(r.mscale_squared);
    }
  } else if (config.softmax_scale > 0.0) {
    // Granite's attention_multiplier, Gemma's query_pre_attn_scalar^-0.5 (semantics §1).
    r.formula =
        "given by the config (attention_multiplier or query_pre_attn_scalar^-0.5), not "
        "head_dim " +
        std::to_string(width) + "^-0.5 = " + Num(r.base_scale);
  } else {
    r.formula = "head_dim " + std::to_string(width) + "^-0.5";
  }

  r.pitfalls.push_back(KvChannels(config, megatron, r.softmax_scale, r.mscale_squared));

  Pitfall absorbed;
  absorbed.id = "absorbed-width";
  if (mla) {
    const int64_t row = config.mla.kv_lora_rank + config.mla.qk_rope_head_dim;
    absorbed.wrong_value = r.mscale_squared / std::sqrt(static_cast<double>(row));
    absorbed.triggered = true;
    absorbed.explanation = "the absorbed form attends over " + std::to_string(row) +
                           "-wide rows; scaling by that width gives " + Num(*absorbed.wrong_value) +
                           " instead of " + Num(r.softmax_scale) +
                           " (the scale belongs to the math, not the layout)";
  } else {
    absorbed.explanation = "not MLA";
  }
  r.pitfalls.push_back(absorbed);

  Pitfall mscale_swap;
  mscale_swap.id = "mscale-vs-mscale-all-dim";
  if (mla && IsYarn(config)) {
    const double m = YarnMscale(s.factor, s.mscale);
    mscale_swap.wrong_value = r.base_scale * m * m;
    mscale_swap.triggered = Differs(*mscale_swap.wrong_value, r.softmax_scale);
    mscale_swap.explanation = mscale_swap.triggered
                                  ? "mscale (" + Num(s.mscale) + ") where mscale_all_dim (" +
                                        Num(s.mscale_all_dim) + ") belongs gives " +
                                        Num(*mscale_swap.wrong_value) + " instead of " +
                                        Num(r.softmax_scale)
                                  : "mscale and mscale_all_dim give the same value here";
  } else {
    mscale_swap.explanation = mla ? "no yarn scaling" : "not MLA";
  }
  r.pitfalls.push_back(mscale_swap);

  Pitfall missing;
  missing.id = "missing-mscale-squared";
  if (has_mscale_squared) {
    missing.wrong_value = r.base_scale;
    missing.triggered = Differs(r.base_scale, r.softmax_scale);
    missing.explanation = "leaving out mscale(" + Num(s.factor) + ", " + Num(s.mscale_all_dim) +
                          ")^2 gives " + Num(r.base_scale) + " instead of " + Num(r.softmax_scale);
  } else if (mla && IsYarn(config) && s.factor > 1.0) {
    missing.triggered = true;
    missing.explanation = "yarn x" + Num(s.factor) +
                          " but no mscale_all_dim, so the scale carries no mscale^2 (" +
                          Num(r.softmax_scale) +
                          "); DeepSeek-V2/V3 and Kimi-K2 set mscale_all_dim. Check that the "
                          "checkpoint was trained without it";
  } else {
    missing.explanation = mla ? "no yarn scaling" : "not MLA";
  }
  r.pitfalls.push_back(missing);

  Pitfall factor;
  factor.id = "yarn-attention-factor";
  if (IsYarn(config)) {
    factor.wrong_value = 1.0;
    factor.triggered = Differs(1.0, r.rope_attention_factor);
    factor.explanation = factor.triggered
                             ? "cos/sin must be multiplied by " + Num(r.rope_attention_factor) +
                                   "; a framework that forgets it uses 1"
                             : "the factor on cos/sin is 1 here";
  } else {
    factor.explanation = "no yarn scaling";
  }
  r.pitfalls.push_back(factor);

  Pitfall pairing;
  pairing.id = "rope-pairing";
  if (config.rope.pairing == RopePairing::kInterleaved) {
    pairing.triggered = true;
    pairing.explanation =
        "this checkpoint rotates interleaved pairs (x[2i], x[2i+1]); a framework applying HF "
        "rotate_half without de-interleaving q_pe/k_pe (or permuting rows) gives finite, wrong "
        "scores";
  } else {
    pairing.explanation =
        "this checkpoint rotates halves (x[i], x[i+r/2]); weights in Meta's original layout "
        "need the HF row permutation, and an interleaved-pairs framework gives wrong scores";
  }
  r.pitfalls.push_back(pairing);

  Pitfall explicit_scale;
  explicit_scale.id = "explicit-softmax-scale";
  if (megatron.softmax_scale) {
    explicit_scale.wrong_value = *megatron.softmax_scale;
    explicit_scale.triggered = Differs(*megatron.softmax_scale, r.softmax_scale);
    explicit_scale.explanation =
        explicit_scale.triggered
            ? "the config overrides softmax_scale = " + Num(*megatron.softmax_scale) +
                  ", but the math gives " + Num(r.softmax_scale)
            : "the config's softmax_scale matches the math";
  } else {
    explicit_scale.explanation = "no softmax_scale override";
  }
  r.pitfalls.push_back(explicit_scale);
  return r;
}

}  // namespace attn
