// SPDX-License-Identifier: Apache-2.0
// attn info: a model's attention parameters, KV-cache sizes per form, the longest context a
// memory budget holds, FLOPs per token and decode arithmetic intensity against a machine's
// ridge point, next to an MHA of the same hidden size and heads. Arithmetic in model_stats.h.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/model_stats.h"
#include "cli/commands.h"
#include "cli/config_flags.h"
#include "cli/flags.h"

namespace attn::cli {
namespace {

using nlohmann::json;

std::string Format(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, value);
  return buffer;
}

// 187.1M, 11.41B: counts with three significant-ish digits.
std::string HumanCount(double value) {
  if (value >= 1e9) return Format("%.2fB", value / 1e9);
  if (value >= 1e6) return Format("%.1fM", value / 1e6);
  if (value >= 1e3) return Format("%.1fK", value / 1e3);
  return Format("%.0f", value);
}

std::string HumanBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int unit = 0;
  while (bytes >= 1024.0 && unit < 5) {
    bytes /= 1024.0;
    ++unit;
  }
  return unit == 0 ? Format("%.0f B", bytes) : Format("%.2f ", bytes) + units[unit];
}

std::string HumanTokens(int64_t tokens) {
  if (tokens < 0) return "-";
  std::string text = std::to_string(tokens);
  if (tokens >= 1024 && tokens % 1024 == 0) text += " (" + std::to_string(tokens / 1024) + "k)";
  return text;
}

std::string Describe(const ModelConfig& c) {
  std::ostringstream out;
  out << c.model_type << ", " << c.num_layers << " layers, hidden " << c.hidden_size << ", "
      << c.num_heads << " heads";
  if (c.kind == AttentionKind::kMla) {
    out << ", MLA rq " << c.mla.q_lora_rank << " rk " << c.mla.kv_lora_rank << " dn "
        << c.mla.qk_nope_head_dim << " dr " << c.mla.qk_rope_head_dim << " dv " << c.mla.v_head_dim;
  } else {
    const int64_t g = c.gqa.num_kv_heads;
    out << ", "
        << (g == c.num_heads ? "MHA"
            : g == 1         ? "MQA"
                             : "GQA")
        << " " << g << " kv heads of " << c.gqa.head_dim;
    if (c.sliding_window > 0) out << ", window " << c.sliding_window;
  }
  return out.str();
}

const char* Bound(double intensity, const MachinePeak& peak) {
  return intensity < peak.ridge() ? "bandwidth-bound" : "compute-bound";
}

double PositiveNumber(const Flags& flags, const std::string& name) {
  const std::string& text = flags.Required(name);
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  Check(end != text.c_str() && *end == '\0' && std::isfinite(value) && value > 0.0,
        ErrorKind::kInvalidArgument,
        "--" + name + " expects a positive number, got '" + text + "'");
  return value;
}

MachinePeak PeakFromFlags(const Flags& flags, DType dtype) {
  MachinePeak peak = ReferenceAnchors(dtype);
  const bool has_flops = flags.Has("peak-gflops");
  const bool has_bandwidth = flags.Has("peak-gbps");
  if (has_flops) peak.gflops = PositiveNumber(flags, "peak-gflops");
  if (has_bandwidth) peak.gbytes_per_s = PositiveNumber(flags, "peak-gbps");
  if (has_flops && has_bandwidth) {
    peak.origin = "given";
  } else if (has_flops || has_bandwidth) {
    peak.origin = "partly given, rest reference anchors";
  }
  return peak;
}

json FormJson(const FormStats& f, const MachinePeak& peak) {
  json j = {{"name", f.name},
            {"values_per_token_layer", f.values_per_token_layer},
            {"bytes_per_token_layer", f.bytes_per_token_layer},
            {"bytes_per_token_model", f.bytes_per_token_model},
            {"bytes_at_context", f.bytes_at_context},
            {"ratio_to_mha", f.ratio_to_mha},
            {"prefill_flops_per_token", f.prefill_flops_per_token},
            {"decode_flops_per_token", f.decode_flops_per_token},
            {"decode_intensity_flops_per_byte", f.decode_intensity},
            {"decode_bound", Bound(f.decode_intensity, peak)}};
  j["longest_context"] = f.longest_context >= 0 ? json(f.longest_context) : json(nullptr);
  return j;
}

