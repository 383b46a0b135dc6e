// SPDX-License-Identifier: Apache-2.0
// What a layer step needs from the cache of the sequences in one call, whatever holds it: a
// contiguous KVCache / LatentKVCache (sequence b of the cache) or a PagedKVPool (the b-th of the
// call's sequence ids). One step code path per mechanism serves both (docs/architecture.md,
// "Paged caches").
#ifndef ATTN_LAYERS_KV_STORE_H_
#define ATTN_LAYERS_KV_STORE_H_

#include <cstdint>
#include <span>

#include "attn/kernels.h"
#include "attn/kv_cache.h"
#include "attn/paged_kv_cache.h"

namespace attn::layers {

// Per-head K/V (GQA family, naive MLA) or latent rows (absorbed / auto MLA) of a call's
// sequences b = 0 … sequences() - 1.
class KVStore {
 public:
  virtual ~KVStore() = default;
  virtual CacheForm form() const = 0;
  virtual int64_t sequences() const = 0;
  virtual int64_t kv_heads() const = 0;
  virtual int64_t key_dim() const = 0;
  virtual int64_t value_dim() const = 0;
  virtual int64_t length(int64_t b) const = 0;
  // Largest position id of sequence b's kept tokens (-1: none), see Cache::max_position.
  virtual int64_t max_position(int64_t b) const = 0;
  virtual void set_max_position(int64_t b, int64_t position) = 0;
  // Room for counts[b] more tokens of every sequence, or Error(kCapacity) with nothing changed.
  virtual void Reserve(std::span<const int64_t> counts) = 0;
  // heads: keys [count][G][key_dim], values [count][G][value_dim].
  virtual void AppendHeads(int64_t b, int64_t count, const float* keys, const float* values,
                           const uint8_t* keep) = 0;
  // latent: rows [count][rk + dr].
  virtual void AppendLatent(int64_t b, int64_t count, const float* rows, const uint8_t* keep) = 0;
  virtual KVView View(int64_t b) const = 0;
  // latent: rows of sequence b [length][rk + dr] as fp32.
  virtual void ReadRows(int64_t b, float* out) const = 0;
  // Runs `count` attention problems whose kv views came from View() (or, for decompressed MLA,
  // from rows read by ReadRows()): every layer attends over cached keys through here, so a store
  // that holds only part of each sequence (context parallelism, src/dist/context_parallel.cc)
  // can attend to its part and merge the rest. The default is the backend's attend_batch.
  virtual void Attend(AttentionProblem* problems, int64_t count) {
    DefaultBackend().attend_batch(problems, count);
  }
};

class ContiguousHeads final : public KVStore {
 public:
  explicit ContiguousHeads(KVCache& cache) : cache_(cache) {}
  CacheForm form() const override { return CacheForm::kHeads; }
  int64_t sequences() const override { return cache_.batch(); }
  int64_t kv_heads() const override { return cache_.kv_heads(); }
  int64_t key_dim() const override { return cache_.key_dim(); }
  int64_t value_dim() const override { return cache_.value_dim(); }
  int64_t length(int64_t b) const override { return cache_.length(b); }
  int64_t max_position(int64_t b) const override { return cache_.max_position(b); }
  void set_max_position(int64_t b, int64_t position) override {
    cache_.set_max_position(b, position);
  }
  void Reserve(std::span<const int64_t> counts) override { cache_.CheckRoom(counts); }
  void AppendHeads(int64_t b, int64_t count, const float* keys, const float* values,
                   const uint8_t* keep) override {
    cache_.Append(b, count, keys, values, keep);
  }
  void AppendLatent(int64_t, int64_t, const float*, const uint8_t*) override;
  KVView View(int64_t b) const override { return cache_.View(b); }
  void ReadRows(int64_t, float*) const override;

 private:
  KVCache& cache_;
};

class ContiguousLatent final : public KVStore {
 public:
  explicit ContiguousLatent(LatentKVCache& cache) : cache_(cache) {}
  CacheForm form() const override { return CacheForm::kLatent; }
  int64_t sequences() const override { return cache_.batch(); }
  int64_t kv_heads() const override { return 1; }
  int64_t key_dim() const override { return cache_.row_dim(); }
  int64_t value_dim() const override { return cache_.latent_dim(); }
  int64_t length(int64_t b) const override { return cache_.length(b); }
  int64_t max_position(int64_t b) const override { return cache_.max_position(b); }
  void set_max_position(int64_t b, int64_t position) override {
    cache_.set_max_position(b, position);
  }
  void Reserve(std::span<const int64_t> counts) override { cache_.CheckRoom(counts); }
  void AppendHeads(int64_t, int64_t, const float*, const float*, const uint8_t*) override;
  void AppendLatent(int64_t b, int64_t count, const float* rows, const uint8_t* keep) override {
    cache_.Append(b, count, rows, keep);
  }
  KVView View(int64_t b) const override { return cache_.View(b); }
  void ReadRows(int64_t b, float* out) const override { cache_.ReadRows(b, out); }

 private:
  LatentKVCache& cache_;
};

// The call's sequences `ids` of a page pool (ids checked live and distinct by Reserve).
class PagedSequences final : public KVStore {
 public:
  PagedSequences(PagedKVPool& pool, std::span<const PagedKVPool::SequenceId> ids)
      : pool_(pool), ids_(ids) {}
  CacheForm form() const override { return pool_.form(); }
  int64_t sequences() const override { return static_cast<int64_t>(ids_.size()); }
  int64_t kv_heads() const override { return pool_.kv_heads(); }
  int64_t key_dim() const override { return pool_.key_dim(); }
  int64_t value_dim() const override { return pool_.value_dim(); }
  int64_t length(int64_t b) const override { return pool_.length(id(b)); }
  int64_t max_position(int64_t b) const override { return pool_.max_position(id(b)); }
  void set_max_position(int64_t b, int64_t position) override {
    pool_.set_max_position(id(b), position);
  }
  void Reserve(std::span<const int64_t> counts) override { pool_.Reserve(ids_, counts); }
  void AppendHeads(int64_t b, int64_t count, const float* keys, const float* values,
                   const uint8_t* keep) override {
    pool_.AppendHeads(id(b), count, keys, values, keep);
  }
  void AppendLatent(int64_t b, int64_t count, const float* rows, const uint8_t* keep) override {
    pool_.AppendLatent(id(b), count, rows, keep);
  }
  KVView View(int64_t b) const override { return pool_.View(id(b)); }
  void ReadRows(int64_t b, float* out) const override { pool_.ReadRows(id(b), out); }

 private:
  PagedKVPool::SequenceId id(int64_t b) const { return ids_[static_cast<size_t>(b)]; }
  PagedKVPool& pool_;
  std::span<const PagedKVPool::SequenceId> ids_;
};

}  // namespace attn::layers

#endif  // ATTN_LAYERS_KV_STORE_H_
