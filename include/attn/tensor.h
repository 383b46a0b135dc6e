// SPDX-License-Identifier: Apache-2.0
// Tensor: an owning, row-major fp32 array with a shape. Move-only: copying megabytes of
// activations should be visible in the code, so it is spelled Copy().
#ifndef ATTN_TENSOR_H_
#define ATTN_TENSOR_H_

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <vector>

namespace attn {

using Shape = std::vector<int64_t>;

// Number of elements of `shape`; throws Error(kInvalidArgument) on a negative extent or overflow.
int64_t NumElements(const Shape& shape);
// "[2, 3, 4]" for messages.
std::string ShapeToString(const Shape& shape);

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled tensor of `shape`.
  explicit Tensor(Shape shape);
  Tensor(Shape shape, std::vector<float> values);

  Tensor(Tensor&&) = default;
  Tensor& operator=(Tensor&&) = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  Tensor Copy() const { return Tensor(shape_, values_); }

  // Gives the tensor a new shape, keeping its storage when it has room (contents unspecified):
  // lets a caller reuse one output tensor across decode steps without allocating.
  void Reshape(std::initializer_list<int64_t> dims);

  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int axis) const { return shape_.at(static_cast<size_t>(axis)); }
  int64_t size() const { return static_cast<int64_t>(values_.size()); }

  float* data() { return values_.data(); }
  const float* data() const { return values_.data(); }
  std::span<float> values() { return values_; }
  std::span<const float> values() const { return values_; }

 private:
  Shape shape_;
  std::vector<float> values_;
};

// Throws Error(kInvalidArgument) "<what>: expected shape [..], got [..]" unless equal.
void CheckShape(const Tensor& tensor, const Shape& expected, const std::string& what);

// Throws Error(kInvalidArgument) "<what>: non-finite value (nan) at index i" on NaN or Inf: a NaN
// in an input would otherwise spread silently through every later token's softmax.
void CheckFinite(const Tensor& tensor, const std::string& what);

}  // namespace attn

#endif  // ATTN_TENSOR_H_
