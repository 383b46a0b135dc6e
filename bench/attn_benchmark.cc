// SPDX-License-Identifier: Apache-2.0
// Google Benchmark suite over the cases of issue 3's performance table, through the same
// KernelCase buffers and counting formulas as `attn bench kernel`. Each case runs at 1 thread
// and at every thread of the machine; counters report GFLOP/s and unique K/V GB/s.
// The decode projection cases (BM_DecodeLinear*) time DefaultBackend().linear with W streamed
// from DRAM and report the weight bytes read per second, as `attn bench linear` does.
// The layer decode-step cases also count heap allocations per step: this binary links
// bench/alloc_counter.cc, which replaces the global operator new (only here, never in libattn
// or the attn CLI).
//   build-*/attn_benchmark --benchmark_filter=decode
#include <benchmark/benchmark.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "attn/kernels.h"
#include "attn/layer_weights.h"
#include "attn/presets.h"
#include "attn/threads.h"
#include "bench/alloc_counter.h"
#include "bench/kernel_case.h"
#include "bench/peak.h"

namespace attn::bench {
namespace {

KernelShape Gqa(int64_t heads, int64_t kv_heads, int64_t q_len, int64_t kv_len, bool causal,
                DType dtype) {
  KernelShape shape;
  shape.variant = Variant::kGqa;
  shape.heads = heads;
  shape.kv_heads = kv_heads;
  shape.head_dim = 128;
  shape.q_len = q_len;
  shape.kv_len = kv_len;
  shape.causal = causal;
  shape.dtype = dtype;
  return NormalizeKernelShape(shape);
}

KernelShape MlaDecode(int64_t kv_len) {
  KernelShape shape;
  shape.variant = Variant::kMla;
  shape.heads = 128;
  shape.q_len = 1;
  shape.kv_len = kv_len;
  shape.dtype = DType::kBF16;
  return NormalizeKernelShape(shape);
}

// state.range(0) = threads.
void RunCase(benchmark::State& state, const KernelShape& shape) {
  SetNumThreads(static_cast<int>(state.range(0)));
  const KernelCase kernel_case(shape, 1);
  kernel_case.Run(DefaultBackend());  // warm-up
  for (auto _ : state) {
    kernel_case.Run(DefaultBackend());
    benchmark::ClobberMemory();
  }
  // Rates per second of real time (the suite uses UseRealTime): 1000-based, so "G/s" is GFLOP/s.
  state.counters["FLOP/s"] =
      benchmark::Counter(KernelFlops(shape), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::OneK::kIs1000);
  state.counters["KV_B/s"] =
      benchmark::Counter(KernelKvBytes(shape), benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::OneK::kIs1000);
  state.SetLabel(std::string(DefaultBackend().name));
}

void ThreadArgs(benchmark::internal::Benchmark* b) {
  const int most = static_cast<int>(std::thread::hardware_concurrency());
  b->ArgName("threads")->Arg(1);
  if (most > 1) b->Arg(most);
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

void BM_PrefillGqaF32(benchmark::State& state) {
  RunCase(state, Gqa(32, 8, 2048, 2048, true, DType::kF32));
}
void BM_PrefillGqaBf16(benchmark::State& state) {
  RunCase(state, Gqa(32, 8, 2048, 2048, true, DType::kBF16));
}
void BM_DecodeGqaBf16(benchmark::State& state) {
  RunCase(state, Gqa(32, 8, 1, 16384, false, DType::kBF16));
}
void BM_DecodeMqaBf16(benchmark::State& state) {
  RunCase(state, Gqa(32, 1, 1, 16384, false, DType::kBF16));
}
void BM_DecodeMhaBf16(benchmark::State& state) {
  RunCase(state, Gqa(32, 32, 1, 16384, false, DType::kBF16));
}
void BM_DecodeMlaAbsorbedBf16(benchmark::State& state) { RunCase(state, MlaDecode(4096)); }

// One decode step of a whole layer (projections, RoPE, cache append, attention) for a real
// model's shape at a 4096-token context, batch 1, bf16 cache; reports heap allocations per
// step after the warm-up step (a serving loop's steady state should allocate nothing).
void RunLayerDecode(benchmark::State& state, const std::string& preset, MlaForm form) {
  SetNumThreads(static_cast<int>(state.range(0)));
  const ModelConfig config = LoadPreset(preset);
  const std::unique_ptr<AttentionLayer> layer =
      BuildAttentionLayer(config, 0, RandomAttentionWeights(config, 1));
  constexpr int64_t kContext = 4096;
  const int64_t capacity = kContext + 1 + static_cast<int64_t>(state.max_iterations);
  std::unique_ptr<Cache> cache = layer->NewCache(1, capacity, DType::kBF16, form);
  {
    const Tensor prompt = RandomUniform({1, kContext, config.hidden_size}, 2, 1.0f);
    layer->Step({&prompt, {}, {}}, *cache, form);
  }
  const Tensor token = RandomUniform({1, 1, config.hidden_size}, 3, 1.0f);
  Tensor out;
  layer->StepInto({&token, {}, {}}, *cache, form, out);  // warm-up: workspaces grow once
  const AllocationStats before = AllocationsSoFar();
  for (auto _ : state) {
    layer->StepInto({&token, {}, {}}, *cache, form, out);
    benchmark::ClobberMemory();
  }
  const AllocationStats after = AllocationsSoFar();
  if (AllocationCountingEnabled()) {
    state.counters["allocs/step"] = benchmark::Counter(
        static_cast<double>(after.count - before.count), benchmark::Counter::kAvgIterations);
    state.counters["alloc_B/step"] = benchmark::Counter(
        static_cast<double>(after.bytes - before.bytes), benchmark::Counter::kAvgIterations);
  }
}

void BM_LayerDecodeLlama3_8B(benchmark::State& state) {
  RunLayerDecode(state, "llama-3-8b", MlaForm::kAuto);
}
void BM_LayerDecodeDeepSeekV2LiteAbsorbed(benchmark::State& state) {
  RunLayerDecode(state, "deepseek-v2-lite", MlaForm::kAbsorbed);
}

// One projection of a decode step, y = x Wᵀ with x [rows, in], W [out, in] fp32; enough copies
// of W are rotated (four last-level caches' worth) that every call reads W from DRAM.
// state.range(0) = threads.
void RunLinear(benchmark::State& state, int64_t rows, int64_t in, int64_t out) {
  SetNumThreads(static_cast<int>(state.range(0)));
  const int64_t weight_bytes = in * out * static_cast<int64_t>(sizeof(float));
  const int64_t llc = LastLevelCacheBytes();
  const int64_t rotation = llc > 0 ? 4 * llc : int64_t{1} << 30;
  const int64_t copies = std::max<int64_t>(1, (rotation + weight_bytes - 1) / weight_bytes);
  std::vector<Tensor> weights;
  for (int64_t c = 0; c < copies; ++c) {
    weights.push_back(RandomUniform({out, in}, 10 + static_cast<uint64_t>(c), 0.05f));
  }
  const Tensor x = RandomUniform({rows, in}, 1, 1.0f);
  Tensor y = RandomUniform({rows, out}, 2, 1.0f);
  LinearProblem problem;
  problem.x = x.data();
  problem.rows = rows;
  problem.in = in;
  problem.out = out;
  problem.y = y.data();
  for (const Tensor& w : weights) {  // warm-up: page tables, workspaces
    problem.w = w.data();
    DefaultBackend().linear(problem);
  }
  size_t next = 0;
  for (auto _ : state) {
    problem.w = weights[next].data();
    next = (next + 1) % weights.size();
    DefaultBackend().linear(problem);
    benchmark::ClobberMemory();
  }
  state.counters["W_B/s"] = benchmark::Counter(static_cast<double>(weight_bytes),
                                               benchmark::Counter::kIsIterationInvariantRate,
                                               benchmark::Counter::OneK::kIs1000);
  state.SetLabel(std::string(DefaultBackend().name));
}

// Llama-3-8B q_proj/o_proj and k_proj/v_proj; DeepSeek-V3 q_b_proj, kv_b_proj and o_proj; one
// token and eight (batched or speculative decode).
void BM_DecodeLinearLlamaQ_1(benchmark::State& state) { RunLinear(state, 1, 4096, 4096); }
void BM_DecodeLinearLlamaQ_8(benchmark::State& state) { RunLinear(state, 8, 4096, 4096); }
void BM_DecodeLinearLlamaKV_1(benchmark::State& state) { RunLinear(state, 1, 4096, 1024); }
void BM_DecodeLinearDeepSeekQB_1(benchmark::State& state) { RunLinear(state, 1, 1536, 24576); }
void BM_DecodeLinearDeepSeekQB_8(benchmark::State& state) { RunLinear(state, 8, 1536, 24576); }
void BM_DecodeLinearDeepSeekKVB_1(benchmark::State& state) { RunLinear(state, 1, 512, 32768); }
void BM_DecodeLinearDeepSeekO_1(benchmark::State& state) { RunLinear(state, 1, 16384, 7168); }
void BM_DecodeLinearDeepSeekO_8(benchmark::State& state) { RunLinear(state, 8, 16384, 7168); }

BENCHMARK(BM_PrefillGqaF32)->Apply(ThreadArgs);
BENCHMARK(BM_PrefillGqaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeGqaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeMqaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeMhaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeMlaAbsorbedBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearLlamaQ_1)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearLlamaQ_8)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearLlamaKV_1)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearDeepSeekQB_1)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearDeepSeekQB_8)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearDeepSeekKVB_1)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearDeepSeekO_1)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeLinearDeepSeekO_8)->Apply(ThreadArgs);
BENCHMARK(BM_LayerDecodeLlama3_8B)->Apply(ThreadArgs);
BENCHMARK(BM_LayerDecodeDeepSeekV2LiteAbsorbed)->Apply(ThreadArgs);

}  // namespace
}  // namespace attn::bench

BENCHMARK_MAIN();
