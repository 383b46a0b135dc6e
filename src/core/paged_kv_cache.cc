// SPDX-License-Identifier: Apache-2.0
#include "attn/paged_kv_cache.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "attn/error.h"
#include "attn/tensor.h"
#include "kernels/cpu/element_load.h"

namespace attn {
namespace {

std::string Id(PagedKVPool::SequenceId id) { return std::to_string(id); }

}  // namespace

PagedKVPool::PagedKVPool(CacheForm form, int64_t pages, int64_t page_size, int64_t kv_heads,
                         int64_t key_dim, int64_t value_dim, DType dtype)
    : form_(form),
      dtype_(dtype),
      pages_(pages),
      page_size_(page_size),
      kv_heads_(kv_heads),
      key_dim_(key_dim),
      value_dim_(value_dim),
      page_bytes_(0),
      key_page_bytes_(0) {
  ATTN_CHECK(
      dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 || IsQuantizedKV(dtype),
      ErrorKind::kInvalidArgument,
      std::string("paged KV dtype must be f32, f16, bf16, F8_E4M3 or I8, got ") + DTypeName(dtype));
  // 16 … 256 and a multiple of 16: the fast kernel's tiles then split a page into whole
  // 16-key halves at worst.
  ATTN_CHECK(page_size >= 16 && page_size <= 256 && page_size % 16 == 0,
             ErrorKind::kInvalidArgument,
             "page size must be a multiple of 16 in [16, 256], got " + std::to_string(page_size));
  ATTN_CHECK(pages > 0 && pages <= (int64_t{1} << 30), ErrorKind::kInvalidArgument,
             "page count must be in [1, 2^30], got " + std::to_string(pages));
  ATTN_CHECK(kv_heads > 0 && key_dim > 0 && value_dim > 0, ErrorKind::kInvalidArgument,
             "paged KV widths must be positive");
  const int64_t key_values = NumElements({kv_heads, page_size, key_dim});
  const int64_t value_values =
      form == CacheForm::kHeads ? NumElements({kv_heads, page_size, value_dim}) : 0;
  key_page_bytes_ = static_cast<size_t>(key_values) * DTypeSize(dtype);
  page_bytes_ = static_cast<size_t>(key_values + value_values) * DTypeSize(dtype);
  storage_.resize(static_cast<size_t>(NumElements({pages, static_cast<int64_t>(page_bytes_)})));
  keep_.assign(static_cast<size_t>(pages * page_size), 1);
  if (IsQuantizedKV(dtype)) {
    // One scale per token and kv head, beside the pages: [pages][G][page_size].
    const size_t scales = static_cast<size_t>(NumElements({pages, kv_heads, page_size}));
    key_scales_.assign(scales, 1.0f);
    if (form == CacheForm::kHeads) value_scales_.assign(scales, 1.0f);
  }
  refcount_.assign(static_cast<size_t>(pages), 0);
  free_list_.resize(static_cast<size_t>(pages));
  // Lowest pages first (the list is popped from the back).
  for (int64_t i = 0; i < pages; ++i)
    free_list_[static_cast<size_t>(i)] = static_cast<int32_t>(pages - 1 - i);
}

PagedKVPool PagedKVPool::ForHeads(int64_t pages, int64_t page_size, int64_t kv_heads,
                                  int64_t key_dim, int64_t value_dim, DType dtype) {
  return PagedKVPool(CacheForm::kHeads, pages, page_size, kv_heads, key_dim, value_dim, dtype);
}

PagedKVPool PagedKVPool::ForLatent(int64_t pages, int64_t page_size, int64_t latent_dim,
                                   int64_t rope_dim, DType dtype) {
  ATTN_CHECK(latent_dim > 0 && rope_dim >= 0, ErrorKind::kInvalidArgument,
             "latent widths must be positive");
  return PagedKVPool(CacheForm::kLatent, pages, page_size, 1, latent_dim + rope_dim, latent_dim,
                     dtype);
}

PagedKVPool::Sequence& PagedKVPool::Live(SequenceId id, const char* what) {
  return const_cast<Sequence&>(static_cast<const PagedKVPool&>(*this).Live(id, what));
}

const PagedKVPool::Sequence& PagedKVPool::Live(SequenceId id, const char* what) const {
  ATTN_CHECK(id >= 0 && id < static_cast<SequenceId>(sequences_.size()),
             ErrorKind::kInvalidArgument,
             std::string(what) + ": unknown sequence " + Id(id) + " (this pool has made " +
                 std::to_string(sequences_.size()) + ")");
  const Sequence& sequence = sequences_[static_cast<size_t>(id)];
  ATTN_CHECK(sequence.live, ErrorKind::kInvalidArgument,
             std::string(what) + ": sequence " + Id(id) + " was freed");
  return sequence;
}

PagedKVPool::SequenceId PagedKVPool::Add() {
  Sequence sequence;
  sequence.live = true;
  // Room for every page of the pool: growing the table never reallocates, so a decode step
  // allocates nothing and View()'s table pointer stays put.
  sequence.table.reserve(static_cast<size_t>(pages_));
  sequences_.push_back(std::move(sequence));
  return static_cast<SequenceId>(sequences_.size()) - 1;
}

bool PagedKVPool::Contains(SequenceId id) const {
  return id >= 0 && id < static_cast<SequenceId>(sequences_.size()) &&
         sequences_[static_cast<size_t>(id)].live;
}

int64_t PagedKVPool::length(SequenceId id) const { return Live(id, "length").length; }

int64_t PagedKVPool::max_position(SequenceId id) const {
  return Live(id, "max_position").max_position;
}

void PagedKVPool::set_max_position(SequenceId id, int64_t position) {
  Live(id, "set_max_position").max_position = position;
}

int64_t PagedKVPool::pages_of(SequenceId id) const {
  return static_cast<int64_t>(Live(id, "pages_of").table.size());
}

int32_t PagedKVPool::TakePage() {
  const int32_t page = free_list_.back();
  free_list_.pop_back();
  refcount_[static_cast<size_t>(page)] = 1;
  return page;
}

void PagedKVPool::CopyPage(int32_t from, int32_t to) {
  std::memcpy(storage_.data() + static_cast<size_t>(to) * page_bytes_,
              storage_.data() + static_cast<size_t>(from) * page_bytes_, page_bytes_);
  const size_t scales = static_cast<size_t>(kv_heads_ * page_size_);
  if (!key_scales_.empty()) {
    std::copy_n(key_scales_.data() + static_cast<size_t>(from) * scales, scales,
                key_scales_.data() + static_cast<size_t>(to) * scales);
  }
  if (!value_scales_.empty()) {
    std::copy_n(value_scales_.data() + static_cast<size_t>(from) * scales, scales,
                value_scales_.data() + static_cast<size_t>(to) * scales);
  }
  std::memcpy(keep_.data() + static_cast<size_t>(to * page_size_),
              keep_.data() + static_cast<size_t>(from * page_size_),
              static_cast<size_t>(page_size_));
}

PagedKVPool::SequenceId PagedKVPool::Fork(SequenceId parent) {
  const Sequence& source = Live(parent, "fork");
  const int64_t full = source.length / page_size_;
  const bool partial = source.length % page_size_ != 0;
  ATTN_CHECK(!partial || !free_list_.empty(), ErrorKind::kCapacity,
             "page pool exhausted: fork of sequence " + Id(parent) +
                 " needs 1 page for its partial last page, 0 of " + std::to_string(pages_) +
                 " free");
  const SequenceId child = Add();
  Sequence& copy = sequences_[static_cast<size_t>(child)];
  const Sequence& original = sequences_[static_cast<size_t>(parent)];  // Add() may have moved it
  copy.length = original.length;
  copy.max_position = original.max_position;
  for (int64_t i = 0; i < full; ++i) {
    const int32_t page = original.table[static_cast<size_t>(i)];
    ++refcount_[static_cast<size_t>(page)];
    copy.table.push_back(page);
  }
  if (partial) {
    const int32_t page = TakePage();
    CopyPage(original.table[static_cast<size_t>(full)], page);
    copy.table.push_back(page);
  }
  return child;
}

void PagedKVPool::Free(SequenceId id) {
  Sequence& sequence = Live(id, "free");
  for (const int32_t page : sequence.table) {
    if (--refcount_[static_cast<size_t>(page)] == 0) free_list_.push_back(page);
  }
  sequence.live = false;
  sequence.length = 0;
  std::vector<int32_t>().swap(sequence.table);
}

void PagedKVPool::Reserve(std::span<const SequenceId> ids, std::span<const int64_t> counts) {
  ATTN_CHECK(ids.size() == counts.size(), ErrorKind::kInvalidArgument,
             "reserve: " + std::to_string(ids.size()) + " sequences but " +
                 std::to_string(counts.size()) + " counts");
  int64_t needed = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const Sequence& sequence = Live(ids[i], "step");
    for (size_t j = 0; j < i; ++j) {
      ATTN_CHECK(ids[j] != ids[i], ErrorKind::kInvalidArgument,
                 "sequence " + Id(ids[i]) + " appears twice in one call");
    }
    ATTN_CHECK(counts[i] >= 0, ErrorKind::kInvalidArgument,
               "negative token count for sequence " + Id(ids[i]));
    const int64_t pages = (sequence.length + counts[i] + page_size_ - 1) / page_size_;
    needed += std::max<int64_t>(0, pages - static_cast<int64_t>(sequence.table.size()));
  }
  ATTN_CHECK(needed <= free_pages(), ErrorKind::kCapacity,
             "page pool exhausted: the call needs " + std::to_string(needed) + " more pages of " +
                 std::to_string(page_size_) + " tokens, " + std::to_string(free_pages()) + " of " +
                 std::to_string(pages_) + " free");
  for (size_t i = 0; i < ids.size(); ++i) {
    Sequence& sequence = sequences_[static_cast<size_t>(ids[i])];
    const int64_t pages = (sequence.length + counts[i] + page_size_ - 1) / page_size_;
    while (static_cast<int64_t>(sequence.table.size()) < pages) {
      sequence.table.push_back(TakePage());
    }
  }
}

