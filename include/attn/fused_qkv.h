// SPDX-License-Identifier: Apache-2.0
// The fused query/key/value layout shared by Megatron-Core's `linear_qkv` and Hugging Face
// Falcon's `query_key_value`: output rows grouped per kv group g = 0 … G-1, each group holding
// its H/G query heads, then kv head g's key, then its value (d rows per head):
//
//   [ q_{g·H/G} … q_{(g+1)·H/G - 1} | k_g | v_g ]  for g = 0 … G-1
//
// Megatron: SelfAttention.get_query_key_value_tensors views the output as
// [.., G, (H/G + 2)·d] and splits [H/G·d, d, d]. Falcon: new_decoder_architecture views it as
// [.., G, H/G + 2, d]; multi_query as [.., H + 2, d] (the G = 1 case); plain MHA as
// [.., H, 3, d] (the G = H case). One layout, three spellings.
#ifndef ATTN_FUSED_QKV_H_
#define ATTN_FUSED_QKV_H_

#include <cstdint>
#include <string>

#include "attn/tensor.h"

namespace attn {

struct QkvParts {
  Tensor q;  // [H·d, …]  query heads in order
  Tensor k;  // [G·d, …]
  Tensor v;  // [G·d, …]
};

// Splits a fused [(H + 2G)·d, …] tensor (a weight [rows, in] or a bias [rows]) into q, k, v.
// Throws Error(kInvalidArgument) naming `what` when its row count is not (H + 2G)·d.
QkvParts SplitGroupedQkv(const Tensor& fused, int64_t heads, int64_t kv_heads, int64_t head_dim,
                         const std::string& what);

// The inverse: q [H·d, …], k and v [G·d, …] (same trailing shape) -> [(H + 2G)·d, …].
Tensor FuseGroupedQkv(const Tensor& q, const Tensor& k, const Tensor& v, int64_t heads,
                      int64_t kv_heads, int64_t head_dim);

}  // namespace attn

#endif  // ATTN_FUSED_QKV_H_
