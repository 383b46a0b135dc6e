// SPDX-License-Identifier: Apache-2.0
// Parameter, cache, FLOP and intensity arithmetic for `attn info` (formulas in model_stats.h).
#include "attn/model_stats.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "attn/error.h"
#include "attn/layer_weights.h"

namespace attn {
namespace {

double D(int64_t value) { return static_cast<double>(value); }

// Keys visible to a decoded token with `context` keys before any window. On a chunked layer
// (Llama 4, docs/semantics.md §1) the token at slot context - 1 sees its own chunk only:
// (context - 1) mod C + 1 keys.
double DecodeKeys(const ModelConfig& c, int64_t context, int64_t layer) {
  const int64_t chunk = c.ChunkForLayer(layer);
  if (chunk > 0) return D((context - 1) % chunk + 1);
  const int64_t window = c.WindowForLayer(layer);
  return D(window > 0 ? std::min(context, window) : context);
}

// Average keys visible per query over a causal prefill of n tokens: (1/n) Σ_{p=1..n} min(p, W);
// on a chunked layer (1/n) Σ_{p=0..n-1} (p mod C + 1), each full chunk adding C·(C+1)/2.
double AveragePrefillKeys(const ModelConfig& c, int64_t n, int64_t layer) {
  const int64_t chunk = c.ChunkForLayer(layer);
  if (chunk > 0) {
    const double full = D(n / chunk), rest = D(n % chunk), size = D(chunk);
    return (full * size * (size + 1.0) / 2.0 + rest * (rest + 1.0) / 2.0) / D(n);
  }
  const int64_t window = c.WindowForLayer(layer);
  if (window <= 0 || n <= window) return (D(n) + 1.0) / 2.0;
  const double w = D(window);
  return (w * (w + 1.0) / 2.0 + (D(n) - w) * w) / D(n);
}

// FLOPs of the query path of MLA (q_lora or plain q_proj), per token.
double MlaQueryFlops(const ModelConfig& c) {
  const MlaDims& m = c.mla;
  const double qk = D(c.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim));
  if (m.q_lora_rank > 0)
    return 2.0 * D(c.hidden_size) * D(m.q_lora_rank) + 2.0 * D(m.q_lora_rank) * qk;
  return 2.0 * D(c.hidden_size) * qk;
}

// Per token: shared projections (q path, kv_a, o) of MLA.
double MlaSharedProjectionFlops(const ModelConfig& c) {
  const MlaDims& m = c.mla;
  return MlaQueryFlops(c) + 2.0 * D(c.hidden_size) * D(m.kv_lora_rank + m.qk_rope_head_dim) +
         2.0 * D(c.num_heads * m.v_head_dim) * D(c.hidden_size);
}

// The layer's FLOPs for one token that sees `keys` keys.
TokenFlops FlopsWithKeys(const ModelConfig& c, CacheForm form, double keys, bool prefill) {
  TokenFlops f;
  const double h = D(c.num_heads);
  if (c.kind == AttentionKind::kGqa) {
    const double d = D(c.gqa.head_dim);
    const double g = D(c.gqa.num_kv_heads);
    const double hidden = D(c.hidden_size);
    f.projections = 2.0 * hidden * (h + 2.0 * g) * d + 2.0 * h * d * hidden;
    f.attention = 4.0 * h * d * keys;
    return f;
  }
  const MlaDims& m = c.mla;
  const double rk = D(m.kv_lora_rank);
  const double dn = D(m.qk_nope_head_dim);
  const double dr = D(m.qk_rope_head_dim);
  const double dv = D(m.v_head_dim);
  const double shared = MlaSharedProjectionFlops(c);
  // Naive / decompress-then-attend: K_nope and V of each token through W_UK, W_UV.
  TokenFlops naive{shared + 2.0 * rk * h * (dn + dv), 2.0 * h * (dn + dr + dv) * keys};
  // Absorbed: q_nope through W_UK[h], the latent output through W_UV[h].
  TokenFlops absorbed{shared + 2.0 * h * dn * rk + 2.0 * h * rk * dv,
                      2.0 * h * (2.0 * rk + dr) * keys};
  if (form == CacheForm::kHeads) return naive;
  if (prefill && naive.total() < absorbed.total()) return naive;
  return absorbed;
}

void CheckContext(int64_t context) {
  Check(context >= 1, ErrorKind::kInvalidArgument,
        "context (" + std::to_string(context) + ") must be >= 1 token");
}

}  // namespace

