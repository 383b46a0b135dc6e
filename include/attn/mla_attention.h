// SPDX-License-Identifier: Apache-2.0
// DeepSeek-V2/V3 (and Kimi-K2) multi-head latent attention (docs/semantics.md §3).
#ifndef ATTN_MLA_ATTENTION_H_
#define ATTN_MLA_ATTENTION_H_

#include <memory>

#include "attn/layer.h"
#include "attn/rope.h"

namespace attn {
namespace layers {
class KVStore;
}  // namespace layers
namespace layers {
struct BatchShape;
}  // namespace layers

struct MlaWeights {
  Weight q_proj;              // [H·(dn+dr), D]   when q_lora_rank == 0
  Weight q_a_proj;            // [rq, D]          when q_lora_rank > 0
  Tensor q_a_layernorm;       // [rq]
  Weight q_b_proj;            // [H·(dn+dr), rq]
  Weight kv_a_proj_with_mqa;  // [rk + dr, D]
  Tensor kv_a_layernorm;      // [rk]
  Weight kv_b_proj;           // [H·(dn+dv), rk]: per head, dn rows of W_UK then dv rows of W_UV
  Weight o_proj;              // [D, H·dv]
};

// FLOPs of one sequence's attention in each latent-cache form, for `queries` new tokens
// against `keys` cached tokens (new ones included). Counts multiply-adds as 2 FLOPs and
// every (query, key) pair as visible (the causal saving is the same for both forms).
//   decompress = 2·T·rk·H·(dn+dv)              (K_nope and V for every cached token)
//              + 2·S·T·H·(dn+dr+dv)            (scores and weighted sum per head)
//   absorbed   = 2·S·H·dn·rk + 2·S·H·rk·dv     (q_nope·W_UK and W_UV·o per head)
//              + 2·S·T·H·(rk+dr+rk)            (scores over 576-wide rows, sum over 512)
struct MlaFormCosts {
  double decompress_flops;
  double absorbed_flops;
};
MlaFormCosts EstimateMlaFormCosts(const ModelConfig& config, int64_t queries, int64_t keys);
// kAuto's choice: decompress-then-attend iff it costs fewer FLOPs than absorbed.
bool AutoPrefersDecompress(const ModelConfig& config, int64_t queries, int64_t keys);

class MlaAttention : public AttentionLayer {
 public:
  // Throws Error(kInvalidArgument) if a weight's shape does not match the config.
  MlaAttention(const ModelConfig& config, MlaWeights weights);

  const ModelConfig& config() const override { return config_; }
  // kNaive -> KVCache (H heads, dn+dr / dv); kAbsorbed, kAuto -> LatentKVCache (rk + dr).
  std::unique_ptr<Cache> NewCache(int64_t batch, int64_t capacity, DType dtype,
                                  MlaForm form) const override;
  void StepInto(const TokenBatch& batch, Cache& cache, MlaForm form, Tensor& out) const override;
  void StepPagedInto(const TokenBatch& batch, PagedKVPool& pool,
                     std::span<const PagedKVPool::SequenceId> ids, MlaForm form,
                     Tensor& out) const override;
  void StepWithStore(const TokenBatch& batch, layers::KVStore& store, MlaForm form,
                     Tensor& out) const override;

 private:
  // The one step over a cache of either kind (per-head for naive, latent otherwise).
  void StepWith(const TokenBatch& batch, layers::KVStore& store, MlaForm form, Tensor& out) const;
  struct Projected;  // queries and latent rows of one call
  Projected Project(const TokenBatch& batch, const layers::BatchShape& shape,
                    std::span<const int64_t> positions) const;
  // [count][rk+dr] rows -> keys [count][H][dn+dr] = [c W_UK[h]ᵀ | k_pe], values
  // [count][H][dv] = c W_UV[h]ᵀ.
  void DecompressLatent(const float* rows, int64_t count, float* keys, float* values) const;
  void AttendNaive(const Projected& p, layers::KVStore& cache, std::span<const int64_t> first_slots,
                   float* heads_out) const;
  // The absorbed form for the listed sequences of the batch at once: W_UK/W_UV are read once
  // per step (heads in parallel), and one attend_batch call covers every sequence.
  void AttendAbsorbed(const Projected& p, std::span<const int64_t> sequences,
                      layers::KVStore& cache, std::span<const int64_t> first_slots,
                      float* heads_out) const;
  void AttendDecompressed(const Projected& p, int64_t sequence, layers::KVStore& cache,
                          int64_t first_slot, float* heads_out) const;

  ModelConfig config_;
  float scale_;
  RotaryEmbedding rope_;
  MlaWeights weights_;
};

}  // namespace attn

#endif  // ATTN_MLA_ATTENTION_H_
