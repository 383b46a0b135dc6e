// SPDX-License-Identifier: Apache-2.0
// attn info: a model's attention parameters, KV-cache sizes per form, the longest context a
// memory budget holds, FLOPs per token and decode arithmetic intensity against a machine's
// ridge point, next to an MHA of the same hidden size and heads. Arithmetic in model_stats.h.
// attn info --parallel: the scaling model of docs/distributed.md, arithmetic in
// parallel_costs.h.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/model_stats.h"
#include "attn/parallel.h"
#include "attn/parallel_costs.h"
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

// The models of --compare A,B,C, else the one of --config/--preset.
void LoadModels(const Flags& flags, std::vector<std::string>& labels,
                std::vector<ModelConfig>& configs) {
  if (flags.Has("compare")) {
    Check(!flags.Has("config") && !flags.Has("preset"), ErrorKind::kInvalidArgument,
          "--compare takes the models itself; drop --config/--preset");
    std::stringstream list(flags.Required("compare"));
    std::string name;
    while (std::getline(list, name, ',')) {
      if (name.empty()) continue;
      const LoadedConfig loaded = ConfigFromName(name);
      labels.push_back(ModelLabel(loaded));
      configs.push_back(loaded.config);
    }
    Check(!configs.empty(), ErrorKind::kInvalidArgument, "--compare needs a,b,c model names");
  } else {
    const LoadedConfig loaded = ConfigFromFlags(flags);
    labels.push_back(ModelLabel(loaded));
    configs.push_back(loaded.config);
  }
}

// --- attn info --parallel (docs/distributed.md) ---

// Assumed, not measured: a server CPU socket's share of DRAM bandwidth per rank and a 200 Gb/s
// network link. The table says so and --bandwidth / --network replace them.
constexpr double kDefaultDramGBps = 200.0;
constexpr double kDefaultNetworkGBps = 25.0;

std::string HumanSeconds(double seconds) {
  if (seconds >= 1.0) return Format("%.2f s", seconds);
  if (seconds >= 1e-3) return Format("%.2f ms", seconds * 1e3);
  return Format("%.1f us", seconds * 1e6);
}

// "8" or "8,64" -> ranks, each >= 1.
std::vector<int> ParseWorlds(const std::string& text) {
  const std::string message = "--world expects ranks like 8 or 8,64, got '" + text + "'";
  std::vector<int> worlds;
  std::stringstream list(text);
  std::string item;
  while (std::getline(list, item, ',')) {
    char* end = nullptr;
    const long long value = std::strtoll(item.c_str(), &end, 10);
    Check(!item.empty() && end == item.c_str() + item.size() && value > -1000000000LL &&
              value < 1000000000LL,
          ErrorKind::kInvalidArgument, message);
    Check(value >= 1, ErrorKind::kInvalidArgument,
          "--world: world (" + std::to_string(value) + ") must be >= 1 rank");
    worlds.push_back(static_cast<int>(value));
  }
  Check(!worlds.empty() && text.back() != ',', ErrorKind::kInvalidArgument, message);
  return worlds;
}

struct ParallelSettings {
  std::vector<ParallelMode> modes;
  bool all_modes = false;  // --parallel all: a world tp cannot split is a row, not an error
  std::vector<int> worlds;
  int64_t batch = 1;
  int64_t context = 0;       // 0: the model's max_position_embeddings (or 4096)
  std::string weight_dtype;  // empty: the checkpoint's (fp8 when it declares fp8 blocks, else bf16)
  std::string cache_dtype;
  double dram_gbps = kDefaultDramGBps;
  double network_gbps = kDefaultNetworkGBps;
  bool dram_given = false;
  bool network_given = false;
};

// One row of the table: a mode at a world, or why tp cannot split the model there.
struct ParallelRow {
  ParallelMode mode = ParallelMode::kTensor;
  int world = 1;
  bool ok = false;
  ParallelCosts costs;
  std::string error;
};

struct ParallelTable {
  std::string label;
  ModelConfig config;
  int64_t context = 0;
  std::string weight_dtype;
  std::string cache_dtype;
  std::vector<ParallelRow> rows;
};