int64_t PagedKVPool::Advance(Sequence& sequence, SequenceId id, int64_t count,
                             const uint8_t* keep) {
  const int64_t first = sequence.length;
  ATTN_CHECK(
      count >= 0 && first + count <= static_cast<int64_t>(sequence.table.size()) * page_size_,
      ErrorKind::kCapacity,
      "sequence " + Id(id) + " has no room reserved for " + std::to_string(count) +
          " more tokens (Reserve first)");
  for (int64_t n = 0; n < count; ++n) {
    const int64_t slot = first + n;
    const int64_t page = sequence.table[static_cast<size_t>(slot / page_size_)];
    keep_[static_cast<size_t>(page * page_size_ + slot % page_size_)] =
        keep == nullptr || keep[n] != 0 ? 1 : 0;
  }
  sequence.length = first + count;
  return first;
}

void PagedKVPool::AppendHeads(SequenceId id, int64_t count, const float* keys, const float* values,
                              const uint8_t* keep) {
  ATTN_CHECK(form_ == CacheForm::kHeads, ErrorKind::kInvalidArgument,
             "AppendHeads on a latent page pool");
  Sequence& sequence = Live(id, "append");
  const int64_t first = Advance(sequence, id, count, keep);
  const int64_t key_page = static_cast<int64_t>(page_bytes_ / DTypeSize(dtype_));
  const int64_t value_base = static_cast<int64_t>(key_page_bytes_ / DTypeSize(dtype_));
  for (int64_t n = 0; n < count; ++n) {
    const int64_t slot = first + n;
    const int64_t page = sequence.table[static_cast<size_t>(slot / page_size_)];
    const int64_t u = slot % page_size_;
    for (int64_t g = 0; g < kv_heads_; ++g) {
      const int64_t key_offset = page * key_page + (g * page_size_ + u) * key_dim_;
      const int64_t value_offset = page * key_page + value_base + (g * page_size_ + u) * value_dim_;
      const float* key = keys + (n * kv_heads_ + g) * key_dim_;
      const float* value = values + (n * kv_heads_ + g) * value_dim_;
      if (IsQuantizedKV(dtype_)) {
        const size_t scale = static_cast<size_t>((page * kv_heads_ + g) * page_size_ + u);
        key_scales_[scale] = cpu::QuantizeRow(dtype_, storage_.data(), key_offset, key_dim_, key);
        value_scales_[scale] =
            cpu::QuantizeRow(dtype_, storage_.data(), value_offset, value_dim_, value);
      } else {
        cpu::StoreRow(dtype_, storage_.data(), key_offset, key_dim_, key);
        cpu::StoreRow(dtype_, storage_.data(), value_offset, value_dim_, value);
      }
    }
  }
}

