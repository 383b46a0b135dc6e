// SPDX-License-Identifier: Apache-2.0
// attn bench: how fast attn runs on this machine, against what the machine can do.
//   kernel  one attention call (DefaultBackend().attend) at a given shape, with FLOPs, unique
//           K/V bytes and the fraction of the binding roof it reaches
//   layer   one layer of a config: prefill tokens/s and decode ms/token, per MLA form
//   linear  one projection (DefaultBackend().linear), W streamed from DRAM: weight GB/s against
//           the DRAM read roof
//   peak    the roofs: fp32 FMA and bf16-dot GFLOP/s and DRAM read GB/s per thread count
//   --compare-torch  the same kernel shapes through PyTorch, side by side (a Python script)
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "attn/context_parallel.h"
#include "attn/error.h"
#include "attn/hf_config.h"
#include "attn/kernels.h"
#include "attn/kv_cache.h"
#include "attn/layer_weights.h"
#include "attn/paged_kv_cache.h"
#include "attn/parallel.h"
#include "attn/threads.h"
#include "bench/kernel_case.h"
#include "bench/peak.h"
#include "cli/commands.h"
#include "cli/config_flags.h"
#include "cli/flags.h"
#include "cli/parallel_flags.h"

#ifndef ATTN_SOURCE_DIR
#define ATTN_SOURCE_DIR "."
#endif

