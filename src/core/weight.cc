// SPDX-License-Identifier: Apache-2.0
#include "attn/weight.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "attn/error.h"

namespace attn {
namespace {

bool IsWeightDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kBF16 || dtype == DType::kF16 ||
         dtype == DType::kF8E4M3;
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Value of element `index` of `data` stored as `dtype`, without its block scale.
float StoredValue(DType dtype, const void* data, int64_t index) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(data)[index];
    case DType::kBF16:
      return BF16ToF32(static_cast<const uint16_t*>(data)[index]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(data)[index]);
    case DType::kF8E4M3:
      return F8E4M3ToF32(static_cast<const uint8_t*>(data)[index]);
    default:
      return 0.0f;  // View() admits no other dtype.
  }
}

// The first element whose stored bits are NaN/±Inf, or -1. Integer tests on the raw bits, so
// the loops vectorise and a scan of a mapped weight runs at memory speed.
int64_t FirstNonFinite(DType dtype, const void* data, int64_t count) {
  switch (dtype) {
    case DType::kF32: {
      const uint32_t* bits = static_cast<const uint32_t*>(data);
      uint32_t any = 0;
      for (int64_t i = 0; i < count; ++i) any |= ((bits[i] & 0x7f800000u) == 0x7f800000u);
      if (any == 0) return -1;
      for (int64_t i = 0; i < count; ++i) {
        if ((bits[i] & 0x7f800000u) == 0x7f800000u) return i;
      }
      return -1;
    }
    case DType::kBF16:
    case DType::kF16: {
      const uint16_t exponent = dtype == DType::kBF16 ? 0x7f80u : 0x7c00u;
      const uint16_t* bits = static_cast<const uint16_t*>(data);
      uint32_t any = 0;
      for (int64_t i = 0; i < count; ++i) any |= ((bits[i] & exponent) == exponent);
      if (any == 0) return -1;
      for (int64_t i = 0; i < count; ++i) {
        if ((bits[i] & exponent) == exponent) return i;
      }
      return -1;
    }
    case DType::kF8E4M3: {
      const uint8_t* bits = static_cast<const uint8_t*>(data);
      uint32_t any = 0;
      for (int64_t i = 0; i < count; ++i) any |= ((bits[i] & 0x7fu) == 0x7fu);
      if (any == 0) return -1;
      for (int64_t i = 0; i < count; ++i) {
        if ((bits[i] & 0x7fu) == 0x7fu) return i;
      }
      return -1;
    }
    default:
      return -1;
  }
}

std::string IndexText(const Shape& shape, int64_t flat) {
  std::string index;
  for (int axis = static_cast<int>(shape.size()) - 1; axis >= 0; --axis) {
    const int64_t extent = shape[static_cast<size_t>(axis)];
    index = std::to_string(flat % extent) + (index.empty() ? "" : ", ") + index;
    flat /= extent;
  }
  return "[" + index + "]";
}

}  // namespace

Weight::Weight(Tensor values) {
  auto owned = std::make_shared<Tensor>(std::move(values));
  dtype_ = DType::kF32;
  shape_ = owned->shape();
  data_ = owned->size() > 0 ? owned->data() : nullptr;
  if (owned->size() == 0) shape_ = {0};
  owner_ = std::move(owned);
}

Weight Weight::View(DType dtype, Shape shape, const void* data, std::shared_ptr<const void> owner) {
  Check(IsWeightDType(dtype), ErrorKind::kInvalidArgument,
        std::string("weights must be F32, BF16, F16 or F8_E4M3, got ") + DTypeName(dtype));
  Check(reinterpret_cast<uintptr_t>(data) % DTypeSize(dtype) == 0, ErrorKind::kInvalidArgument,
        "weight data is not aligned to its element size");
  Weight weight;
  weight.dtype_ = dtype;
  weight.shape_ = std::move(shape);
  weight.data_ = data;
  weight.owner_ = std::move(owner);
  NumElements(weight.shape_);  // validates the extents
  return weight;
}

Weight Weight::RowSlice(int64_t first, int64_t count) const {
  Check(rank() == 2, ErrorKind::kInvalidArgument, "RowSlice needs a 2-D weight");
  Check(first >= 0 && count >= 0 && first <= dim(0) - count, ErrorKind::kInvalidArgument,
        "rows [" + std::to_string(first) + ", " + std::to_string(first + count) +
            ") are outside a matrix of " + std::to_string(dim(0)) + " rows");
  Weight slice = *this;
  slice.shape_ = {count, dim(1)};
  slice.data_ = static_cast<const std::byte*>(data_) +
                static_cast<size_t>(first * dim(1)) * DTypeSize(dtype_);
  if (block_scales_ != nullptr) {
    const bool whole_blocks =
        first % block_rows_ == 0 && (count % block_rows_ == 0 || first + count == dim(0));
    Check(whole_blocks, ErrorKind::kInvalidArgument,
          "rows [" + std::to_string(first) + ", " + std::to_string(first + count) +
              ") cut through fp8 scale blocks of " + std::to_string(block_rows_) + " rows");
    slice.block_scales_ = block_scales_ + (first / block_rows_) * CeilDiv(dim(1), block_cols_);
  }
  return slice;
}

