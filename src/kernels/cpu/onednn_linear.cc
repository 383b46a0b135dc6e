// SPDX-License-Identifier: Apache-2.0
// Linear layers through oneDNN's matmul (measured fastest of the GEMM candidates on this
// machine kind; see docs/performance.md). y[rows, out] = x[rows, in] · Wᵀ + b with W stored
// [out, in] row-major, which is oneDNN's "ba" layout of a [in, out] weight: no repacking.
// Primitives are created once per shape, thread and thread count, then reused with new data
// pointers.
//
// Stored weight dtypes (docs/architecture.md, "Weights"):
//   F32   an fp32 matmul straight from W.
//   BF16  a bf16 matmul straight from W (AMX or AVX512-BF16 where the CPU has them), x rounded to
//         bf16 once per call: the precision a bf16 checkpoint's own code runs at. fp32 results.
//   F8    tiles of a few hundred rows of W dequantized to bf16 (scale applied; DeepSeek's
//         reference dequantizes to bf16 the same way), each multiplied as a BF16 weight.
//   F16   tiles dequantized to fp32 (f16 widens exactly), multiplied in fp32.
// A tile is about 2 MiB, so W is never copied whole; each OpenMP thread dequantizes and
// multiplies its own tiles.
//
// Threads: Debian's oneDNN runs on libgomp's OpenMP pool, not on attn's. So that --threads,
// ATTN_NUM_THREADS and attn.set_num_threads() govern it too, every call first sets the calling
// thread's OpenMP thread count to attn's (omp_set_num_threads acts per calling thread, so it is
// done here, on the thread that runs the matmul, and not once at start-up). A primitive fixes
// its thread split when it is created, hence the thread count in the cache key.
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <dnnl.hpp>
#include <exception>
#include <map>
#include <memory>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "attn/kernels.h"
#include "attn/threads.h"
#include "kernels/cpu/dequantize.h"
#include "kernels/cpu/isa.h"

