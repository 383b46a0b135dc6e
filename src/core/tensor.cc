// SPDX-License-Identifier: Apache-2.0
#include "attn/tensor.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"

namespace attn {

int64_t NumElements(const Shape& shape) {
  int64_t count = 1;
  for (int64_t extent : shape) {
    ATTN_CHECK(extent >= 0, ErrorKind::kInvalidArgument,
               "negative extent in shape " + ShapeToString(shape));
    ATTN_CHECK(!__builtin_mul_overflow(count, extent, &count), ErrorKind::kInvalidArgument,
               "element count of shape " + ShapeToString(shape) + " overflows int64");
  }
  return count;
}

std::string ShapeToString(const Shape& shape) {
  std::string text = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

Tensor::Tensor(Shape shape)
    : shape_(std::move(shape)), values_(static_cast<size_t>(NumElements(shape_)), 0.0f) {}

Tensor::Tensor(Shape shape, std::vector<float> values)
    : shape_(std::move(shape)), values_(std::move(values)) {
  const int64_t expected = NumElements(shape_);
  ATTN_CHECK(static_cast<int64_t>(values_.size()) == expected, ErrorKind::kInvalidArgument,
             "tensor of shape " + ShapeToString(shape_) + " needs " + std::to_string(expected) +
                 " values, got " + std::to_string(values_.size()));
}

void Tensor::Reshape(std::initializer_list<int64_t> dims) {
  shape_.assign(dims);
  values_.resize(static_cast<size_t>(NumElements(shape_)));
}

void CheckShape(const Tensor& tensor, const Shape& expected, const std::string& what) {
  ATTN_CHECK(tensor.shape() == expected, ErrorKind::kInvalidArgument,
             what + ": expected shape " + ShapeToString(expected) + ", got " +
                 ShapeToString(tensor.shape()));
}

void CheckFinite(const Tensor& tensor, const std::string& what) {
  const float* values = tensor.data();
  for (int64_t i = 0; i < tensor.size(); ++i) {
    if (std::isfinite(values[i])) continue;
    // The first bad element as a row-major index [i0, i1, ...], which names the token for a
    // [B, S, D] activation.
    std::string index;
    int64_t rest = i;
    for (int axis = tensor.rank() - 1; axis >= 0; --axis) {
      const int64_t extent = tensor.dim(axis);
      index = std::to_string(rest % extent) + (index.empty() ? "" : ", ") + index;
      rest /= extent;
    }
    throw Error(ErrorKind::kInvalidArgument, what + ": non-finite value (" +
                                                 std::to_string(values[i]) + ") at [" + index +
                                                 "] of shape " + ShapeToString(tensor.shape()));
  }
}

}  // namespace attn