Weight Weight::ColumnSlice(int64_t first, int64_t count) const {
  Check(rank() == 2, ErrorKind::kInvalidArgument, "ColumnSlice needs a 2-D weight");
  const int64_t rows = dim(0);
  const int64_t cols = dim(1);
  const std::string range =
      "columns [" + std::to_string(first) + ", " + std::to_string(first + count) + ")";
  Check(first >= 0 && count >= 0 && first <= cols - count, ErrorKind::kInvalidArgument,
        range + " are outside a matrix of " + std::to_string(cols) + " columns");
  if (block_scales_ != nullptr) {
    const bool whole_blocks =
        first % block_cols_ == 0 && (count % block_cols_ == 0 || first + count == cols);
    Check(whole_blocks, ErrorKind::kInvalidArgument,
          range + " cut through fp8 scale blocks of " + std::to_string(block_cols_) + " columns");
  }
  const size_t element = DTypeSize(dtype_);
  const size_t row_bytes = static_cast<size_t>(count) * element;
  auto bytes = std::make_shared<std::vector<std::byte>>(static_cast<size_t>(rows) * row_bytes);
  const auto* source = static_cast<const std::byte*>(data_);
  for (int64_t r = 0; r < rows && row_bytes > 0; ++r) {
    std::memcpy(bytes->data() + static_cast<size_t>(r) * row_bytes,
                source + static_cast<size_t>(r * cols + first) * element, row_bytes);
  }
  const void* data = bytes->empty() ? nullptr : bytes->data();
  Weight slice = View(dtype_, {rows, count}, data, std::move(bytes));
  if (block_scales_ == nullptr) return slice;
  const int64_t scale_rows = CeilDiv(rows, block_rows_);
  const int64_t scale_cols = CeilDiv(cols, block_cols_);
  const int64_t first_block = first / block_cols_;
  const int64_t blocks = CeilDiv(count, block_cols_);
  Tensor scales({scale_rows, blocks});
  for (int64_t br = 0; br < scale_rows; ++br) {
    std::copy_n(block_scales_ + br * scale_cols + first_block, blocks, scales.data() + br * blocks);
  }
  return std::move(slice).WithBlockScales(Weight(std::move(scales)), block_rows_, block_cols_,
                                          "column slice");
}

Weight Weight::WithBlockScales(Weight scales, int64_t block_rows, int64_t block_cols,
                               const std::string& name) && {
  Check(dtype_ == DType::kF8E4M3 && rank() == 2, ErrorKind::kInvalidArgument,
        name + ": block scales belong to a 2-D F8_E4M3 weight");
  Check(block_rows > 0 && block_cols > 0, ErrorKind::kInvalidArgument,
        name + ": block size must be positive");
  const Shape expected = {CeilDiv(dim(0), block_rows), CeilDiv(dim(1), block_cols)};
  Check(scales.dtype() == DType::kF32, ErrorKind::kInvalidArgument,
        name + "_scale_inv: expected dtype F32, got " + DTypeName(scales.dtype()));
  Check(scales.shape() == expected, ErrorKind::kInvalidArgument,
        name + "_scale_inv: expected shape " + ShapeToString(expected) + " for blocks of [" +
            std::to_string(block_rows) + ", " + std::to_string(block_cols) + "], got " +
            ShapeToString(scales.shape()));
  const float* values = scales.f32();
  for (int64_t i = 0; i < scales.size(); ++i) {
    Check(std::isfinite(values[i]) && values[i] > 0.0f, ErrorKind::kInvalidArgument,
          name + "_scale_inv: block scale " + IndexText(expected, i) +
              " must be finite and positive, got " + std::to_string(values[i]));
  }
  block_scales_ = values;
  scales_owner_ = std::move(scales.owner_);
  block_rows_ = block_rows;
  block_cols_ = block_cols;
  return std::move(*this);
}

size_t Weight::nbytes() const {
  size_t bytes = static_cast<size_t>(size()) * DTypeSize(dtype_);
  if (block_scales_ != nullptr) {
    bytes += static_cast<size_t>(CeilDiv(dim(0), block_rows_) * CeilDiv(dim(1), block_cols_)) *
             sizeof(float);
  }
  return bytes;
}