ParallelTable ComputeParallelTable(const std::string& label, const ModelConfig& config,
                                   const ParallelSettings& settings) {
  ParallelTable table;
  table.label = label;
  table.config = config;
  table.context = settings.context > 0                 ? settings.context
                  : config.max_position_embeddings > 0 ? config.max_position_embeddings
                                                       : 4096;
  table.weight_dtype = !settings.weight_dtype.empty()   ? settings.weight_dtype
                       : config.quantization.fp8_blocks ? std::string("fp8")
                                                        : std::string("bf16");
  table.cache_dtype = settings.cache_dtype;
  const DType weights = WeightDTypeFromString(table.weight_dtype, /*allow_fp8=*/true);
  const DType cache = StorageDTypeFromString(table.cache_dtype);
  for (int world : settings.worlds) {
    for (ParallelMode mode : settings.modes) {
      ParallelRow row;
      row.mode = mode;
      row.world = world;
      if (settings.all_modes && mode == ParallelMode::kTensor) {
        // Under `all` a world the heads cannot be split over is a row saying why; asked for by
        // name it is the command's error (exit 2), thrown by EstimateParallelCosts below.
        try {
          TensorParallelHeads(config, Shard{0, world});
        } catch (const Error& e) {
          row.error = e.what();
          table.rows.push_back(row);
          continue;
        }
      }
      row.costs =
          EstimateParallelCosts(config, mode, world, settings.batch, table.context, weights, cache);
      row.ok = true;
      table.rows.push_back(row);
    }
  }
  return table;
}

double StackStepSeconds(const ParallelTable& t, const ParallelCosts& c, const ParallelSettings& s) {
  return c.DecodeStepSeconds(s.dram_gbps, s.network_gbps) *
         static_cast<double>(t.config.num_layers);
}

// Per world: which mode holds the least per rank, has the shortest step bound and receives the
// least per step; modes that tie (dp and cp split a cache the same W ways) are all named.
std::vector<std::string> WinsNotes(const ParallelTable& t, const ParallelSettings& s) {
  std::vector<std::string> notes;
  const double layers = static_cast<double>(t.config.num_layers);
  auto best = [&](int world, auto value_of, auto show) {
    double least = 0.0;
    bool any = false;
    for (const ParallelRow& row : t.rows) {
      if (row.world != world || !row.ok) continue;
      if (!any || value_of(row.costs) < least) least = value_of(row.costs);
      any = true;
    }
    std::string names;
    for (const ParallelRow& row : t.rows) {
      if (row.world != world || !row.ok || value_of(row.costs) > least * (1.0 + 1e-9)) continue;
      names += (names.empty() ? "" : " = ") + std::string(ParallelModeName(row.mode));
    }
    return names + " (" + show(least) + ")";
  };
  for (int world : s.worlds) {
    size_t modes = 0;
    for (const ParallelRow& row : t.rows) modes += row.world == world && row.ok ? 1 : 0;
    if (modes < 2) continue;
    notes.push_back("W " + std::to_string(world) + ": least memory per rank " +
                    best(
                        world, [](const ParallelCosts& c) { return c.memory_bytes(); },
                        [&](double v) { return HumanBytes(v * layers) + " stack"; }) +
                    "; fastest step bound " +
                    best(
                        world, [&](const ParallelCosts& c) { return StackStepSeconds(t, c, s); },
                        [](double v) { return HumanSeconds(v) + " stack"; }) +
                    "; least traffic " +
                    best(
                        world, [](const ParallelCosts& c) { return c.comm_bytes_decode_step; },
                        [&](double v) { return HumanBytes(v * layers) + " per stack step"; }));
  }
  return notes;
}

