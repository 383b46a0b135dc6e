// SPDX-License-Identifier: Apache-2.0
// attn demo: MHA, GQA, MQA and MLA at one hidden size and head count on random weights —
// by default a scaled-down DeepSeek-V3 shape, or a preset's. Each layer runs a prefill and a
// stretch of decode; one table shows parameters, KV bytes per token, prefill tokens/s, decode
// ms/token, that decode reproduces a full prefill, and that the three MLA forms agree.
// --plot draws KV-cache bytes against context (exact, from CacheBytesPerToken) and decode time
// measured at 1k-32k tokens of context (caches filled with random rows), per mechanism.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "attn/kv_cache.h"
#include "attn/layer_weights.h"
#include "attn/model_stats.h"
#include "attn/presets.h"
#include "cli/commands.h"
#include "cli/flags.h"
#include "cli/png_plot.h"

namespace attn::cli {
namespace {

// The four mechanisms at one D and H. The GQA family uses d = D / H; MLA keeps DeepSeek's
// per-head widths (dn 128, dr 64, dv 128) and latent rank 512.
struct DemoModels {
  std::string description;
  ModelConfig mha;
  ModelConfig gqa;
  bool has_gqa = true;  // false when H has no divisor strictly between 1 and H
  ModelConfig mqa;
  ModelConfig mla;
  std::string plot_title;  // upper case: the plot's font has capitals only
};

ModelConfig GqaShape(int64_t hidden, int64_t heads, int64_t kv_heads, int64_t head_dim,
                     double theta) {
  ModelConfig c;
  c.model_type = "llama";
  c.kind = AttentionKind::kGqa;
  c.hidden_size = hidden;
  c.num_heads = heads;
  c.max_position_embeddings = 131072;
  c.gqa.num_kv_heads = kv_heads;
  c.gqa.head_dim = head_dim;
  c.rope.theta = theta;
  c.rope.rotary_dim = head_dim - head_dim % 2;
  c.rope.pairing = RopePairing::kRotateHalf;
  return c;
}

// DeepSeek-V3's attention with D, H and rq divided by 4 (7168 -> 1792, 128 -> 32 heads,
// 1536 -> 384) and everything else as released: rk 512, dn 128, dr 64, dv 128, yarn x40 with
// mscale 1/1.
ModelConfig ScaledDeepSeekV3Mla() {
  ModelConfig c = LoadPreset("deepseek-v3");
  c.hidden_size = 7168 / 4;
  c.num_heads = 128 / 4;
  c.mla.q_lora_rank = 1536 / 4;
  return c;
}

// A kv-head count for the GQA row: the model's own when it is grouped, else H/8, H/4 or the
// largest proper divisor of H.
int64_t GroupedKvHeads(const ModelConfig& model) {
  const int64_t h = model.num_heads;
  if (model.kind == AttentionKind::kGqa && model.gqa.num_kv_heads > 1 &&
      model.gqa.num_kv_heads < h) {
    return model.gqa.num_kv_heads;
  }
  for (int64_t ratio : {8, 4, 2}) {
    if (h % ratio == 0 && h / ratio > 1) return h / ratio;
  }
  for (int64_t g = h / 2; g > 1; --g) {
    if (h % g == 0) return g;
  }
  return 0;
}

DemoModels MakeModels(const std::string& preset) {
  DemoModels m;
  ModelConfig base;
  if (preset.empty()) {
    m.mla = ScaledDeepSeekV3Mla();
    base = m.mla;
    m.description =
        "a scaled-down DeepSeek-V3 shape (hidden 1792, 32 heads; MLA rq 384, rk 512, "
        "dn 128, dr 64, dv 128, yarn x40)";
    m.plot_title = "SCALED DEEPSEEK-V3 SHAPE";
  } else {
    base = LoadPreset(preset);
    m.plot_title = preset;
    std::transform(m.plot_title.begin(), m.plot_title.end(), m.plot_title.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    m.plot_title += " SHAPE";
    m.description = preset + "'s shape (hidden " + std::to_string(base.hidden_size) + ", " +
                    std::to_string(base.num_heads) + " heads)";
    if (base.kind == AttentionKind::kMla) {
      m.mla = base;
    } else {
      // MLA at this D and H with DeepSeek-V2-Lite's attention widths (no query compression).
      m.mla = LoadPreset("deepseek-v2-lite");
      m.mla.hidden_size = base.hidden_size;
      m.mla.num_heads = base.num_heads;
      m.description += "; MLA with DeepSeek-V2-Lite's widths";
    }
  }
  m.mla.num_layers = 1;
  m.mla.sliding_layers.clear();
  m.plot_title = "ATTN DEMO: ONE ATTENTION LAYER AT " + m.plot_title + " (HIDDEN " +
                 std::to_string(m.mla.hidden_size) + ", " + std::to_string(m.mla.num_heads) +
                 " HEADS), BATCH 1";
  const int64_t d = base.hidden_size % base.num_heads == 0 ? base.hidden_size / base.num_heads
                                                           : base.QueryKeyHeadDim();
  const int64_t gqa_d = base.kind == AttentionKind::kGqa ? base.gqa.head_dim : d;
  const double theta = base.kind == AttentionKind::kGqa ? base.rope.theta : 10000.0;
  m.mha = GqaShape(base.hidden_size, base.num_heads, base.num_heads, gqa_d, theta);
  m.mqa = GqaShape(base.hidden_size, base.num_heads, 1, gqa_d, theta);
  const int64_t groups = GroupedKvHeads(base);
  m.has_gqa = groups > 0;
  if (m.has_gqa) m.gqa = GqaShape(base.hidden_size, base.num_heads, groups, gqa_d, theta);
  return m;
}

// max |a - b| / max |b|: the agreement metric used throughout attn's tests.
double RelativeError(const Tensor& a, const Tensor& b) {
  double max_diff = 0.0;
  double max_ref = 0.0;
  for (int64_t i = 0; i < b.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a.data()[i]) - b.data()[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b.data()[i])));
  }
  return max_ref > 0.0 ? max_diff / max_ref : max_diff;
}