int64_t AttentionParameterCount(const ModelConfig& config) {
  int64_t count = 0;
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) count += NumElements(spec.shape);
  return count;
}

ModelConfig MhaBaseline(const ModelConfig& config) {
  ModelConfig mha;
  mha.model_type = "llama";
  mha.kind = AttentionKind::kGqa;
  mha.hidden_size = config.hidden_size;
  mha.num_heads = config.num_heads;
  mha.num_layers = config.num_layers;
  mha.max_position_embeddings = config.max_position_embeddings;
  mha.gqa.num_kv_heads = config.num_heads;
  mha.gqa.head_dim = config.hidden_size % config.num_heads == 0
                         ? config.hidden_size / config.num_heads
                         : config.QueryKeyHeadDim();
  mha.rope = config.rope;
  mha.rope.rotary_dim = mha.gqa.head_dim - mha.gqa.head_dim % 2;
  return mha;
}

TokenFlops DecodeFlopsPerToken(const ModelConfig& config, CacheForm form, int64_t context,
                               int64_t layer) {
  CheckContext(context);
  return FlopsWithKeys(config, form, DecodeKeys(config, context, layer), /*prefill=*/false);
}

TokenFlops PrefillFlopsPerToken(const ModelConfig& config, CacheForm form, int64_t context,
                                int64_t layer) {
  CheckContext(context);
  return FlopsWithKeys(config, form, AveragePrefillKeys(config, context, layer),
                       /*prefill=*/true);
}

double DecodeAttentionIntensity(const ModelConfig& config, CacheForm form, DType cache_dtype) {
  // Per visible key: attention FLOPs over the bytes of that key's cache entry.
  const TokenFlops one_key = FlopsWithKeys(config, form, 1.0, /*prefill=*/false);
  return one_key.attention / D(static_cast<int64_t>(CacheBytesPerToken(config, form, cache_dtype)));
}

MachinePeak ReferenceAnchors(DType cache_dtype) {
  MachinePeak peak;
  peak.gflops = cache_dtype == DType::kBF16 ? 888.0 : 444.0;
  peak.gbytes_per_s = 60.0;
  peak.origin = "reference anchors, not measured";
  return peak;
}