namespace attn::cli {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Seconds(Clock::time_point start, Clock::time_point end) {
  return std::chrono::duration<double>(end - start).count();
}

// --pin: binds each pool thread to its own CPU. Off by default (the library does not pin), but
// on a machine shared with other work, unpinned threads created moments before a short run can
// share one core, and a 2-thread run then measures one core.
// Every pool thread must hold one task at the same moment for the thread indices to be distinct,
// so each task waits (up to a second) until all have arrived.
bool PinPoolThreads() {
  const int threads = NumThreads();
  const std::vector<int> cpus = bench::AllowedCpus();
  if (static_cast<int>(cpus.size()) < threads) return false;
  std::atomic<int> arrived{0};
  std::atomic<bool> pinned{true};
  ParallelFor(threads, [&](int64_t, int thread) {
    arrived.fetch_add(1);
    const Clock::time_point deadline = Clock::now() + std::chrono::seconds(1);
    while (arrived.load() < threads && Clock::now() < deadline) std::this_thread::yield();
    if (!bench::PinCurrentThread(cpus[static_cast<size_t>(thread)])) pinned.store(false);
  });
  return pinned.load() && arrived.load() == threads;
}

// --peak-bytes, and (bench peak only) --trials: how the roofs are measured.
void AddPeakFlags(Flags& flags, bool trials) {
  flags.Integer("peak-bytes", "B",
                "DRAM arrays (STREAM's three, together) for measuring the roofs (default: 12 x "
                "the last-level cache, at least 1 GiB)");
  if (trials) flags.Integer("trials", "N", "measurements per roof, 1 to 100; the best counts", "5");
}

bench::PeakOptions PeakOptionsFrom(const Flags& flags) {
  bench::PeakOptions options;
  if (flags.Has("peak-bytes")) {
    options.dram_buffer_bytes = flags.GetInt("peak-bytes");
    Check(options.dram_buffer_bytes >= (int64_t{1} << 20), ErrorKind::kInvalidArgument,
          "--peak-bytes must be at least 1048576 (1 MiB)");
  }
  if (flags.Has("trials")) {
    options.trials = static_cast<int>(flags.GetInt("trials"));
    Check(options.trials >= 1 && options.trials <= 100, ErrorKind::kInvalidArgument,
          "--trials must lie in [1, 100]");
  }
  return options;
}

// The roofs for `threads`, measuring (and caching) them first if this machine has none yet.
bench::MachinePeak PeakForThreads(int threads, const bench::PeakOptions& options) {
  const std::string path = bench::PeakCachePath();
  const auto cached = bench::LoadPeak(path);
  if (!cached || cached->ForThreads(threads) == nullptr) {
    std::fprintf(stderr,
                 "attn bench: measuring this machine's peak for %d thread(s), cached in %s\n",
                 threads, path.c_str());
  }
  return bench::PeakFor({threads}, options);
}

// ---- kernel ------------------------------------------------------------------------------

int RunKernelBench(const std::vector<std::string>& args) {
  Flags flags("bench kernel",
              "Times one attention call (the default backend's attend) at a given shape, with "
              "FLOPs, unique K/V bytes and the fraction of the binding roof it reaches.");
  flags.Text("variant", "gqa|mla", "gqa (MHA/GQA/MQA) or mla (absorbed, latent rows)", "gqa")
      .Integer("heads", "H", "query heads")
      .Mandatory()
      .Integer("kv-heads", "G", "kv heads (default: H; mla: 1)")
      .Integer("head-dim", "D", "key width per head (default: 128, mla: 576)")
      .Integer("v-head-dim", "DV", "value width per head (default: D, mla: 512)")
      .Integer("q-len", "S", "query tokens")
      .Mandatory()
      .Integer("kv-len", "T", "key/value tokens, >= S")
      .Mandatory()
      .Switch("causal", "causal mask (query i sees keys up to T - S + i)")
      .Text("dtype", "DTYPE", "K/V storage: f32, f16, bf16; fp8 or int8 with --page-size", "f32")
      .Integer("batch", "B",
               "sequences in one batched call, ragged: sequence b has T - floor(b*T/(2B)) keys",
               "1")
      .Text("layout", "L",
            "gqa K/V per sequence: head-major [G][T][D] (as attn's KVCache) or token-major "
            "[T][G][D] (as PyTorch's [B, T, G, D])",
            "head-major")
      .Integer("page-size", "P",
               "K/V in pages of P tokens (16-256, a multiple of 16) read through block tables, "
               "pages of the batch in random order; 0: contiguous",
               "0");
  AddThreadsFlag(flags);
  flags.Integer("repeat", "R", "timed runs after one warm-up, 1 to 100000; the median counts", "5")
      .Integer("seed", "N", "random seed of the inputs", "1")
      .Text("backend", "NAME", "default or reference", "default")
      .Text("weights-dtype", "DTYPE",
            "W held as f32, bf16, f16 or fp8 (E4M3 with 128x128 block scales)", "f32");
  AddPeakFlags(flags, false);
  flags.Switch("pin", "bind each pool thread to its own CPU")
      .Switch("json", "print one JSON object");
  if (!flags.Parse(args)) return 0;
  bench::KernelShape shape;
  shape.variant = bench::VariantFromString(flags.Get("variant"));
  shape.heads = flags.GetInt("heads");
  // 0 means "the variant's default" inside KernelShape, so an explicit 0 is refused here.
  for (const char* name : {"kv-heads", "head-dim", "v-head-dim"}) {
    Check(!flags.Has(name) || flags.GetInt(name, 0) > 0, ErrorKind::kInvalidArgument,
          std::string("--") + name + " must be positive");
  }
  shape.kv_heads = flags.GetInt("kv-heads", 0);
  shape.head_dim = flags.GetInt("head-dim", 0);
  shape.value_dim = flags.GetInt("v-head-dim", 0);
  shape.q_len = flags.GetInt("q-len", 0);
  shape.kv_len = flags.GetInt("kv-len", 0);
  shape.causal = flags.Has("causal");
  shape.dtype = StorageDTypeFromString(flags.Get("dtype"), /*allow_quantized=*/true);
  shape.batch = flags.GetInt("batch");
  const std::string layout = flags.Get("layout");
  Check(layout == "head-major" || layout == "token-major", ErrorKind::kInvalidArgument,
        "--layout must be head-major or token-major, got '" + layout + "'");
  shape.token_major = layout == "token-major";
  shape.page_size = flags.GetInt("page-size");
  shape = bench::NormalizeKernelShape(shape);
  const int64_t repeat = flags.GetInt("repeat");
  Check(repeat >= 1 && repeat <= 100000, ErrorKind::kInvalidArgument,
        "--repeat must lie in [1, 100000]");
  const std::string backend_name = flags.Get("backend");
  Check(backend_name == "default" || backend_name == "reference", ErrorKind::kInvalidArgument,
        "--backend must be default or reference, got '" + backend_name + "'");
  const KernelBackend& backend =
      backend_name == "reference" ? ReferenceBackend() : DefaultBackend();
  const int threads = ApplyThreadsFlag(flags);
  const bool pinned = flags.Has("pin") && PinPoolThreads();
  const bench::PeakOptions peak_options = PeakOptionsFrom(flags);

  // Roofs first: the 1 GiB read buffer is freed before the case's K/V are allocated.
  const bench::MachinePeak peak = PeakForThreads(threads, peak_options);
  const bench::PeakPoint& roofs = *peak.ForThreads(threads);

  const bench::KernelCase kernel_case(shape, static_cast<uint64_t>(flags.GetInt("seed")));
  kernel_case.Run(backend);  // warm-up: first-touch of the output, workspaces, caches
  std::vector<double> times;
  for (int64_t r = 0; r < repeat; ++r) {
    const Clock::time_point start = Clock::now();
    kernel_case.Run(backend);
    times.push_back(Seconds(start, Clock::now()));
  }
  const double median = bench::Median(times);
  // How much of the machine this run had: other processes share these CPUs.
  const double fp32_now = bench::ProbeFp32Now(threads, 0.02);
  const double flops = bench::KernelFlops(shape);
  const double kv_bytes = bench::KernelKvBytes(shape);
  // bf16 K/V can use the bf16 dot-product units; f32 and f16 (converted on load) run on fp32 FMA.
  const bool bf16_roof = shape.dtype == DType::kBF16 && roofs.bf16_gflops > 0.0;
  const double peak_gflops = bf16_roof ? roofs.bf16_gflops : roofs.fp32_gflops;
  const bench::RooflinePoint point =
      bench::PlaceOnRoofline(flops, kv_bytes, median, peak_gflops, roofs.dram_gbps);

  const json result = {
      {"command", "kernel"},
      {"backend", backend.name},
      {"variant", bench::VariantName(shape.variant)},
      {"heads", shape.heads},
      {"kv_heads", shape.kv_heads},
      {"head_dim", shape.head_dim},
      {"v_head_dim", shape.value_dim},
      {"q_len", shape.q_len},
      {"kv_len", shape.kv_len},
      {"causal", shape.causal},
      {"dtype", flags.Get("dtype", "f32")},
      {"batch", shape.batch},
      {"kv_lens", bench::SequenceLengths(shape)},
      {"layout", layout},
      {"page_size", shape.page_size},
      {"threads", threads},
      {"pinned", pinned},
      {"repeat", repeat},
      {"median_s", median},
      {"min_s", *std::min_element(times.begin(), times.end())},
      {"max_s", *std::max_element(times.begin(), times.end())},
      {"times_s", times},
      {"flops", flops},
      {"gflops", flops / median / 1e9},
      {"kv_bytes", kv_bytes},
      {"gbps", kv_bytes / median / 1e9},
      {"arithmetic_intensity", point.intensity},
      {"peak_gflops", peak_gflops},
      {"peak_gbps", roofs.dram_gbps},
      {"compute_roof", bf16_roof ? "bf16-dot" : "fp32-fma"},
      {"peak_isa", bf16_roof ? peak.bf16_isa : peak.fp32_isa},
      {"binding_roof", point.memory_bound ? "memory" : "compute"},
      {"roof_gflops", point.roof_gflops},
      {"peak_fraction", point.fraction},
      {"fp32_gflops_now", fp32_now},
      {"machine_share", roofs.fp32_gflops > 0.0 ? fp32_now / roofs.fp32_gflops : 0.0},
      {"peak_file", bench::PeakCachePath()},
  };
  if (flags.Has("json")) {
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }
  std::printf(
      "attn bench kernel: %s H=%lld G=%lld D=%lld DV=%lld S=%lld T=%lld%s %s, batch %lld%s, "
      "%d thread(s), backend %s\n"
      "  median %.6f s over %lld runs (min %.6f s, max %.6f s)\n"
      "  %.4g FLOP -> %.2f GFLOP/s;  %.4g unique K/V bytes -> %.2f GB/s;  %.1f FLOP/byte\n"
      "  roofs: %.1f GFLOP/s (%s, %s), %.1f GB/s DRAM read -> %s-bound, roof %.1f GFLOP/s\n"
      "  %.1f%% of the binding roof; an fp32 FMA probe right after reached %.0f%% of the fp32 "
      "roof\n",
      bench::VariantName(shape.variant), static_cast<long long>(shape.heads),
      static_cast<long long>(shape.kv_heads), static_cast<long long>(shape.head_dim),
      static_cast<long long>(shape.value_dim), static_cast<long long>(shape.q_len),
      static_cast<long long>(shape.kv_len), shape.causal ? " causal" : "",
      flags.Get("dtype", "f32").c_str(), static_cast<long long>(shape.batch),
      shape.token_major ? ", token-major K/V" : "", threads, backend.name, median,
      static_cast<long long>(repeat), result["min_s"].get<double>(), result["max_s"].get<double>(),
      flops, flops / median / 1e9, kv_bytes, kv_bytes / median / 1e9, point.intensity, peak_gflops,
      bf16_roof ? "bf16-dot" : "fp32-fma", result["peak_isa"].get<std::string>().c_str(),
      roofs.dram_gbps, point.memory_bound ? "memory" : "compute", point.roof_gflops,
      100.0 * point.fraction, 100.0 * result["machine_share"].get<double>());
  return 0;
}

// ---- layer -------------------------------------------------------------------------------

// Resident set now, from /proc/self/statm (0 where there is none).
int64_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0;
  int64_t resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * static_cast<int64_t>(sysconf(_SC_PAGESIZE));
}