int64_t ParameterCount(const NamedTensors& weights) {
  int64_t count = 0;
  for (const auto& entry : weights) count += entry.second.size();
  return count;
}

struct Mechanism {
  std::string name;
  const ModelConfig* config;
  CacheForm cache_form;
  MlaForm form;
};

struct Row {
  std::string name;
  std::string kv_heads;
  int64_t parameters;
  int64_t kv_values;
  double prefill_tokens_per_s;
  double decode_ms;
  double decode_vs_prefill;
  std::string forms_agreement;
};

// The measured decode curve of --plot: contexts where attention, not the projections, sets the
// step time (at the run's own 128 tokens it is a sliver of the step and noise decides the order).
constexpr int64_t kPlotContexts[] = {1024, 4096, 16384, 32768};
constexpr int kPlotRuns = 7;                     // timed runs per context: median, min and max
constexpr int64_t kPlotStepsPerRun = 2;          // decode steps per timed run
constexpr DType kPlotCacheDType = DType::kBF16;  // as served, and as the KV panel counts it

// Appends `count` tokens of random K/V rows (or latent rows) to sequence 0 of `cache` without
// running the layer. A decode step costs the same whatever the cached values are, and filling
// 32k tokens by prefill would take minutes (prefill is quadratic in the context); a small random
// block, repeated, is enough.
void FillCacheWithRandomRows(Cache& cache, int64_t count, uint64_t seed) {
  constexpr int64_t kBlock = 64;
  if (auto* kv = dynamic_cast<KVCache*>(&cache)) {
    const Tensor keys = RandomUniform({kBlock, kv->kv_heads(), kv->key_dim()}, seed, 1.0f);
    const Tensor values = RandomUniform({kBlock, kv->kv_heads(), kv->value_dim()}, seed + 1, 1.0f);
    for (int64_t done = 0; done < count; done += kBlock) {
      kv->Append(0, std::min(kBlock, count - done), keys.data(), values.data(), nullptr);
    }
    return;
  }
  auto* latent = dynamic_cast<LatentKVCache*>(&cache);
  Check(latent != nullptr, ErrorKind::kInvalidArgument, "demo: unknown cache type");
  const Tensor rows = RandomUniform({kBlock, latent->row_dim()}, seed, 1.0f);
  for (int64_t done = 0; done < count; done += kBlock) {
    latent->Append(0, std::min(kBlock, count - done), rows.data(), nullptr);
  }
}

