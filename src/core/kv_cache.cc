// SPDX-License-Identifier: Apache-2.0
#include "attn/kv_cache.h"

#include <algorithm>
#include <string>

#include "attn/error.h"
#include "attn/tensor.h"
#include "kernels/cpu/element_load.h"

namespace attn {
namespace {

void CheckStorageDType(DType dtype) {
  ATTN_CHECK(dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16,
             ErrorKind::kInvalidArgument,
             std::string("KV cache dtype must be f32, f16 or bf16, got ") + DTypeName(dtype) +
                 (IsQuantizedKV(dtype) ? " (quantized fp8/int8 storage is paged-only: use a "
                                         "PagedKVPool)"
                                       : ""));
}

// Elements of a [batch][capacity][...] store, with overflow checked before allocating.
size_t StorageElements(int64_t batch, int64_t capacity, int64_t per_token) {
  ATTN_CHECK(batch > 0 && capacity > 0 && per_token > 0, ErrorKind::kInvalidArgument,
             "KV cache needs batch > 0 and capacity > 0, got batch " + std::to_string(batch) +
                 ", capacity " + std::to_string(capacity));
  return static_cast<size_t>(NumElements({batch, capacity, per_token}));
}

}  // namespace

int64_t CacheValuesPerToken(const ModelConfig& config, CacheForm form) {
  if (config.kind == AttentionKind::kGqa) {
    ATTN_CHECK(form == CacheForm::kHeads, ErrorKind::kInvalidArgument,
               "a latent cache exists only for MLA models, not '" + config.model_type + "'");
    return 2 * config.gqa.num_kv_heads * config.gqa.head_dim;  // K and V, G heads of d
  }
  const MlaDims& m = config.mla;
  if (form == CacheForm::kLatent) return m.kv_lora_rank + m.qk_rope_head_dim;  // [c | k_pe]
  return config.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim);
}

Cache::Cache(int64_t batch, int64_t capacity, DType dtype, size_t bytes_per_token)
    : batch_(batch),
      capacity_(capacity),
      dtype_(dtype),
      bytes_per_token_(bytes_per_token),
      lengths_() {
  CheckStorageDType(dtype);
  // Validates batch, capacity and the total size (overflow) before anything is allocated,
  // here or in the derived class.
  StorageElements(batch, capacity, static_cast<int64_t>(bytes_per_token));
  lengths_.assign(static_cast<size_t>(batch), 0);
  max_positions_.assign(static_cast<size_t>(batch), -1);
  keep_.assign(static_cast<size_t>(batch * capacity), 1);
}

int64_t Cache::length(int64_t sequence) const {
  ATTN_CHECK(sequence >= 0 && sequence < batch_, ErrorKind::kInvalidArgument,
             "sequence " + std::to_string(sequence) + " out of range for a cache of batch " +
                 std::to_string(batch_));
  return lengths_[static_cast<size_t>(sequence)];
}

void Cache::CheckRoom(std::span<const int64_t> counts) const {
  ATTN_CHECK(
      static_cast<int64_t>(counts.size()) == batch_, ErrorKind::kInvalidArgument,
      "expected " + std::to_string(batch_) + " token counts, got " + std::to_string(counts.size()));
  for (int64_t b = 0; b < batch_; ++b) {
    const int64_t have = lengths_[static_cast<size_t>(b)];
    const int64_t add = counts[static_cast<size_t>(b)];
    ATTN_CHECK(add >= 0 && have + add <= capacity_, ErrorKind::kCapacity,
               "KV cache overflow: sequence " + std::to_string(b) + " holds " +
                   std::to_string(have) + " of " + std::to_string(capacity_) +
                   " tokens and cannot take " + std::to_string(add) + " more");
  }
}

void Cache::Clear() {
  std::fill(lengths_.begin(), lengths_.end(), 0);
  std::fill(max_positions_.begin(), max_positions_.end(), -1);
}

int64_t Cache::max_position(int64_t sequence) const {
  length(sequence);  // range check
  return max_positions_[static_cast<size_t>(sequence)];
}

void Cache::set_max_position(int64_t sequence, int64_t position) {
  length(sequence);  // range check
  max_positions_[static_cast<size_t>(sequence)] = position;
}