// The most the process has held resident so far (getrusage reports KiB on Linux).
int64_t PeakResidentBytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

// Threads the process has (/proc/self/status "Threads:"), or 0 where that cannot be read. At the
// end of a run it counts every pool that was ever started, attn's and oneDNN's OpenMP one, so
// it shows whether --threads reached them all.
int64_t ProcessThreads() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::atoll(line.c_str() + 8);
  }
  return 0;
}

// The KV store one BenchForm run goes through: one contiguous cache for the batch, or one page
// pool with a sequence per batch row (--page-size; pages handed out as sequences grow).
class BenchCache {
 public:
  BenchCache(const AttentionLayer& layer, MlaForm form, DType dtype, int64_t batch,
             int64_t capacity, int64_t page_size) {
    if (page_size == 0) {
      contiguous_ = layer.NewCache(batch, capacity, dtype, form);
      return;
    }
    const int64_t pages = batch * ((capacity + page_size - 1) / page_size);
    pool_ = layer.NewPagedPool(pages, page_size, dtype, form);
    for (int64_t b = 0; b < batch; ++b) ids_.push_back(pool_->Add());
  }
  int64_t bytes_per_token() const {
    if (contiguous_) return static_cast<int64_t>(contiguous_->bytes_per_token());
    return static_cast<int64_t>(pool_->nbytes()) / (pool_->pages() * pool_->page_size());
  }
  int64_t bytes() const {
    return contiguous_ ? static_cast<int64_t>(contiguous_->held_bytes())
                       : static_cast<int64_t>(pool_->nbytes());
  }
  void StepInto(const AttentionLayer& layer, const TokenBatch& batch, MlaForm form, Tensor& out) {
    if (contiguous_) {
      layer.StepInto(batch, *contiguous_, form, out);
    } else {
      layer.StepPagedInto(batch, *pool_, ids_, form, out);
    }
  }
  // Appends `count` tokens of random K/V (or latent rows) to sequence b straight into the store,
  // without running the layer: decode at a long context is what is being measured, and
  // projecting thousands of tokens just to obtain a cache of the right size would dominate.
  void FillContext(int64_t b, int64_t count, uint64_t seed);
  // Whether FillContext can write this cache: not a split layer's (--parallel dp/cp), whose
  // tokens must reach the ranks that own them. Those are filled by FillThroughLayer.
  bool FillsDirectly() const {
    return pool_ != nullptr || dynamic_cast<const KVCache*>(contiguous_.get()) != nullptr ||
           dynamic_cast<const LatentKVCache*>(contiguous_.get()) != nullptr;
  }
  // Prefills contexts[b] random tokens of every sequence through the layer, in chunks.
  void FillThroughLayer(const AttentionLayer& layer, MlaForm form,
                        const std::vector<int64_t>& contexts, uint64_t seed);

 private:
  std::unique_ptr<Cache> contiguous_;
  std::unique_ptr<PagedKVPool> pool_;
  std::vector<PagedKVPool::SequenceId> ids_;
};

void BenchCache::FillContext(int64_t b, int64_t count, uint64_t seed) {
  constexpr int64_t kChunk = 256;  // bounds the fp32 staging buffers
  for (int64_t done = 0; done < count; done += kChunk) {
    const int64_t n = std::min(kChunk, count - done);
    const uint64_t chunk_seed = seed + static_cast<uint64_t>(done);
    if (pool_) {
      const std::vector<PagedKVPool::SequenceId> one = {ids_[static_cast<size_t>(b)]};
      const std::vector<int64_t> counts = {n};
      pool_->Reserve(one, counts);
      if (pool_->form() == CacheForm::kHeads) {
        const Tensor keys =
            RandomUniform({n, pool_->kv_heads(), pool_->key_dim()}, chunk_seed, 1.0f);
        const Tensor values =
            RandomUniform({n, pool_->kv_heads(), pool_->value_dim()}, chunk_seed + 1, 1.0f);
        pool_->AppendHeads(one[0], n, keys.data(), values.data(), nullptr);
      } else {
        const Tensor rows = RandomUniform({n, pool_->key_dim()}, chunk_seed, 1.0f);
        pool_->AppendLatent(one[0], n, rows.data(), nullptr);
      }
    } else if (auto* heads = dynamic_cast<KVCache*>(contiguous_.get())) {
      const Tensor keys = RandomUniform({n, heads->kv_heads(), heads->key_dim()}, chunk_seed, 1.0f);
      const Tensor values =
          RandomUniform({n, heads->kv_heads(), heads->value_dim()}, chunk_seed + 1, 1.0f);
      heads->Append(b, n, keys.data(), values.data(), nullptr);
    } else if (auto* latent = dynamic_cast<LatentKVCache*>(contiguous_.get())) {
      const Tensor rows = RandomUniform({n, latent->row_dim()}, chunk_seed, 1.0f);
      latent->Append(b, n, rows.data(), nullptr);
    } else {
      throw Error(ErrorKind::kUnsupported, "--context: unknown cache type");
    }
  }
}

