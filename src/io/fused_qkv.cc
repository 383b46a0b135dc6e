// SPDX-License-Identifier: Apache-2.0
#include "attn/fused_qkv.h"

#include <algorithm>
#include <vector>

#include "attn/error.h"

namespace attn {
namespace {

// Elements per row: the product of every extent after the first (1 for a bias).
int64_t RowWidth(const Shape& shape) {
  int64_t width = 1;
  for (size_t i = 1; i < shape.size(); ++i) width *= shape[i];
  return width;
}

Shape WithRows(const Shape& shape, int64_t rows) {
  Shape out = shape;
  out[0] = rows;
  return out;
}

void CheckHeads(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  Check(heads > 0 && kv_heads > 0 && head_dim > 0 && heads % kv_heads == 0,
        ErrorKind::kInvalidArgument,
        "fused qkv: heads (" + std::to_string(heads) +
            ") must be a positive multiple of kv heads (" + std::to_string(kv_heads) +
            ") and head_dim (" + std::to_string(head_dim) + ") positive");
}

}  // namespace

QkvParts SplitGroupedQkv(const Tensor& fused, int64_t heads, int64_t kv_heads, int64_t head_dim,
                         const std::string& what) {
  CheckHeads(heads, kv_heads, head_dim);
  const int64_t rows = (heads + 2 * kv_heads) * head_dim;
  Check(fused.rank() >= 1 && fused.dim(0) == rows, ErrorKind::kInvalidArgument,
        what + ": expected " + std::to_string(rows) + " rows ((" + std::to_string(heads) +
            " query heads + 2 x " + std::to_string(kv_heads) + " kv heads) x head_dim " +
            std::to_string(head_dim) + "), got shape " + ShapeToString(fused.shape()));
  const int64_t width = RowWidth(fused.shape());
  const int64_t per_group = heads / kv_heads;
  const int64_t head_block = head_dim * width;  // elements of one head's rows
  QkvParts parts{Tensor(WithRows(fused.shape(), heads * head_dim)),
                 Tensor(WithRows(fused.shape(), kv_heads * head_dim)),
                 Tensor(WithRows(fused.shape(), kv_heads * head_dim))};
  const float* src = fused.data();
  for (int64_t g = 0; g < kv_heads; ++g) {
    // Group g: per_group query heads, its key head, its value head.
    const float* group = src + g * (per_group + 2) * head_block;
    std::copy(group, group + per_group * head_block, parts.q.data() + g * per_group * head_block);
    std::copy(group + per_group * head_block, group + (per_group + 1) * head_block,
              parts.k.data() + g * head_block);
    std::copy(group + (per_group + 1) * head_block, group + (per_group + 2) * head_block,
              parts.v.data() + g * head_block);
  }
  return parts;
}

Tensor FuseGroupedQkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads,
                      int64_t kv_heads, int64_t head_dim) {
  CheckHeads(heads, kv_heads, head_dim);
  Check(q.rank() >= 1 && q.dim(0) == heads * head_dim, ErrorKind::kInvalidArgument,
        "fused qkv: q has shape " + ShapeToString(q.shape()));
  CheckShape(k, WithRows(q.shape(), kv_heads * head_dim), "fused qkv: k");
  CheckShape(v, WithRows(q.shape(), kv_heads * head_dim), "fused qkv: v");
  const int64_t width = RowWidth(q.shape());
  const int64_t per_group = heads / kv_heads;
  const int64_t head_block = head_dim * width;
  Tensor fused(WithRows(q.shape(), (heads + 2 * kv_heads) * head_dim));
  for (int64_t g = 0; g < kv_heads; ++g) {
    float* group = fused.data() + g * (per_group + 2) * head_block;
    const float* q_group = q.data() + g * per_group * head_block;
    std::copy(q_group, q_group + per_group * head_block, group);
    std::copy(k.data() + g * head_block, k.data() + (g + 1) * head_block,
              group + per_group * head_block);
    std::copy(v.data() + g * head_block, v.data() + (g + 1) * head_block,
              group + (per_group + 1) * head_block);
  }
  return fused;
}

}  // namespace attn
