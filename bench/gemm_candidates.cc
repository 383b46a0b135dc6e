// SPDX-License-Identifier: Apache-2.0
// The GEMM candidates for attn's projections, y[M, N] = x[M, K] · Wᵀ with W stored [N, K]
// (PyTorch/safetensors layout): oneDNN matmul (what attn uses for M > 4), OpenBLAS sgemm,
// Eigen, attn's small-batch dot-product kernel (what attn uses for M <= 4) and the reference
// loop. Run with the same thread count for all, e.g.
//   OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 ATTN_NUM_THREADS=2 build/gemm_candidates
// Results and the choice: docs/performance.md, "Projections".
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <Eigen/Core>
#include <vector>

#include "attn/kernels.h"
#include "attn/layer_weights.h"

namespace attn::cpu {
void OneDnnLinear(const LinearProblem& problem);
void SmallBatchLinear(const LinearProblem& problem);
void ReferenceLinear(const LinearProblem& problem);
}  // namespace attn::cpu

namespace {

struct Operands {
  attn::Tensor x, w;
  std::vector<float> y;
  Operands(int64_t m, int64_t k, int64_t n)
      : x(attn::RandomUniform({m, k}, 1, 1.0f)),
        w(attn::RandomUniform({n, k}, 2, 1.0f)),
        y(static_cast<size_t>(m * n)) {}
  attn::LinearProblem Problem(int64_t m, int64_t k, int64_t n) {
    return {x.data(), w.data(), nullptr, m, k, n, y.data()};
  }
};

void Report(benchmark::State& state, int64_t m, int64_t k, int64_t n) {
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * k * n),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1000);
}

template <void (*Linear)(const attn::LinearProblem&)>
void BM_AttnKernel(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Operands ops(m, k, n);
  const attn::LinearProblem problem = ops.Problem(m, k, n);
  for (auto _ : state) {
    Linear(problem);
    benchmark::DoNotOptimize(ops.y.data());
  }
  Report(state, m, k, n);
}

void BM_OpenBlas(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Operands ops(m, k, n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(m), static_cast<int>(n),
                static_cast<int>(k), 1.0f, ops.x.data(), static_cast<int>(k), ops.w.data(),
                static_cast<int>(k), 0.0f, ops.y.data(), static_cast<int>(n));
    benchmark::DoNotOptimize(ops.y.data());
  }
  Report(state, m, k, n);
}

void BM_Eigen(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Operands ops(m, k, n);
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const RowMajor> x(ops.x.data(), m, k), w(ops.w.data(), n, k);
  Eigen::Map<RowMajor> y(ops.y.data(), m, n);
  for (auto _ : state) {
    y.noalias() = x * w.transpose();
    benchmark::DoNotOptimize(ops.y.data());
  }
  Report(state, m, k, n);
}

// Decode (M = 1, 4), a short chunk (16) and prefill (128, 512) at Llama-like widths.
void Shapes(benchmark::internal::Benchmark* b) {
  for (int64_t m : {1, 4, 16, 128, 512}) b->Args({m, 4096, 4096});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}
void SmallShapes(benchmark::internal::Benchmark* b) {
  for (int64_t m : {1, 4, 16}) b->Args({m, 4096, 4096});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_AttnKernel<attn::cpu::OneDnnLinear>)->Name("onednn")->Apply(Shapes);
BENCHMARK(BM_OpenBlas)->Name("openblas")->Apply(Shapes);
BENCHMARK(BM_Eigen)->Name("eigen")->Apply(Shapes);
BENCHMARK(BM_AttnKernel<attn::cpu::SmallBatchLinear>)->Name("attn_small_batch")->Apply(SmallShapes);
BENCHMARK(BM_AttnKernel<attn::cpu::ReferenceLinear>)->Name("reference")->Apply(SmallShapes);

}  // namespace

BENCHMARK_MAIN();