void BenchCache::FillThroughLayer(const AttentionLayer& layer, MlaForm form,
                                  const std::vector<int64_t>& contexts, uint64_t seed) {
  constexpr int64_t kChunk = 512;
  const auto batch = static_cast<int64_t>(contexts.size());
  const int64_t longest = *std::max_element(contexts.begin(), contexts.end());
  Tensor out;
  for (int64_t done = 0; done < longest; done += kChunk) {
    const int64_t n = std::min(kChunk, longest - done);
    std::vector<int64_t> lengths;
    for (const int64_t context : contexts) {
      lengths.push_back(std::clamp<int64_t>(context - done, 0, n));
    }
    const Tensor hidden = RandomUniform({batch, n, layer.config().hidden_size},
                                        seed + static_cast<uint64_t>(done), 1.0f);
    StepInto(layer, {&hidden, {}, {}, lengths}, form, out);
  }
}

// Tokens in sequence b's cache before the prefill: `context`, or with --ragged the same rule as
// `attn bench kernel --batch`: context − ⌊b·context/(2B)⌋.
int64_t ContextOf(int64_t b, int64_t batch, int64_t context, bool ragged) {
  return ragged ? context - b * context / (2 * batch) : context;
}

struct FormResult {
  std::string form;
  int64_t cache_bytes_per_token = 0;
  int64_t cache_bytes = 0;
  double prefill_s = 0.0;
  double decode_ms_median = 0.0;
  double decode_ms_mean = 0.0;
  double decode_bytes_per_step = 0.0;
  int64_t rss_bytes = 0;
  int64_t peak_rss_bytes = 0;
};

// The KV store of one run: dtype, page size (0: contiguous) and ragged contexts.
struct CacheSetup {
  DType dtype = DType::kF32;
  int64_t page_size = 0;
  bool ragged = false;
};

FormResult BenchForm(const AttentionLayer& layer, MlaForm form, const std::string& form_name,
                     const CacheSetup& setup, int64_t batch, int64_t context, int64_t prefill,
                     int64_t decode, uint64_t seed) {
  const int64_t hidden = layer.config().hidden_size;
  BenchCache cache(layer, form, setup.dtype, batch, context + prefill + decode, setup.page_size);
  if (cache.FillsDirectly()) {
    for (int64_t b = 0; b < batch && context > 0; ++b) {
      cache.FillContext(b, ContextOf(b, batch, context, setup.ragged),
                        seed + 1000 + static_cast<uint64_t>(b) * 7919);
    }
  } else if (context > 0) {
    std::vector<int64_t> contexts;
    for (int64_t b = 0; b < batch; ++b) {
      contexts.push_back(ContextOf(b, batch, context, setup.ragged));
    }
    cache.FillThroughLayer(layer, form, contexts, seed + 1000);
  }

  const Tensor prompt = RandomUniform({batch, prefill, hidden}, seed + 1, 1.0f);
  std::vector<Tensor> tokens;
  for (int64_t i = 0; i < decode; ++i) {
    tokens.push_back(RandomUniform({batch, 1, hidden}, seed + 2 + static_cast<uint64_t>(i), 1.0f));
  }

  FormResult result;
  result.form = form_name;
  result.cache_bytes_per_token = cache.bytes_per_token();
  result.cache_bytes = cache.bytes();
  // One output tensor kept across steps, as a serving loop would: StepInto reuses its storage.
  Tensor out;
  {
    // One untimed prefill through a throwaway cache first: oneDNN builds (JIT-compiles) its
    // matmul primitives on first use of a shape, which is not what a prefill costs.
    BenchCache warm(layer, form, setup.dtype, batch, prefill, setup.page_size);
    warm.StepInto(layer, {&prompt, {}, {}}, form, out);
  }
  const Clock::time_point start = Clock::now();
  cache.StepInto(layer, {&prompt, {}, {}}, form, out);
  result.prefill_s = Seconds(start, Clock::now());

  std::vector<double> step_ms;
  step_ms.reserve(static_cast<size_t>(decode));
  for (int64_t i = 0; i < decode; ++i) {
    const TokenBatch tokens_in{&tokens[static_cast<size_t>(i)], {}, {}};
    const Clock::time_point step_start = Clock::now();
    cache.StepInto(layer, tokens_in, form, out);
    step_ms.push_back(1e3 * Seconds(step_start, Clock::now()));
  }
  if (!step_ms.empty()) {
    result.decode_ms_median = bench::Median(step_ms);
    double total = 0.0;
    for (double ms : step_ms) total += ms;
    result.decode_ms_mean = total / static_cast<double>(step_ms.size());
  }
  result.rss_bytes = ResidentBytes();
  result.peak_rss_bytes = PeakResidentBytes();
  return result;
}