Shape Weight::block_scale_shape() const {
  if (block_scales_ == nullptr) return {};
  return {CeilDiv(dim(0), block_rows_), CeilDiv(dim(1), block_cols_)};
}

Weight QuantizeF8E4M3Blocks(const Tensor& values, int64_t block_rows, int64_t block_cols) {
  Check(values.rank() == 2 && block_rows > 0 && block_cols > 0, ErrorKind::kInvalidArgument,
        "fp8 block quantization needs a 2-D matrix and positive block sizes");
  const int64_t out = values.dim(0);
  const int64_t in = values.dim(1);
  const int64_t scale_rows = CeilDiv(out, block_rows);
  const int64_t scale_cols = CeilDiv(in, block_cols);
  auto codes = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(out * in));
  Tensor scales({scale_rows, scale_cols});
  constexpr float kMaxE4M3 = 448.0f;
  for (int64_t bi = 0; bi < scale_rows; ++bi) {
    for (int64_t bj = 0; bj < scale_cols; ++bj) {
      const int64_t o1 = std::min(out, (bi + 1) * block_rows);
      const int64_t i1 = std::min(in, (bj + 1) * block_cols);
      float amax = 0.0f;
      for (int64_t o = bi * block_rows; o < o1; ++o) {
        for (int64_t i = bj * block_cols; i < i1; ++i) {
          amax = std::max(amax, std::fabs(values.data()[o * in + i]));
        }
      }
      const float scale = amax > 0.0f ? amax / kMaxE4M3 : 1.0f;
      scales.data()[bi * scale_cols + bj] = scale;
      for (int64_t o = bi * block_rows; o < o1; ++o) {
        for (int64_t i = bj * block_cols; i < i1; ++i) {
          // w / scale may land a rounding step above 448; it still rounds to 448 (< 464).
          (*codes)[static_cast<size_t>(o * in + i)] =
              F32ToF8E4M3(values.data()[o * in + i] / scale);
        }
      }
    }
  }
  const void* data = codes->empty() ? nullptr : codes->data();
  return Weight::View(DType::kF8E4M3, values.shape(), data, std::move(codes))
      .WithBlockScales(Weight(std::move(scales)), block_rows, block_cols, "quantized weight");
}

Weight StoreMatrix(Tensor values, DType dtype, int64_t block_rows, int64_t block_cols) {
  Check(IsWeightDType(dtype), ErrorKind::kInvalidArgument,
        std::string("weights cannot be stored as ") + DTypeName(dtype));
  if (dtype == DType::kF32) return Weight(std::move(values));
  if (dtype == DType::kF8E4M3) return QuantizeF8E4M3Blocks(values, block_rows, block_cols);
  auto bits = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(values.size()));
  for (int64_t i = 0; i < values.size(); ++i) {
    const float value = values.data()[i];
    (*bits)[static_cast<size_t>(i)] = dtype == DType::kBF16 ? F32ToBF16(value) : F32ToF16(value);
  }
  const void* data = bits->empty() ? nullptr : bits->data();
  return Weight::View(dtype, values.shape(), data, std::move(bits));
}

void Weight::DequantizeRows(int64_t first, int64_t count, float* out) const {
  const int64_t in = rank() == 2 ? dim(1) : size();
  const int64_t scale_cols = block_scales_ != nullptr ? CeilDiv(in, block_cols_) : 0;
  for (int64_t r = 0; r < count; ++r) {
    const int64_t o = first + r;
    for (int64_t i = 0; i < in; ++i) {
      float value = StoredValue(dtype_, data_, o * in + i);
      if (block_scales_ != nullptr) {
        value *= block_scales_[(o / block_rows_) * scale_cols + i / block_cols_];
      }
      out[r * in + i] = value;
    }
  }
}

Tensor Weight::ToF32() const {
  Tensor values(shape_);
  if (values.size() == 0) return values;
  const int64_t rows = rank() == 2 ? dim(0) : 1;
  DequantizeRows(0, rows, values.data());
  return values;
}

void CheckFinite(const Weight& weight, const std::string& what) {
  const int64_t bad = FirstNonFinite(weight.dtype(), weight.data(), weight.size());
  if (bad < 0) return;
  throw Error(ErrorKind::kInvalidArgument,
              what + ": non-finite value (" +
                  std::to_string(StoredValue(weight.dtype(), weight.data(), bad)) + ") at " +
                  IndexText(weight.shape(), bad) + " of shape " + ShapeToString(weight.shape()) +
                  " (" + DTypeName(weight.dtype()) + ")");
}

}  // namespace attn
