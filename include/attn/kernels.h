// SPDX-License-Identifier: Apache-2.0
// The operator interface between layers and kernels. Every mechanism — MHA, GQA, MQA, naive
// MLA (G = H, Dk = dn+dr, Dv = dv) and absorbed MLA (G = 1, Dk = rk+dr, Dv = rk, values aliasing
// keys) — reaches attention through Attend(); layers differ only in how they build queries,
// keys and values. Backends (cpu/ reference now, fast kernels later) sit behind one table.
#ifndef ATTN_KERNELS_H_
#define ATTN_KERNELS_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "attn/dtype.h"
#include "attn/weight.h"

namespace attn {

// Queries of one sequence in this call: contiguous [tokens][heads][dim] fp32.
struct QueryRows {
  const float* data = nullptr;
  int64_t tokens = 0;
  int64_t heads = 0;  // H
  int64_t dim = 0;    // Dk
};

// Keys and values of one sequence as stored (a cache, or a workspace). Element (g, t, i) of
// the keys lives at keys + g·key_head_stride + t·key_token_stride + i (in elements of dtype);
// values likewise. Values may alias keys (absorbed MLA: value row = first rk entries of the key
// row), so nothing here is ever written.
//
// Paged (page_size > 0; a PagedKVPool, docs/architecture.md "Paged caches"): slot t lives on
// page page_table[t / page_size] at position u = t % page_size, so element (g, t, i) is at
//   keys + page_table[t / page_size]·key_page_stride + g·key_head_stride + u·key_token_stride + i
// (values likewise) and its keep flag at keep[page_table[t / page_size]·page_size + u]. Kernels
// read through the table; nothing is gathered into a contiguous copy. KeyOffset, ValueOffset and
// KeepOffset below are the one statement of that address rule.
//
// Quantized (dtype F8_E4M3 or I8): elements are codes and every (kv head, slot) row has one fp32
// scale, key (g, t) = code · key_scales[ScaleOffset(kv, g, t)] and value (g, t) = code ·
// value_scales[ScaleOffset(kv, g, t)]. Paged, the scale of (g, t) sits at
//   page_table[t / page_size]·(G·page_size) + g·page_size + t % page_size
// (PagedKVPool's scale areas [pages][G][page_size]); contiguous, at g·scale_head_stride + t.
// Values aliasing keys (absorbed MLA) pass key_scales as value_scales too. Other dtypes: both
// scale pointers null.
struct KVView {
  DType dtype = DType::kF32;  // f32, f16, bf16, or F8_E4M3 / I8 with scales
  const void* keys = nullptr;
  const void* values = nullptr;
  int64_t kv_heads = 0;   // G; query head h reads kv head h / (H / G)
  int64_t key_dim = 0;    // Dk
  int64_t value_dim = 0;  // Dv
  int64_t key_head_stride = 0;
  int64_t key_token_stride = 0;
  int64_t value_head_stride = 0;
  int64_t value_token_stride = 0;
  int64_t length = 0;                   // T: slots 0 … T-1 are filled
  const uint8_t* keep = nullptr;        // [T]; keep[t] == 0 hides key t (padding); null = all kept
  int64_t page_size = 0;                // 0: contiguous
  const int32_t* page_table = nullptr;  // [⌈T / page_size⌉] page indices
  int64_t key_page_stride = 0;
  int64_t value_page_stride = 0;
  const float* key_scales = nullptr;    // F8_E4M3 / I8 only: one per (g, t), at ScaleOffset
  const float* value_scales = nullptr;  // likewise; may equal key_scales when values alias keys
  int64_t scale_head_stride = 0;        // contiguous quantized views: scales of head g at g·this
};

// Element offsets of slot t's key row / value row of kv head g, and of its keep flag.
inline int64_t KeyOffset(const KVView& kv, int64_t g, int64_t t) {
  if (kv.page_size == 0) return g * kv.key_head_stride + t * kv.key_token_stride;
  return static_cast<int64_t>(kv.page_table[t / kv.page_size]) * kv.key_page_stride +
         g * kv.key_head_stride + (t % kv.page_size) * kv.key_token_stride;
}
inline int64_t ValueOffset(const KVView& kv, int64_t g, int64_t t) {
  if (kv.page_size == 0) return g * kv.value_head_stride + t * kv.value_token_stride;
  return static_cast<int64_t>(kv.page_table[t / kv.page_size]) * kv.value_page_stride +
         g * kv.value_head_stride + (t % kv.page_size) * kv.value_token_stride;
}
// Index of the scale of kv head g's row at slot t in key_scales / value_scales (quantized views).
inline int64_t ScaleOffset(const KVView& kv, int64_t g, int64_t t) {
  if (kv.page_size == 0) return g * kv.scale_head_stride + t;
  return (static_cast<int64_t>(kv.page_table[t / kv.page_size]) * kv.kv_heads + g) * kv.page_size +
         t % kv.page_size;
}
inline int64_t KeepOffset(const KVView& kv, int64_t t) {
  if (kv.page_size == 0) return t;
  return static_cast<int64_t>(kv.page_table[t / kv.page_size]) * kv.page_size + t % kv.page_size;
}

// Which keys query s may see. Query s sits at slot p = first_query_slot + s and, when causal,
// sees key t iff t <= p, keep[t] != 0, p - window < t when window > 0 (sliding window), and
// t and p lie in the same block of `chunk` slots when chunk > 0 (chunked, block-local
// attention: Llama 4's attention_chunk_size; blocks counted from chunk_origin, so decode at p
// reads keys [ChunkStart(p), p]; docs/semantics.md §1).
// Not causal (an encoder, or a prompt whose queries all see the whole context): query s sees
// every key t with keep[t] != 0; window and chunk must be 0 (ALiBi alone still reads
// first_query_slot, where it only adds a per-row constant).
// A query with no visible key produces an all-zero output row (reference code gives NaN).
struct Visibility {
  int64_t first_query_slot = 0;
  int64_t window = 0;
  bool causal = true;
  int64_t chunk = 0;  // > 0: block-local attention within blocks of `chunk` slots (causal only)
  // The slot the blocks are counted from: key t and query p share a block iff
  // ⌊(t − chunk_origin)/chunk⌋ == ⌊(p − chunk_origin)/chunk⌋. A left-padded sequence counts its
  // blocks from its first real token, as transformers' chunked mask does (docs/semantics.md §1).
  int64_t chunk_origin = 0;
};

// The first slot of the block of `chunk` slots holding `slot`, blocks counted from `origin`.
inline int64_t ChunkStart(int64_t slot, int64_t chunk, int64_t origin) {
  const int64_t offset = (slot - origin) % chunk;
  return slot - (offset < 0 ? offset + chunk : offset);
}

// out[s, h, :] = Σ_t softmax_t(scale · q[s, h]·k[t, g(h)]) v[t, g(h)], over visible t.
struct AttentionProblem {
  QueryRows queries;
  KVView kv;
  Visibility visibility;
  float scale = 1.0f;
  // Attention sinks (GPT-OSS): [heads] logits, one per query head, that join each row's softmax
  // denominator without a value: p_t = exp(s_t) / (exp(sink[h]) + Σ_u exp(s_u)). Already in logit
  // units (not multiplied by scale). Null: none.
  const float* sinks = nullptr;
  // Logit soft-capping (Gemma 2's attn_logit_softcapping): each scaled score becomes
  // c·tanh(score / c) before masking and softmax. 0: none.
  float softcap = 0.0f;
  // ALiBi (BLOOM, Falcon's alibi, MPT): [heads] finite slopes m_h, already in logit units. Each
  // visible score becomes softcap(scale · q·k) + m_h · (t − p), t the key's slot and p =
  // first_query_slot + s the query's (not causal too: the same formula, which differs from
  // m_h · t by a per-row constant that softmax ignores). Slots, not token positions: BLOOM and
  // Falcon count positions by a cumulative sum of the attention mask, which differs from the
  // slot by the number of padding keys before it — the same for every key a row sees whenever
  // padding sits only at the ends of the sequence, hence again a per-row constant and the same
  // softmax (docs/semantics.md §1). Null: none.
  const float* alibi_slopes = nullptr;
  float* out = nullptr;  // [tokens][heads][value_dim] fp32
  // When set, the kernel also stores each row's log-sum-exp, the state that lets partial
  // attentions over disjoint key sets be merged exactly (context parallelism,
  // docs/distributed.md): lse[s·heads + h] = ln(Σ_visible t exp(score_t) + exp(sink[h])), in
  // natural-log units of the final scores (after scale, softcap and ALiBi; the sink term only
  // when `sinks` is set), and -inf for a row with no visible key (whose output row is zero).
  // With lse set the problem may be a slice of a longer sequence's keys, so causal query slots
  // may lie before the view's first key (first_query_slot < 0: those rows see nothing) or past
  // its last (they see every key their window allows).
  float* lse = nullptr;  // [tokens][heads]
  // When set, a kernel stores true here if any score q·k it computed is NaN or ±Inf: a key row
  // holding NaN/Inf always gives one, so a caller can vouch for the keys it read without a
  // second pass over a large cache (values show up in the output instead). Never cleared.
  std::atomic<bool>* non_finite_scores = nullptr;
};

// y[r, o] = Σ_i x[r, i] · w[o, i] + bias[o]: a PyTorch Linear with w stored [out, in] as the
// checkpoint stores it (attn/weight.h). F32, BF16, F16, or F8_E4M3 with block scales:
// w[o, i] = fp8[o, i] · w_scales[(o / scale_block_rows) · ⌈in / scale_block_cols⌉ +
// i / scale_block_cols]. Kernels convert inside their loops and accumulate in fp32.
struct LinearProblem {
  const float* x = nullptr;  // [rows][in]
  const void* w = nullptr;   // [out][in] of w_dtype
  DType w_dtype = DType::kF32;
  const float* w_scales = nullptr;  // F8_E4M3 only
  int64_t scale_block_rows = 0;
  int64_t scale_block_cols = 0;
  const float* bias = nullptr;  // [out] or null
  int64_t rows = 0;
  int64_t in = 0;
  int64_t out = 0;
  float* y = nullptr;  // [rows][out]
};

// One backend: a name and its implementation of each operator.
//   attend        one sequence
//   attend_batch  `count` independent sequences in one call (a decode step of a batch, ragged
//                 lengths welcome): the backend may schedule all of them at once instead of
//                 parallelising each alone; the same results as attend() on each
//   linear        one projection
//   dequantize    rows [first, first + count) of a linear problem's stored W as fp32 into
//                 out [count][in] (p.x and p.y unused): for layers that use a slice of a weight
//                 outside a projection (absorbed MLA's per-head W_UK, W_UV)
struct KernelBackend {
  const char* name;
  void (*attend)(const AttentionProblem& problem);
  void (*attend_batch)(const AttentionProblem* problems, int64_t count);
  void (*linear)(const LinearProblem& problem);
  void (*dequantize)(const LinearProblem& problem, int64_t first, int64_t count, float* out);
};

// The plain reference kernels (kernels/cpu/reference_*.cc): the oracle every faster kernel is
// tested against and the fallback for shapes a faster kernel does not cover.
const KernelBackend& ReferenceBackend();
// The backend layers use. Today: the reference backend.
const KernelBackend& DefaultBackend();

// Checks a problem's shapes and pointers; throws Error(kInvalidArgument) naming the field.
void ValidateAttentionProblem(const AttentionProblem& problem);

// Checks a linear problem's dtype and fp8 scales; throws Error(kInvalidArgument) naming them.
// Both backends' `linear` run it first.
void ValidateLinearProblem(const LinearProblem& problem);

// The linear problem y = x Wᵀ + bias for `rows` rows of x, W as stored in `w`.
LinearProblem MakeLinearProblem(const float* x, int64_t rows, const Weight& w, const float* bias,
                                float* y);

}  // namespace attn

#endif  // ATTN_KERNELS_H_