void PrintParallelTable(const ParallelTable& t, const ParallelSettings& s) {
  const ModelConfig& c = t.config;
  const double layers = static_cast<double>(c.num_layers);
  std::printf("%s: %s\n", t.label.c_str(), Describe(c).c_str());
  std::printf(
      "batch %lld x context %s tokens; weights %s, KV cache %s (%s); per layer, on the "
      "busiest rank\n\n",
      static_cast<long long>(s.batch), HumanTokens(t.context).c_str(), t.weight_dtype.c_str(),
      t.cache_dtype.c_str(),
      c.kind == AttentionKind::kMla ? "MLA latent, absorbed" : "K/V per head");
  const char* header = "%-4s %5s %12s %12s %12s %12s %12s %12s %11s %11s | %12s %11s\n";
  std::printf(header, "mode", "W", "weights", "cache", "comm/step", "(ring)", "comm/prefill",
              "(ring)", "GFLOP/step", "step bound", "stack mem", "stack step");
  std::printf(header, "", "", "/rank", "/rank", "decode", "", "token", "", "/rank", "", "/rank",
              "bound");
  for (const ParallelRow& row : t.rows) {
    if (!row.ok) {
      std::printf("%-4s %5d  cannot split: %s\n", ParallelModeName(row.mode), row.world,
                  row.error.c_str());
      continue;
    }
    const ParallelCosts& p = row.costs;
    std::printf("%-4s %5d %12s %12s %12s %12s %12s %12s %11s %11s | %12s %11s\n",
                ParallelModeName(row.mode), row.world, HumanBytes(p.weight_bytes).c_str(),
                HumanBytes(p.cache_bytes).c_str(), HumanBytes(p.comm_bytes_decode_step).c_str(),
                HumanBytes(p.comm_bytes_decode_step_ring).c_str(),
                HumanBytes(p.comm_bytes_prefill_token).c_str(),
                HumanBytes(p.comm_bytes_prefill_token_ring).c_str(),
                Format("%.2f", p.decode_flops() / 1e9).c_str(),
                HumanSeconds(p.DecodeStepSeconds(s.dram_gbps, s.network_gbps)).c_str(),
                HumanBytes(p.memory_bytes() * layers).c_str(),
                HumanSeconds(StackStepSeconds(t, p, s)).c_str());
  }
  std::printf("\n");
  for (const std::string& note : WinsNotes(t, s)) std::printf("%s\n", note.c_str());
  std::printf(
      "\ncomm: bytes a rank receives; an all-reduce is an all-gather and a local sum, (W-1)·n·4 "
      "bytes;\n(ring) is a ring all-reduce's 2·(W-1)/W·n·4. step bound: (weights + cache) read "
      "at %.0f GB/s DRAM\n(%s) plus comm/step at %.0f GB/s network (%s), per layer. stack: x "
      "%lld layers.\n",
      s.dram_gbps, s.dram_given ? "given" : "assumed, --bandwidth", s.network_gbps,
      s.network_given ? "given" : "assumed, --network", static_cast<long long>(c.num_layers));
}

json ParallelJson(const ParallelTable& t, const ParallelSettings& s) {
  json rows = json::array();
  for (const ParallelRow& row : t.rows) {
    json j = {{"mode", ParallelModeName(row.mode)}, {"world", row.world}};
    if (!row.ok) {
      j["error"] = row.error;
      rows.push_back(j);
      continue;
    }
    const ParallelCosts& p = row.costs;
    j.update({{"sequences_per_rank", p.sequences_per_rank},
              {"tokens_per_rank", p.tokens_per_rank},
              {"weight_bytes", p.weight_bytes},
              {"cache_bytes_per_token", p.cache_bytes_per_token},
              {"cache_bytes", p.cache_bytes},
              {"comm_bytes_decode_step", p.comm_bytes_decode_step},
              {"comm_bytes_decode_step_ring", p.comm_bytes_decode_step_ring},
              {"comm_bytes_prefill_token", p.comm_bytes_prefill_token},
              {"comm_bytes_prefill_token_ring", p.comm_bytes_prefill_token_ring},
              {"decode_projection_flops", p.decode_projection_flops},
              {"decode_attention_flops", p.decode_attention_flops},
              {"decode_bytes_read", p.memory_bytes()},
              {"decode_memory_seconds", p.DecodeMemorySeconds(s.dram_gbps)},
              {"decode_network_seconds", p.DecodeNetworkSeconds(s.network_gbps)},
              {"decode_step_seconds", p.DecodeStepSeconds(s.dram_gbps, s.network_gbps)},
              {"stack_memory_bytes", p.memory_bytes() * static_cast<double>(t.config.num_layers)},
              {"stack_step_seconds", StackStepSeconds(t, p, s)}});
    rows.push_back(j);
  }
  return {{"model", t.label},
          {"description", Describe(t.config)},
          {"layers", t.config.num_layers},
          {"batch", s.batch},
          {"context", t.context},
          {"weight_dtype", t.weight_dtype},
          {"cache_dtype", t.cache_dtype},
          {"rows", rows}};
}

