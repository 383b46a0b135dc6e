// SPDX-License-Identifier: Apache-2.0
// Megatron-Core config names <-> ModelConfig, and ModelConfig -> HF config.json text.
// Megatron names are those of megatron/core/transformer/transformer_config.py
// (TransformerConfig, MLATransformerConfig) and the YaRN rotary embedding's arguments.
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "attn/error.h"
#include "attn/hf_config.h"
#include "attn/megatron.h"
#include "io/files.h"
#include "io/json_util.h"

namespace attn {
namespace {

using nlohmann::json;

std::string Num(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.10g", value);
  return buffer;
}

// Typed reads of one Megatron JSON object; absent and null are alike ("use the default").
class MegatronFields {
 public:
  MegatronFields(const json& object, const std::string& source)
      : object_(object), source_(source) {}

  bool Has(const char* key) const {
    auto it = object_.find(key);
    return it != object_.end() && !it->is_null();
  }
  bool Present(const char* key) const { return object_.contains(key); }

  [[noreturn]] void Fail(ErrorKind kind, const std::string& message) const {
    throw Error(kind, source_ + ": " + message);
  }

  // Integral floats (4096.0) are accepted; the range is checked before any cast (1e26 would
  // be undefined behaviour to convert), and sizes and counts are capped (io::ConfigKeyLimit).
  int64_t Int(const char* key) const {
    if (!Has(key)) Fail(ErrorKind::kNotFound, "missing Megatron key '" + std::string(key) + "'");
    const json& value = object_.at(key);
    int64_t result;
    if (!io::JsonToInt64(value, &result)) {
      Fail(ErrorKind::kInvalidArgument, "Megatron key '" + std::string(key) +
                                            "' must be an integer in int64 range, got " +
                                            io::JsonExcerpt(value));
    }
    const int64_t limit = io::ConfigKeyLimit(key);
    if (result > limit) {
      Fail(ErrorKind::kInvalidArgument, "Megatron key '" + std::string(key) + "' (" +
                                            std::to_string(result) + ") exceeds attn's limit of " +
                                            std::to_string(limit));
    }
    return result;
  }
  int64_t Int(const char* key, int64_t fallback) const { return Has(key) ? Int(key) : fallback; }
  double Double(const char* key) const {
    if (!Has(key)) Fail(ErrorKind::kNotFound, "missing Megatron key '" + std::string(key) + "'");
    const json& value = object_.at(key);
    if (!value.is_number()) {
      Fail(ErrorKind::kInvalidArgument, "Megatron key '" + std::string(key) +
                                            "' must be a number, got " + io::JsonExcerpt(value));
    }
    return value.get<double>();
  }
  double Double(const char* key, double fallback) const {
    return Has(key) ? Double(key) : fallback;
  }
  bool Bool(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    const json& value = object_.at(key);
    if (!value.is_boolean()) {
      Fail(ErrorKind::kInvalidArgument, "Megatron key '" + std::string(key) +
                                            "' must be a boolean, got " + io::JsonExcerpt(value));
    }
    return value.get<bool>();
  }
  std::string String(const char* key, const std::string& fallback) const {
    if (!Has(key)) return fallback;
    const json& value = object_.at(key);
    if (!value.is_string()) {
      Fail(ErrorKind::kInvalidArgument, "Megatron key '" + std::string(key) +
                                            "' must be a string, got " + io::JsonExcerpt(value));
    }
    return value.get<std::string>();
  }