struct DecodeTimes {
  std::vector<double> median_ms;
  std::vector<double> min_ms;
  std::vector<double> max_ms;
};

// Decode ms/token of batch 1 at each of kPlotContexts: the cache is filled with random rows up
// to the context, one untimed step warms the scratch buffers, then kPlotRuns timed runs of
// kPlotStepsPerRun steps. The steps append their tokens too: 15 per context, 1.5% of 1k.
DecodeTimes MeasureDecode(const AttentionLayer& layer, MlaForm form, uint64_t seed,
                          bool show_progress, const std::string& name) {
  constexpr int64_t kSteps = 1 + kPlotRuns * kPlotStepsPerRun;
  const int64_t capacity =
      kPlotContexts[std::size(kPlotContexts) - 1] + kSteps * std::ssize(kPlotContexts);
  const auto cache = layer.NewCache(1, capacity, kPlotCacheDType, form);
  const Tensor token = RandomUniform({1, 1, layer.config().hidden_size}, seed, 1.0f);
  const TokenBatch step{&token, {}, {}};
  Tensor out;
  DecodeTimes times;
  for (int64_t context : kPlotContexts) {
    if (show_progress) {
      std::fprintf(stderr, "\r  plot: %-13s decode at context %-6lld", name.c_str(),
                   static_cast<long long>(context));
    }
    FillCacheWithRandomRows(*cache, context - cache->length(0),
                            seed + static_cast<uint64_t>(context));
    layer.StepInto(step, *cache, form, out);
    std::vector<double> runs;
    for (int r = 0; r < kPlotRuns; ++r) {
      const auto start = std::chrono::steady_clock::now();
      for (int64_t s = 0; s < kPlotStepsPerRun; ++s) layer.StepInto(step, *cache, form, out);
      const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
      runs.push_back(1e3 * elapsed.count() / static_cast<double>(kPlotStepsPerRun));
    }
    std::sort(runs.begin(), runs.end());
    times.median_ms.push_back(runs[runs.size() / 2]);
    times.min_ms.push_back(runs.front());
    times.max_ms.push_back(runs.back());
  }
  return times;
}

// Powers of two from `lo` to `hi` as (value, "1K") ticks.
std::vector<std::pair<double, std::string>> BinaryTicks(int64_t lo, int64_t hi) {
  std::vector<std::pair<double, std::string>> ticks;
  for (int64_t t = lo; t <= hi; t *= 2) {
    ticks.emplace_back(static_cast<double>(t),
                       t >= 1024 ? std::to_string(t / 1024) + "K" : std::to_string(t));
  }
  return ticks;
}

