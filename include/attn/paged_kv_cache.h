// SPDX-License-Identifier: Apache-2.0
// PagedKVPool: one layer's KV cache for many sequences as a pool of fixed-size pages, the way
// serving engines (vLLM, SGLang, FlashInfer, FlashMLA) keep it (docs/architecture.md, "Paged
// caches"). Sequences own block tables (page indices); a sequence grows a page at a time, a fork
// shares its parent's full pages and copies the partial last one, and freed pages return to the
// pool once their last owner is gone. The kernels read through the block tables
// (KVView::page_table): nothing is gathered into a contiguous copy.
//
// Two page layouts, one per cache kind (kv_cache.h):
//   heads   keys [G][page_size][key_dim] and values [G][page_size][value_dim] per page,
//           head-major inside a page as KVCache is per sequence (GQA family, naive MLA)
//   latent  rows [page_size][rk + dr] per page; a token's value is the first rk entries of its
//           row (absorbed / auto MLA)
// Padding flags live beside the pages ([pages][page_size]), so a fork shares them too.
//
// Quantized pools (dtype F8_E4M3 or I8) store codes and one fp32 scale per token and kv head, for
// keys and for values, in scale areas beside the pages ([pages][G][page_size] each; latent: one
// scale per token, [pages][page_size], shared by the row and its value prefix). Append quantizes
// each row: scale = max|x| / 448 (fp8) or max|x| / 127 (int8, symmetric, rounded to nearest),
// 1 for an all-zero row. The kernels dequantize as they read (KVView::key_scales).
//
// Sequence ids are never reused: a step on a freed id is an error, not another sequence's data.
#ifndef ATTN_PAGED_KV_CACHE_H_
#define ATTN_PAGED_KV_CACHE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "attn/dtype.h"
#include "attn/kv_cache.h"

namespace attn {

class PagedKVPool {
 public:
  using SequenceId = int64_t;

  // `pages` pages of `page_size` tokens (16 … 256, a multiple of 16). dtype f32, f16, bf16,
  // or F8_E4M3 / I8 (quantized, with per-token scales).
  static PagedKVPool ForHeads(int64_t pages, int64_t page_size, int64_t kv_heads, int64_t key_dim,
                              int64_t value_dim, DType dtype);
  static PagedKVPool ForLatent(int64_t pages, int64_t page_size, int64_t latent_dim,
                               int64_t rope_dim, DType dtype);

  CacheForm form() const { return form_; }
  DType dtype() const { return dtype_; }
  int64_t pages() const { return pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t free_pages() const { return static_cast<int64_t>(free_list_.size()); }
  // Bytes of page storage (keys, values or rows; not the flags or block tables).
  size_t nbytes() const { return storage_.size(); }
  // heads: G, key and value width; latent: 1, rk + dr, rk.
  int64_t kv_heads() const { return kv_heads_; }
  int64_t key_dim() const { return key_dim_; }
  int64_t value_dim() const { return value_dim_; }

  // A new empty sequence.
  SequenceId Add();
  // A new sequence holding `parent`'s tokens: full pages shared, the partial last page copied.
  // Later appends to either never touch the other's data. Throws Error(kCapacity) when no page
  // is free for the copy.
  SequenceId Fork(SequenceId parent);
  // Returns the sequence's pages to the pool (shared ones when their last owner goes).
  void Free(SequenceId id);
  bool Contains(SequenceId id) const;
  int64_t length(SequenceId id) const;
  // The largest position id of the sequence's non-padding tokens appended by layer steps (-1:
  // none); a fork inherits it. See Cache::max_position.
  int64_t max_position(SequenceId id) const;
  void set_max_position(SequenceId id, int64_t position);
  // Pages the sequence holds (shared ones included).
  int64_t pages_of(SequenceId id) const;

  // Makes room for counts[i] more tokens of sequence ids[i], all or nothing: throws
  // Error(kCapacity) naming the pages asked for and free, having changed nothing. ids must be
  // live and distinct (Error(kInvalidArgument) otherwise).
  void Reserve(std::span<const SequenceId> ids, std::span<const int64_t> counts);
  // Appends `count` tokens to a sequence with room reserved: keys [count][G][key_dim] and values
  // [count][G][value_dim] (heads), fp32, converted to the pool dtype; keep [count] or null.
  void AppendHeads(SequenceId id, int64_t count, const float* keys, const float* values,
                   const uint8_t* keep);
  // Appends `count` latent rows [count][rk + dr] (latent pools).
  void AppendLatent(SequenceId id, int64_t count, const float* rows, const uint8_t* keep);
  // The filled part of a sequence, paged, for Attend(). Valid until the next Reserve, Fork or
  // Free.
  KVView View(SequenceId id) const;
  // A latent sequence's rows [length][rk + dr] as fp32 (dequantized for fp8/int8 pools).
  void ReadRows(SequenceId id, float* out) const;

 private:
  struct Sequence {
    bool live = false;
    int64_t length = 0;
    int64_t max_position = -1;
    std::vector<int32_t> table;  // page indices, capacity reserved for the whole pool
  };

  PagedKVPool(CacheForm form, int64_t pages, int64_t page_size, int64_t kv_heads, int64_t key_dim,
              int64_t value_dim, DType dtype);
  Sequence& Live(SequenceId id, const char* what);
  const Sequence& Live(SequenceId id, const char* what) const;
  int32_t TakePage();
  void CopyPage(int32_t from, int32_t to);
  // Writes keep flags and returns the first slot; the caller stores the values.
  int64_t Advance(Sequence& sequence, SequenceId id, int64_t count, const uint8_t* keep);

  CacheForm form_;
  DType dtype_;
  int64_t pages_;
  int64_t page_size_;
  int64_t kv_heads_;
  int64_t key_dim_;
  int64_t value_dim_;
  size_t page_bytes_;                // bytes of one page (keys and values, or rows)
  size_t key_page_bytes_;            // heads: the keys part of a page; latent: the whole page
  std::vector<std::byte> storage_;   // [pages][page_bytes_]
  std::vector<uint8_t> keep_;        // [pages][page_size]
  std::vector<float> key_scales_;    // quantized: [pages][G][page_size]; else empty
  std::vector<float> value_scales_;  // quantized heads pools: [pages][G][page_size]; else empty
  std::vector<int32_t> refcount_;    // [pages]
  std::vector<int32_t> free_list_;
  std::vector<Sequence> sequences_;  // indexed by id
};

}  // namespace attn

#endif  // ATTN_PAGED_KV_CACHE_H_