void PagedKVPool::AppendLatent(SequenceId id, int64_t count, const float* rows,
                               const uint8_t* keep) {
  ATTN_CHECK(form_ == CacheForm::kLatent, ErrorKind::kInvalidArgument,
             "AppendLatent on a per-head page pool");
  Sequence& sequence = Live(id, "append");
  const int64_t first = Advance(sequence, id, count, keep);
  for (int64_t n = 0; n < count; ++n) {
    const int64_t slot = first + n;
    const int64_t page = sequence.table[static_cast<size_t>(slot / page_size_)];
    const int64_t u = slot % page_size_;
    const int64_t offset = (page * page_size_ + u) * key_dim_;
    if (IsQuantizedKV(dtype_)) {
      // One scale per token, shared by the row and its value prefix.
      key_scales_[static_cast<size_t>(page * page_size_ + u)] =
          cpu::QuantizeRow(dtype_, storage_.data(), offset, key_dim_, rows + n * key_dim_);
    } else {
      cpu::StoreRow(dtype_, storage_.data(), offset, key_dim_, rows + n * key_dim_);
    }
  }
}

KVView PagedKVPool::View(SequenceId id) const {
  const Sequence& sequence = Live(id, "view");
  const int64_t element = static_cast<int64_t>(DTypeSize(dtype_));
  const int64_t page_elements = static_cast<int64_t>(page_bytes_) / element;
  KVView view;
  view.dtype = dtype_;
  view.keys = storage_.data();
  view.kv_heads = kv_heads_;
  view.key_dim = key_dim_;
  view.value_dim = value_dim_;
  view.length = sequence.length;
  view.keep = keep_.data();
  view.page_size = page_size_;
  view.page_table = sequence.table.data();
  view.key_page_stride = page_elements;
  view.value_page_stride = page_elements;
  if (IsQuantizedKV(dtype_)) {
    view.key_scales = key_scales_.data();
    // Latent: the value prefix shares its row's scale.
    view.value_scales = form_ == CacheForm::kHeads ? value_scales_.data() : key_scales_.data();
  }
  if (form_ == CacheForm::kHeads) {
    view.values = storage_.data() + key_page_bytes_;
    view.key_head_stride = page_size_ * key_dim_;
    view.key_token_stride = key_dim_;
    view.value_head_stride = page_size_ * value_dim_;
    view.value_token_stride = value_dim_;
  } else {
    view.values = storage_.data();  // the value row is the first rk entries of the key row
    view.key_token_stride = key_dim_;
    view.value_token_stride = key_dim_;
  }
  return view;
}

void PagedKVPool::ReadRows(SequenceId id, float* out) const {
  ATTN_CHECK(form_ == CacheForm::kLatent, ErrorKind::kInvalidArgument,
             "ReadRows on a per-head page pool");
  const Sequence& sequence = Live(id, "read");
  for (int64_t t = 0; t < sequence.length; t += page_size_) {
    const int64_t page = sequence.table[static_cast<size_t>(t / page_size_)];
    const int64_t count = std::min(page_size_, sequence.length - t);
    float* dst = out + t * key_dim_;
    cpu::LoadRow(dtype_, storage_.data(), page * page_size_ * key_dim_, count * key_dim_, dst);
    if (IsQuantizedKV(dtype_)) {
      for (int64_t u = 0; u < count; ++u) {
        const float scale = key_scales_[static_cast<size_t>(page * page_size_ + u)];
        for (int64_t i = 0; i < key_dim_; ++i) dst[u * key_dim_ + i] *= scale;
      }
    }
  }
}

}  // namespace attn
