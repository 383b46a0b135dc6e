// SPDX-License-Identifier: Apache-2.0
// Hugging Face config.json -> ModelConfig. Defaults follow the HF configuration classes
// (LlamaConfig, MistralConfig, Qwen2Config, DeepseekV2Config, DeepseekV3Config) so that a key a
// checkpoint leaves out means what it means to transformers. Every message starts with the
// source ("config.json" or the file path) and names the key it is about.
#include "attn/hf_config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "attn/config.h"
#include "attn/error.h"
#include "io/files.h"
#include "io/json_util.h"

namespace attn {
namespace {

using nlohmann::json;

constexpr const char* kSupportedModels =
    "llama, mistral, mixtral, qwen2, qwen2_moe, qwen3, qwen3_moe, olmo2, granite, gemma2, "
    "gemma3_text, gpt_oss, glm, glm4, phi3, llama4_text, deepseek_v2, deepseek_v3, kimi_k2, "
    "minicpm3, falcon";
// The model types read by ParseGqa: one GQA-family layer with per-family details.
const std::string kGqaFamilies[] = {"llama",     "mistral", "mixtral",     "qwen2",
                                    "qwen2_moe", "qwen3",   "qwen3_moe",   "olmo2",
                                    "granite",   "gemma2",  "gemma3_text", "gpt_oss",
                                    "glm",       "glm4",    "phi3",        "llama4_text"};
constexpr const char* kSupportedRopeTypes = "default, linear, dynamic, llama3, yarn, longrope";

// Rope-dict keys that only exist for scaling types attn does not implement (Phi-3-small's
// su short/long mscale, Qwen2-VL mrope sections), or for longrope when the type is another.
// Finding one means the checkpoint's RoPE is not the one its `type` names, so ignoring it would
// give plausible wrong numbers.
constexpr const char* kForeignRopeKeys[] = {"short_factor", "long_factor", "short_mscale",
                                            "long_mscale", "mrope_section"};

// A JSON value for an error message, cut short so a stray array or a megabyte string cannot
// flood the message (and a deep value cannot recurse).
std::string Excerpt(const json& value) { return io::JsonExcerpt(value, 60); }

std::string FormatDouble(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.10g", value);
  return buffer;
}

// Typed access to one JSON object with messages that name "<source>: ... '<prefix><key>'".
// Absent keys and explicit nulls are treated alike: HF configs write `null` for "use the
// default" (head_dim, q_lora_rank, sliding_window, rope_scaling).
class Fields {
 public:
  Fields(const json& object, const std::string& source, std::string prefix)
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  const json* Find(const char* key) const {
    auto it = object_.find(key);
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }
  bool Has(const char* key) const { return Find(key) != nullptr; }
  // True only when the key is not written at all (null is written: "explicitly none").
  bool Absent(const char* key) const { return !object_.contains(key); }

  std::string Name(const char* key) const { return prefix_ + key; }

  [[noreturn]] void Fail(ErrorKind kind, const std::string& message) const {
    throw Error(kind, source_ + ": " + message);
  }

  [[noreturn]] void WrongType(const char* key, const char* expected, const json& value) const {
    Fail(ErrorKind::kInvalidArgument, "key '" + Name(key) + "' must be " + expected + ", got " +
                                          value.type_name() + " " + Excerpt(value));
  }

  const json& Required(const char* key) const {
    const json* value = Find(key);
    if (value == nullptr) Fail(ErrorKind::kNotFound, "missing key '" + Name(key) + "'");
    return *value;
  }

  int64_t Int(const char* key) const { return AsInt(key, Required(key)); }
  int64_t Int(const char* key, int64_t fallback) const {
    const json* value = Find(key);
    return value == nullptr ? fallback : AsInt(key, *value);
  }
  double Double(const char* key) const { return AsDouble(key, Required(key)); }
  double Double(const char* key, double fallback) const {
    const json* value = Find(key);
    return value == nullptr ? fallback : AsDouble(key, *value);
  }
  bool Bool(const char* key, bool fallback) const {
    const json* value = Find(key);
    if (value == nullptr) return fallback;
    if (!value->is_boolean()) WrongType(key, "a boolean", *value);
    return value->get<bool>();
  }
  std::string String(const char* key) const { return AsString(key, Required(key)); }
  // A required non-empty array of numbers (longrope's factor lists), capped at 4096 entries.
  std::vector<double> Numbers(const char* key) const {
    const json& list = Required(key);
    if (!list.is_array() || list.empty() || list.size() > 4096) {
      WrongType(key, "a non-empty array of at most 4096 numbers", list);
    }
    std::vector<double> values;
    values.reserve(list.size());
    for (const json& entry : list) values.push_back(AsDouble(key, entry));
    return values;
  }

  std::string AsString(const char* key, const json& value) const {
    if (!value.is_string()) WrongType(key, "a string", value);
    return value.get<std::string>();
  }

 private:
  // Integers may be written 4096 or 4096.0 (some exporters emit floats); anything fractional,
  // out of int64 range, boolean or non-numeric is rejected. Sizes and counts are also capped
  // here (io::ConfigKeyLimit), before any caller allocates from them.
  int64_t AsInt(const char* key, const json& value) const {
    int64_t result;
    if (!io::JsonToInt64(value, &result)) {
      WrongType(key, value.is_number() ? "an integer in int64 range" : "an integer", value);
    }
    const int64_t limit = io::ConfigKeyLimit(key);
    if (result > limit) {
      Fail(ErrorKind::kInvalidArgument, "key '" + Name(key) + "' (" + std::to_string(result) +
                                            ") exceeds attn's limit of " + std::to_string(limit));
    }
    return result;
  }
  double AsDouble(const char* key, const json& value) const {
    if (!value.is_number()) WrongType(key, "a number", value);
    return value.get<double>();
  }