int RunLayerBench(const std::vector<std::string>& args) {
  Flags flags("bench layer",
              "Prefill tokens/s and decode ms/token of one layer of a config on random weights, "
              "per MLA form.");
  AddConfigFlags(flags);
  flags.Integer("prefill", "S", "prompt tokens per sequence, >= 1")
      .Mandatory()
      .Integer("decode", "N", "decode steps after the prefill, >= 0")
      .Mandatory()
      .Integer("context", "T", "tokens already in the cache before the prefill", "0")
      .Integer("batch", "B", "sequences, 1 to 4096", "1")
      .Text("dtype", "DTYPE", "KV cache storage: f32, f16, bf16; fp8 or int8 with --page-size",
            "f32")
      .Integer("page-size", "P",
               "paged KV cache: one pool of P-token pages (a multiple of 16 in [16, 256]); 0: "
               "one contiguous cache",
               "0")
      .Switch("ragged",
              "ragged contexts: sequence b holds T - floor(b*T/(2B)) tokens before the prefill")
      .Text("weights-dtype", "DTYPE",
            "projection weights held as f32, bf16, f16 or fp8 (DeepSeek's E4M3 with 128x128 "
            "block scales)",
            "f32")
      .Text("mla", "FORM", "MLA models only: naive, absorbed, auto or all", "all")
      .Switch("roof",
              "also compare each decode step's weight + cache bytes with the measured DRAM read "
              "roof (attn bench peak; measured and cached on first use)");
  AddThreadsFlag(flags);
  flags.Integer("seed", "N", "random seed of weights and tokens", "0")
      .Switch("pin", "bind each pool thread to its own CPU")
      .Switch("json", "print one JSON object");
  AddParallelFlags(flags);
  if (!flags.Parse(args)) return 0;
  const ParallelRun run = StartParallel(flags);
  const std::string config_path =
      flags.Has("preset") ? "preset:" + flags.Required("preset") : flags.Get("config", "");
  const ModelConfig config = ConfigFromFlags(flags).config;
  const int64_t prefill = flags.GetInt("prefill");
  Check(prefill >= 1, ErrorKind::kInvalidArgument, "--prefill must be >= 1 tokens");
  const int64_t decode = flags.GetInt("decode");
  Check(decode >= 0, ErrorKind::kInvalidArgument, "--decode must be >= 0 steps");
  const int64_t context = flags.GetInt("context");
  Check(context >= 0, ErrorKind::kInvalidArgument, "--context must be >= 0");
  const int64_t batch = flags.GetInt("batch");
  Check(batch >= 1 && batch <= 4096, ErrorKind::kInvalidArgument, "--batch must lie in [1, 4096]");
  CacheSetup setup;
  setup.page_size = flags.GetInt("page-size");
  Check(setup.page_size == 0 ||
            (setup.page_size >= 16 && setup.page_size <= 256 && setup.page_size % 16 == 0),
        ErrorKind::kInvalidArgument,
        "--page-size must be 0 (contiguous) or a multiple of 16 in [16, 256]");
  setup.dtype = StorageDTypeFromString(flags.Get("dtype"), /*allow_quantized=*/true);
  Check(!IsQuantizedKV(setup.dtype) || setup.page_size > 0, ErrorKind::kInvalidArgument,
        "--dtype fp8/int8 needs --page-size (quantized storage is paged-only)");
  setup.ragged = flags.Has("ragged");
  const std::string mla = flags.Get("mla");
  Check(config.kind == AttentionKind::kMla || !flags.Has("mla"), ErrorKind::kInvalidArgument,
        "--mla applies only to MLA models; '" + config.model_type + "' is GQA-family");
  std::vector<MlaForm> forms;
  if (config.kind == AttentionKind::kMla) {
    if (mla == "all") {
      forms = {MlaForm::kNaive, MlaForm::kAbsorbed, MlaForm::kAuto};
    } else {
      forms = {MlaFormFromString(mla)};
    }
  } else {
    forms = {MlaForm::kAuto};  // ignored by GQA-family layers
  }
  const int threads = ApplyThreadsFlag(flags);
  const bool pinned = flags.Has("pin") && PinPoolThreads();
  const uint64_t seed = static_cast<uint64_t>(flags.GetInt("seed"));

  const DType weights_dtype = WeightDTypeFromString(flags.Get("weights-dtype"), true);
  // Roofs first (when asked): their DRAM buffers are freed before the weights are allocated.
  double dram_read_gbps = 0.0;
  if (flags.Has("roof")) {
    dram_read_gbps = PeakForThreads(threads, bench::PeakOptions{}).ForThreads(threads)->dram_gbps;
  }
  Check(!run.mode || setup.page_size == 0, ErrorKind::kUnsupported,
        "--parallel runs contiguous caches only; drop --page-size");
  NamedWeights weights =
      StoreAttentionWeights(config, RandomAttentionWeights(config, seed), weights_dtype);
  if (run.mode == ParallelMode::kTensor) {
    weights = ShardAttentionWeights(config, std::move(weights),
                                    Shard{run.comm->rank(), run.comm->world()});
  }
  // Under --parallel: the bytes this rank holds (tp: its heads' slices).
  int64_t weight_bytes = 0;
  for (const auto& entry : weights) weight_bytes += static_cast<int64_t>(entry.second.nbytes());
  std::unique_ptr<AttentionLayer> layer;
  if (run.mode == ParallelMode::kTensor) {
    layer = MakeTensorParallelLayer(config, 0, std::move(weights), run.comm);
  } else {
    layer = BuildAttentionLayer(config, 0, std::move(weights));
    if (run.mode == ParallelMode::kData) layer = MakeDataParallelLayer(std::move(layer), run.comm);
    if (run.mode == ParallelMode::kContext) {
      layer = MakeContextParallelLayer(std::move(layer), run.comm);
    }
  }

  std::vector<FormResult> results;
  for (MlaForm form : forms) {
    const std::string name = config.kind == AttentionKind::kMla ? MlaFormName(form) : "gqa";
    results.push_back(BenchForm(*layer, form, name, setup, batch, context, prefill, decode, seed));
    // A decode step reads every weight once and each sequence's cache (context + prefill + the
    // steps so far; the mean over the run's steps).
    FormResult& r = results.back();
    int64_t cached = 0;  // tokens in all caches before the prefill
    for (int64_t b = 0; b < batch; ++b) cached += ContextOf(b, batch, context, setup.ragged);
    const double mean_tokens = static_cast<double>(cached + batch * prefill) +
                               static_cast<double>(batch) * static_cast<double>(decode + 1) / 2.0;
    // dp and cp split the cache's tokens across ranks: a rank reads 1/world of them (tp's
    // cache_bytes_per_token is already its heads' share).
    const bool tokens_split = run.mode == ParallelMode::kData || run.mode == ParallelMode::kContext;
    const double share = tokens_split ? 1.0 / static_cast<double>(run.comm->world()) : 1.0;
    r.decode_bytes_per_step = static_cast<double>(weight_bytes) +
                              share * mean_tokens * static_cast<double>(r.cache_bytes_per_token);
  }

  json forms_json = json::array();
  const FormResult* naive = nullptr;
  const FormResult* automatic = nullptr;
  for (const FormResult& r : results) {
    if (r.form == "naive") naive = &r;
    if (r.form == "auto") automatic = &r;
    forms_json.push_back(
        {{"form", r.form},
         {"cache_bytes_per_token", r.cache_bytes_per_token},
         {"cache_bytes", r.cache_bytes},
         {"prefill_s", r.prefill_s},
         {"prefill_tokens_per_s", static_cast<double>(batch * prefill) / r.prefill_s},
         {"decode_ms_per_token", r.decode_ms_median},
         {"decode_ms_mean", r.decode_ms_mean},
         {"decode_tokens_per_s",
          r.decode_ms_median > 0.0 ? 1e3 * static_cast<double>(batch) / r.decode_ms_median : 0.0},
         {"decode_bytes_per_step", r.decode_bytes_per_step},
         {"decode_gbps",
          r.decode_ms_median > 0.0 ? r.decode_bytes_per_step / (r.decode_ms_median * 1e6) : 0.0},
         {"rss_bytes", r.rss_bytes},
         {"peak_rss_bytes", r.peak_rss_bytes}});
    if (dram_read_gbps > 0.0 && r.decode_ms_median > 0.0) {
      forms_json.back()["decode_dram_roof_fraction"] =
          r.decode_bytes_per_step / (r.decode_ms_median * 1e6) / dram_read_gbps;
    }
  }
  json result = {{"command", "layer"},
                 {"config", config_path},
                 {"model_type", config.model_type},
                 {"hidden_size", config.hidden_size},
                 {"heads", config.num_heads},
                 {"dtype", flags.Get("dtype", "f32")},
                 {"batch", batch},
                 {"page_size", setup.page_size},
                 {"ragged", setup.ragged},
                 {"context", context},
                 {"prefill", prefill},
                 {"decode", decode},
                 {"threads", threads},
                 {"pinned", pinned},
                 {"weights_dtype", flags.Get("weights-dtype")},
                 {"weights_bytes", weight_bytes},
                 {"process_threads", ProcessThreads()},
                 {"forms", forms_json}};
  if (dram_read_gbps > 0.0) result["dram_read_gbps"] = dram_read_gbps;
  if (run.mode) {
    // Every rank ran every step (each step waits for its peers), so rank 0's times are the
    // run's; memory is per rank, the largest reported.
    int64_t peak_rss = 0;
    for (const FormResult& r : results) peak_rss = std::max<int64_t>(peak_rss, r.peak_rss_bytes);
    const std::vector<int64_t> peaks = run.comm->AllGatherInt(peak_rss);
    result["parallel"] = ParallelModeName(*run.mode);
    result["world"] = run.comm->world();
    result["max_rank_peak_rss_bytes"] = *std::max_element(peaks.begin(), peaks.end());
    if (!run.writes_output()) return 0;
  }
  if (naive != nullptr && automatic != nullptr) {
    result["auto_vs_naive_decode_speedup"] =
        automatic->decode_ms_median > 0.0 ? naive->decode_ms_median / automatic->decode_ms_median
                                          : 0.0;
    result["naive_vs_auto_cache_ratio"] = static_cast<double>(naive->cache_bytes_per_token) /
                                          static_cast<double>(automatic->cache_bytes_per_token);
  }
  if (flags.Has("json")) {
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }
  std::printf(
      "attn bench layer: %s (hidden %lld, %lld heads), %s cache%s, batch %lld, context %lld%s + "
      "prefill %lld + decode %lld, %d thread(s)%s\nweights %.1f MiB (%s%s); decode ms/step is "
      "the time of one step (one token for each sequence)\n\n",
      config.model_type.c_str(), static_cast<long long>(config.hidden_size),
      static_cast<long long>(config.num_heads), flags.Get("dtype", "f32").c_str(),
      setup.page_size > 0 ? (" in pages of " + std::to_string(setup.page_size)).c_str() : "",
      static_cast<long long>(batch), static_cast<long long>(context),
      setup.ragged ? " (ragged)" : "", static_cast<long long>(prefill),
      static_cast<long long>(decode), threads,
      run.mode ? (" per rank, " + std::to_string(run.comm->world()) + " ranks (--parallel " +
                  ParallelModeName(*run.mode) + ")")
                     .c_str()
               : "",
      static_cast<double>(weight_bytes) / 1048576.0, flags.Get("weights-dtype").c_str(),
      run.mode ? ", this rank's" : "");
  std::printf("%-9s %12s %12s %14s %14s %12s %12s\n", "form", "cache B/tok", "cache MiB",
              "prefill tok/s", "decode ms/step", "decode GB/s", "peak RSS MiB");
  for (const FormResult& r : results) {
    std::printf(
        "%-9s %12lld %12.1f %14.1f %14.3f %12.2f %12.1f\n", r.form.c_str(),
        static_cast<long long>(r.cache_bytes_per_token),
        static_cast<double>(r.cache_bytes) / 1048576.0,
        static_cast<double>(batch * prefill) / r.prefill_s, r.decode_ms_median,
        r.decode_ms_median > 0.0 ? r.decode_bytes_per_step / (r.decode_ms_median * 1e6) : 0.0,
        static_cast<double>(r.peak_rss_bytes) / 1048576.0);
  }
  if (dram_read_gbps > 0.0) {
    std::printf(
        "\ndecode GB/s = (weights + mean cache) bytes per step / median step time; DRAM "
        "read roof %.1f GB/s\n",
        dram_read_gbps);
  }
  if (result.contains("auto_vs_naive_decode_speedup")) {
    std::printf("\nauto vs naive: decode %.2fx faster per step, cache %.1fx smaller\n",
                result["auto_vs_naive_decode_speedup"].get<double>(),
                result["naive_vs_auto_cache_ratio"].get<double>());
  }
  std::printf(
      "(peak RSS is the process's, so it only grows from one form to the next; run one\n"
      " --mla form per process to read each form's own peak)\n");
  return 0;
}