 private:
  const json& object_;
  const std::string& source_;
};

// rotary_percent x width must be an even integer (attn does not truncate, see hf_config.cc).
int64_t RotaryDim(const MegatronFields& f, int64_t width, const char* width_key) {
  const double percent = f.Double("rotary_percent", 1.0);
  const double rotary = percent * static_cast<double>(width);
  if (!(percent > 0.0 && percent <= 1.0) || std::fabs(rotary - std::round(rotary)) > 1e-6 ||
      static_cast<int64_t>(std::round(rotary)) % 2 != 0) {
    f.Fail(ErrorKind::kInvalidArgument, "rotary_percent (" + Num(percent) + ") x " + width_key +
                                            " (" + std::to_string(width) +
                                            ") is not an even integer rotary width");
  }
  return static_cast<int64_t>(std::round(rotary));
}

// YaRN keys as MLATransformerConfig / YarnRotaryEmbedding spell them. mscale and
// mscale_all_dim default to YarnRotaryEmbedding's 1.0 and 0.0: an absent mscale_all_dim means
// no mscale² on the softmax scale, which `attn check-scale` points out.
RopeScaling ParseYarn(const MegatronFields& f) {
  RopeScaling s;
  s.type = RopeScalingType::kYarn;
  s.factor = f.Double("rotary_scaling_factor");
  s.original_max_position_embeddings = f.Int("original_max_position_embeddings", 4096);
  s.beta_fast = f.Double("beta_fast", 32.0);
  s.beta_slow = f.Double("beta_slow", 1.0);
  s.mscale = f.Double("mscale", 1.0);
  s.mscale_all_dim = f.Double("mscale_all_dim", 0.0);
  return s;
}

void ParseMegatronGqa(const MegatronFields& f, ModelConfig& c) {
  c.kind = AttentionKind::kGqa;
  c.model_type = "llama";
  const bool grouped = f.Bool("group_query_attention", f.Has("num_query_groups"));
  c.gqa.num_kv_heads = grouped ? f.Int("num_query_groups", c.num_heads) : c.num_heads;
  if (f.Has("kv_channels")) {
    c.gqa.head_dim = f.Int("kv_channels");
  } else {
    if (c.num_heads <= 0 || c.hidden_size % c.num_heads != 0) {
      f.Fail(ErrorKind::kInvalidArgument,
             "kv_channels is absent and hidden_size (" + std::to_string(c.hidden_size) +
                 ") is not divisible by num_attention_heads (" + std::to_string(c.num_heads) + ")");
    }
    c.gqa.head_dim = c.hidden_size / c.num_heads;
  }
  // add_bias_linear puts biases on linear_qkv and linear_proj; add_qkv_bias on linear_qkv only.
  // attn reads an absent add_bias_linear as false (every released LLM trains without; the
  // dataclass default is true), see docs/reference.md.
  const bool bias_linear = f.Bool("add_bias_linear", false);
  c.gqa.qkv_bias = bias_linear || f.Bool("add_qkv_bias", false);
  c.gqa.o_bias = bias_linear;
  if (c.gqa.qkv_bias && !c.gqa.o_bias) c.model_type = "qwen2";
  c.rope.pairing =
      f.Bool("rotary_interleaved", false) ? RopePairing::kInterleaved : RopePairing::kRotateHalf;
  c.rope.rotary_dim = RotaryDim(f, c.gqa.head_dim, "kv_channels");
  const std::string type = f.String("position_embedding_type", "rope");
  if (type == "yarn") {
    c.rope.scaling = ParseYarn(f);
  } else if (type != "rope") {
    f.Fail(ErrorKind::kUnsupported, "position_embedding_type '" + io::TextExcerpt(type) +
                                        "' is not supported (supported: rope, yarn)");
  } else if (f.Bool("use_rope_scaling", false)) {
    // Megatron's apply_rope_scaling is the llama3 rule with fixed low 1, high 4, L 8192.
    c.rope.scaling.type = RopeScalingType::kLlama3;
    c.rope.scaling.factor = f.Double("rope_scaling_factor", 8.0);
    c.rope.scaling.low_freq_factor = 1.0;
    c.rope.scaling.high_freq_factor = 4.0;
    c.rope.scaling.original_max_position_embeddings = 8192;
  }
  if (f.Has("window_size")) {
    f.Fail(ErrorKind::kUnsupported,
           "window_size (sliding window) is not supported in "
           "Megatron-style configs; use the HF config.json");
  }
}

void ParseMegatronMla(const MegatronFields& f, ModelConfig& c) {
  c.kind = AttentionKind::kMla;
  c.model_type = "deepseek_v3";
  if (f.Bool("add_bias_linear", false)) {
    f.Fail(ErrorKind::kUnsupported,
           "add_bias_linear=true is not supported with multi_latent_attention (attn's MLA "
           "projections are bias-free)");
  }
  if (!f.Present("q_lora_rank")) {
    f.Fail(ErrorKind::kNotFound,
           "missing Megatron key 'q_lora_rank' (null for no query compression)");
  }
  c.mla.q_lora_rank = f.Int("q_lora_rank", 0);
  c.mla.kv_lora_rank = f.Int("kv_lora_rank");
  c.mla.qk_nope_head_dim = f.Int("qk_head_dim");
  c.mla.qk_rope_head_dim = f.Int("qk_pos_emb_head_dim");
  c.mla.v_head_dim = f.Int("v_head_dim");
  c.mla.rms_norm_eps = f.Double("layernorm_epsilon", f.Double("norm_epsilon", 1e-5));
  // Megatron MLA de-interleaves q_pe/k_pe before rotate-half (rope_utils, multi_latent_attention):
  // interleaved pairs on the checkpoint's weights, as HF DeepSeek.
  if (f.Bool("rotary_interleaved", false)) {
    f.Fail(ErrorKind::kUnsupported,
           "rotary_interleaved=true with multi_latent_attention is not supported");
  }
  c.rope.pairing = RopePairing::kInterleaved;
  c.rope.rotary_dim = RotaryDim(f, c.mla.qk_rope_head_dim, "qk_pos_emb_head_dim");
  const std::string type = f.String("rope_type", f.String("position_embedding_type", "yarn"));
  if (type == "yarn") {
    c.rope.scaling = ParseYarn(f);
  } else if (type != "rope") {
    f.Fail(ErrorKind::kUnsupported,
           "rope_type '" + io::TextExcerpt(type) + "' is not supported (supported: rope, yarn)");
  }
}

json ScalingToHf(const RopeScaling& s) {
  switch (s.type) {
    case RopeScalingType::kNone:
      return nullptr;
    case RopeScalingType::kLinear:
      return {{"rope_type", "linear"}, {"factor", s.factor}};
    case RopeScalingType::kDynamic:
      return {{"rope_type", "dynamic"}, {"factor", s.factor}};
    case RopeScalingType::kLongrope:
      break;  // CheckWritable refuses it before anything is written
    case RopeScalingType::kLlama3:
      return {{"rope_type", "llama3"},
              {"factor", s.factor},
              {"low_freq_factor", s.low_freq_factor},
              {"high_freq_factor", s.high_freq_factor},
              {"original_max_position_embeddings", s.original_max_position_embeddings}};
    case RopeScalingType::kYarn: {
      json y = {{"type", "yarn"},
                {"factor", s.factor},
                {"original_max_position_embeddings", s.original_max_position_embeddings},
                {"beta_fast", s.beta_fast},
                {"beta_slow", s.beta_slow}};
      if (s.mscale != 0.0) y["mscale"] = s.mscale;
      if (s.mscale_all_dim != 0.0) y["mscale_all_dim"] = s.mscale_all_dim;
      if (s.attention_factor != 0.0) y["attention_factor"] = s.attention_factor;
      if (!s.truncate) y["truncate"] = false;
      return y;
    }
  }
  return nullptr;
}

void YarnToMegatron(const RopeScaling& s, json& out) {
  if (s.attention_factor != 0.0 || !s.truncate) {
    throw Error(ErrorKind::kUnsupported,
                "yarn attention_factor / truncate=false have no Megatron-Core config name");
  }
  out["rotary_scaling_factor"] = s.factor;
  out["original_max_position_embeddings"] = s.original_max_position_embeddings;
  out["beta_fast"] = s.beta_fast;
  out["beta_slow"] = s.beta_slow;
  out["mscale"] = s.mscale;
  out["mscale_all_dim"] = s.mscale_all_dim;
}

double RotaryPercent(const ModelConfig& c) {
  const int64_t width = c.kind == AttentionKind::kMla ? c.mla.qk_rope_head_dim : c.gqa.head_dim;
  return static_cast<double>(c.rope.rotary_dim) / static_cast<double>(width);
}

}  // namespace

LoadedConfig ParseMegatronConfig(const std::string& json_text, const std::string& source) {
  const json root = io::ParseJson(json_text, source, ErrorKind::kInvalidArgument);
  if (!root.is_object()) {
    throw Error(ErrorKind::kInvalidArgument, source + ": top level must be a JSON object");
  }
  const MegatronFields f(root, source);
  LoadedConfig loaded;
  loaded.format = "megatron";
  loaded.source = source;
  ModelConfig& c = loaded.config;
  c.num_layers = f.Int("num_layers");
  c.hidden_size = f.Int("hidden_size");
  c.num_heads = f.Int("num_attention_heads");
  c.max_position_embeddings = f.Int("max_position_embeddings", f.Int("seq_length", 0));
  c.rope.theta = f.Double("rotary_base", 10000.0);
  if (f.Bool("multi_latent_attention", false)) {
    ParseMegatronMla(f, c);
  } else {
    ParseMegatronGqa(f, c);
  }
  if (f.Has("kv_channels")) loaded.megatron.kv_channels = f.Int("kv_channels");
  if (f.Has("softmax_scale")) loaded.megatron.softmax_scale = f.Double("softmax_scale");
  try {
    ValidateConfig(c);
  } catch (const Error& e) {
    // ValidateConfig speaks HF key names; say which Megatron names they are.
    throw Error(e.kind(), source + ": " + e.what() +
                              " (Megatron names: num_query_groups = num_key_value_heads, "
                              "kv_channels = head_dim, qk_pos_emb_head_dim = qk_rope_head_dim)");
  }
  return loaded;
}

LoadedConfig LoadAnyConfig(const std::string& path) {
  const std::string text = ReadConfigFile(path);
  // Bounded like every other parse: a hostile file fails here with its path in the message.
  const json root = io::ParseJson(text, path, ErrorKind::kInvalidArgument);
  if (root.is_object() && !root.contains("model_type") &&
      (root.contains("num_layers") || root.contains("multi_latent_attention") ||
       root.contains("num_query_groups") || root.contains("kv_channels"))) {
    return ParseMegatronConfig(text, path);
  }
  LoadedConfig loaded;
  loaded.config = ParseHfConfig(text, path);
  loaded.format = "hf";
  loaded.source = path;
  return loaded;
}

namespace {

// The config writers spell the families attn has converted since its start (Llama, Mistral,
// Qwen2, Falcon, DeepSeek MLA); a config with a later family's attention features would be
// written as one of those and silently lose them, so it is refused, naming the feature.
void CheckWritable(const ModelConfig& c, const char* format) {
  const char* feature = c.gqa.qk_norm != QkNorm::kNone ? "q/k norms"
                        : c.gqa.attention_sinks        ? "attention sinks"
                        : c.attn_logit_softcapping > 0 ? "logit soft-capping"
                        : c.softmax_scale > 0          ? "a softmax scale given by the config"
                        : c.sliding_rope_differs       ? "a second RoPE for sliding layers"
                        : c.rope.scaling.type == RopeScalingType::kLongrope
                            ? "longrope RoPE scaling"
                        : c.model_type == "phi3"     ? "stacked qkv_proj"
                        : c.gqa.alibi                ? "ALiBi biases"
                        : !c.nope_layers.empty()     ? "NoPE layers"
                        : c.attention_chunk_size > 0 ? "chunked attention"
                                                     : nullptr;
  if (feature != nullptr) {
    throw Error(ErrorKind::kUnsupported,
                std::string("cannot write a ") + format + " config for model_type '" +
                    c.model_type + "': its " + feature +
                    " have no spelling in attn's config writer (use the model's own config.json)");
  }
}

}  // namespace

std::string MegatronConfigJson(const ModelConfig& c) {
  ValidateConfig(c);
  CheckWritable(c, "Megatron-Core");
  json out;
  out["num_layers"] = c.num_layers;
  out["hidden_size"] = c.hidden_size;
  out["num_attention_heads"] = c.num_heads;
  if (c.max_position_embeddings > 0) out["max_position_embeddings"] = c.max_position_embeddings;
  out["rotary_base"] = c.rope.theta;
  out["rotary_percent"] = RotaryPercent(c);
  out["normalization"] = "RMSNorm";
  if (c.sliding_window > 0) {
    throw Error(ErrorKind::kUnsupported, "sliding_window " + std::to_string(c.sliding_window) +
                                             " has no Megatron-Core config spelling attn writes");
  }
  if (c.kind == AttentionKind::kMla) {
    out["multi_latent_attention"] = true;
    out["q_lora_rank"] = c.mla.q_lora_rank > 0 ? json(c.mla.q_lora_rank) : json(nullptr);
    out["kv_lora_rank"] = c.mla.kv_lora_rank;
    out["qk_head_dim"] = c.mla.qk_nope_head_dim;
    out["qk_pos_emb_head_dim"] = c.mla.qk_rope_head_dim;
    out["v_head_dim"] = c.mla.v_head_dim;
    out["layernorm_epsilon"] = c.mla.rms_norm_eps;
    out["add_bias_linear"] = false;
    if (c.rope.pairing != RopePairing::kInterleaved) {
      throw Error(
          ErrorKind::kUnsupported,
          "MLA with rotate-half RoPE (rope_interleave=false) has no Megatron-Core spelling");
    }
    if (c.rope.scaling.type == RopeScalingType::kYarn) {
      out["rope_type"] = "yarn";
      YarnToMegatron(c.rope.scaling, out);
    } else if (c.rope.scaling.type == RopeScalingType::kNone) {
      out["rope_type"] = "rope";
    } else {
      throw Error(ErrorKind::kUnsupported,
                  "MLA rope scaling other than yarn has no Megatron-Core spelling");
    }
    return out.dump(2) + "\n";
  }
  out["multi_latent_attention"] = false;
  out["group_query_attention"] = c.gqa.num_kv_heads != c.num_heads;
  out["num_query_groups"] = c.gqa.num_kv_heads;
  out["kv_channels"] = c.gqa.head_dim;
  if (c.gqa.o_bias && !c.gqa.qkv_bias) {
    throw Error(ErrorKind::kUnsupported,
                "an o_proj bias without q/k/v biases has no Megatron-Core spelling");
  }
  out["add_bias_linear"] = c.gqa.o_bias;
  out["add_qkv_bias"] = c.gqa.qkv_bias;
  out["rotary_interleaved"] = c.rope.pairing == RopePairing::kInterleaved;
  const RopeScaling& s = c.rope.scaling;
  switch (s.type) {
    case RopeScalingType::kNone:
      out["position_embedding_type"] = "rope";
      break;
    case RopeScalingType::kYarn:
      out["position_embedding_type"] = "yarn";
      YarnToMegatron(s, out);
      break;
    case RopeScalingType::kLlama3:
      if (s.low_freq_factor != 1.0 || s.high_freq_factor != 4.0 ||
          s.original_max_position_embeddings != 8192) {
        throw Error(ErrorKind::kUnsupported,
                    "llama3 rope scaling other than low 1 / high 4 / original 8192 has no "
                    "Megatron-Core spelling (use_rope_scaling fixes those)");
      }
      out["position_embedding_type"] = "rope";
      out["use_rope_scaling"] = true;
      out["rope_scaling_factor"] = s.factor;
      break;
    case RopeScalingType::kLinear:
    case RopeScalingType::kDynamic:
    case RopeScalingType::kLongrope:
      throw Error(ErrorKind::kUnsupported,
                  "linear, dynamic and longrope scaling have no Megatron-Core config spelling "
                  "attn writes");
  }
  return out.dump(2) + "\n";
}

std::string HfConfigJson(const ModelConfig& c) {
  ValidateConfig(c);
  CheckWritable(c, "Hugging Face");
  json out;
  out["hidden_size"] = c.hidden_size;
  out["num_attention_heads"] = c.num_heads;
  out["num_hidden_layers"] = c.num_layers;
  if (c.max_position_embeddings > 0) out["max_position_embeddings"] = c.max_position_embeddings;
  out["rope_theta"] = c.rope.theta;
  out["rope_scaling"] = ScalingToHf(c.rope.scaling);
  const double percent = RotaryPercent(c);
  if (percent != 1.0) out["partial_rotary_factor"] = percent;
  if (c.quantization.fp8_blocks) {
    out["quantization_config"] = {
        {"quant_method", "fp8"},
        {"fmt", "e4m3"},
        {"activation_scheme", "dynamic"},
        {"weight_block_size", {c.quantization.block_rows, c.quantization.block_cols}}};
  }
  if (c.kind == AttentionKind::kMla) {
    out["model_type"] = c.model_type == "deepseek_v2" ? "deepseek_v2" : "deepseek_v3";
    out["num_key_value_heads"] = c.num_heads;
    out["q_lora_rank"] = c.mla.q_lora_rank > 0 ? json(c.mla.q_lora_rank) : json(nullptr);
    out["kv_lora_rank"] = c.mla.kv_lora_rank;
    out["qk_nope_head_dim"] = c.mla.qk_nope_head_dim;
    out["qk_rope_head_dim"] = c.mla.qk_rope_head_dim;
    out["v_head_dim"] = c.mla.v_head_dim;
    out["rms_norm_eps"] = c.mla.rms_norm_eps;
    out["attention_bias"] = false;
    out["rope_interleave"] = c.rope.pairing == RopePairing::kInterleaved;
    return out.dump(2) + "\n";
  }
  if (c.rope.pairing != RopePairing::kRotateHalf) {
    throw Error(ErrorKind::kUnsupported,
                "interleaved RoPE on a GQA model has no HF spelling: HF llama/qwen2/mistral "
                "rotate halves, and converting needs a row permutation of q/k_proj");
  }
  if (c.model_type == "falcon") {
    const int64_t g = c.gqa.num_kv_heads;
    if (c.gqa.head_dim * c.num_heads != c.hidden_size || c.gqa.qkv_bias != c.gqa.o_bias) {
      throw Error(ErrorKind::kUnsupported,
                  "falcon needs head_dim = hidden / heads and one bias flag for both projections");
    }
    out["model_type"] = "falcon";
    out["multi_query"] = g == 1;
    out["new_decoder_architecture"] = g != 1 && g != c.num_heads;
    if (g != 1 && g != c.num_heads) out["num_kv_heads"] = g;
    out["bias"] = c.gqa.qkv_bias;
    out["alibi"] = false;
    return out.dump(2) + "\n";
  }
  out["num_key_value_heads"] = c.gqa.num_kv_heads;
  out["head_dim"] = c.gqa.head_dim;
  const bool windowed = c.sliding_window > 0;
  if (c.gqa.qkv_bias && !c.gqa.o_bias) {
    out["model_type"] = "qwen2";
    out["use_sliding_window"] = windowed;
    if (windowed) {
      if (!c.sliding_layers.empty()) {
        throw Error(ErrorKind::kUnsupported, "per-layer sliding windows are not written");
      }
      out["sliding_window"] = c.sliding_window;
      out["max_window_layers"] = 0;
    }
  } else if (c.gqa.qkv_bias != c.gqa.o_bias) {
    throw Error(ErrorKind::kUnsupported, "an o_proj bias without q/k/v biases has no HF spelling");
  } else if (windowed || c.model_type == "mistral") {
    if (c.gqa.qkv_bias || !c.sliding_layers.empty()) {
      throw Error(ErrorKind::kUnsupported,
                  "mistral has no attention biases and one window for all layers");
    }
    out["model_type"] = "mistral";
    out["sliding_window"] = windowed ? json(c.sliding_window) : json(nullptr);
  } else {
    out["model_type"] = "llama";
    out["attention_bias"] = c.gqa.qkv_bias;
  }
  return out.dump(2) + "\n";
}

void WriteHfConfigFile(const std::string& path, const ModelConfig& config) {
  io::AtomicWriteFile(path, HfConfigJson(config));
}

}  // namespace attn
