// SPDX-License-Identifier: Apache-2.0
// ModelConfig queries and validation. The formulas are those of docs/semantics.md: §1 (GQA shapes),
// §2 (RoPE scaling), §3 (MLA softmax scale).
#include "attn/config.h"

#include <cmath>
#include <cstdio>
#include <string>

#include "attn/error.h"

namespace attn {
namespace {

// Every rule below raises the same kind; the message names the config.json key at fault.
void Require(bool condition, const std::string& message) {
  Check(condition, ErrorKind::kInvalidArgument, message);
}

std::string Num(int64_t value) { return std::to_string(value); }

// Shortest round-trip-ish rendering for messages ("40", "0.707"), not std::to_string's "%f".
std::string Num(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.10g", value);
  return buffer;
}

void RequirePositive(int64_t value, const char* key) {
  Require(value > 0, std::string(key) + " (" + Num(value) + ") must be positive");
}

void ValidateGqa(const ModelConfig& config) {
  RequirePositive(config.gqa.num_kv_heads, "num_key_value_heads");
  RequirePositive(config.gqa.head_dim, "head_dim");
  // Query head h reads kv head h / (H / G) (docs/semantics.md §1), so the groups must be whole.
  Require(config.num_heads % config.gqa.num_kv_heads == 0,
          "num_attention_heads (" + Num(config.num_heads) +
              ") is not divisible by num_key_value_heads (" + Num(config.gqa.num_kv_heads) + ")");
}

void ValidateMla(const ModelConfig& config) {
  const MlaDims& mla = config.mla;
  Require(mla.q_lora_rank >= 0,
          "q_lora_rank (" + Num(mla.q_lora_rank) + ") must be >= 0 (0 = no query compression)");
  RequirePositive(mla.kv_lora_rank, "kv_lora_rank");
  RequirePositive(mla.qk_nope_head_dim, "qk_nope_head_dim");
  RequirePositive(mla.qk_rope_head_dim, "qk_rope_head_dim");
  RequirePositive(mla.v_head_dim, "v_head_dim");
  // RoPE rotates pairs of coordinates (docs/semantics.md §2), so the decoupled rope part must pair
  // up.
  Require(mla.qk_rope_head_dim % 2 == 0,
          "qk_rope_head_dim (" + Num(mla.qk_rope_head_dim) + ") must be even");
  Require(mla.rms_norm_eps > 0.0, "rms_norm_eps (" + Num(mla.rms_norm_eps) + ") must be > 0");
}

void ValidateScaling(const RopeScaling& scaling) {
  const std::string original_key = "rope_scaling original_max_position_embeddings";
  if (scaling.type == RopeScalingType::kNone) return;
  Require(std::isfinite(scaling.factor) && scaling.factor > 0.0,
          "rope_scaling factor (" + Num(scaling.factor) + ") must be > 0");
  switch (scaling.type) {
    case RopeScalingType::kNone:
    case RopeScalingType::kLinear:
      break;
    case RopeScalingType::kLlama3:
      // HF _validate_llama3_parameters: factor >= 1, high_freq_factor > low_freq_factor; the
      // ramp m = (L/λ - a)/(b - a) divides by b - a and L/a needs a > 0 (docs/semantics.md §2).
      Require(scaling.factor >= 1.0,
              "rope_scaling factor (" + Num(scaling.factor) + ") must be >= 1 for llama3");
      Require(scaling.low_freq_factor > 0.0,
              "rope_scaling low_freq_factor (" + Num(scaling.low_freq_factor) + ") must be > 0");
      // Equal factors (Llama 4 Scout: 1 and 1) leave no blended band; transformers warns and
      // runs them, and so does attn.
      Require(scaling.high_freq_factor >= scaling.low_freq_factor,
              "rope_scaling high_freq_factor (" + Num(scaling.high_freq_factor) +
                  ") must not be below low_freq_factor (" + Num(scaling.low_freq_factor) + ")");
      Require(scaling.original_max_position_embeddings > 0,
              original_key + " (" + Num(scaling.original_max_position_embeddings) +
                  ") must be positive for llama3");
      break;
    case RopeScalingType::kYarn:
      // corr(β) = r·ln(L/(2π·β)) / (2·ln base) needs L > 0 and β > 0; HF warns when
      // beta_fast < beta_slow (Kimi-K2 has them equal) and when factor < 1.
      Require(scaling.factor >= 1.0,
              "rope_scaling factor (" + Num(scaling.factor) + ") must be >= 1 for yarn");
      Require(scaling.original_max_position_embeddings > 0,
              original_key + " (" + Num(scaling.original_max_position_embeddings) +
                  ") must be positive for yarn");
      Require(scaling.beta_slow > 0.0,
              "rope_scaling beta_slow (" + Num(scaling.beta_slow) + ") must be > 0");
      Require(scaling.beta_fast >= scaling.beta_slow,
              "rope_scaling beta_fast (" + Num(scaling.beta_fast) + ") must be >= beta_slow (" +
                  Num(scaling.beta_slow) + ")");
      Require(scaling.mscale >= 0.0,
              "rope_scaling mscale (" + Num(scaling.mscale) + ") must be >= 0");
      Require(scaling.mscale_all_dim >= 0.0,
              "rope_scaling mscale_all_dim (" + Num(scaling.mscale_all_dim) + ") must be >= 0");
      Require(scaling.attention_factor >= 0.0,
              "rope_scaling attention_factor (" + Num(scaling.attention_factor) + ") must be >= 0");
      break;
    case RopeScalingType::kDynamic:
      // base·(s·n/L - (s - 1))^(r/(r-2)) must stay positive for every n >= L: s >= 1 does it.
      Require(scaling.factor >= 1.0,
              "rope_scaling factor (" + Num(scaling.factor) + ") must be >= 1 for dynamic");
      Require(scaling.original_max_position_embeddings > 0,
              original_key + " (" + Num(scaling.original_max_position_embeddings) +
                  ") must be positive for dynamic");
      break;
    case RopeScalingType::kLongrope:
      Require(scaling.original_max_position_embeddings > 1,
              original_key + " (" + Num(scaling.original_max_position_embeddings) +
                  ") must be > 1 for longrope (its attention factor divides by ln L)");
      Require(scaling.attention_factor >= 0.0 && std::isfinite(scaling.attention_factor),
              "rope_scaling attention_factor (" + Num(scaling.attention_factor) + ") must be >= 0");
      for (const auto* list : {&scaling.short_factor, &scaling.long_factor}) {
        const char* name = list == &scaling.short_factor ? "short_factor" : "long_factor";
        for (const double value : *list) {
          Require(std::isfinite(value) && value > 0.0, std::string("rope_scaling ") + name +
                                                           " entries must be finite and > 0, got " +
                                                           Num(value));
        }
      }
      break;
  }
}

}  // namespace

int64_t ModelConfig::ChunkForLayer(int64_t layer) const {
  Check(layer >= 0 && layer < num_layers, ErrorKind::kInvalidArgument,
        "layer " + Num(layer) + " is out of range [0, " + Num(num_layers) + ")");
  if (attention_chunk_size == 0) return 0;
  if (chunked_layers.empty()) return attention_chunk_size;
  Check(static_cast<size_t>(layer) < chunked_layers.size(), ErrorKind::kInvalidArgument,
        "chunked_layers has no entry for layer " + Num(layer));
  return chunked_layers[static_cast<size_t>(layer)] ? attention_chunk_size : 0;
}

bool ModelConfig::RotatesLayer(int64_t layer) const {
  Check(layer >= 0 && layer < num_layers, ErrorKind::kInvalidArgument,
        "layer " + Num(layer) + " is out of range [0, " + Num(num_layers) + ")");
  if (kind == AttentionKind::kGqa && gqa.alibi) return false;
  if (nope_layers.empty()) return true;
  Check(static_cast<size_t>(layer) < nope_layers.size(), ErrorKind::kInvalidArgument,
        "nope_layers has no entry for layer " + Num(layer));
  return !nope_layers[static_cast<size_t>(layer)];
}

int64_t ModelConfig::WindowForLayer(int64_t layer) const {
  Check(layer >= 0 && layer < num_layers, ErrorKind::kInvalidArgument,
        "layer " + Num(layer) + " is out of range [0, " + Num(num_layers) + ")");
  if (sliding_window == 0) return 0;
  if (sliding_layers.empty()) return sliding_window;
  // ValidateConfig guarantees one flag per layer; guard anyway for unvalidated configs.
  Check(static_cast<size_t>(layer) < sliding_layers.size(), ErrorKind::kInvalidArgument,
        "sliding_layers has " + Num(static_cast<int64_t>(sliding_layers.size())) +
            " entries, no flag for layer " + Num(layer));
  return sliding_layers[static_cast<size_t>(layer)] ? sliding_window : 0;
}

int64_t ModelConfig::QueryKeyHeadDim() const {
  return kind == AttentionKind::kMla ? mla.qk_nope_head_dim + mla.qk_rope_head_dim : gqa.head_dim;
}

int64_t ModelConfig::ValueHeadDim() const {
  return kind == AttentionKind::kMla ? mla.v_head_dim : gqa.head_dim;
}

void ValidateConfig(const ModelConfig& config) {
  RequirePositive(config.hidden_size, "hidden_size");
  RequirePositive(config.num_heads, "num_attention_heads");
  RequirePositive(config.num_layers, "num_hidden_layers");
  // 0 means "not stated": only llama3/yarn need a context length, and they carry their own L.
  Require(config.max_position_embeddings >= 0,
          "max_position_embeddings (" + Num(config.max_position_embeddings) + ") must be >= 0");

  Require(std::isfinite(config.softmax_scale) && config.softmax_scale >= 0.0,
          "softmax scale (" + std::to_string(config.softmax_scale) +
              ") must be finite and positive (0: derived from the head width)");
  Require(config.gqa.qk_norm == QkNorm::kNone ||
              (std::isfinite(config.gqa.qk_norm_eps) && config.gqa.qk_norm_eps > 0.0),
          "q/k norm eps must be finite and positive");
  Require(std::isfinite(config.attn_logit_softcapping) && config.attn_logit_softcapping >= 0.0,
          "attn_logit_softcapping (" + std::to_string(config.attn_logit_softcapping) +
              ") must be finite and positive (0: none)");
  Require(
      !config.sliding_rope_differs || (config.sliding_rope.theta > 0.0 &&
                                       config.sliding_rope.rotary_dim == config.rope.rotary_dim &&
                                       config.sliding_rope.pairing == config.rope.pairing),
      "the sliding layers' RoPE must have a positive theta and the global RoPE's width and "
      "pairing");
  const bool mla = config.kind == AttentionKind::kMla;
  Require(!mla || config.attn_logit_softcapping == 0.0,
          "logit soft-capping is not implemented for MLA (no MLA model uses it)");
  if (mla) {
    ValidateMla(config);
  } else {
    ValidateGqa(config);
  }

  // RoPE rotates pairs within the width it is applied to: d for GQA, dr for MLA (§2, §3).
  const int64_t rope_width = mla ? config.mla.qk_rope_head_dim : config.gqa.head_dim;
  const char* rope_width_key = mla ? "qk_rope_head_dim" : "head_dim";
  const int64_t r = config.rope.rotary_dim;
  const std::string origin = std::string(" (rotary_dim = ") + rope_width_key + " (" +
                             Num(rope_width) + ") x partial_rotary_factor)";
  Require(r > 0, "rotary_dim (" + Num(r) + ") must be positive" + origin);
  Require(r % 2 == 0, "rotary_dim (" + Num(r) + ") must be even" + origin);
  Require(r <= rope_width,
          "rotary_dim (" + Num(r) + ") exceeds " + rope_width_key + " (" + Num(rope_width) + ")");
  Require(std::isfinite(config.rope.theta) && config.rope.theta > 0.0,
          "rope_theta (" + Num(config.rope.theta) + ") must be > 0");
  ValidateScaling(config.rope.scaling);
  if (config.rope.scaling.type == RopeScalingType::kDynamic) {
    Require(r > 2, "rotary_dim (" + Num(r) +
                       ") must be > 2 for dynamic scaling (its base grows as "
                       "a power r/(r-2))");
  }
  if (config.rope.scaling.type == RopeScalingType::kLongrope) {
    // One divisor per rotated pair (HF: ext_factors · base^(2i/r), elementwise).
    const auto pairs = static_cast<size_t>(r / 2);
    Require(config.rope.scaling.short_factor.size() == pairs &&
                config.rope.scaling.long_factor.size() == pairs,
            "rope_scaling short_factor and long_factor need rotary_dim / 2 = " + Num(r / 2) +
                " entries each, got " +
                Num(static_cast<int64_t>(config.rope.scaling.short_factor.size())) + " and " +
                Num(static_cast<int64_t>(config.rope.scaling.long_factor.size())));
  }

  Require(config.sliding_window >= 0,
          "sliding_window (" + Num(config.sliding_window) + ") must be >= 0 (0 = none)");
  Require(
      config.attention_chunk_size >= 0,
      "attention_chunk_size (" + Num(config.attention_chunk_size) + ") must be >= 0 (0 = none)");
  for (const auto* flags : {&config.chunked_layers, &config.nope_layers}) {
    Require(flags->empty() || static_cast<int64_t>(flags->size()) == config.num_layers,
            std::string(flags == &config.nope_layers ? "no_rope_layers" : "chunked layer_types") +
                " has " + Num(static_cast<int64_t>(flags->size())) +
                " entries but num_hidden_layers is " + Num(config.num_layers));
  }
  Require(config.temperature.floor_scale >= 0.0 && std::isfinite(config.temperature.attn_scale),
          "floor_scale must be >= 0 and attn_scale finite");
  Require(!mla || (config.nope_layers.empty() && config.attention_chunk_size == 0),
          "NoPE layers and chunked attention are not implemented for MLA");
  Require(config.sliding_layers.empty() ||
              static_cast<int64_t>(config.sliding_layers.size()) == config.num_layers,
          "sliding_layers / layer_types has " +
              Num(static_cast<int64_t>(config.sliding_layers.size())) +
              " entries but num_hidden_layers is " + Num(config.num_layers));
}

double SoftmaxScale(const ModelConfig& config) {
  if (config.softmax_scale > 0.0) return config.softmax_scale;
  const double width = static_cast<double>(config.QueryKeyHeadDim());
  const double base = 1.0 / std::sqrt(width);
  if (config.kind != AttentionKind::kMla) return base;
  // MLA (docs/semantics.md §3): (dn + dr)^-0.5 · mscale(s, mscale_all_dim)^2 for yarn with a
  // nonzero mscale_all_dim. Never the absorbed width rk + dr nor hidden / heads.
  const RopeScaling& scaling = config.rope.scaling;
  if (scaling.type == RopeScalingType::kYarn && scaling.mscale_all_dim != 0.0) {
    const double m = YarnMscale(scaling.factor, scaling.mscale_all_dim);
    return base * m * m;
  }
  return base;
}

double YarnMscale(double factor, double m) {
  // mscale(s, m) = 1 if s <= 1 else 0.1·m·ln(s) + 1 (docs/semantics.md §2).
  if (factor <= 1.0) return 1.0;
  return 0.1 * m * std::log(factor) + 1.0;
}

}  // namespace attn