// ---- peak --------------------------------------------------------------------------------

int RunPeakBench(const std::vector<std::string>& args) {
  Flags flags("bench peak",
              "Measures this machine's roofs (fp32 FMA and bf16-dot GFLOP/s, DRAM read GB/s "
              "and STREAM's triad) per thread count and caches them.");
  flags.Integer("max-threads", "N", "measure 1 to N threads, N <= 4096 (default: every CPU)");
  AddPeakFlags(flags, true);
  flags.Switch("reset", "replace the cached roofs instead of keeping the higher of old and new")
      .Switch("json", "print one JSON object");
  if (!flags.Parse(args)) return 0;
  bench::PeakOptions options = PeakOptionsFrom(flags);
  if (flags.Has("max-threads")) {
    const int64_t max_threads = flags.GetInt("max-threads");
    Check(max_threads >= 1 && max_threads <= 4096, ErrorKind::kInvalidArgument,
          "--max-threads must lie in [1, 4096]");
    for (int n = 1; n <= max_threads; ++n) options.thread_counts.push_back(n);
  }
  const bench::MachinePeak fresh = bench::MeasurePeak(options);
  const std::string path = bench::PeakCachePath();
  const auto cached = flags.Has("reset") ? std::nullopt : bench::LoadPeak(path);
  const bench::MachinePeak peak = cached ? bench::MergePeaks(*cached, fresh) : fresh;
  bench::StorePeak(path, peak);
  json result = bench::PeakToJson(peak);
  result["command"] = "peak";
  result["peak_file"] = path;
  result["merged_with_cache"] = cached.has_value();
  result["this_run"] = bench::PeakToJson(fresh)["points"];
  if (flags.Has("json")) {
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }
  std::printf(
      "attn bench peak: %s, %d logical CPUs; fp32 loop %s, bf16 loop %s;\n"
      "DRAM as STREAM measures it: three arrays of %.0f MiB together, read, and triad\n"
      "a = b + 3c at 24 bytes per element. Best of %d trials (median in brackets)%s.\n\n",
      peak.cpu_model.c_str(), peak.logical_cpus, peak.fp32_isa.c_str(), peak.bf16_isa.c_str(),
      static_cast<double>(peak.dram_buffer_bytes) / 1048576.0, options.trials,
      cached ? ", each the higher of this run and the cached roofs (--reset: this run only)" : "");
  std::printf("%7s %24s %24s %22s %22s\n", "threads", "fp32 FMA GFLOP/s", "bf16 dot GFLOP/s",
              "DRAM read GB/s", "DRAM triad GB/s");
  for (const bench::PeakPoint& p : peak.points) {
    std::printf("%7d %13.1f [%8.1f] %13.1f [%8.1f] %11.1f [%8.1f] %11.1f [%8.1f]\n", p.threads,
                p.fp32_gflops, p.fp32_gflops_median, p.bf16_gflops, p.bf16_gflops_median,
                p.dram_gbps, p.dram_gbps_median, p.dram_triad_gbps, p.dram_triad_gbps_median);
  }
  std::printf("\ncached in %s\n", path.c_str());
  return 0;
}