int64_t Cache::Advance(int64_t sequence, int64_t count, const uint8_t* keep) {
  const int64_t first = length(sequence);
  ATTN_CHECK(count >= 0 && first + count <= capacity_, ErrorKind::kCapacity,
             "KV cache overflow: sequence " + std::to_string(sequence) + " holds " +
                 std::to_string(first) + " of " + std::to_string(capacity_) +
                 " tokens and cannot take " + std::to_string(count) + " more");
  uint8_t* flags = keep_.data() + static_cast<size_t>(sequence * capacity_ + first);
  for (int64_t i = 0; i < count; ++i) flags[i] = keep == nullptr || keep[i] != 0 ? 1 : 0;
  lengths_[static_cast<size_t>(sequence)] = first + count;
  return first;
}

KVCache::KVCache(int64_t batch, int64_t capacity, int64_t kv_heads, int64_t key_dim,
                 int64_t value_dim, DType dtype)
    : Cache(batch, capacity, dtype,
            static_cast<size_t>(kv_heads * (key_dim + value_dim)) * DTypeSize(dtype)),
      kv_heads_(kv_heads),
      key_dim_(key_dim),
      value_dim_(value_dim),
      keys_(StorageElements(batch, capacity, kv_heads * key_dim) * DTypeSize(dtype)),
      values_(StorageElements(batch, capacity, kv_heads * value_dim) * DTypeSize(dtype)) {}

void KVCache::Append(int64_t sequence, int64_t count, const float* keys, const float* values,
                     const uint8_t* keep) {
  const int64_t first = Advance(sequence, count, keep);
  const int64_t key_seq = sequence * kv_heads_ * capacity() * key_dim_;
  const int64_t value_seq = sequence * kv_heads_ * capacity() * value_dim_;
  for (int64_t n = 0; n < count; ++n) {
    for (int64_t g = 0; g < kv_heads_; ++g) {
      const int64_t slot = first + n;
      cpu::StoreRow(dtype(), keys_.data(), key_seq + (g * capacity() + slot) * key_dim_, key_dim_,
                    keys + (n * kv_heads_ + g) * key_dim_);
      cpu::StoreRow(dtype(), values_.data(), value_seq + (g * capacity() + slot) * value_dim_,
                    value_dim_, values + (n * kv_heads_ + g) * value_dim_);
    }
  }
}

KVView KVCache::View(int64_t sequence) const {
  KVView view;
  view.dtype = dtype();
  const size_t element = DTypeSize(dtype());
  view.keys =
      keys_.data() + static_cast<size_t>(sequence * kv_heads_ * capacity() * key_dim_) * element;
  view.values = values_.data() +
                static_cast<size_t>(sequence * kv_heads_ * capacity() * value_dim_) * element;
  view.kv_heads = kv_heads_;
  view.key_dim = key_dim_;
  view.value_dim = value_dim_;
  view.key_head_stride = capacity() * key_dim_;
  view.key_token_stride = key_dim_;
  view.value_head_stride = capacity() * value_dim_;
  view.value_token_stride = value_dim_;
  view.length = length(sequence);
  view.keep = keep(sequence);
  return view;
}

LatentKVCache::LatentKVCache(int64_t batch, int64_t capacity, int64_t kv_lora_rank,
                             int64_t rope_dim, DType dtype)
    : Cache(batch, capacity, dtype,
            static_cast<size_t>(kv_lora_rank + rope_dim) * DTypeSize(dtype)),
      latent_dim_(kv_lora_rank),
      rope_dim_(rope_dim),
      rows_(StorageElements(batch, capacity, kv_lora_rank + rope_dim) * DTypeSize(dtype)) {}

void LatentKVCache::Append(int64_t sequence, int64_t count, const float* rows,
                           const uint8_t* keep) {
  const int64_t first = Advance(sequence, count, keep);
  cpu::StoreRow(dtype(), rows_.data(), (sequence * capacity() + first) * row_dim(),
                count * row_dim(), rows);
}

KVView LatentKVCache::View(int64_t sequence) const {
  KVView view;
  view.dtype = dtype();
  view.keys =
      rows_.data() + static_cast<size_t>(sequence * capacity() * row_dim()) * DTypeSize(dtype());
  view.values = view.keys;  // value row = first rk entries of the key row
  view.kv_heads = 1;
  view.key_dim = row_dim();
  view.value_dim = latent_dim_;
  view.key_head_stride = 0;
  view.key_token_stride = row_dim();
  view.value_head_stride = 0;
  view.value_token_stride = row_dim();
  view.length = length(sequence);
  view.keep = keep(sequence);
  return view;
}

void LatentKVCache::ReadRows(int64_t sequence, float* out) const {
  cpu::LoadRow(dtype(), rows_.data(), sequence * capacity() * row_dim(),
               length(sequence) * row_dim(), out);
}

}  // namespace attn
