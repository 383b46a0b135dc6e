// Google Benchmark suite over the cases of issue 3's performance table, through the same
// KernelCase buffers and counting formulas as `attn bench kernel`. Each case runs at 1 thread
// and at every thread of the machine; counters report GFLOP/s and unique K/V GB/s.
//   build-*/attn_benchmark --benchmark_filter=decode
#include <benchmark/benchmark.h>

#include <string>
#include <thread>

#include "attn/kernels.h"
#include "attn/threads.h"
#include "bench/kernel_case.h"

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

BENCHMARK(BM_PrefillGqaF32)->Apply(ThreadArgs);
BENCHMARK(BM_PrefillGqaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeGqaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeMqaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeMhaBf16)->Apply(ThreadArgs);
BENCHMARK(BM_DecodeMlaAbsorbedBf16)->Apply(ThreadArgs);

}  // namespace
}  // namespace attn::bench

BENCHMARK_MAIN();