int RunParallelInfo(const Flags& flags, const std::vector<std::string>& labels,
                    const std::vector<ModelConfig>& configs, const ParallelSettings& settings) {
  std::vector<ParallelTable> tables;
  for (size_t i = 0; i < configs.size(); ++i) {
    tables.push_back(ComputeParallelTable(labels[i], configs[i], settings));
  }
  if (flags.Has("json")) {
    json models = json::array();
    for (const ParallelTable& t : tables) models.push_back(ParallelJson(t, settings));
    const json out = {{"dram_gbytes_per_s", settings.dram_gbps},
                      {"dram_origin", settings.dram_given ? "given" : "assumed"},
                      {"network_gbytes_per_s", settings.network_gbps},
                      {"network_origin", settings.network_given ? "given" : "assumed"},
                      {"models", models}};
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  for (size_t i = 0; i < tables.size(); ++i) {
    if (i > 0) std::printf("\n");
    PrintParallelTable(tables[i], settings);
  }
  return 0;
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
      .Text("parallel", "MODE",
            "tp, dp, cp or all: the scaling model per rank (docs/distributed.md)")
      .Text("world", "N[,N2...]", "--parallel: ranks, one table row per mode and world")
      .Text("weight-dtype", "DTYPE",
            "--parallel: projection weights f32, f16, bf16 or fp8 (default: the checkpoint's, "
            "bf16 unless it declares fp8)")
      .Text("cache-dtype", "DTYPE",
            "--parallel: KV cache values f32, f16 or bf16 (default: --dtype)")
      .Text("bandwidth", "GBPS",
            "--parallel: DRAM GB/s per rank for the step bound (default: 200, assumed)")
      .Text(
          "network", "GBPS",
          "--parallel: network GB/s per rank for the step bound (default: 25 = 200 Gb/s, assumed)")
      .Switch("json", "print every number as JSON");
  if (!flags.Parse(args)) return 0;
  const bool parallel = flags.Has("parallel");
  for (const char* name : {"world", "weight-dtype", "cache-dtype", "bandwidth", "network"}) {
    flags.Require(parallel || !flags.Has(name),
                  std::string("--") + name + " belongs to --parallel");
  }
  if (parallel) {
    flags.Require(flags.Has("world"), "--parallel needs --world N (or N,N2,...)");
    for (const char* name : {"memory", "peak-gflops", "peak-gbps"}) {
      flags.Require(!flags.Has(name), std::string("--") + name +
                                          " is not part of --parallel (its step bound takes "
                                          "--bandwidth and --network)");
    }
  }
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

  if (parallel) {
    ParallelSettings settings;
    const std::string mode = flags.Required("parallel");
    if (mode == "all") {
      settings.all_modes = true;
      settings.modes = {ParallelMode::kTensor, ParallelMode::kData, ParallelMode::kContext};
    } else {
      settings.modes = {ParallelModeFromString(mode)};
    }
    settings.worlds = ParseWorlds(flags.Required("world"));
    settings.batch = options.batch;
    settings.context = options.context;
    settings.weight_dtype = flags.Get("weight-dtype", "");
    settings.cache_dtype = flags.Get("cache-dtype", dtype_name);
    settings.dram_given = flags.Has("bandwidth");
    settings.network_given = flags.Has("network");
    if (settings.dram_given) settings.dram_gbps = PositiveNumber(flags, "bandwidth");
    if (settings.network_given) settings.network_gbps = PositiveNumber(flags, "network");
    std::vector<std::string> labels;
    std::vector<ModelConfig> configs;
    LoadModels(flags, labels, configs);
    return RunParallelInfo(flags, labels, configs, settings);
  }

  std::vector<std::string> labels;
  std::vector<ModelConfig> configs;
  LoadModels(flags, labels, configs);
  std::vector<ModelStats> all;
  for (const ModelConfig& config : configs) all.push_back(ComputeModelStats(config, options));

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