namespace attn::cpu {
namespace {

using Tag = dnnl::memory::format_tag;
using DataType = dnnl::memory::data_type;

struct MatmulKey {
  int64_t rows, in, out;
  int64_t y_stride;  // elements between rows of y (> out when a tile writes a slice of y)
  bool bias;
  bool bf16;  // x and W bf16 (y fp32), else all fp32
  int threads;
  bool operator<(const MatmulKey& other) const {
    return std::tie(rows, in, out, y_stride, bias, bf16, threads) <
           std::tie(other.rows, other.in, other.out, other.y_stride, other.bias, other.bf16,
                    other.threads);
  }
};

// A primitive with its memory objects and argument map, built once; a call only swaps the data
// pointers in, so it allocates nothing.
struct Matmul {
  dnnl::matmul primitive;
  dnnl::memory x, w, b, y;
  std::unordered_map<int, dnnl::memory> args;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// One cache per thread: oneDNN primitives with library-managed scratchpads must not run
// concurrently, and application threads (e.g. Python threads on different layers) may.
const Matmul& MatmulFor(const MatmulKey& key) {
  thread_local std::map<MatmulKey, std::unique_ptr<Matmul>> cache;
  std::unique_ptr<Matmul>& slot = cache[key];
  if (!slot) {
    auto made = std::make_unique<Matmul>();
    const DataType in_type = key.bf16 ? DataType::bf16 : DataType::f32;
    const dnnl::memory::desc x({key.rows, key.in}, in_type, Tag::ab);
    const dnnl::memory::desc w({key.in, key.out}, in_type, Tag::ba);
    const dnnl::memory::desc y({key.rows, key.out}, DataType::f32, {key.y_stride, 1});
    const dnnl::memory::desc b({1, key.out}, DataType::f32, Tag::ab);
    const dnnl::matmul::desc desc =
        key.bias ? dnnl::matmul::desc(x, w, b, y) : dnnl::matmul::desc(x, w, y);
    made->primitive = dnnl::matmul(dnnl::matmul::primitive_desc(desc, Engine()));
    // DNNL_MEMORY_NONE: no buffer is allocated; the handles are set per call.
    made->x = dnnl::memory(x, Engine(), DNNL_MEMORY_NONE);
    made->w = dnnl::memory(w, Engine(), DNNL_MEMORY_NONE);
    made->y = dnnl::memory(y, Engine(), DNNL_MEMORY_NONE);
    made->args = {{DNNL_ARG_SRC, made->x}, {DNNL_ARG_WEIGHTS, made->w}, {DNNL_ARG_DST, made->y}};
    if (key.bias) {
      made->b = dnnl::memory(b, Engine(), DNNL_MEMORY_NONE);
      made->args.emplace(DNNL_ARG_BIAS, made->b);
    }
    slot = std::move(made);
  }
  return *slot;
}

// y[:, first : first + out] (row stride y_stride) = x · Wᵀ + b for a W of `out` rows at w.
void RunMatmul(const void* x, const void* w, const float* bias, float* y, int64_t rows, int64_t in,
               int64_t out, int64_t y_stride, bool bf16, int threads) {
  const Matmul& mm = MatmulFor({rows, in, out, y_stride, bias != nullptr, bf16, threads});
  thread_local dnnl::stream stream(Engine());
  // oneDNN takes non-const handles; it only reads x, w and b.
  mm.x.set_data_handle(const_cast<void*>(x));
  mm.w.set_data_handle(const_cast<void*>(w));
  mm.y.set_data_handle(y);
  if (bias != nullptr) mm.b.set_data_handle(const_cast<float*>(bias));
  mm.primitive.execute(stream, mm.args);
  stream.wait();
}

// Whether the bf16 path runs: on the AVX-512 ISA (ATTN_CPU_ISA=reference, or an older CPU, takes
// fp32 tiles instead) and when this oneDNN builds a bf16 matmul here, asked once with a small one.
bool Bf16MatmulAvailable() {
  static const bool built = [] {
    try {
      const dnnl::memory::desc x({16, 32}, DataType::bf16, Tag::ab);
      const dnnl::memory::desc w({32, 16}, DataType::bf16, Tag::ba);
      const dnnl::memory::desc y({16, 16}, DataType::f32, Tag::ab);
      dnnl::matmul::primitive_desc(dnnl::matmul::desc(x, w, y), Engine());
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  }();
  return ActiveIsa().isa == Isa::kAvx512 && built;
}

// Rows of W per dequantized tile: about 2 MiB of tile (an L2's worth), a multiple of 64.
int64_t TileRows(int64_t in, size_t element_bytes, int64_t out) {
  const int64_t row_bytes = std::max<int64_t>(in, 1) * static_cast<int64_t>(element_bytes);
  int64_t rows = (int64_t{2} << 20) / row_bytes / 64 * 64;
  rows = std::max<int64_t>(rows, 64);
  return std::min(rows, out);
}

}  // namespace

void OneDnnLinear(const LinearProblem& p) {
  if (p.rows == 0) return;
  const int threads = NumThreads();
  if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
  if (p.w_dtype == DType::kF32) {
    RunMatmul(p.x, p.w, p.bias, p.y, p.rows, p.in, p.out, p.out, false, threads);
    return;
  }
  const bool bf16 = p.w_dtype != DType::kF16 && Bf16MatmulAvailable();
  const void* x = p.x;
  thread_local std::vector<uint16_t> x_bf16;
  if (bf16) {
    const size_t count = static_cast<size_t>(p.rows * p.in);
    if (x_bf16.size() < count) x_bf16.resize(count);
    RoundToBF16(p.x, p.rows * p.in, x_bf16.data());
    x = x_bf16.data();
  }
  if (p.w_dtype == DType::kBF16 && bf16) {
    RunMatmul(x, p.w, p.bias, p.y, p.rows, p.in, p.out, p.out, true, threads);
    return;
  }
  // F8_E4M3 -> bf16 tiles, F16 (or anything without a bf16 matmul) -> fp32 tiles. One OpenMP
  // region for the whole call: each thread takes every n-th tile, dequantizes it into its own
  // scratch and multiplies it alone (oneDNN runs a primitive sequentially inside a parallel
  // region). A fork/join per tile instead — a DeepSeek-V3 layer has ~150 tiles — measured 3-9x
  // slower on 2 threads, the idle team spinning between regions.
  const size_t element_bytes = bf16 ? sizeof(uint16_t) : sizeof(float);
  const int64_t tile_rows = TileRows(p.in, element_bytes, p.out);
  const int64_t tiles = (p.out + tile_rows - 1) / tile_rows;
  std::exception_ptr failure;
#pragma omp parallel num_threads(threads)
  {
    const int64_t team = omp_get_num_threads();
    thread_local std::vector<std::byte> tile;
    try {
      const size_t tile_bytes = static_cast<size_t>(tile_rows * p.in) * element_bytes;
      if (tile.size() < tile_bytes) tile.resize(tile_bytes);
      for (int64_t t = omp_get_thread_num(); t < tiles; t += team) {
        const int64_t first = t * tile_rows;
        const int64_t count = std::min(tile_rows, p.out - first);
        if (bf16) {
          DequantizeWeightRowsBF16(p, first, count, reinterpret_cast<uint16_t*>(tile.data()));
        } else {
          DequantizeWeightRows(p, first, count, reinterpret_cast<float*>(tile.data()));
        }
        RunMatmul(x, tile.data(), p.bias != nullptr ? p.bias + first : nullptr, p.y + first, p.rows,
                  p.in, count, p.out, bf16, /*threads=*/1);
      }
    } catch (...) {
      // An exception must not leave an OpenMP region; the first one is rethrown below.
#pragma omp critical(attn_onednn_linear_failure)
      if (!failure) failure = std::current_exception();
    }
  }
  if (failure) std::rethrow_exception(failure);
}

}  // namespace attn::cpu