// ---- compare-torch -----------------------------------------------------------------------

// Hands over to scripts/compare_torch.py with this binary as the attn to measure.
int RunCompareTorch(const std::vector<std::string>& args) {
  char self[4096];
  const ssize_t length = readlink("/proc/self/exe", self, sizeof(self) - 1);
  Check(length > 0, ErrorKind::kIo, "cannot find the attn binary's own path");
  self[length] = '\0';
  const std::string script = std::string(ATTN_SOURCE_DIR) + "/scripts/compare_torch.py";
  Check(access(script.c_str(), R_OK) == 0, ErrorKind::kNotFound,
        script + " not found (--compare-torch runs it from the source tree)");
  std::vector<std::string> argv_strings = {"python3", script, "--attn", self};
  argv_strings.insert(argv_strings.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_strings) argv.push_back(arg.data());
  argv.push_back(nullptr);
  std::fflush(stdout);
  execv("/usr/bin/python3", argv.data());
  throw Error(ErrorKind::kIo, "cannot run /usr/bin/python3 " + script);
}

// ---- linear ------------------------------------------------------------------------------

// W bytes the rotation must cover for every call to stream W from DRAM: four last-level caches
// (a copy used again is long evicted), 1 GiB where sysfs does not say.
int64_t LinearRotationBytes() {
  const int64_t llc = bench::LastLevelCacheBytes();
  return llc > 0 ? 4 * llc : int64_t{1} << 30;
}

