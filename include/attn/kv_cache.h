// SPDX-License-Identifier: Apache-2.0
// KV caches. Two layouts, one per thing a layer stores:
//   KVCache        per-head K and V, head-major [G][capacity][d] per sequence, so one kv head's
//                  rows stream contiguously for the H/G query heads that share them.
//                  Used by MHA/GQA/MQA (G kv heads, d = dv = head_dim) and naive MLA
//                  (G = H, key width dn+dr, value width dv).
//   LatentKVCache  MLA latent rows [capacity][rk + dr] per sequence: the normalised latent c
//                  followed by the already-rotated shared k_pe. The value of a token is the
//                  first rk entries of the same row: nothing is stored twice.
// Both keep, per slot, whether the token is padding (1 byte of metadata, not part of bytes()).
// Appending past capacity throws Error(kCapacity); nothing is written in that case.
#ifndef ATTN_KV_CACHE_H_
#define ATTN_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "attn/config.h"
#include "attn/dtype.h"
#include "attn/kernels.h"

namespace attn {

// What a layer caches per token (docs/semantics.md §1, §3).
enum class CacheForm {
  kHeads,   // 2·G·d values (GQA family) or H·(dn+dr+dv) (naive MLA)
  kLatent,  // rk + dr values (MLA only)
};

// Values one layer caches per token: the single formula that caches, `attn info` and the
// tests all use.
int64_t CacheValuesPerToken(const ModelConfig& config, CacheForm form);
inline size_t CacheBytesPerToken(const ModelConfig& config, CacheForm form, DType dtype) {
  return static_cast<size_t>(CacheValuesPerToken(config, form)) * DTypeSize(dtype);
}

// Common bookkeeping: batch, capacity, per-sequence lengths and padding flags.
class Cache {
 public:
  virtual ~Cache() = default;
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  int64_t batch() const { return batch_; }
  int64_t capacity() const { return capacity_; }
  DType dtype() const { return dtype_; }
  int64_t length(int64_t sequence) const;
  std::span<const int64_t> lengths() const { return lengths_; }
  // Bytes of K/V storage: values_per_token · dtype size · batch · capacity.
  size_t bytes() const { return bytes_per_token_ * static_cast<size_t>(batch_ * capacity_); }
  size_t bytes_per_token() const { return bytes_per_token_; }
  // Bytes of K/V storage this process holds: bytes(), except for a rank's part of a split
  // layer's cache (docs/distributed.md), which holds only its own sequences or tokens.
  virtual size_t held_bytes() const { return bytes(); }

  // Throws Error(kCapacity) unless every sequence b has room for counts[b] more tokens.
  void CheckRoom(std::span<const int64_t> counts) const;
  // Forgets every token (capacity and storage are kept).
  void Clear();
  // The largest position id of the non-padding tokens a layer step appended to `sequence`, or
  // -1 when none was. A step refuses new tokens whose positions do not come after it
  // (docs/semantics.md §4), so a cache never holds a sequence whose positions go backwards.
  int64_t max_position(int64_t sequence) const;
  void set_max_position(int64_t sequence, int64_t position);

 protected:
  Cache(int64_t batch, int64_t capacity, DType dtype, size_t bytes_per_token);
  // Records `count` tokens appended to `sequence` with padding flags `keep` (null = all kept);
  // returns the first slot written. Throws Error(kCapacity) if they do not fit.
  int64_t Advance(int64_t sequence, int64_t count, const uint8_t* keep);
  const uint8_t* keep(int64_t sequence) const {
    return keep_.data() + static_cast<size_t>(sequence * capacity_);
  }

 private:
  int64_t batch_;
  int64_t capacity_;
  DType dtype_;
  size_t bytes_per_token_;
  std::vector<int64_t> lengths_;
  std::vector<int64_t> max_positions_;  // [batch], -1: none
  std::vector<uint8_t> keep_;           // [batch][capacity]
};

class KVCache : public Cache {
 public:
  // kv_heads G, key_dim and value_dim per head; dtype f32, f16 or bf16.
  KVCache(int64_t batch, int64_t capacity, int64_t kv_heads, int64_t key_dim, int64_t value_dim,
          DType dtype);

  int64_t kv_heads() const { return kv_heads_; }
  int64_t key_dim() const { return key_dim_; }
  int64_t value_dim() const { return value_dim_; }

  // Appends `count` tokens to `sequence`: keys [count][G][key_dim], values [count][G][value_dim]
  // (fp32, converted to the cache dtype), keep [count] or null.
  void Append(int64_t sequence, int64_t count, const float* keys, const float* values,
              const uint8_t* keep);
  // The filled part of `sequence`, for Attend().
  KVView View(int64_t sequence) const;

 private:
  int64_t kv_heads_;
  int64_t key_dim_;
  int64_t value_dim_;
  std::vector<std::byte> keys_;    // [batch][G][capacity][key_dim]
  std::vector<std::byte> values_;  // [batch][G][capacity][value_dim]
};

class LatentKVCache : public Cache {
 public:
  // Rows of kv_lora_rank + qk_rope_head_dim values.
  LatentKVCache(int64_t batch, int64_t capacity, int64_t kv_lora_rank, int64_t rope_dim,
                DType dtype);

  int64_t latent_dim() const { return latent_dim_; }
  int64_t rope_dim() const { return rope_dim_; }
  int64_t row_dim() const { return latent_dim_ + rope_dim_; }

  // Appends `count` rows [count][rk + dr] = [c | rotated k_pe] to `sequence`.
  void Append(int64_t sequence, int64_t count, const float* rows, const uint8_t* keep);
  // One shared kv head: keys are whole rows (rk + dr), values the first rk entries of the
  // same rows (values pointer == keys pointer).
  KVView View(int64_t sequence) const;
  // Rows of `sequence` [length][rk + dr] converted to fp32 into `out`.
  void ReadRows(int64_t sequence, float* out) const;

 private:
  int64_t latent_dim_;
  int64_t rope_dim_;
  std::vector<std::byte> rows_;  // [batch][capacity][rk + dr]
};

}  // namespace attn

#endif  // ATTN_KV_CACHE_H_