json StatsJson(const std::string& label, const ModelStats& s, const MachinePeak& peak) {
  json forms = json::array();
  for (const FormStats& f : s.forms) forms.push_back(FormJson(f, peak));
  return {{"model", label},
          {"description", Describe(s.config)},
          {"layers", s.config.num_layers},
          {"context", s.options.context},
          {"batch", s.options.batch},
          {"attention_params_layer", s.attention_params_layer},
          {"attention_params_model", s.attention_params_model},
          {"mha_params_layer", s.mha_params_layer},
          {"params_ratio_to_mha", s.params_ratio_to_mha},
          {"forms", forms},
          {"mha_baseline", FormJson(s.mha, peak)}};
}

void PrintOne(const std::string& label, const ModelStats& s, const MachinePeak& peak,
              const std::string& dtype_name, bool has_budget, const std::string& budget_text) {
  const ModelConfig& c = s.config;
  const ModelConfig mha = MhaBaseline(c);
  std::printf("%s: %s\n", label.c_str(), Describe(c).c_str());
  std::printf("context %s tokens x batch %lld, KV cache in %s\n",
              HumanTokens(s.options.context).c_str(), static_cast<long long>(s.options.batch),
              dtype_name.c_str());
  if (c.max_position_embeddings > 0 && s.options.context > c.max_position_embeddings) {
    std::printf("note: the context exceeds the model's max_position_embeddings (%lld)\n",
                static_cast<long long>(c.max_position_embeddings));
  }
  std::printf("\n");
  std::printf(
      "attention parameters  %10s per layer  %10s model  %.2fx the MHA (D %lld, H %lld, "
      "d %lld: %s per layer)\n\n",
      HumanCount(static_cast<double>(s.attention_params_layer)).c_str(),
      HumanCount(static_cast<double>(s.attention_params_model)).c_str(), s.params_ratio_to_mha,
      static_cast<long long>(mha.hidden_size), static_cast<long long>(mha.num_heads),
      static_cast<long long>(mha.gqa.head_dim),
      HumanCount(static_cast<double>(s.mha_params_layer)).c_str());

  std::vector<const FormStats*> rows;
  for (const FormStats& f : s.forms) rows.push_back(&f);
  rows.push_back(&s.mha);
  std::printf("%-26s %12s %12s %12s %12s %8s %18s\n", "KV cache form", "values/tok", "bytes/tok",
              "bytes/tok", "at context", "vs MHA",
              has_budget ? ("longest in " + budget_text).c_str() : "longest context");
  std::printf("%-26s %12s %12s %12s %12s %8s %18s\n", "", "per layer", "per layer", "model",
              "x batch", "", "");
  for (const FormStats* f : rows) {
    std::printf("%-26s %12lld %12s %12s %12s %7.3fx %18s\n", f->name.c_str(),
                static_cast<long long>(f->values_per_token_layer),
                HumanBytes(f->bytes_per_token_layer).c_str(),
                HumanBytes(f->bytes_per_token_model).c_str(),
                HumanBytes(f->bytes_at_context).c_str(), f->ratio_to_mha,
                HumanTokens(f->longest_context).c_str());
  }
  if (c.sliding_window > 0) {
    std::printf(
        "(every token is counted; a rolling cache for the %lld-token window would hold "
        "less)\n",
        static_cast<long long>(c.sliding_window));
  }
  std::printf("\n%-26s %14s %14s %16s  %s\n", "compute per token (model)", "prefill FLOPs",
              "decode FLOPs", "decode FLOP/B", "decode attention is");
  for (const FormStats* f : rows) {
    std::printf("%-26s %14s %14s %16.1f  %s\n", f->name.c_str(),
                HumanCount(f->prefill_flops_per_token).c_str(),
                HumanCount(f->decode_flops_per_token).c_str(), f->decode_intensity,
                Bound(f->decode_intensity, peak));
  }
  std::printf(
      "\nridge point %.1f FLOP/B = %.0f GFLOP/s / %.0f GB/s (%s). Prefill is the average "
      "over a causal prompt of the\ncontext; decode is one token at the context; "
      "FLOP/B counts attention FLOPs per KV-cache byte read.\n",
      peak.ridge(), peak.gflops, peak.gbytes_per_s, peak.origin.c_str());
}