// Left: KV-cache bytes per sequence and layer (bf16, exact) against context 1k-128k. Right:
// measured decode ms/token against context 1k-32k. One series per mechanism; MLA auto is left
// out of both: it caches the latent rows like absorbed and decodes (one token) as absorbed.
void WriteDemoPlot(const std::string& path, const std::string& title,
                   const std::vector<Mechanism>& mechanisms, uint64_t seed, bool show_progress) {
  PlotPanel kv_panel{"KV CACHE PER SEQUENCE, ONE LAYER",
                     "CONTEXT (TOKENS)",
                     "KV CACHE (BYTES, BF16)",
                     true,
                     true,
                     {},
                     BinaryTicks(1024, 131072)};
  PlotPanel time_panel{"DECODE TIME PER TOKEN, BF16 CACHE",
                       "CONTEXT (TOKENS)",
                       "MS / TOKEN (MEDIAN, MIN-MAX)",
                       true,
                       true,
                       {},
                       BinaryTicks(1024, kPlotContexts[std::size(kPlotContexts) - 1])};
  for (const Mechanism& m : mechanisms) {
    if (m.form == MlaForm::kAuto && m.config->kind == AttentionKind::kMla) continue;
    PlotSeries kv{m.name, {}, {}, {}, {}};
    const double bytes_per_token =
        static_cast<double>(CacheBytesPerToken(*m.config, m.cache_form, DType::kBF16));
    for (const auto& tick : kv_panel.x_ticks) {
      kv.x.push_back(tick.first);
      kv.y.push_back(bytes_per_token * tick.first);
    }
    kv_panel.series.push_back(kv);

    const auto layer = BuildAttentionLayer(*m.config, 0, RandomAttentionWeights(*m.config, seed));
    DecodeTimes times = MeasureDecode(*layer, m.form, seed + 7, show_progress, m.name);
    PlotSeries time{
        m.name, {}, std::move(times.median_ms), std::move(times.min_ms), std::move(times.max_ms)};
    for (int64_t context : kPlotContexts) time.x.push_back(static_cast<double>(context));
    time_panel.series.push_back(std::move(time));
  }
  if (show_progress) std::fprintf(stderr, "\n");
  WriteLinePlotsPng(path, title, {kv_panel, time_panel});
}

}  // namespace