int RunLinearBench(const std::vector<std::string>& args) {
  Flags flags("bench linear",
              "Times one projection y = x W^T + b (the default backend's linear) with W streamed "
              "from DRAM (several copies of W are rotated when one would fit in the caches), "
              "against the DRAM read roof.");
  flags.Integer("rows", "R", "rows of x (tokens of a decode step), 1 to 4096")
      .Mandatory()
      .Integer("in", "I", "input features (W's columns)")
      .Mandatory()
      .Integer("out", "O", "output features (W's rows)")
      .Mandatory()
      .Switch("bias", "add a bias vector");
  AddThreadsFlag(flags);
  flags
      .Integer("repeat", "N", "timed calls after one warm-up pass, 1 to 100000; the median counts",
               "50")
      .Integer("seed", "N", "random seed of the inputs", "1")
      .Text("backend", "NAME", "default or reference", "default")
      .Text("weights-dtype", "DTYPE",
            "W held as f32, bf16, f16 or fp8 (E4M3 with 128x128 block scales)", "f32");
  AddPeakFlags(flags, false);
  flags.Switch("pin", "bind each pool thread to its own CPU")
      .Switch("json", "print one JSON object");
  if (!flags.Parse(args)) return 0;
  const int64_t rows = flags.GetInt("rows");
  Check(rows >= 1 && rows <= 4096, ErrorKind::kInvalidArgument, "--rows must lie in [1, 4096]");
  const int64_t in = flags.GetInt("in");
  const int64_t out = flags.GetInt("out");
  Check(in >= 1 && out >= 1 && in <= (int64_t{1} << 20) && out <= (int64_t{1} << 20),
        ErrorKind::kInvalidArgument, "--in and --out must lie in [1, 1048576]");
  const int64_t repeat = flags.GetInt("repeat");
  Check(repeat >= 1 && repeat <= 100000, ErrorKind::kInvalidArgument,
        "--repeat must lie in [1, 100000]");
  const std::string backend_name = flags.Get("backend");
  Check(backend_name == "default" || backend_name == "reference", ErrorKind::kInvalidArgument,
        "--backend must be default or reference, got '" + backend_name + "'");
  const KernelBackend& backend =
      backend_name == "reference" ? ReferenceBackend() : DefaultBackend();
  const int threads = ApplyThreadsFlag(flags);
  const bool pinned = flags.Has("pin") && PinPoolThreads();
  const uint64_t seed = static_cast<uint64_t>(flags.GetInt("seed"));

  // Roofs first: their DRAM buffer is freed before the weights are allocated.
  const bench::MachinePeak peak = PeakForThreads(threads, PeakOptionsFrom(flags));
  const bench::PeakPoint& roofs = *peak.ForThreads(threads);

  const DType weights_dtype = WeightDTypeFromString(flags.Get("weights-dtype"), true);
  const auto make_weight = [&](uint64_t c) {
    return StoreMatrix(RandomUniform({out, in}, seed + 10 + c, 0.05f), weights_dtype);
  };
  std::vector<Weight> weights;
  weights.push_back(make_weight(0));
  const int64_t weight_bytes = static_cast<int64_t>(weights.front().nbytes());
  const int64_t copies =
      std::max<int64_t>(1, (LinearRotationBytes() + weight_bytes - 1) / weight_bytes);
  for (int64_t c = 1; c < copies; ++c) weights.push_back(make_weight(static_cast<uint64_t>(c)));
  const Tensor x = RandomUniform({rows, in}, seed, 1.0f);
  const Tensor bias = RandomUniform({out}, seed + 1, 1.0f);
  Tensor y = RandomUniform({rows, out}, seed + 2, 1.0f);  // touched before timing
  const float* bias_data = flags.Has("bias") ? bias.data() : nullptr;
  // Warm-up: one call per copy (page tables, the backend's primitives and workspaces), leaving
  // the last copy in cache and the first long evicted.
  for (const Weight& w : weights)
    backend.linear(MakeLinearProblem(x.data(), rows, w, bias_data, y.data()));
  std::vector<double> times;
  for (int64_t r = 0; r < repeat; ++r) {
    const LinearProblem problem = MakeLinearProblem(
        x.data(), rows, weights[static_cast<size_t>(r % copies)], bias_data, y.data());
    const Clock::time_point start = Clock::now();
    backend.linear(problem);
    times.push_back(Seconds(start, Clock::now()));
  }
  const double median = bench::Median(times);
  const double min_s = *std::min_element(times.begin(), times.end());
  const double max_s = *std::max_element(times.begin(), times.end());
  const double fp32_now = bench::ProbeFp32Now(threads, 0.02);
  const double bytes = static_cast<double>(weight_bytes);
  const double gbps = bytes / median / 1e9;
  const double fraction = roofs.dram_gbps > 0.0 ? gbps / roofs.dram_gbps : 0.0;
  const json result = {
      {"command", "linear"},
      {"backend", backend.name},
      {"rows", rows},
      {"in", in},
      {"out", out},
      {"bias", bias_data != nullptr},
      {"weights_dtype", flags.Get("weights-dtype")},
      {"threads", threads},
      {"pinned", pinned},
      {"repeat", repeat},
      {"weight_bytes", weight_bytes},
      {"weight_copies", copies},
      {"median_s", median},
      {"min_s", min_s},
      {"max_s", max_s},
      {"times_s", times},
      {"flops", 2.0 * static_cast<double>(rows) * static_cast<double>(in * out)},
      {"weight_gbps", gbps},
      {"weight_gbps_best", bytes / min_s / 1e9},
      {"weight_gbps_worst", bytes / max_s / 1e9},
      {"peak_gbps", roofs.dram_gbps},
      {"peak_fraction", fraction},
      {"fp32_gflops_now", fp32_now},
      {"machine_share", roofs.fp32_gflops > 0.0 ? fp32_now / roofs.fp32_gflops : 0.0},
      {"peak_file", bench::PeakCachePath()},
  };
  if (flags.Has("json")) {
    std::printf("%s\n", result.dump().c_str());
    return 0;
  }
  std::printf(
      "attn bench linear: rows %lld, in %lld, out %lld%s, %s W %.1f MiB (%lld copies rotated), "
      "%d thread(s), backend %s\n"
      "  median %.6f s over %lld calls (min %.6f s, max %.6f s)\n"
      "  W read at %.2f GB/s (min time: %.2f, max time: %.2f)\n"
      "  DRAM read roof %.1f GB/s -> %.1f%% of the roof; an fp32 FMA probe right after reached "
      "%.0f%% of the fp32 roof\n",
      static_cast<long long>(rows), static_cast<long long>(in), static_cast<long long>(out),
      bias_data != nullptr ? " + bias" : "", flags.Get("weights-dtype").c_str(), bytes / 1048576.0,
      static_cast<long long>(copies), threads, backend.name, median, static_cast<long long>(repeat),
      min_s, max_s, gbps, bytes / min_s / 1e9, bytes / max_s / 1e9, roofs.dram_gbps,
      100.0 * fraction, 100.0 * result["machine_share"].get<double>());
  return 0;
}

}  // namespace

int RunBench(const std::vector<std::string>& args) {
  const std::vector<Subcommand> modes = {
      {"kernel", "one attention call at a given shape against this machine's roofs",
       RunKernelBench},
      {"layer", "prefill/decode speed of one layer of a config, per MLA form", RunLayerBench},
      {"linear", "one projection with W streamed from DRAM against the DRAM read roof",
       RunLinearBench},
      {"peak", "measure the roofs: fp32/bf16 GFLOP/s and DRAM GB/s per thread count", RunPeakBench},
      {"--compare-torch", "the kernel cases through PyTorch too (scripts/compare_torch.py)",
       RunCompareTorch},
  };
  const std::string usage = SubcommandUsage("attn bench", modes,
                                            "Run 'attn bench <command> --help' for its options "
                                            "(--compare-torch --help: the script's).\n");
  if (!args.empty() && (args[0] == "--help" || args[0] == "-h")) {
    std::fputs(usage.c_str(), stdout);
    return 0;
  }
  if (args.empty()) throw UsageError("which bench command?", usage);
  const std::vector<std::string> rest(args.begin() + 1, args.end());
  for (const Subcommand& mode : modes) {
    if (args[0] == mode.name) return mode.run(rest);
  }
  throw UsageError("unknown bench command '" + args[0] + "'", usage);
}

}  // namespace attn::cli