void PrintCompare(const std::vector<std::string>& labels, const std::vector<ModelStats>& all,
                  const MachinePeak& peak, bool has_budget, const std::string& budget_text) {
  std::vector<std::pair<std::string, std::vector<std::string>>> rows;
  auto add = [&](const std::string& name, auto value_of) {
    std::vector<std::string> cells;
    for (const ModelStats& s : all) cells.push_back(value_of(s));
    rows.emplace_back(name, cells);
  };
  // The form a model runs decode in: the latent cache for MLA, K/V per head otherwise.
  auto served = [](const ModelStats& s) -> const FormStats& { return s.forms.back(); };
  add("attention", [](const ModelStats& s) {
    return s.config.kind == AttentionKind::kMla              ? std::string("MLA")
           : s.config.gqa.num_kv_heads == s.config.num_heads ? std::string("MHA")
           : s.config.gqa.num_kv_heads == 1                  ? std::string("MQA")
                                                             : std::string("GQA");
  });
  add("layers", [](const ModelStats& s) { return std::to_string(s.config.num_layers); });
  add("hidden / heads", [](const ModelStats& s) {
    return std::to_string(s.config.hidden_size) + " / " + std::to_string(s.config.num_heads);
  });
  add("attn params / layer", [](const ModelStats& s) {
    return HumanCount(static_cast<double>(s.attention_params_layer));
  });
  add("attn params / model", [](const ModelStats& s) {
    return HumanCount(static_cast<double>(s.attention_params_model));
  });
  add("params vs MHA", [](const ModelStats& s) { return Format("%.2fx", s.params_ratio_to_mha); });
  add("KV values/tok/layer", [&](const ModelStats& s) {
    std::string text = std::to_string(served(s).values_per_token_layer);
    if (s.forms.size() > 1)
      text += " (naive " + std::to_string(s.forms[0].values_per_token_layer) + ")";
    return text;
  });
  add("KV bytes/tok (model)",
      [&](const ModelStats& s) { return HumanBytes(served(s).bytes_per_token_model); });
  add("KV at context x batch",
      [&](const ModelStats& s) { return HumanBytes(served(s).bytes_at_context); });
  add("KV vs MHA", [&](const ModelStats& s) { return Format("%.3fx", served(s).ratio_to_mha); });
  if (has_budget) {
    add("longest in " + budget_text,
        [&](const ModelStats& s) { return HumanTokens(served(s).longest_context); });
  }
  add("prefill FLOPs/tok",
      [&](const ModelStats& s) { return HumanCount(served(s).prefill_flops_per_token); });
  add("decode FLOPs/tok",
      [&](const ModelStats& s) { return HumanCount(served(s).decode_flops_per_token); });
  add("decode FLOP/KV byte",
      [&](const ModelStats& s) { return Format("%.1f", served(s).decode_intensity); });
  add("decode attention",
      [&](const ModelStats& s) { return std::string(Bound(served(s).decode_intensity, peak)); });

  size_t label_width = 22;
  std::vector<size_t> widths;
  for (size_t m = 0; m < labels.size(); ++m) {
    size_t width = labels[m].size();
    for (const auto& row : rows) width = std::max(width, row.second[m].size());
    widths.push_back(width + 2);
  }
  std::printf("%-*s", static_cast<int>(label_width), "");
  for (size_t m = 0; m < labels.size(); ++m) {
    std::printf("%*s", static_cast<int>(widths[m]), labels[m].c_str());
  }
  std::printf("\n");
  for (const auto& row : rows) {
    std::printf("%-*s", static_cast<int>(label_width), row.first.c_str());
    for (size_t m = 0; m < row.second.size(); ++m) {
      std::printf("%*s", static_cast<int>(widths[m]), row.second[m].c_str());
    }
    std::printf("\n");
  }
  std::printf(
      "\ncontext %s x batch %lld. MLA columns are the latent (absorbed) cache. ridge "
      "point %.1f FLOP/B (%s).\n",
      HumanTokens(all.front().options.context).c_str(),
      static_cast<long long>(all.front().options.batch), peak.ridge(), peak.origin.c_str());
}

}  // namespace

