// Linear layers through oneDNN's matmul (measured fastest of the GEMM candidates on this
// machine kind; see docs/performance.md). y[rows, out] = x[rows, in] · Wᵀ + b with W stored
// [out, in] row-major, which is oneDNN's "ba" layout of a [in, out] weight: no repacking.
// Primitives are created once per shape and thread, then reused with new data pointers.
#include <dnnl.hpp>
#include <map>
#include <memory>
#include <tuple>

#include "attn/kernels.h"

namespace attn::cpu {
namespace {

using Tag = dnnl::memory::format_tag;
using DataType = dnnl::memory::data_type;

struct MatmulKey {
  int64_t rows, in, out;
  bool bias;
  bool operator<(const MatmulKey& other) const {
    return std::tie(rows, in, out, bias) < std::tie(other.rows, other.in, other.out, other.bias);
  }
};

struct Matmul {
  dnnl::matmul primitive;
  dnnl::memory::desc x, w, b, y;
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
    made->x = dnnl::memory::desc({key.rows, key.in}, DataType::f32, Tag::ab);
    made->w = dnnl::memory::desc({key.in, key.out}, DataType::f32, Tag::ba);
    made->y = dnnl::memory::desc({key.rows, key.out}, DataType::f32, Tag::ab);
    if (key.bias) made->b = dnnl::memory::desc({1, key.out}, DataType::f32, Tag::ab);
    const dnnl::matmul::desc desc = key.bias
                                        ? dnnl::matmul::desc(made->x, made->w, made->b, made->y)
                                        : dnnl::matmul::desc(made->x, made->w, made->y);
    made->primitive = dnnl::matmul(dnnl::matmul::primitive_desc(desc, Engine()));
    slot = std::move(made);
  }
  return *slot;
}

}  // namespace

void OneDnnLinear(const LinearProblem& p) {
  if (p.rows == 0) return;
  const Matmul& mm = MatmulFor({p.rows, p.in, p.out, p.bias != nullptr});
  dnnl::stream stream(Engine());
  // oneDNN takes non-const handles; it only reads x, w and b.
  dnnl::memory x(mm.x, Engine(), const_cast<float*>(p.x));
  dnnl::memory w(mm.w, Engine(), const_cast<float*>(p.w));
  dnnl::memory y(mm.y, Engine(), p.y);
  std::unordered_map<int, dnnl::memory> args = {
      {DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_DST, y}};
  if (p.bias != nullptr) {
    args.emplace(DNNL_ARG_BIAS, dnnl::memory(mm.b, Engine(), const_cast<float*>(p.bias)));
  }
  mm.primitive.execute(stream, args);
  stream.wait();
}

}  // namespace attn::cpu