int RunDemo(const std::vector<std::string>& args) {
  Flags flags("demo", "MHA, GQA, MQA and MLA side by side on random weights.");
  flags
      .Text("preset", "NAME",
            "take hidden size and heads (and an MLA preset's attention) from a preset "
            "(default: scaled-down DeepSeek-V3)")
      .Text("context", "N", "prefill tokens, 128k style accepted", "128")
      .Integer("prefill", "N", "the older name of --context")
      .Integer("decode", "M", "decode steps after the prefill", "16")
      .Integer("seed", "S", "random seed of weights and tokens", "0")
      .Text("plot", "FILE.png", "also draw KV bytes and decode time against context");
  AddThreadsFlag(flags);
  if (!flags.Parse(args)) return 0;
  ApplyThreadsFlag(flags);
  Check(!(flags.Has("context") && flags.Has("prefill")), ErrorKind::kInvalidArgument,
        "--prefill is another name for --context; give one");
  const int64_t prefill = flags.Has("prefill") ? flags.GetInt("prefill")
                                               : ParseTokenCount(flags.Get("context"), "--context");
  const int64_t decode = flags.GetInt("decode");
  Check(prefill >= 1 && decode >= 0, ErrorKind::kInvalidArgument,
        "--context must be >= 1 and --decode >= 0");
  const uint64_t seed = static_cast<uint64_t>(flags.GetInt("seed"));
  const int64_t total = prefill + decode;
  const DemoModels models = MakeModels(flags.Get("preset"));
  const int64_t hidden = models.mha.hidden_size;

  std::vector<Mechanism> mechanisms = {{"MHA", &models.mha, CacheForm::kHeads, MlaForm::kAuto}};
  if (models.has_gqa) {
    mechanisms.push_back({"GQA", &models.gqa, CacheForm::kHeads, MlaForm::kAuto});
  }
  mechanisms.push_back({"MQA", &models.mqa, CacheForm::kHeads, MlaForm::kAuto});
  mechanisms.push_back({"MLA naive", &models.mla, CacheForm::kHeads, MlaForm::kNaive});
  mechanisms.push_back({"MLA absorbed", &models.mla, CacheForm::kLatent, MlaForm::kAbsorbed});
  mechanisms.push_back({"MLA auto", &models.mla, CacheForm::kLatent, MlaForm::kAuto});

  const Tensor hidden_states = RandomUniform({1, total, hidden}, seed + 1, 1.0f);
  const TokenBatch batch{&hidden_states, {}, {}};
  std::printf(
      "attn demo: one attention layer at %s, random weights,\nprefill %lld tokens then "
      "%lld decode steps, fp32 cache.\n",
      models.description.c_str(), static_cast<long long>(prefill), static_cast<long long>(decode));
  if (!models.has_gqa) {
    std::printf("(no GQA row: %lld heads have no divisor between 1 and %lld)\n",
                static_cast<long long>(models.mha.num_heads),
                static_cast<long long>(models.mha.num_heads));
  }
  std::fflush(stdout);

  // Progress lines only on a terminal: piped output stays just the table.
  const bool show_progress = isatty(fileno(stderr)) != 0;
  std::vector<Row> rows;
  Tensor naive_output;
  for (const Mechanism& m : mechanisms) {
    if (show_progress) std::fprintf(stderr, "  %s ...\n", m.name.c_str());
    NamedTensors weights = RandomAttentionWeights(*m.config, seed);
    const int64_t parameters = ParameterCount(weights);
    const auto layer = BuildAttentionLayer(*m.config, 0, std::move(weights));
    const Tensor full = layer->Forward(batch, m.form);
    AttentionLayer::Timings timings;
    const Tensor stepped = layer->PrefillThenDecode(batch, prefill, m.form, DType::kF32, &timings);
    Row row;
    row.name = m.name;
    // What is cached per token: G kv heads, H decompressed heads (naive MLA) or the latent row.
    row.kv_heads = m.config->kind == AttentionKind::kGqa
                       ? std::to_string(m.config->gqa.num_kv_heads)
                   : m.cache_form == CacheForm::kHeads ? std::to_string(m.config->num_heads)
                                                       : "latent";
    row.parameters = parameters;
    row.kv_values = CacheValuesPerToken(*m.config, m.cache_form);
    row.prefill_tokens_per_s = static_cast<double>(prefill) / timings.prefill_seconds;
    row.decode_ms = timings.decode_steps > 0
                        ? 1e3 * timings.decode_seconds / static_cast<double>(timings.decode_steps)
                        : 0.0;
    row.decode_vs_prefill = RelativeError(stepped, full);
    row.forms_agreement = "-";
    if (m.form == MlaForm::kNaive) {
      naive_output = full.Copy();
    } else if (m.config->kind == AttentionKind::kMla) {
      char agreement[32];
      std::snprintf(agreement, sizeof(agreement), "%.1e", RelativeError(full, naive_output));
      row.forms_agreement = agreement;
    }
    rows.push_back(row);
  }

  std::printf("\n%-13s %6s %11s %10s %10s %13s %10s %14s %14s\n", "mechanism", "kv", "params",
              "KV vals/tok", "KV B/tok", "prefill tok/s", "decode ms", "decode=prefill",
              "form vs naive");
  for (const Row& r : rows) {
    std::printf("%-13s %6s %11lld %10lld %10lld %13.1f %10.2f %14.1e %14s\n", r.name.c_str(),
                r.kv_heads.c_str(), static_cast<long long>(r.parameters),
                static_cast<long long>(r.kv_values), static_cast<long long>(r.kv_values * 2),
                r.prefill_tokens_per_s, r.decode_ms, r.decode_vs_prefill,
                r.forms_agreement.c_str());
  }
  std::printf(
      "\nKV B/tok assumes a bf16 cache (2 bytes per value); the run itself caches fp32. "
      "decode=prefill and form vs\nnaive are max|a-b|/max|b| over the layer outputs (fp32 "
      "rounding gives ~1e-6). Parameters and KV at real\nscale: attn info --preset deepseek-v3.\n");
  if (decode > 0) {
    // At a short context the projections, not attention, set the step time: say which context
    // the column measured, and where attention's share shows.
    std::printf(
        "decode ms is per token with %lld-%lld tokens cached; at short contexts the weights, not "
        "the cache, set it\n(--plot FILE.png measures decode at 1k-32k tokens).\n",
        static_cast<long long>(prefill), static_cast<long long>(total - 1));
  }

  if (!flags.Has("plot")) return 0;
  const std::string plot_path = flags.Required("plot");
  WriteDemoPlot(plot_path, models.plot_title, mechanisms, seed, show_progress);
  std::printf("plot written to %s\n", plot_path.c_str());
  return 0;
}

}  // namespace attn::cli