int RunInfo(const std::vector<std::string>& args) {
  Flags flags("info",
              "Parameters, KV cache, longest context, FLOPs and intensity of a model, next to an "
              "MHA of its size.");
  AddConfigFlags(flags);
  flags.Text("compare", "A,B,C", "one column per model: presets or config paths")
      .Text("context", "T",
            "tokens per sequence, 128k style accepted (default: the model's "
            "max_position_embeddings)")
      .Integer("batch", "B", "sequences", "1")
      .Text("dtype", "DTYPE", "KV cache values: f32, f16 or bf16", "bf16")
      .Text("memory", "BYTES",
            "a KV-cache budget (80GiB, 512MiB, 1e9): the longest context it holds")
      .Text("peak-gflops", "X", "machine peak GFLOP/s for the ridge point (default: reference)")
      .Text("peak-gbps", "Y", "machine DRAM GB/s for the ridge point (default: reference)")
      .Switch("json", "print every number as JSON");
  if (!flags.Parse(args)) return 0;
  InfoOptions options;
  if (flags.Has("context"))
    options.context = ParseTokenCount(flags.Required("context"), "--context");
  options.batch = flags.GetInt("batch");
  Check(options.batch >= 1, ErrorKind::kInvalidArgument, "--batch must be >= 1");
  const std::string dtype_name = flags.Get("dtype");
  options.dtype = StorageDTypeFromString(dtype_name);
  const bool has_budget = flags.Has("memory");
  const std::string budget_text = flags.Get("memory", "");
  if (has_budget) {
    options.memory_bytes = ParseByteSize(budget_text, "--memory");
    Check(options.memory_bytes > 0.0, ErrorKind::kInvalidArgument,
          "--memory " + budget_text + " fits nothing: the budget must be > 0 bytes");
  }
  const MachinePeak peak = PeakFromFlags(flags, options.dtype);

  std::vector<std::string> labels;
  std::vector<ModelStats> all;
  if (flags.Has("compare")) {
    Check(!flags.Has("config") && !flags.Has("preset"), ErrorKind::kInvalidArgument,
          "--compare takes the models itself; drop --config/--preset");
    std::stringstream list(flags.Required("compare"));
    std::string name;
    while (std::getline(list, name, ',')) {
      if (name.empty()) continue;
      const LoadedConfig loaded = ConfigFromName(name);
      labels.push_back(ModelLabel(loaded));
      all.push_back(ComputeModelStats(loaded.config, options));
    }
    Check(!all.empty(), ErrorKind::kInvalidArgument, "--compare needs a,b,c model names");
  } else {
    const LoadedConfig loaded = ConfigFromFlags(flags);
    labels.push_back(ModelLabel(loaded));
    all.push_back(ComputeModelStats(loaded.config, options));
  }

  if (flags.Has("json")) {
    json out = {{"dtype", dtype_name},
                {"peak",
                 {{"gflops", peak.gflops},
                  {"gbytes_per_s", peak.gbytes_per_s},
                  {"ridge_flops_per_byte", peak.ridge()},
                  {"origin", peak.origin}}},
                {"memory_bytes", has_budget ? json(options.memory_bytes) : json(nullptr)}};
    json models = json::array();
    for (size_t i = 0; i < all.size(); ++i) models.push_back(StatsJson(labels[i], all[i], peak));
    out["models"] = models;
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  if (all.size() == 1) {
    PrintOne(labels[0], all[0], peak, dtype_name, has_budget, budget_text);
  } else {
    PrintCompare(labels, all, peak, has_budget, budget_text);
  }
  return 0;
}

}  // namespace attn::cli
