// SPDX-License-Identifier: Apache-2.0
// Weight: a layer's weight as its checkpoint stores it: dtype, shape and bytes, never converted
// or copied at load. The bytes belong to `owner` — a memory-mapped file, or a buffer — which the
// weight keeps alive, so a layer loaded from a mapped checkpoint shares the page cache instead of
// holding an fp32 copy (docs/architecture.md, "Weights").
//
// Matrices are PyTorch Linear weights [out, in], row-major. dtypes: F32, BF16, F16, and F8_E4M3
// with DeepSeek's block scales: element (o, i) is
//     fp8[o, i] · scale[o / block_rows, i / block_cols],   scale: F32 [⌈out/br⌉, ⌈in/bc⌉]
// (checkpoints name the scale tensor `<weight>_scale_inv`; docs/semantics.md §9). The kernels
// dequantize inside their loops (kernels/cpu/), so the fp8 bytes are all that is ever resident.
#ifndef ATTN_WEIGHT_H_
#define ATTN_WEIGHT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "attn/dtype.h"
#include "attn/tensor.h"

namespace attn {

class Weight {
 public:
  Weight() = default;
  // An fp32 weight owning `values` (moved, not copied). Implicit: every fp32 tensor is a weight.
  Weight(Tensor values);  // NOLINT(google-explicit-constructor)

  // A view of `data` (stored as `dtype`, row-major `shape`), kept alive by `owner`. Throws
  // Error(kInvalidArgument) for a dtype weights cannot have or a misaligned pointer.
  static Weight View(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner);

  // This F8_E4M3 matrix with its block scales (an F32 [⌈out/block_rows⌉, ⌈in/block_cols⌉]
  // weight). Throws Error(kInvalidArgument) naming `name` unless the weight is a 2-D F8_E4M3
  // matrix and the scales have exactly that shape, are finite and positive.
  Weight WithBlockScales(Weight scales, int64_t block_rows, int64_t block_cols,
                         const std::string& name) &&;

  // Rows [first, first + count) of a matrix: a view sharing this weight's bytes and owner, no
  // copy (Phi-3's fused qkv_proj is three row blocks). An F8_E4M3 matrix is cut only at
  // block-row boundaries, so each piece keeps whole scale blocks. Throws Error(kInvalidArgument)
  // for a range outside the matrix or a cut inside a block.
  Weight RowSlice(int64_t first, int64_t count) const;
  // Columns [first, first + count) of a matrix as a new owning weight in the same stored dtype
  // (a copy: a column block is strided). The tensor-parallel split of o_proj by its input
  // columns (docs/distributed.md). An F8_E4M3 matrix is cut only at block-column boundaries and
  // its block scales are sliced with it. Throws Error(kInvalidArgument) for a range outside the
  // matrix or a cut inside a block.
  Weight ColumnSlice(int64_t first, int64_t count) const;

  bool empty() const { return size() == 0; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int axis) const { return shape_.at(static_cast<size_t>(axis)); }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t size() const { return NumElements(shape_); }
  const void* data() const { return data_; }
  // Bytes of the weight itself plus its scales: what a step reads.
  size_t nbytes() const;

  // Block scales of an F8_E4M3 matrix (null otherwise), row-major [⌈out/br⌉, ⌈in/bc⌉].
  const float* block_scales() const { return block_scales_; }
  int64_t block_rows() const { return block_rows_; }
  int64_t block_cols() const { return block_cols_; }
  // [⌈out/br⌉, ⌈in/bc⌉]; empty without scales.
  Shape block_scale_shape() const;

  // The fp32 data when the weight is F32, else null.
  const float* f32() const {
    return dtype_ == DType::kF32 ? static_cast<const float*>(data_) : nullptr;
  }

  // The dequantized values as an fp32 tensor (a copy: for small vectors, tests and conversion).
  Tensor ToF32() const;
  // Dequantizes rows [first, first + count) of a matrix (a vector is one row) into `out`
  // [count][in]: the scalar reference every SIMD dequantizer is tested against.
  void DequantizeRows(int64_t first, int64_t count, float* out) const;

 private:
  DType dtype_ = DType::kF32;
  Shape shape_ = {0};
  const void* data_ = nullptr;
  std::shared_ptr<const void> owner_;
  const float* block_scales_ = nullptr;
  std::shared_ptr<const void> scales_owner_;
  int64_t block_rows_ = 0;
  int64_t block_cols_ = 0;
};

// A 2-D fp32 matrix quantized as DeepSeek's fp8 checkpoints are: per block of
// block_rows × block_cols, scale = max|w| / 448 (1 for an all-zero block) and
// fp8 = E4M3(w / scale), rounded to nearest even. Returns an owning F8_E4M3 weight with its
// scales. For random-weights and tests; finite values only.
Weight QuantizeF8E4M3Blocks(const Tensor& values, int64_t block_rows, int64_t block_cols);

// `values` held as `dtype` in memory, as a checkpoint of that dtype stores them: F32 as given,
// BF16/F16 rounded to nearest even, F8_E4M3 by QuantizeF8E4M3Blocks with these block sizes.
Weight StoreMatrix(Tensor values, DType dtype, int64_t block_rows = 128, int64_t block_cols = 128);

// Throws Error(kInvalidArgument) "<what>: non-finite value ... at [..]" when the stored weight
// holds a NaN or ±Inf (F8_E4M3: a NaN code): one pass at memory speed over the stored bytes.
void CheckFinite(const Weight& weight, const std::string& what);

}  // namespace attn

#endif  // ATTN_WEIGHT_H_
