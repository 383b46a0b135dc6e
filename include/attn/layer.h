// SPDX-License-Identifier: Apache-2.0
// The interface every attention layer implements, and the inputs of one call.
// A call appends its tokens to a cache and attends over everything the cache holds, so
// prefill (S tokens), chunked prefill and decode (S = 1) are the same call.
#ifndef ATTN_LAYER_H_
#define ATTN_LAYER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "attn/config.h"
#include "attn/kv_cache.h"
#include "attn/paged_kv_cache.h"
#include "attn/tensor.h"

namespace attn {
namespace layers {
class KVStore;  // src/layers/kv_store.h: private to the library
}  // namespace layers

// How an MLA layer runs (docs/semantics.md §3). GQA-family layers ignore it.
enum class MlaForm {
  kNaive,     // per-head K (dn+dr) and V (dv) cached, like HF training code
  kAbsorbed,  // latent cache; queries absorbed through W_UK, outputs through W_UV
  kAuto,      // latent cache; per call the cheaper of decompress-then-attend and absorbed
};
// "naive" | "absorbed" | "auto"; anything else throws Error(kInvalidArgument).
MlaForm MlaFormFromString(const std::string& name);
const char* MlaFormName(MlaForm form);

// One call's tokens: B sequences of S tokens each.
// A call's tokens, padded or packed:
//   padded  hidden_states [B, S, D]; positions and keep [B·S]; lengths [B] optional (ragged)
//   packed  hidden_states [N, D] with lengths [B] summing to N: sequence b's tokens are the next
//           lengths[b] rows (cu_seqlens style), so prefill chunks and single decode tokens of
//           different sequences share one call without padding; positions and keep [N]; the
//           output is [N, D]
struct TokenBatch {
  const Tensor* hidden_states = nullptr;  // [B, S, D] or packed [N, D]
  // [B·S] absolute positions for RoPE; empty = each sequence continues from its cache length.
  std::span<const int64_t> positions;
  // [B·S] key padding flags (1 keep, 0 pad); empty = all kept. Masks keys only: a padded
  // token still gets an output row, and no later query attends to it.
  std::span<const uint8_t> keep;
  // [B] tokens each sequence contributes to this call (0 … S); empty = S for every sequence.
  // Packed: required, the row count of each sequence.
  // Sequence b uses rows 0 … lengths[b]-1 of its S; later rows are ignored and their outputs
  // are zero. Lets a batch hold sequences of different lengths (ragged prefill, or decode
  // steps where some sequences sit idle).
  std::span<const int64_t> lengths = {};
};

class AttentionLayer {
 public:
  virtual ~AttentionLayer() = default;

  virtual const ModelConfig& config() const = 0;
  // An empty cache for `batch` sequences of up to `capacity` tokens, in the layout `form`
  // needs (GQA: always per-head K/V).
  virtual std::unique_ptr<Cache> NewCache(int64_t batch, int64_t capacity, DType dtype,
                                          MlaForm form) const = 0;
  // Appends the batch to `cache` and writes the attention output [B, S, D] to `out`, reusing
  // its storage when it has room: with one `out` kept across steps, a decode step allocates
  // nothing once warm. Throws Error(kCapacity) before touching the cache if any sequence would
  // overflow, and Error(kInvalidArgument) for shapes or a cache made for another form.
  virtual void StepInto(const TokenBatch& batch, Cache& cache, MlaForm form, Tensor& out) const = 0;

  // A page pool for this layer's cache (docs/architecture.md, "Paged caches"): per-head pages
  // for the GQA family and naive MLA, latent pages for absorbed / auto MLA. Virtual so that a
  // layer split by heads (attn/parallel.h) can hand out pools of its own heads only.
  virtual std::unique_ptr<PagedKVPool> NewPagedPool(int64_t pages, int64_t page_size, DType dtype,
                                                    MlaForm form) const;
  // StepInto() over sequences of a page pool: row b of the batch continues sequence ids[b]
  // (live and distinct). The pages the call needs are taken before anything is written, all or
  // nothing: Error(kCapacity) names the pages asked for and leaves every sequence unchanged.
  virtual void StepPagedInto(const TokenBatch& batch, PagedKVPool& pool,
                             std::span<const PagedKVPool::SequenceId> ids, MlaForm form,
                             Tensor& out) const = 0;

  // Internal (KVStore is a private header of the library): StepInto() over any store of the
  // call's sequences, which is how a layer that splits the cache across ranks (context
  // parallelism, include/attn/context_parallel.h) runs the unchanged step over its own store.
  // GqaAttention and MlaAttention implement it; the default throws Error(kUnsupported).
  virtual void StepWithStore(const TokenBatch& batch, layers::KVStore& store, MlaForm form,
                             Tensor& out) const;

  // StepInto() with a fresh output tensor.
  Tensor Step(const TokenBatch& batch, Cache& cache, MlaForm form) const {
    Tensor out;
    StepInto(batch, cache, form, out);
    return out;
  }

  // Step() on a fresh fp32 cache sized to the batch: a full prefill.
  Tensor Forward(const TokenBatch& batch, MlaForm form) const;

  // The same tokens as a prefill of the first `prefill_tokens` (1 <= N <= S) followed by one
  // decode Step() per remaining token, through a fresh cache of `cache_dtype`. Returns the
  // outputs of all S tokens, [B, S, D]: equal to Forward() up to rounding.
  // When `timings` is given, it receives the wall time of the prefill and of all decode steps.
  struct Timings {
    double prefill_seconds = 0.0;
    double decode_seconds = 0.0;
    int64_t decode_steps = 0;
  };
  Tensor PrefillThenDecode(const TokenBatch& batch, int64_t prefill_tokens, MlaForm form,
                           DType cache_dtype, Timings* timings = nullptr) const;
};

}  // namespace attn

#endif  // ATTN_LAYER_H_
