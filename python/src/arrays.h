// SPDX-License-Identifier: Apache-2.0
// Arrays crossing the Python boundary. Inputs (NumPy arrays through __array_interface__, PyTorch
// CPU tensors and other producers through DLPack, anything else through numpy.asarray) become
// an ArrayView of the caller's memory: no copy. A copy is made only where a consumer needs a
// layout or dtype the view does not have (ToLayout), and every such copy is counted so tests
// can tell a zero-copy path from one that is not. Outputs are NumPy arrays that own the
// library's result (no copy), handed to torch.from_numpy (no copy) when the caller gave torch.
//
// Everything here runs with the GIL held, and an ArrayView must be destroyed with the GIL held.
#ifndef ATTN_PYTHON_ARRAYS_H_
#define ATTN_PYTHON_ARRAYS_H_

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/tensor.h"

namespace attn::python {

namespace py = pybind11;

// Element types an input may have.
enum class Element { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

const char* ElementName(Element element);
size_t ElementSize(Element element);
bool IsFloating(Element element);

// A read-only strided view of memory owned by a Python object.
struct ArrayView {
  std::string what;  // the argument's name, for messages
  Element element = Element::kF32;
  std::byte* data = nullptr;  // element [0, …, 0]
  Shape shape;
  std::vector<int64_t> strides;  // in elements
  bool from_torch = false;       // the caller passed a torch.Tensor
  bool writable = false;         // the producer allows writes (out= arguments)
  py::object keepalive;          // the producer (NumPy array, torch tensor)
  std::shared_ptr<void> owner;   // a DLPack tensor, or storage of a copy made by ToLayout

  int rank() const { return static_cast<int>(shape.size()); }
  int64_t size() const;
  // Row-major with no gaps (extents of 1 may have any stride).
  bool IsRowMajor() const;
  // Element at `index` (rank entries), as a pointer.
  const std::byte* At(std::span<const int64_t> index) const;
};

// Views `object` without copying. Throws Error(kInvalidArgument) naming `what` for a non-CPU
// tensor or an element type attn does not read.
ArrayView ViewArray(py::handle object, const std::string& what);

// True if `object` is a torch.Tensor (without importing torch).
bool IsTorchTensor(py::handle object);

// A row-major copy of `view` with elements converted to `element` (float -> float, integer or
// bool -> integer). Counts one copy.
ArrayView ToLayout(const ArrayView& view, Element element);
// `view` itself when already row-major in `element`, else ToLayout(view, element).
ArrayView RowMajor(const ArrayView& view, Element element);

// Throws Error(kInvalidArgument) "<what>: expected <n> dimensions …" unless rank matches.
void CheckRank(const ArrayView& view, int rank, const std::string& layout);
// Throws Error(kInvalidArgument) unless the elements are floating point.
void CheckFloating(const ArrayView& view);
// Throws Error(kInvalidArgument) naming the first NaN or Inf of a floating view and its index.
void CheckFiniteView(const ArrayView& view);
// True when none of `count` floats is NaN or ±Inf; 16 independent lanes, so it vectorises
// (a plain early-exit loop does not, and costs ~1 ns per element on a prefill-sized array).
bool AllFiniteFloats(const float* data, int64_t count);

// The view as an owning fp32 attn::Tensor (always a copy: the layer API takes Tensors).
Tensor ToTensor(const ArrayView& view);
// Integer grid (positions) as int64, zero-copy when it already is row-major int64.
std::span<const int64_t> AsInt64(const ArrayView& view, ArrayView& holder);
// Padding flags: every value must be 0 or 1 (any integer, bool or float element type);
// zero-copy for row-major uint8/bool.
std::span<const uint8_t> AsKeepFlags(const ArrayView& view, ArrayView& holder);

// A NumPy array owning `tensor` (no copy), turned into a torch tensor sharing that memory when
// `as_torch`.
py::object WrapTensor(Tensor tensor, bool as_torch);
// The fp32 result in the caller's float dtype: float64 and float16 as NumPy arrays (torch tensors
// when `as_torch`), bfloat16 as a torch tensor (NumPy has none: float32 for other producers),
// float32 as WrapTensor. Rounds to nearest even; one conversion pass.
py::object WrapTensorAs(Tensor tensor, Element element, bool as_torch);

// Copies made by ToLayout and ToTensor since the module was loaded (for tests).
uint64_t CopiesMade();

// DType of a view that a KV cache or KVView can hold (f32, f16, bf16).
DType StorageDType(Element element);

}  // namespace attn::python

#endif  // ATTN_PYTHON_ARRAYS_H_