ModelStats ComputeModelStats(const ModelConfig& config, const InfoOptions& options) {
  ValidateConfig(config);
  ModelStats stats;
  stats.config = config;
  stats.options = options;
  if (stats.options.context == 0) {
    stats.options.context =
        config.max_position_embeddings > 0 ? config.max_position_embeddings : 4096;
  }
  const int64_t context = stats.options.context;
  CheckContext(context);
  Check(options.batch >= 1, ErrorKind::kInvalidArgument,
        "batch (" + std::to_string(options.batch) + ") must be >= 1");
  Check(options.memory_bytes >= 0.0 && std::isfinite(options.memory_bytes),
        ErrorKind::kInvalidArgument, "memory budget must be a finite size >= 0");

  const ModelConfig mha = MhaBaseline(config);
  stats.attention_params_layer = AttentionParameterCount(config);
  stats.attention_params_model = stats.attention_params_layer * config.num_layers;
  stats.mha_params_layer = AttentionParameterCount(mha);
  stats.params_ratio_to_mha = D(stats.attention_params_layer) / D(stats.mha_params_layer);

  const double mha_values = D(CacheValuesPerToken(mha, CacheForm::kHeads));
  auto form_stats = [&](const ModelConfig& c, CacheForm form, const std::string& name) {
    FormStats f;
    f.name = name;
    f.form = form;
    f.values_per_token_layer = CacheValuesPerToken(c, form);
    f.bytes_per_token_layer = D(static_cast<int64_t>(CacheBytesPerToken(c, form, options.dtype)));
    f.bytes_per_token_model = f.bytes_per_token_layer * D(c.num_layers);
    f.bytes_at_context = f.bytes_per_token_model * D(context) * D(options.batch);
    f.ratio_to_mha = D(f.values_per_token_layer) / mha_values;
    if (options.memory_bytes > 0.0) {
      const double tokens =
          std::floor(options.memory_bytes / (f.bytes_per_token_model * D(options.batch)));
      f.longest_context =
          static_cast<int64_t>(std::min(tokens, D(std::numeric_limits<int64_t>::max() / 2)));
    }
    for (int64_t layer = 0; layer < c.num_layers; ++layer) {
      f.prefill_flops_per_token += PrefillFlopsPerToken(c, form, context, layer).total();
      f.decode_flops_per_token += DecodeFlopsPerToken(c, form, context, layer).total();
    }
    f.decode_intensity = DecodeAttentionIntensity(c, form, options.dtype);
    return f;
  };
  if (config.kind == AttentionKind::kMla) {
    stats.forms.push_back(form_stats(config, CacheForm::kHeads, "MLA naive (K/V per head)"));
    stats.forms.push_back(form_stats(config, CacheForm::kLatent, "MLA latent (absorbed)"));
  } else {
    stats.forms.push_back(form_stats(config, CacheForm::kHeads, "K/V per head"));
  }
  stats.mha = form_stats(mha, CacheForm::kHeads, "MHA baseline");

  if (options.memory_bytes > 0.0) {
    int64_t best = 0;
    double smallest = stats.forms.front().bytes_per_token_model;
    for (const FormStats& f : stats.forms) {
      best = std::max(best, f.longest_context);
      smallest = std::min(smallest, f.bytes_per_token_model);
    }
    Check(best >= 1, ErrorKind::kInvalidArgument,
          "a memory budget of " + std::to_string(static_cast<int64_t>(options.memory_bytes)) +
              " bytes fits nothing: one token for each of " + std::to_string(options.batch) +
              " sequence(s) needs " +
              std::to_string(static_cast<int64_t>(smallest * D(options.batch))) +
              " bytes of KV cache (all " + std::to_string(config.num_layers) + " layers)");
  }
  return stats;
}

int64_t ParseTokenCount(const std::string& text, const std::string& what) {
  const std::string message =
      what + " expects a token count like 4096, 128k or 1m, got '" + text + "'";
  Check(!text.empty(), ErrorKind::kInvalidArgument, message);
  double multiplier = 1.0;
  std::string digits = text;
  const char last = static_cast<char>(std::tolower(static_cast<unsigned char>(text.back())));
  if (last == 'k') multiplier = 1024.0;
  if (last == 'm') multiplier = 1024.0 * 1024.0;
  if (multiplier != 1.0) digits.pop_back();
  char* end = nullptr;
  const double value = std::strtod(digits.c_str(), &end);
  Check(!digits.empty() && end == digits.c_str() + digits.size() && std::isfinite(value) &&
            value > 0.0,
        ErrorKind::kInvalidArgument, message);
  const double tokens = value * multiplier;
  Check(tokens == std::floor(tokens) && tokens < 9e15, ErrorKind::kInvalidArgument, message);
  return static_cast<int64_t>(tokens);
}

double ParseByteSize(const std::string& text, const std::string& what) {
  const std::string message =
      what + " expects a size like 80GiB, 80GB, 512MiB or a byte count, got '" + text + "'";
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  Check(end != text.c_str() && std::isfinite(value) && value >= 0.0, ErrorKind::kInvalidArgument,
        message);
  std::string unit(end);
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  struct Unit {
    const char* name;
    double bytes;
  };
  constexpr Unit kUnits[] = {{"", 1.0},
                             {"b", 1.0},
                             {"kb", 1e3},
                             {"mb", 1e6},
                             {"gb", 1e9},
                             {"tb", 1e12},
                             {"kib", 1024.0},
                             {"mib", 1048576.0},
                             {"gib", 1073741824.0},
                             {"tib", 1099511627776.0}};
  for (const Unit& u : kUnits) {
    if (unit == u.name) return value * u.bytes;
  }
  throw Error(ErrorKind::kInvalidArgument, message);
}

}  // namespace attn