  const json& object_;
  const std::string& source_;
  std::string prefix_;
};

const json& RequireObject(const json& value, const std::string& source, const std::string& key) {
  if (!value.is_object()) {
    throw Error(ErrorKind::kInvalidArgument, source + ": key '" + key +
                                                 "' must be an object, got " + value.type_name() +
                                                 " " + Excerpt(value));
  }
  return value;
}

// Parses one rope_scaling / rope_parameters dict (docs/semantics.md §2). `max_position_embeddings`
// is the yarn default for the pre-extension length L, as in HF _compute_yarn_parameters.
RopeScaling ParseRopeDict(const json& dict, const std::string& source, const std::string& key,
                          int64_t max_position_embeddings, bool phi3) {
  const Fields f(dict, source, key + ".");
  RopeScaling scaling;

  std::string type;
  const bool has_rope_type = f.Has("rope_type");
  const bool has_type = f.Has("type");
  if (has_rope_type) type = f.String("rope_type");
  if (has_type) {
    const std::string legacy = f.String("type");
    if (has_rope_type && legacy != type) {
      f.Fail(ErrorKind::kInvalidArgument, "'" + f.Name("rope_type") + "' ('" +
                                              io::TextExcerpt(type) + "') and '" + f.Name("type") +
                                              "' ('" + io::TextExcerpt(legacy) + "') disagree");
    }
    type = legacy;
  }
  if (!has_rope_type && !has_type) {
    // rope_parameters may hold only rope_theta; a factor without a type is unusable (HF
    // cannot pick an init function either), so refuse rather than guess.
    if (f.Has("factor")) {
      f.Fail(ErrorKind::kInvalidArgument,
             "'" + key + "' has a factor but no 'type' or 'rope_type'");
    }
    return scaling;
  }
  if (type == "default") return scaling;
  // Phi3Config renames the types of earlier Phi-3 configs ("su", and "yarn") to longrope before
  // anything reads them (Phi-3-vision-128k still says "su").
  if (phi3 && (type == "su" || type == "yarn")) type = "longrope";

  if (type == "linear") {
    scaling.type = RopeScalingType::kLinear;
  } else if (type == "llama3") {
    scaling.type = RopeScalingType::kLlama3;
  } else if (type == "yarn") {
    scaling.type = RopeScalingType::kYarn;
  } else if (type == "dynamic") {
    scaling.type = RopeScalingType::kDynamic;
  } else if (type == "longrope") {
    scaling.type = RopeScalingType::kLongrope;
  } else {
    f.Fail(ErrorKind::kUnsupported, "unsupported rope scaling type '" + io::TextExcerpt(type) +
                                        "' in '" + key + "' (supported: " + kSupportedRopeTypes +
                                        ")");
  }
  for (const char* foreign : kForeignRopeKeys) {
    const bool own =
        scaling.type == RopeScalingType::kLongrope &&
        (std::string(foreign) == "short_factor" || std::string(foreign) == "long_factor");
    if (!own && f.Has(foreign)) {
      f.Fail(ErrorKind::kUnsupported, "key '" + f.Name(foreign) +
                                          "' belongs to a rope scaling attn does not implement "
                                          "(type is '" +
                                          io::TextExcerpt(type) + "')");
    }
  }

  if (scaling.type == RopeScalingType::kLongrope) {
    // Phi-3 and MiniCPM3 write no factor (ParseRope derives it); 0 marks "absent" until then.
    scaling.factor = f.Double("factor", 0.0);
  } else {
    scaling.factor = f.Double("factor");
  }
  switch (scaling.type) {
    case RopeScalingType::kNone:
    case RopeScalingType::kLinear:
      break;
    case RopeScalingType::kLlama3:
      // HF _validate_llama3_parameters requires all four keys.
      scaling.low_freq_factor = f.Double("low_freq_factor");
      scaling.high_freq_factor = f.Double("high_freq_factor");
      scaling.original_max_position_embeddings = f.Int("original_max_position_embeddings");
      break;
    case RopeScalingType::kYarn:
      scaling.original_max_position_embeddings =
          f.Int("original_max_position_embeddings", max_position_embeddings);
      scaling.beta_fast = f.Double("beta_fast", 32.0);
      scaling.beta_slow = f.Double("beta_slow", 1.0);
      scaling.mscale = f.Double("mscale", 0.0);
      scaling.mscale_all_dim = f.Double("mscale_all_dim", 0.0);
      scaling.attention_factor = f.Double("attention_factor", 0.0);
      scaling.truncate = f.Bool("truncate", true);
      break;
    case RopeScalingType::kDynamic:
      // HF's dynamic NTK grows the base from config.max_position_embeddings, never from an
      // original_max_position_embeddings key: one that disagrees is ambiguous, so refused.
      scaling.original_max_position_embeddings = max_position_embeddings;
      if (f.Int("original_max_position_embeddings", max_position_embeddings) !=
          max_position_embeddings) {
        f.Fail(ErrorKind::kInvalidArgument,
               "'" + f.Name("original_max_position_embeddings") +
                   "' differs from max_position_embeddings, which dynamic NTK scaling uses as its "
                   "original length (transformers ignores the key): ambiguous");
      }
      break;
    case RopeScalingType::kLongrope:
      // L: here, or at the top level (ParseRope reconciles the two).
      scaling.original_max_position_embeddings = f.Int("original_max_position_embeddings", 0);
      scaling.short_factor = f.Numbers("short_factor");
      scaling.long_factor = f.Numbers("long_factor");
      scaling.attention_factor = f.Double("attention_factor", 0.0);
      break;
  }
  return scaling;
}

bool SameScaling(const RopeScaling& a, const RopeScaling& b) {
  return a.type == b.type && a.factor == b.factor && a.low_freq_factor == b.low_freq_factor &&
         a.high_freq_factor == b.high_freq_factor &&
         a.original_max_position_embeddings == b.original_max_position_embeddings &&
         a.beta_fast == b.beta_fast && a.beta_slow == b.beta_slow && a.mscale == b.mscale &&
         a.mscale_all_dim == b.mscale_all_dim && a.attention_factor == b.attention_factor &&
         a.truncate == b.truncate && a.short_factor == b.short_factor &&
         a.long_factor == b.long_factor;
}

// A value that may sit at the top level (older configs) or inside rope_parameters (newer
// transformers). Both present and different is ambiguous, so it is an error.
double TopLevelOrRopeParam(const Fields& top, const Fields* params, const char* key,
                           double fallback) {
  const bool in_top = top.Has(key);
  const bool in_params = params != nullptr && params->Has(key);
  if (in_top && in_params && top.Double(key) != params->Double(key)) {
    top.Fail(ErrorKind::kInvalidArgument,
             "'" + top.Name(key) + "' (" + FormatDouble(top.Double(key)) + ") and '" +
                 params->Name(key) + "' (" + FormatDouble(params->Double(key)) + ") disagree");
  }
  if (in_params) return params->Double(key);
  return top.Double(key, fallback);
}

// longrope's L and context ratio s (docs/semantics.md §2). L: the rope dict's
// original_max_position_embeddings or the top-level one (Phi-3), else max_position_embeddings.
// s, which only feeds the default attention factor: the dict's factor, else
// max_position_embeddings / L. transformers 4 takes max / L whenever the top-level key exists
// and transformers 5 the dict's factor, so a config where the two differ is refused.
void ResolveLongrope(const Fields& top, ModelConfig& config) {
  RopeScaling& scaling = config.rope.scaling;
  const int64_t in_dict = scaling.original_max_position_embeddings;
  // Phi3Config always has the attribute (default 4096), and transformers 4 and 5 both take L
  // from it whatever the rope dict says: for phi3 an absent key is 4096, not "absent".
  const int64_t at_top = config.model_type == "phi3"
                             ? top.Int("original_max_position_embeddings", 4096)
                             : top.Int("original_max_position_embeddings", 0);
  if (in_dict > 0 && at_top > 0 && in_dict != at_top) {
    top.Fail(ErrorKind::kInvalidArgument, "rope scaling original_max_position_embeddings (" +
                                              std::to_string(in_dict) +
                                              ") and top-level original_max_position_embeddings (" +
                                              std::to_string(at_top) + ") disagree");
  }
  const int64_t length =
      at_top > 0 ? at_top : (in_dict > 0 ? in_dict : config.max_position_embeddings);
  scaling.original_max_position_embeddings = length;
  const double ratio =
      length > 0 ? static_cast<double>(config.max_position_embeddings) / static_cast<double>(length)
                 : 0.0;
  if (scaling.factor == 0.0) {
    scaling.factor = ratio;
  } else if (at_top > 0 && scaling.factor != ratio && scaling.attention_factor == 0.0) {
    top.Fail(ErrorKind::kInvalidArgument,
             "longrope factor (" + FormatDouble(scaling.factor) +
                 ") differs from max_position_embeddings / original_max_position_embeddings (" +
                 FormatDouble(ratio) +
                 "); transformers versions disagree on which sets the attention factor");
  }
}

void ParseRope(const Fields& top, const std::string& source, int64_t rope_width,
               const char* rope_width_key, ModelConfig& config) {
  const json* params_json = top.Find("rope_parameters");
  const json* legacy_json = top.Find("rope_scaling");
  std::optional<Fields> params;
  RopeScaling from_params;
  if (params_json != nullptr) {
    RequireObject(*params_json, source, "rope_parameters");
    params.emplace(*params_json, source, "rope_parameters.");
    from_params = ParseRopeDict(*params_json, source, "rope_parameters",
                                config.max_position_embeddings, config.model_type == "phi3");
  }
  if (legacy_json != nullptr) {
    RequireObject(*legacy_json, source, "rope_scaling");
    const RopeScaling from_legacy =
        ParseRopeDict(*legacy_json, source, "rope_scaling", config.max_position_embeddings,
                      config.model_type == "phi3");
    if (params_json != nullptr && !SameScaling(from_params, from_legacy)) {
      top.Fail(ErrorKind::kInvalidArgument, "'rope_scaling' and 'rope_parameters' disagree");
    }
    config.rope.scaling = from_legacy;
  } else {
    config.rope.scaling = from_params;
  }

  config.rope.theta = TopLevelOrRopeParam(top, params ? &*params : nullptr, "rope_theta", 10000.0);
  if (config.rope.scaling.type == RopeScalingType::kLongrope) {
    ResolveLongrope(top, config);
  }

  // HF: dim = int(head_dim · partial_rotary_factor). attn insists the product is an even integer
  // instead of truncating, because a truncated or odd width cannot be what the checkpoint meant.
  const double partial =
      TopLevelOrRopeParam(top, params ? &*params : nullptr, "partial_rotary_factor", 1.0);
  if (!(partial > 0.0 && partial <= 1.0)) {
    top.Fail(ErrorKind::kInvalidArgument,
             "partial_rotary_factor (" + FormatDouble(partial) + ") must be in (0, 1]");
  }
  if (partial == 1.0) {
    // Full-width RoPE: an odd width is the width key's fault, and ValidateConfig names it.
    config.rope.rotary_dim = rope_width;
    return;
  }
  const double width = static_cast<double>(rope_width) * partial;
  const double rounded = std::round(width);
  if (std::fabs(width - rounded) > 1e-6 || static_cast<int64_t>(rounded) % 2 != 0) {
    top.Fail(ErrorKind::kInvalidArgument,
             "partial_rotary_factor (" + FormatDouble(partial) + ") x " + rope_width_key + " (" +
                 std::to_string(rope_width) + ") = " + FormatDouble(width) +
                 " is not an even integer rotary width");
  }
  config.rope.rotary_dim = static_cast<int64_t>(rounded);
}

// layer_types ("sliding_attention" / "full_attention" per layer) -> sliding_layers.
std::vector<bool> ParseLayerTypes(const Fields& top) {
  const json& list = top.Required("layer_types");
  if (!list.is_array()) top.WrongType("layer_types", "an array of strings", list);
  std::vector<bool> sliding;
  sliding.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string entry = top.AsString("layer_types", list[i]);
    if (entry == "sliding_attention") {
      sliding.push_back(true);
    } else if (entry == "full_attention") {
      sliding.push_back(false);
    } else {
      top.Fail(ErrorKind::kUnsupported, "unsupported layer_types entry '" + io::TextExcerpt(entry) +
                                            "' at index " + std::to_string(i) +
                                            " (supported: sliding_attention, full_attention)");
    }
  }
  return sliding;
}

// The Qwen families' window (Qwen2, Qwen2-MoE, Qwen3): only when use_sliding_window is true
// (default false), of sliding_window tokens (default 4096), on the layers layer_types marks, or
// without layer_types on layers >= max_window_layers (default 28) — or, for Qwen2-MoE
// (`alternate`), on the even layers below max_window_layers.
void ParseQwenWindow(const Fields& top, ModelConfig& config, bool alternate) {
  if (top.Bool("use_sliding_window", false)) {
    config.sliding_window = top.Absent("sliding_window") ? 4096 : top.Int("sliding_window", 0);
  }
  if (top.Has("layer_types")) {
    config.sliding_layers = ParseLayerTypes(top);
  } else if (config.sliding_window > 0) {
    const int64_t max_window_layers = top.Int("max_window_layers", 28);
    config.sliding_layers.resize(static_cast<size_t>(std::max<int64_t>(config.num_layers, 0)));
    for (size_t i = 0; i < config.sliding_layers.size(); ++i) {
      const auto layer = static_cast<int64_t>(i);
      config.sliding_layers[i] =
          alternate ? (layer % 2 == 0 && layer < max_window_layers) : layer >= max_window_layers;
    }
  }
}

// The window of the Gemma and GPT-OSS families: sliding_window tokens (`default_window` when the
// key is absent, none when null) on the layers layer_types marks, or without layer_types on
// every layer but each `global_every`-th (Gemma 2, GPT-OSS: 2, the even layers slide; Gemma 3:
// sliding_window_pattern).
void ParsePatternedWindow(const Fields& top, ModelConfig& config, int64_t default_window,
                          int64_t global_every) {
  config.sliding_window =
      top.Absent("sliding_window") ? default_window : top.Int("sliding_window", 0);
  if (top.Has("layer_types")) {
    config.sliding_layers = ParseLayerTypes(top);
    return;
  }
  config.sliding_layers.resize(static_cast<size_t>(std::max<int64_t>(config.num_layers, 0)));
  for (size_t i = 0; i < config.sliding_layers.size(); ++i) {
    config.sliding_layers[i] = (static_cast<int64_t>(i) + 1) % global_every != 0;
  }
}

// Gemma's softmax scale, query_pre_attn_scalar^-0.5 (default 256).
double QueryPreAttnScale(const Fields& top) {
  const double scalar = top.Double("query_pre_attn_scalar", 256.0);
  if (!(scalar > 0.0)) {
    top.Fail(ErrorKind::kInvalidArgument, "'query_pre_attn_scalar' must be positive");
  }
  return 1.0 / std::sqrt(scalar);
}

// Llama4TextAttention (docs/semantics.md §1): bias = attention_bias (default false); RoPE with
// interleaved pairs (complex multiplication of neighbours) on the layers no_rope_layers marks 1
// (default: all but every no_rope_layer_interval-th, 4), none on the others ("NoPE"); on RoPE
// layers a weightless L2 norm of every q and k head after RoPE when use_qk_norm (default true,
// eps rms_norm_eps 1e-5) and chunked attention of attention_chunk_size (default 8192) slots; on
// NoPE layers full attention and, when attn_temperature_tuning (default true), queries scaled by
// the temperature of floor_scale (8192) and attn_scale (0.1). layer_types, when given, says
// which layers are chunked.
void ParseLlama4(const Fields& top, ModelConfig& config) {
  const bool bias = top.Bool("attention_bias", false);
  config.gqa.qkv_bias = bias;
  config.gqa.o_bias = bias;
  config.rope.pairing = RopePairing::kInterleaved;
  const auto layers = static_cast<size_t>(std::max<int64_t>(config.num_layers, 0));
  config.nope_layers.assign(layers, false);
  if (top.Has("no_rope_layers") && !top.Find("no_rope_layers")->empty()) {
    const json& list = *top.Find("no_rope_layers");
    if (!list.is_array() || list.size() != layers) {
      top.WrongType("no_rope_layers", "an array of 0/1 with one entry per layer", list);
    }
    for (size_t i = 0; i < layers; ++i) {
      if (!list[i].is_number_integer() || (list[i] != 0 && list[i] != 1)) {
        top.WrongType("no_rope_layers", "an array of 0/1 with one entry per layer", list);
      }
      config.nope_layers[i] = list[i] == 0;  // 1 = this layer uses RoPE
    }
  } else {
    const int64_t interval = top.Int("no_rope_layer_interval", 4);
    if (interval < 1)
      top.Fail(ErrorKind::kInvalidArgument, "'no_rope_layer_interval' must be >= 1");
    for (size_t i = 0; i < layers; ++i) {
      config.nope_layers[i] = (static_cast<int64_t>(i) + 1) % interval == 0;
    }
  }
  config.attention_chunk_size =
      top.Absent("attention_chunk_size") ? 8192 : top.Int("attention_chunk_size", 0);
  config.chunked_layers.assign(layers, false);
  if (top.Has("layer_types")) {
    const json& list = *top.Find("layer_types");
    if (!list.is_array() || list.size() != layers) {
      top.WrongType("layer_types", "an array of strings with one entry per layer", list);
    }
    for (size_t i = 0; i < layers; ++i) {
      const std::string entry = top.AsString("layer_types", list[i]);
      if (entry != "chunked_attention" && entry != "full_attention") {
        top.Fail(ErrorKind::kUnsupported,
                 "unsupported layer_types entry '" + io::TextExcerpt(entry) + "' at index " +
                     std::to_string(i) + " (supported: chunked_attention, full_attention)");
      }
      config.chunked_layers[i] = entry == "chunked_attention";
    }
  } else {
    for (size_t i = 0; i < layers; ++i) config.chunked_layers[i] = !config.nope_layers[i];
  }
  if (top.Bool("use_qk_norm", true)) {
    config.gqa.qk_norm = QkNorm::kL2;
    config.gqa.qk_norm_eps = top.Double("rms_norm_eps", 1e-5);
  }
  // attn_temperature_tuning is a boolean in Llama4TextConfig; released configs write a number
  // (4), which the attention reads for its truth value.
  const json* tuning = top.Find("attn_temperature_tuning");
  bool tune = true;
  if (tuning != nullptr) {
    if (tuning->is_boolean()) {
      tune = tuning->get<bool>();
    } else if (tuning->is_number()) {
      tune = tuning->get<double>() != 0.0;
    } else {
      top.WrongType("attn_temperature_tuning", "a boolean or a number", *tuning);
    }
  }
  if (tune) {
    config.temperature.floor_scale = top.Double("floor_scale", 8192.0);
    config.temperature.attn_scale = top.Double("attn_scale", 0.1);
    if (!(config.temperature.floor_scale > 0.0)) {
      top.Fail(ErrorKind::kInvalidArgument, "'floor_scale' must be positive");
    }
  }
}

void ParseGqa(const Fields& top, const std::string& model_type, ModelConfig& config) {
  config.kind = AttentionKind::kGqa;
  config.rope.pairing = RopePairing::kRotateHalf;  // HF rotate_half (docs/semantics.md §2)
  // An absent num_key_value_heads is the config class's field default (GptOssConfig 8,
  // Gemma2Config and Gemma3TextConfig 4, GlmConfig and Glm4Config 2, the others H); an explicit
  // null is H (GptOssConfig's __post_init__, and HF's general rule). GPT-OSS likewise reads an
  // absent head_dim as 64 and a null one as hidden / heads.
  const bool oss = model_type == "gpt_oss";
  const bool gemma = model_type == "gemma2" || model_type == "gemma3_text";
  const bool glm = model_type == "glm" || model_type == "glm4";
  const bool llama4 = model_type == "llama4_text";
  const int64_t absent_kv_heads = oss || llama4 ? 8 : gemma ? 4 : glm ? 2 : config.num_heads;
  config.gqa.num_kv_heads =
      top.Int("num_key_value_heads",
              top.Absent("num_key_value_heads") ? absent_kv_heads : config.num_heads);
  if (top.Bool("use_bidirectional_attention", false)) {
    // transformers 5's Gemma 3 (EmbeddingGemma) attends without the causal mask.
    top.Fail(ErrorKind::kUnsupported,
             "use_bidirectional_attention=true is not supported (attn's layers are causal)");
  }
  if (top.Has("head_dim")) {
    config.gqa.head_dim = top.Int("head_dim");
  } else if (oss && top.Absent("head_dim")) {
    config.gqa.head_dim = 64;
  } else if (model_type == "qwen3") {
    config.gqa.head_dim = 128;  // Qwen3Config's default (Qwen3-MoE has none: hidden / heads)
  } else if (glm || llama4) {
    config.gqa.head_dim = 128;  // GlmConfig's, Glm4Config's and Llama4TextConfig's default
  } else if (gemma) {
    config.gqa.head_dim = 256;  // Gemma2Config's and Gemma3TextConfig's default
  } else if (config.num_heads > 0) {
    if (config.hidden_size % config.num_heads != 0) {
      top.Fail(ErrorKind::kInvalidArgument, "head_dim is absent and hidden_size (" +
                                                std::to_string(config.hidden_size) +
                                                ") is not divisible by num_attention_heads (" +
                                                std::to_string(config.num_heads) + ")");
    }
    config.gqa.head_dim = config.hidden_size / config.num_heads;
  }

  if (model_type == "llama" || model_type == "granite" || model_type == "olmo2") {
    // LlamaAttention (and Granite's, OLMo 2's): bias=attention_bias on q, k, v and o; no
    // sliding window.
    const bool bias = top.Bool("attention_bias", false);
    config.gqa.qkv_bias = bias;
    config.gqa.o_bias = bias;
    if (model_type == "granite") {
      // GraniteAttention: scaling = attention_multiplier (GraniteConfig default 1.0), not
      // head_dim^-0.5 (docs/semantics.md §1).
      config.softmax_scale = top.Double("attention_multiplier", 1.0);
      if (!(config.softmax_scale > 0.0)) {
        top.Fail(ErrorKind::kInvalidArgument, "'attention_multiplier' must be positive");
      }
    }
    if (model_type == "olmo2") {
      // Olmo2Attention: RMSNorm over the whole q and k projections, eps rms_norm_eps
      // (Olmo2Config default 1e-5).
      config.gqa.qk_norm = QkNorm::kWholeProjection;
      config.gqa.qk_norm_eps = top.Double("rms_norm_eps", 1e-5);
    }
    return;
  }
  if (model_type == "qwen3" || model_type == "qwen3_moe") {
    // Qwen3Attention: bias=attention_bias on q, k, v and o; RMSNorm of width head_dim on each
    // q and k head before RoPE, eps rms_norm_eps (Qwen3Config default 1e-6). Qwen3's window
    // applies only when use_sliding_window is true: to the layers layer_types marks, else to
    // layers >= max_window_layers (as Qwen2).
    const bool bias = top.Bool("attention_bias", false);
    config.gqa.qkv_bias = bias;
    config.gqa.o_bias = bias;
    config.gqa.qk_norm = QkNorm::kPerHead;
    config.gqa.qk_norm_eps = top.Double("rms_norm_eps", 1e-6);
    if (model_type == "qwen3") {
      ParseQwenWindow(top, config, /*alternate=*/false);
    } else if (top.Bool("use_sliding_window", false)) {
      // Qwen3MoeConfig has neither layer_types nor max_window_layers, and Qwen3MoeModel builds
      // one sliding mask for all layers: with use_sliding_window every layer is windowed.
      config.sliding_window = top.Absent("sliding_window") ? 4096 : top.Int("sliding_window", 0);
    }
    return;
  }
  if (model_type == "mistral" || model_type == "mixtral") {
    // MistralConfig's default sliding_window is 4096, MixtralConfig's none; null means full
    // attention. Mixtral's attention is Mistral's.
    const int64_t absent = model_type == "mistral" ? 4096 : 0;
    config.sliding_window = top.Absent("sliding_window") ? absent : top.Int("sliding_window", 0);
    if (top.Has("layer_types")) config.sliding_layers = ParseLayerTypes(top);
    return;
  }
  if (model_type == "glm" || model_type == "glm4") {
    // GlmAttention (Glm4's is the same): q/k/v bias = attention_bias (default true), o never;
    // RoPE on the first head_dim · partial_rotary_factor (default 0.5) features only, pairing
    // neighbours (x[2i], x[2i+1]) — GLM's rotate_half and repeat_interleave'd cos/sin.
    // An explicit null is no bias (transformers 4's nn.Linear(bias=None)).
    config.gqa.qkv_bias = top.Absent("attention_bias") || top.Bool("attention_bias", false);
    config.gqa.o_bias = false;
    config.rope.pairing = RopePairing::kInterleaved;
    return;
  }
  if (model_type == "gemma2") {
    // Gemma2Attention: scaling = query_pre_attn_scalar^-0.5 (default 256), scores soft-capped
    // by attn_logit_softcapping (default 50; null: none) before the mask, bias =
    // attention_bias (default false), a window of sliding_window (default 4096) on the layers
    // layer_types marks, by default the even ones (Gemma2Config).
    const bool bias = top.Bool("attention_bias", false);
    config.gqa.qkv_bias = bias;
    config.gqa.o_bias = bias;
    config.softmax_scale = QueryPreAttnScale(top);
    config.attn_logit_softcapping =
        top.Absent("attn_logit_softcapping") ? 50.0 : top.Double("attn_logit_softcapping", 0.0);
    ParsePatternedWindow(top, config, /*default_window=*/4096, /*global_every=*/2);
    return;
  }
  if (model_type == "gemma3_text") {
    // Gemma3Attention: scaling = query_pre_attn_scalar^-0.5 (default 256); q_norm/k_norm per
    // head scaling by (1 + w) (Gemma3RMSNorm), eps rms_norm_eps (default 1e-6); no soft-capping
    // (below); bias = attention_bias. Local layers — all but every
    // sliding_window_pattern-th (default 6), or as layer_types says — window sliding_window
    // (default 4096) tokens and rotate with rope_local_base_freq (default 10000) unscaled; the
    // global ones with rope_theta (default 1e6) and rope_scaling. The RoPE is parsed afterwards
    // (ParseRope); Parse() then derives the local one.
    const bool bias = top.Bool("attention_bias", false);
    config.gqa.qkv_bias = bias;
    config.gqa.o_bias = bias;
    config.gqa.qk_norm = QkNorm::kPerHead;
    config.gqa.qk_norm_unit_offset = true;
    config.gqa.qk_norm_eps = top.Double("rms_norm_eps", 1e-6);
    config.softmax_scale = QueryPreAttnScale(top);
    // Gemma3Attention passes no soft-cap whatever attn_logit_softcapping says (transformers 4.50
    // to 5.x; released configs have it null): read for its type only, not applied.
    (void)top.Double("attn_logit_softcapping", 0.0);
    const int64_t pattern = top.Int("sliding_window_pattern", 6);
    if (pattern < 1) top.Fail(ErrorKind::kInvalidArgument, "'sliding_window_pattern' must be >= 1");
    ParsePatternedWindow(top, config, /*default_window=*/4096, pattern);
    return;
  }
  if (model_type == "gpt_oss") {
    // GptOssAttention: q/k/v/o bias = attention_bias (default true), a learned sink logit per
    // head (`sinks`), a window of sliding_window (default 128) on the layers layer_types marks,
    // by default the even ones (GptOssConfig).
    const bool bias = top.Bool("attention_bias", true);
    config.gqa.qkv_bias = bias;
    config.gqa.o_bias = bias;
    config.gqa.attention_sinks = true;
    ParsePatternedWindow(top, config, /*default_window=*/128, /*global_every=*/2);
    return;
  }
  if (llama4) {
    ParseLlama4(top, config);
    return;
  }
  if (model_type == "phi3") {
    // Phi3Attention: one stacked qkv_proj (read by hf_weights.cc) and o_proj, no biases;
    // sliding_window (Phi3Config default none) masks every layer (Phi3Model builds one sliding
    // mask). partial_rotary_factor (Phi-4-mini) and longrope are ParseRope's.
    config.gqa.qkv_bias = false;
    config.gqa.o_bias = false;
    config.sliding_window = top.Int("sliding_window", 0);
    return;
  }
  if (model_type == "qwen2_moe") {
    // Qwen2MoeAttention: q/k/v bias = qkv_bias (default true), o unbiased. Without
    // layer_types, Qwen2MoeConfig slides the even layers below max_window_layers.
    config.gqa.qkv_bias = top.Bool("qkv_bias", true);
    config.gqa.o_bias = false;
    ParseQwenWindow(top, config, /*alternate=*/true);
    return;
  }
  // qwen2: q/k/v biased, o not (Qwen2Attention).
  config.gqa.qkv_bias = true;
  config.gqa.o_bias = false;
  ParseQwenWindow(top, config, /*alternate=*/false);
}

void ParseMla(const Fields& top, const std::string& model_type, ModelConfig& config) {
  config.kind = AttentionKind::kMla;
  if (top.Bool("attention_bias", false)) {
    top.Fail(ErrorKind::kUnsupported, "attention_bias=true is not supported for " + model_type +
                                          " (attn's MLA projections are bias-free)");
  }
  if (top.Has("attn_logit_softcapping")) {
    top.Fail(ErrorKind::kUnsupported, "attn_logit_softcapping is not supported for " + model_type +
                                          " (attn soft-caps GQA-family scores only)");
  }
  // num_key_value_heads is ignored: MLA has one shared latent, not G kv heads (docs/semantics.md
  // §3).
  config.mla.q_lora_rank = top.Int("q_lora_rank", 0);
  config.mla.kv_lora_rank = top.Int("kv_lora_rank");
  config.mla.qk_nope_head_dim = top.Int("qk_nope_head_dim");
  config.mla.qk_rope_head_dim = top.Int("qk_rope_head_dim");
  if (model_type == "minicpm3") {
    // MiniCPMAttention: v_head_dim = hidden_size / num_attention_heads (the config has no key
    // of its own; one that disagrees would be ignored by the reference code, so it is refused),
    // and the query is always compressed (q_a_proj).
    if (config.num_heads <= 0 || config.hidden_size % config.num_heads != 0) {
      top.Fail(ErrorKind::kInvalidArgument,
               "minicpm3's v_head_dim is hidden_size / num_attention_heads, which is not an "
               "integer here");
    }
    config.mla.v_head_dim = config.hidden_size / config.num_heads;
    if (top.Has("v_head_dim") && top.Int("v_head_dim") != config.mla.v_head_dim) {
      top.Fail(ErrorKind::kInvalidArgument,
               "'v_head_dim' (" + std::to_string(top.Int("v_head_dim")) +
                   ") differs from hidden_size / num_attention_heads (" +
                   std::to_string(config.mla.v_head_dim) + "), which MiniCPM3's code uses");
    }
    config.mla.q_lora_rank = top.Int("q_lora_rank");
    if (config.mla.q_lora_rank <= 0) {
      top.Fail(ErrorKind::kInvalidArgument, "minicpm3 needs a positive q_lora_rank");
    }
  } else {
    config.mla.v_head_dim = top.Int("v_head_dim");
  }
  // q_a_layernorm and kv_a_layernorm: DeepSeek's modeling code and transformers build both with
  // the RMSNorm default eps 1e-6, whatever `rms_norm_eps` says (that key feeds the decoder's
  // other norms), so a config with 1e-5 still means 1e-6 here (docs/semantics.md §3). The key is
  // read for its type only.
  (void)top.Double("rms_norm_eps", 1e-6);
  config.mla.rms_norm_eps = 1e-6;
  // HF DeepSeek de-interleaves at run time when rope_interleave (default true), which equals
  // interleaved pairs on the checkpoint's weights; false means plain rotate-half.
  config.rope.pairing =
      top.Bool("rope_interleave", true) ? RopePairing::kInterleaved : RopePairing::kRotateHalf;
  // MiniCPM3's apply_rotary_pos_emb is plain rotate-half, with no de-interleaving step.
  if (model_type == "minicpm3") config.rope.pairing = RopePairing::kRotateHalf;
}

// MiniCPMLongRoPE (MiniCPM3's remote code) differs from transformers' longrope in two ways
// (docs/semantics.md §2): cos and sin are scaled by sqrt(1 + ln(max/L) / ln L) whatever the
// ratio (no floor at 1, attention_factor ignored), and the factors are chosen by the length of
// its cos/sin table, which is at least max_position_embeddings: long ones from the start when
// max_position_embeddings > L. Both are expressed in the common RopeScaling here.
void AdjustMiniCpm3Rope(const Fields& top, ModelConfig& config) {
  RopeScaling& scaling = config.rope.scaling;
  if (scaling.type == RopeScalingType::kNone) return;
  if (scaling.type != RopeScalingType::kLongrope) {
    // Its linear and dynamic variants scale the position table rather than the frequencies
    // (MiniCPMLinearScalingRotaryEmbedding / ...DynamicNTK...); attn implements them as
    // transformers does, which is not checked against MiniCPM3's code.
    top.Fail(ErrorKind::kUnsupported,
             "minicpm3 with rope scaling other than longrope is not supported");
  }
  if (scaling.attention_factor != 0.0) {
    top.Fail(ErrorKind::kInvalidArgument,
             "rope_scaling attention_factor is ignored by MiniCPM3's code; remove it");
  }
  if (scaling.short_factor.size() != scaling.long_factor.size()) {
    // Checked before the long list may stand in for the short one below.
    top.Fail(ErrorKind::kInvalidArgument,
             "rope_scaling short_factor and long_factor need rotary_dim / 2 = " +
                 std::to_string(config.rope.rotary_dim / 2) + " entries each, got " +
                 std::to_string(scaling.short_factor.size()) + " and " +
                 std::to_string(scaling.long_factor.size()));
  }
  const auto length = static_cast<double>(scaling.original_max_position_embeddings);
  const double ratio = static_cast<double>(config.max_position_embeddings) / length;
  if (!(ratio > 0.0 && length > 1.0)) {
    top.Fail(ErrorKind::kInvalidArgument,
             "minicpm3 longrope needs positive max_position_embeddings and "
             "original_max_position_embeddings > 1");
  }
  scaling.attention_factor = std::sqrt(1.0 + std::log(ratio) / std::log(length));
  if (config.max_position_embeddings > scaling.original_max_position_embeddings) {
    scaling.short_factor = scaling.long_factor;
  }
}

// An integer under its current HF name or the older spelling FalconConfig still maps to it
// (attribute_map / RefinedWeb configs: n_embed, n_head, n_layer, n_head_kv).
int64_t IntOrAlias(const Fields& top, const char* key, const char* alias) {
  if (top.Has(key)) return top.Int(key);
  if (top.Has(alias)) return top.Int(alias);
  top.Fail(ErrorKind::kNotFound,
           "missing key '" + top.Name(key) + "' (or its older spelling '" + alias + "')");
}

// Falcon (HF FalconConfig / FalconAttention): one fused query_key_value projection, head_dim =
// hidden / heads, rotate-half RoPE, biases on both projections iff `bias`. The kv head count:
//   new_decoder_architecture  -> num_kv_heads (default num_attention_heads): GQA, Falcon-40B
//   multi_query (the default) -> 1: MQA, Falcon-7B
//   neither                   -> num_attention_heads: MHA
void ParseFalcon(const Fields& top, ModelConfig& config, bool refined_web) {
  config.kind = AttentionKind::kGqa;
  config.rope.pairing = RopePairing::kRotateHalf;
  config.hidden_size = IntOrAlias(top, "hidden_size", "n_embed");
  config.num_heads = IntOrAlias(top, "num_attention_heads", "n_head");
  config.num_layers = IntOrAlias(top, "num_hidden_layers", "n_layer");
  // alibi: ALiBi biases instead of RoPE (Falcon-RW); FalconAttention adds them to q·k before
  // scaling by 1/sqrt(d) (docs/semantics.md §1).
  config.gqa.alibi = top.Bool("alibi", false);
  if (config.num_heads > 0 && config.hidden_size % config.num_heads != 0) {
    top.Fail(ErrorKind::kInvalidArgument, "hidden_size (" + std::to_string(config.hidden_size) +
                                              ") is not divisible by num_attention_heads (" +
                                              std::to_string(config.num_heads) +
                                              "); Falcon's head_dim is their quotient");
  }
  config.gqa.head_dim = config.num_heads > 0 ? config.hidden_size / config.num_heads : 0;
  // The original Falcon-40B config (model_type RefinedWeb) predates new_decoder_architecture:
  // its n_head_kv alone selects the grouped layout, as the original RW code allocates
  // (2·n_head_kv + n_head)·head_dim fused rows. (RefinedWebModel, Falcon-7B, is multi_query.)
  const bool new_architecture = top.Has("new_decoder_architecture")
                                    ? top.Bool("new_decoder_architecture", false)
                                    : refined_web && top.Has("n_head_kv");
  if (new_architecture) {
    config.gqa.num_kv_heads =
        top.Has("num_kv_heads") ? top.Int("num_kv_heads") : top.Int("n_head_kv", config.num_heads);
  } else {
    config.gqa.num_kv_heads = top.Bool("multi_query", true) ? 1 : config.num_heads;
  }
  const bool bias = top.Bool("bias", false);
  config.gqa.qkv_bias = bias;
  config.gqa.o_bias = bias;
}

// quantization_config (transformers' FineGrainedFP8Config, DeepSeek's config.json): fp8 E4M3
// weights with block scales are read in their stored form; any other method (gptq, awq, bnb,
// compressed-tensors, ...) stores tensors attn does not know, so it is refused rather than
// ignored.
void ParseQuantization(const Fields& top, const std::string& source, ModelConfig& config) {
  const json* value = top.Find("quantization_config");
  if (value == nullptr) return;
  RequireObject(*value, source, "quantization_config");
  const Fields q(*value, source, "quantization_config.");
  const std::string method = q.String("quant_method");
  if (method != "fp8") {
    q.Fail(ErrorKind::kUnsupported,
           "quant_method '" + io::TextExcerpt(method) +
               "' is not supported (attn reads fp8 E4M3 weights with block scales)");
  }
  if (q.Has("fmt") && q.String("fmt") != "e4m3") {
    q.Fail(ErrorKind::kUnsupported,
           "fmt '" + io::TextExcerpt(q.String("fmt")) + "' is not supported (attn reads e4m3)");
  }
  config.quantization.fp8_blocks = true;
  // Absent: transformers' FineGrainedFP8Config default, 128 × 128 (WeightQuantization's).
  if (const json* block = q.Find("weight_block_size")) {
    if (!block->is_array() || block->size() != 2 || !(*block)[0].is_number_integer() ||
        !(*block)[1].is_number_integer() || (*block)[0].get<int64_t>() <= 0 ||
        (*block)[1].get<int64_t>() <= 0) {
      q.Fail(ErrorKind::kInvalidArgument, "'" + q.Name("weight_block_size") +
                                              "' must be two positive integers, got " +
                                              Excerpt(*block));
    }
    config.quantization.block_rows = (*block)[0].get<int64_t>();
    config.quantization.block_cols = (*block)[1].get<int64_t>();
  }
}

// Gemma 3's two RoPEs. transformers 4.5x spells them rope_theta (default 1e6) + rope_scaling for
// the global layers and rope_local_base_freq (default 1e4, unscaled) for the local ones;
// transformers 5 nests them by layer type, rope_parameters = {"full_attention": {...},
// "sliding_attention": {...}}, each a rope dict with its own rope_theta. ParseRope has already
// read the 4.5x spelling into config.rope.
void ParseGemma3Ropes(const Fields& top, const std::string& source, ModelConfig& config) {
  const json* nested = top.Find("rope_parameters");
  const bool by_layer_type =
      nested != nullptr && nested->is_object() &&
      (nested->contains("full_attention") || nested->contains("sliding_attention"));
  if (!top.Has("rope_theta")) config.rope.theta = 1e6;  // Gemma3TextConfig's default
  config.sliding_rope_differs = true;
  config.sliding_rope = config.rope;
  config.sliding_rope.theta = top.Double("rope_local_base_freq", 10000.0);
  config.sliding_rope.scaling = RopeScaling{};
  if (!by_layer_type) return;
  for (const char* kind : {"full_attention", "sliding_attention"}) {
    const auto it = nested->find(kind);
    if (it == nested->end()) continue;
    const std::string key = std::string("rope_parameters.") + kind;
    RequireObject(*it, source, key);
    const Fields dict(*it, source, key + ".");
    RopeConfig& rope = std::string(kind) == "full_attention" ? config.rope : config.sliding_rope;
    rope.scaling = ParseRopeDict(*it, source, key, config.max_position_embeddings, false);
    rope.theta = dict.Double("rope_theta", std::string(kind) == "full_attention" ? 1e6 : 1e4);
  }
}

// HF class defaults for max_position_embeddings, used only when a config leaves it out.
int64_t DefaultMaxPositions(const std::string& model_type) {
  if (model_type == "mistral" || model_type == "mixtral") return 4096 * 32;
  if (model_type == "qwen2" || model_type == "qwen2_moe" || model_type == "qwen3" ||
      model_type == "qwen3_moe") {
    return 32768;
  }
  if (model_type == "deepseek_v3") return 4096;
  if (model_type == "gpt_oss") return 131072;
  if (model_type == "gemma2") return 8192;
  if (model_type == "gemma3_text") return 131072;
  if (model_type == "phi3") return 4096;
  if (model_type == "llama4_text") return 4096 * 32;
  return 2048;  // llama, falcon, deepseek_v2, olmo2, granite
}

ModelConfig Parse(const std::string& json_text, const std::string& source) {
  // Bounded parse: nesting depth capped while parsing, any nlohmann exception (a number out of
  // double range, bad UTF-8) turned into Error(kInvalidArgument) naming the source and key.
  const json root = io::ParseJson(json_text, source, ErrorKind::kInvalidArgument);
  if (!root.is_object()) {
    throw Error(ErrorKind::kInvalidArgument,
                source + ": top level must be a JSON object, got " + root.type_name());
  }
  const Fields top(root, source, "");

  ModelConfig config;
  std::string model_type = top.String("model_type");
  // Kimi-K2 ships DeepSeek-V3's architecture; some copies of its config say "kimi_k2".
  if (model_type == "kimi_k2") model_type = "deepseek_v3";
  // Falcon's original remote-code configs call the model RefinedWeb / RefinedWebModel.
  const bool refined_web = model_type == "RefinedWeb";
  if (model_type == "RefinedWeb" || model_type == "RefinedWebModel") model_type = "falcon";
  const bool falcon = model_type == "falcon";
  const bool gqa = std::find(std::begin(kGqaFamilies), std::end(kGqaFamilies), model_type) !=
                   std::end(kGqaFamilies);
  const bool mla =
      model_type == "deepseek_v2" || model_type == "deepseek_v3" || model_type == "minicpm3";
  if (!gqa && !mla && !falcon) {
    top.Fail(ErrorKind::kUnsupported, "unsupported model_type '" + io::TextExcerpt(model_type) +
                                          "' (supported: " + kSupportedModels + ")");
  }
  config.model_type = model_type;
  if (falcon) {
    ParseFalcon(top, config, refined_web);  // sizes under current or older key spellings
  } else {
    config.hidden_size = top.Int("hidden_size");
    config.num_heads = top.Int("num_attention_heads");
    config.num_layers = top.Int("num_hidden_layers");
  }
  config.max_position_embeddings =
      top.Int("max_position_embeddings", DefaultMaxPositions(model_type));

  if (falcon) {
    ParseRope(top, source, config.gqa.head_dim, "head_dim", config);
  } else if (gqa) {
    ParseGqa(top, model_type, config);
    ParseRope(top, source, config.gqa.head_dim, "head_dim", config);
    // An absent partial_rotary_factor is GlmConfig's 0.5; an explicit null rotates the whole
    // head (transformers 5 copies no null into rope_parameters, whose default is 1.0).
    if ((model_type == "glm" || model_type == "glm4") && top.Absent("partial_rotary_factor") &&
        (!top.Has("rope_parameters") ||
         !top.Find("rope_parameters")->contains("partial_rotary_factor"))) {
      config.rope.rotary_dim = config.gqa.head_dim / 2;  // GlmConfig's default factor 0.5
    }
    if (model_type == "gemma3_text") ParseGemma3Ropes(top, source, config);
    if (model_type == "llama4_text" && !top.Has("rope_theta") &&
        (!top.Has("rope_parameters") || !top.Find("rope_parameters")->contains("rope_theta"))) {
      config.rope.theta = 500000.0;  // Llama4TextConfig's default
    }
    if (model_type == "mixtral" && !top.Has("rope_theta") &&
        (!top.Has("rope_parameters") || !top.Find("rope_parameters")->contains("rope_theta"))) {
      config.rope.theta = 1e6;  // MixtralConfig's default_theta
    }
    if (model_type == "gpt_oss" && !top.Has("rope_scaling") && !top.Has("rope_parameters")) {
      // GptOssConfig's RoPE when the config names none: YaRN, factor 32 over 4096 positions,
      // untruncated correction range, theta 150000.
      config.rope.scaling.type = RopeScalingType::kYarn;
      config.rope.scaling.factor = 32.0;
      config.rope.scaling.beta_fast = 32.0;
      config.rope.scaling.beta_slow = 1.0;
      config.rope.scaling.truncate = false;
      config.rope.scaling.original_max_position_embeddings = 4096;
      if (!top.Has("rope_theta")) config.rope.theta = 150000.0;
    }
  } else {
    ParseMla(top, model_type, config);
    ParseRope(top, source, config.mla.qk_rope_head_dim, "qk_rope_head_dim", config);
    if (model_type == "minicpm3") AdjustMiniCpm3Rope(top, config);
  }

  ParseQuantization(top, source, config);

  try {
    ValidateConfig(config);
  } catch (const Error& e) {
    throw Error(e.kind(), source + ": " + e.what());
  }
  return config;
}

}  // namespace

ModelConfig ParseHfConfig(const std::string& json_text, const std::string& source) {
  return Parse(json_text, source);
}

ModelConfig LoadHfConfig(const std::string& path) { return Parse(ReadConfigFile(path), path); }

std::string ReadConfigFile(const std::string& path) {
  // Regular files only (a FIFO would block, /dev/zero never end) and at most 16 MiB.
  return io::ReadWholeFile(path, "config");
}

}  // namespace attn
