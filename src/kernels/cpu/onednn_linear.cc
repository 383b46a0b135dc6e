// SPDX-License-Identifier: Apache-2.0
// Linear layers through oneDNN's matmul (measured fastest of the GEMM candidates on this
// machine kind; see docs/performance.md). y[rows, out] = x[rows, in] · Wᵀ + b with W stored
// [out, in] row-major, which is oneDNN's "ba" layout of a [in, out] weight: no repacking.
// Primitives are created once per shape, thread and thread count, then reused with new data
// pointers.
//
// Threads: Debian's oneDNN runs on libgomp's OpenMP pool, not on attn's. So that --threads,
// ATTN_NUM_THREADS and attn.set_num_threads() govern it too, every call first sets the calling
// thread's OpenMP thread count to attn's (omp_set_num_threads acts per calling thread, so it is
// done here, on the thread that runs the matmul, and not once at start-up). A primitive fixes
// its thread split when it is created, hence the thread count in the cache key.
#include <omp.h>

#include <dnnl.hpp>
#include <map>
#include <memory>
#include <tuple>
#include <unordered_map>

#include "attn/kernels.h"
#include "attn/threads.h"

namespace attn::cpu {
namespace {

using Tag = dnnl::memory::format_tag;
using DataType = dnnl::memory::data_type;

struct MatmulKey {
  int64_t rows, in, out;
  bool bias;
  int threads;
  bool operator<(const MatmulKey& other) const {
    return std::tie(rows, in, out, bias, threads) <
           std::tie(other.rows, other.in, other.out, other.bias, other.threads);
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
    const dnnl::memory::desc x({key.rows, key.in}, DataType::f32, Tag::ab);
    const dnnl::memory::desc w({key.in, key.out}, DataType::f32, Tag::ba);
    const dnnl::memory::desc y({key.rows, key.out}, DataType::f32, Tag::ab);
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

}  // namespace

void OneDnnLinear(const LinearProblem& p) {
  if (p.rows == 0) return;
  const int threads = NumThreads();
  if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
  const Matmul& mm = MatmulFor({p.rows, p.in, p.out, p.bias != nullptr, threads});
  thread_local dnnl::stream stream(Engine());
  // oneDNN takes non-const handles; it only reads x, w and b.
  mm.x.set_data_handle(const_cast<float*>(p.x));
  mm.w.set_data_handle(const_cast<float*>(p.w));
  mm.y.set_data_handle(p.y);
  if (p.bias != nullptr) mm.b.set_data_handle(const_cast<float*>(p.bias));
  mm.primitive.execute(stream, mm.args);
  stream.wait();
}

}  // namespace attn::cpu
