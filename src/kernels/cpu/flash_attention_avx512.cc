// SPDX-License-Identifier: Apache-2.0
// FlashAttention on AVX-512 (this file is compiled with AVX-512 enabled; callers check the CPU
// first). One work item is a block of query rows — consecutive tokens × the H/G query heads of
// one kv group (of every kv group, for a decode block over a token-major cache) — against a
// range of keys. Per 32-key tile:
//   S = Q Kᵀ  rows × 32 scores, Q pre-scaled by scale·log2(e) so that softmax uses 2^x:
//             more than 8 rows per kv head: Kᵀ packed once and shared by every row (16×16
//             in-register transposes); at most 8 (decode): each key's dot product accumulated
//             in its own vector and 16 of them folded into 16 scores (avx512_common.h)
//   online softmax: m' = max(m, max_t S), l' = l·2^(m-m') + Σ_t 2^(S-m'), O ← O·2^(m-m')
//   O += P V  with P = 2^(S - m')
// and at the end out = O / l (rows that saw no key: zeros), and when asked the row's
// log-sum-exp (m + log2 l)·ln 2. Soft-capping and ALiBi rewrite S
// before the softmax. An item's key range starts at the lowest key its first row may see (window,
// chunk), so keys before a window or outside a decode row's chunk are never visited; within the
// range, tiles wholly past the causal diagonal, outside every row's window or chunk, or all
// padding are skipped before any arithmetic. One call plans every problem of a batch together;
// with fewer than 8 items per thread (decode), key ranges are split into pieces of about equal
// length and the partial (m, l, O) states merged exactly:
// O = Σ_k 2^(m_k - m*) O_k, l = Σ_k 2^(m_k - m*) l_k (docs/architecture.md, "The fast CPU
// kernels").
#include <algorithm>
#include <cstdint>
#include <numbers>
#include <utility>
#include <vector>

#include "attn/dtype.h"
#include "attn/threads.h"
#include "kernels/cpu/flash_attention.h"
// Last: everything below is compiled for AVX-512.
#include "kernels/cpu/avx512_common.h"
#include "kernels/cpu/narrow_row_dot.h"

namespace attn::cpu {
namespace {

using namespace avx512;  // NOLINT(google-build-using-namespace): this file's own toolbox

constexpr int64_t kTargetRows = 128;  // query rows per work item
constexpr int64_t kMinKeysPerSplit = 256;
// Tasks per pool thread that a call aims for, so that dynamic scheduling can even out cores
// of unequal speed.
constexpr int64_t kTasksPerThread = 8;

// kt[w][key] for w < words (a multiple of 16), key < 32: the tile's keys transposed; rows >= n
// and words >= width are zero. Keys 16 … 31 start at `second_half` (a paged tile whose halves
// lie on two pages), or null: 16 rows after `keys`.
void PackKeysTransposed(const std::byte* keys, const std::byte* second_half, int64_t stride_bytes,
                        int64_t n, int64_t words, int64_t width, Load load, float* kt) {
  __m512 r[16];
  for (int64_t half = 0; half < 2; ++half) {
    const std::byte* base =
        half == 0 ? keys : (second_half != nullptr ? second_half : keys + 16 * stride_bytes);
    const int64_t rows = std::max<int64_t>(0, std::min<int64_t>(16, n - half * 16));
    for (int64_t chunk = 0; chunk < words / 16; ++chunk) {
      for (int64_t j = 0; j < 16; ++j)
        r[j] = LoadRowChunk(base, stride_bytes, j, rows, chunk, width, load);
      Transpose16(r);
      for (int64_t i = 0; i < 16; ++i) {
        _mm512_storeu_ps(kt + (chunk * 16 + i) * kTileKeys + half * 16, r[i]);
      }
    }
  }
}

// s[r][0..31] = Σ_i q[r][i] kt[i][·] for R rows; q rows `words` long (floats).
template <int R>
void ScoresF32(const float* q, int64_t words, const float* kt, float* s) {
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < words; ++i) {
    const __m512 k0 = _mm512_loadu_ps(kt + i * kTileKeys);
    const __m512 k1 = _mm512_loadu_ps(kt + i * kTileKeys + 16);
    for (int r = 0; r < R; ++r) {
      const __m512 qv = _mm512_set1_ps(q[r * words + i]);
      a0[r] = _mm512_fmadd_ps(qv, k0, a0[r]);
      a1[r] = _mm512_fmadd_ps(qv, k1, a1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(s + r * kTileKeys, a0[r]);
    _mm512_storeu_ps(s + r * kTileKeys + 16, a1[r]);
  }
}

// The same with bf16 pairs: each word holds (x[2i], x[2i+1]); vdpbf16ps adds both products.
template <int R>
void ScoresBF16(const float* q_words, int64_t words, const float* kt, float* s) {
  __m512 a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm512_setzero_ps();
  for (int64_t i = 0; i < words; ++i) {
    const __m512bh k0 = (__m512bh)_mm512_loadu_si512(kt + i * kTileKeys);
    const __m512bh k1 = (__m512bh)_mm512_loadu_si512(kt + i * kTileKeys + 16);
    for (int r = 0; r < R; ++r) {
      const __m512bh qv = (__m512bh)_mm512_set1_ps(q_words[r * words + i]);
      a0[r] = _mm512_dpbf16_ps(a0[r], qv, k0);
      a1[r] = _mm512_dpbf16_ps(a1[r], qv, k1);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm512_storeu_ps(s + r * kTileKeys, a0[r]);
    _mm512_storeu_ps(s + r * kTileKeys + 16, a1[r]);
  }
}

using ScoresFn = void (*)(const float*, int64_t, const float*, float*);
constexpr ScoresFn kScoresF32[8] = {ScoresF32<1>, ScoresF32<2>, ScoresF32<3>, ScoresF32<4>,
                                    ScoresF32<5>, ScoresF32<6>, ScoresF32<7>, ScoresF32<8>};
constexpr ScoresFn kScoresBF16[8] = {ScoresBF16<1>, ScoresBF16<2>, ScoresBF16<3>, ScoresBF16<4>,
                                     ScoresBF16<5>, ScoresBF16<6>, ScoresBF16<7>, ScoresBF16<8>};

// Per-thread buffers, grown on first use and then reused: no allocation per call after warm-up.
struct Scratch {
  std::vector<float> q;       // rows × q_words
  std::vector<float> kt;      // q_words × 32: Kᵀ tile, or the widened K tile (row dot)
  std::vector<float> vt;      // 32 × Dv (converted values)
  std::vector<float> scores;  // rows × 32
  std::vector<float> o;       // rows × Dv
  std::vector<float> m, l;    // rows
  std::vector<uint32_t> masks;
  std::vector<int64_t> lowest;  // rows: the lowest key each may see (window, chunk)
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// How one problem of a batch is cut into tasks, shared read-only by all threads of one call.
// A task is a block of query rows (consecutive tokens × the H/G query heads of each of
// `item_heads` kv heads) against one split of the keys that block may see.
struct Plan {
  const AttentionProblem* problem;
  int64_t group;         // H / G query heads per kv head
  int64_t block_tokens;  // query tokens per work item
  int64_t blocks;
  // kv heads per item: 1, or all G of a decode block when a token's heads sit side by side
  // (token-major [T][G][D]), so that the item walks its keys' memory in order.
  int64_t item_heads;
  int64_t items;      // blocks × G / item_heads
  int64_t splits;     // key-range splits per item
  int64_t max_rows;   // query rows per kv head of a block
  bool row_dot;       // scores by ScoresRowDot (few rows) rather than a transposed K tile
  bool bf16_dot;      // Q·Kᵀ with vdpbf16ps
  bool quantized;     // fp8/int8 K/V: tiles widened to fp32, scores and P scaled per key
  int64_t key_words;  // 32-bit words per key row: Dk, or Dk/2 for bf16 pairs
  int64_t q_words;    // key_words rounded up to 16 (zero padding)
  int64_t dv_pad;     // Dv rounded up to 16: the width of O and converted V rows
  Load key_load;
  Load value_load;
  // fp8/int8/bf16/f16 K/V of a row-dot item with Dv a multiple of 32: tiles scored and
  // accumulated from the stored elements, widened in registers (narrow_row_dot.h), instead of
  // through fp32 copies.
  bool narrow_row_dot;
  size_t element_bytes;
  int64_t first_task;  // this problem's tasks are first_task … first_task + items·splits - 1
  // Partial states when splits > 1: [item][split] × (item rows × Dv | item rows | item rows),
  // item rows = item_heads · max_rows.
  float* partial_o = nullptr;
  float* partial_m = nullptr;
  float* partial_l = nullptr;
};

// At most this many query rows per kv head take the row-dot scores: beyond it the transposed
// tile's fixed ~32 shuffles per key cost less than ~3 per key and row (avx512_common.h).
constexpr int64_t kRowDotMaxRows = 8;

// Which query rows, kv heads and keys an item covers.
struct ItemRange {
  int64_t s0, s1;     // query tokens
  int64_t rows;       // query rows per kv head: (s1 - s0) · group
  int64_t g0;         // first kv head; the item has plan.item_heads of them
  int64_t key_begin;  // keys any row may see
  int64_t key_end;
};

ItemRange RangeOf(const Plan& plan, int64_t item) {
  const AttentionProblem& p = *plan.problem;
  const int64_t head_groups = p.kv.kv_heads / plan.item_heads;
  ItemRange range;
  range.g0 = item % head_groups * plan.item_heads;
  const int64_t block = plan.blocks - 1 - item / head_groups;  // heaviest (latest) blocks first
  range.s0 = block * plan.block_tokens;
  range.s1 = std::min(p.queries.tokens, range.s0 + plan.block_tokens);
  range.rows = (range.s1 - range.s0) * plan.group;
  const int64_t first_slot = p.visibility.first_query_slot + range.s0;
  const int64_t last_slot = p.visibility.first_query_slot + range.s1 - 1;
  // Causal rows see no key below their window or chunk start, and the first row's is the lowest.
  range.key_begin = p.visibility.causal ? LowestVisibleKey(first_slot, p.visibility) : 0;
  range.key_end = p.visibility.causal ? std::min(last_slot + 1, p.kv.length) : p.kv.length;
  return range;
}

// Output row of query row r (token-major, then the group's heads) of kv head g.
float* OutputRow(const Plan& plan, const ItemRange& range, int64_t g, int64_t r) {
  const AttentionProblem& p = *plan.problem;
  const int64_t s = range.s0 + r / plan.group;
  const int64_t h = g * plan.group + r % plan.group;
  return p.out + (s * p.queries.heads + h) * p.kv.value_dim;
}

// The sink's share of row r's denominator in the base-2 units of the online softmax, relative to
// the row's running maximum m (scores carry scale · log2 e): 2^(sink · log2 e − m); 0 without
// sinks. A sink far above every score gives +inf, hence a zero row, which is its limit.
float SinkWeight(const Plan& plan, int64_t g, int64_t r, float m) {
  const AttentionProblem& p = *plan.problem;
  if (p.sinks == nullptr) return 0.0f;
  const int64_t h = g * plan.group + r % plan.group;
  return std::exp2(p.sinks[h] * kLog2e - m);
}

// Where row r of kv head g stores its log-sum-exp (AttentionProblem::lse), or null.
float* LseOf(const Plan& plan, const ItemRange& range, int64_t g, int64_t r) {
  const AttentionProblem& p = *plan.problem;
  if (p.lse == nullptr) return nullptr;
  const int64_t s = range.s0 + r / plan.group;
  const int64_t h = g * plan.group + r % plan.group;
  return p.lse + s * p.queries.heads + h;
}

// A row's log-sum-exp in natural-log units from its base-2 state: running maximum m and sum
// l = Σ 2^(score − m) (scores carry log2 e), plus the sink's term. -inf when the row saw no key.
// Taken relative to the larger of m and the sink, so that a sink far above every score gives
// its own logit rather than an overflow.
float RowLse(const Plan& plan, int64_t g, int64_t r, float m, float l) {
  if (!(l > 0.0f)) return kNegInf;
  const AttentionProblem& p = *plan.problem;
  const float sink = p.sinks != nullptr ? p.sinks[g * plan.group + r % plan.group] * kLog2e
                                        : kNegInf;  // base-2 units, as m
  const float top = std::max(m, sink);
  return (top + std::log2(l * std::exp2(m - top) + std::exp2(sink - top))) *
         std::numbers::ln2_v<float>;
}

// scales[0..n) = the per-key scales of a tile's keys t0 … t0+n-1 of kv head g (two runs when
// the tile spans two pages: keys before `first_keys` on t0's page, the rest on the next);
// scales[n..32) = `fill`. Masked expanding loads rather than std::copy_n: a memmove call per
// tile and kv head was 7% of an fp8 decode's time (measured).
void GatherScales(const KVView& kv, const float* source, int64_t g, int64_t t0, int64_t first_keys,
                  int64_t n, float fill, float* scales) {
  __m512 halves[2] = {_mm512_set1_ps(fill), _mm512_set1_ps(fill)};
  // Lanes [lo, hi) of the 32 from run[0 … hi − lo).
  auto put = [&halves](const float* run, int64_t lo, int64_t hi) {
    for (int64_t half = 0; half < 2; ++half) {
      const int64_t a = std::max<int64_t>(lo, 16 * half);
      const int64_t b = std::min<int64_t>(hi, 16 * half + 16);
      if (a >= b) continue;
      const auto lanes = static_cast<__mmask16>(((1u << (b - a)) - 1u) << (a - 16 * half));
      halves[half] = _mm512_mask_expandloadu_ps(halves[half], lanes, run + (a - lo));
    }
  };
  put(source + ScaleOffset(kv, g, t0), 0, first_keys);
  if (first_keys < n) put(source + ScaleOffset(kv, g, t0 + first_keys), first_keys, n);
  _mm512_storeu_ps(scales, halves[0]);
  _mm512_storeu_ps(scales + 16, halves[1]);
}

// s[r][t] *= scales[t] for `rows` rows of 32.
void ScaleTileRows(float* s, int64_t rows, const float* scales) {
  const __m512 lo = _mm512_loadu_ps(scales);
  const __m512 hi = _mm512_loadu_ps(scales + 16);
  for (int64_t r = 0; r < rows; ++r) {
    float* row = s + r * kTileKeys;
    _mm512_storeu_ps(row, _mm512_mul_ps(_mm512_loadu_ps(row), lo));
    _mm512_storeu_ps(row + 16, _mm512_mul_ps(_mm512_loadu_ps(row + 16), hi));
  }
}

void RunItem(const Plan& plan, int64_t item, int64_t split) {
  const AttentionProblem& p = *plan.problem;
  const KVView& kv = p.kv;
  const int64_t heads = p.queries.heads;
  const int64_t dk = p.queries.dim;
  const int64_t dv = kv.value_dim;
  const int64_t dv_pad = plan.dv_pad;
  const ItemRange range = RangeOf(plan, item);
  const int64_t rows = range.rows;
  const int64_t item_rows = plan.item_heads * plan.max_rows;  // scratch rows, head-major
  const int64_t first_slot = p.visibility.first_query_slot + range.s0;
  const bool causal = p.visibility.causal;

  // This split's share of the keys (whole tiles).
  const int64_t span = std::max<int64_t>(0, range.key_end - range.key_begin);
  const int64_t per_split =
      (span + plan.splits * kTileKeys - 1) / (plan.splits * kTileKeys) * kTileKeys;
  const int64_t begin = range.key_begin + split * per_split;
  const int64_t end = std::min(range.key_end, begin + per_split);

  Scratch& scratch = ThreadScratch();
  float* q = Grow(scratch.q, item_rows * plan.q_words);
  float* kt = Grow(scratch.kt, plan.q_words * kTileKeys);
  float* vt = Grow(scratch.vt, kTileKeys * dv_pad);
  float* scores = Grow(scratch.scores, item_rows * kTileKeys);
  float* o = Grow(scratch.o, item_rows * dv_pad);
  float* m = Grow(scratch.m, item_rows);
  float* l = Grow(scratch.l, item_rows);
  uint32_t* masks = Grow(scratch.masks, plan.max_rows);
  int64_t* lowest = Grow(scratch.lowest, plan.max_rows);
  for (int64_t r = 0; r < rows; ++r) {
    lowest[r] = LowestVisibleKey(first_slot + r / plan.group, p.visibility);
  }

  // Q rows per kv head (token-major, then the group's heads). fp32 rows are pre-scaled by
  // scale·log2(e); bf16 rows are rounded unscaled, so that bf16 inputs stay exact, and the
  // scores are scaled in fp32 instead (score_scale).
  // narrow_row_dot.h widens fp8 codes to 2^-8 times their value: Q carries the 2^8 (exact).
  const float q_scale = plan.bf16_dot         ? 1.0f
                        : plan.narrow_row_dot ? p.scale * kLog2e * CodeUnit(plan.key_load)
                                              : p.scale * kLog2e;
  const __m512 score_scale = _mm512_set1_ps(plan.bf16_dot ? p.scale * kLog2e : 1.0f);
  for (int64_t j = 0; j < plan.item_heads; ++j) {
    const int64_t g = range.g0 + j;
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = range.s0 + r / plan.group;
      const int64_t h = g * plan.group + r % plan.group;
      const float* src = p.queries.data + (s * heads + h) * dk;
      const int64_t row_index = j * plan.max_rows + r;
      float* row = q + row_index * plan.q_words;
      std::fill(row, row + plan.q_words, 0.0f);  // zero padding past the key width
      if (plan.bf16_dot) {
        uint32_t* dst = reinterpret_cast<uint32_t*>(row);
        for (int64_t i = 0; i < plan.key_words; ++i) {
          dst[i] = static_cast<uint32_t>(F32ToBF16(src[2 * i] * q_scale)) |
                   (static_cast<uint32_t>(F32ToBF16(src[2 * i + 1] * q_scale)) << 16);
        }
      } else {
        for (int64_t i = 0; i < dk; ++i) row[i] = src[i] * q_scale;
      }
      m[row_index] = kNegInf;
      l[row_index] = 0.0f;
      std::fill(o + row_index * dv_pad, o + (row_index + 1) * dv_pad, 0.0f);
    }
  }

  const size_t eb = plan.element_bytes;
  const std::byte* keys = static_cast<const std::byte*>(kv.keys);
  const std::byte* values = static_cast<const std::byte*>(kv.values);
  const int64_t key_stride_bytes = kv.key_token_stride * static_cast<int64_t>(eb);
  const int64_t value_stride_bytes = kv.value_token_stride * static_cast<int64_t>(eb);
  const ScoresFn* scores_fns = plan.bf16_dot ? kScoresBF16 : kScoresF32;
  alignas(64) float tile_scales[kTileKeys];

  // Paged caches: every scoring path reads a tile's keys in 16-row blocks, so a 32-key tile
  // that starts on a 16-key boundary may span two pages (of 16) and is scored and accumulated as
  // two segments under one softmax step; a tile starting elsewhere is clipped at its page end.
  const bool segments_ok = kv.page_size > 0 && kv.page_size % 16 == 0;
  // The tile starting at key t0, keys before `limit`: n keys, the first `first_keys` of them on
  // t0's page and the rest (if any) from the start of the next.
  struct Tile {
    int64_t n, first_keys;
  };
  auto tile_at = [&kv, segments_ok](int64_t t0, int64_t limit) {
    Tile tile;
    tile.n = tile.first_keys = std::min(kTileKeys, limit - t0);
    if (kv.page_size > 0) {
      const int64_t room = kv.page_size - t0 % kv.page_size;
      if (room < tile.n) {
        if (segments_ok && t0 % 16 == 0) {
          tile.first_keys = room;
        } else {
          tile.n = tile.first_keys = room;
        }
      }
    }
    return tile;
  };
  // Keys are walked in spans, each head's tiles of a span before the next head's: a span is one
  // tile, or, for an item over several kv heads of a paged cache whose pages are longer than a
  // tile, the rest of the current page. A head's rows of a page are then read in one pass in
  // address order, then the next head's (docs/performance.md, "Paged caches").
  const bool page_spans = plan.item_heads > 1 && kv.page_size > kTileKeys;
  for (int64_t span_begin = begin; span_begin < end;) {
    const int64_t span_end = page_spans
                                 ? std::min(end, (span_begin / kv.page_size + 1) * kv.page_size)
                                 : span_begin + tile_at(span_begin, end).n;
    for (int64_t j = 0; j < plan.item_heads; ++j) {
      int64_t n = 0;
      for (int64_t t0 = span_begin; t0 < span_end; t0 += n) {
        const Tile tile = tile_at(t0, span_end);
        n = tile.n;
        const int64_t first_keys = tile.first_keys;
        uint32_t key_bits =
            TileKeyBits(kv.keep == nullptr ? nullptr : kv.keep + KeepOffset(kv, t0), 0, first_keys);
        if (first_keys < n) {
          key_bits |=
              TileKeyBits(kv.keep == nullptr ? nullptr : kv.keep + KeepOffset(kv, t0 + first_keys),
                          0, n - first_keys)
              << first_keys;
        }
        uint32_t any = 0;
        for (int64_t r = 0; r < rows; ++r) {
          masks[r] = RowMask(first_slot + r / plan.group, lowest[r], t0, causal, key_bits);
          any |= masks[r];
        }
        if (any == 0) continue;  // causal, window, chunk or padding hides the whole tile

        const int64_t g = range.g0 + j;
        const std::byte* key_tile = keys + KeyOffset(kv, g, t0) * static_cast<int64_t>(eb);
        const std::byte* value_tile = values + ValueOffset(kv, g, t0) * static_cast<int64_t>(eb);
        // The second segment of a tile spanning two pages (first_keys < n), 16 keys in.
        const std::byte* key_rest =
            first_keys < n ? keys + KeyOffset(kv, g, t0 + first_keys) * static_cast<int64_t>(eb)
                           : nullptr;
        const std::byte* value_rest =
            first_keys < n ? values + ValueOffset(kv, g, t0 + first_keys) * static_cast<int64_t>(eb)
                           : nullptr;
        float* head_q = q + j * plan.max_rows * plan.q_words;
        float* head_scores = scores + j * plan.max_rows * kTileKeys;
        float* head_o = o + j * plan.max_rows * dv_pad;
        float* head_m = m + j * plan.max_rows;
        float* head_l = l + j * plan.max_rows;

        // S = Q Kᵀ for the tile.
        if (plan.narrow_row_dot) {
          ScoreCodesTileFor(plan.key_load)(head_q, rows, plan.q_words, key_tile, key_rest,
                                           key_stride_bytes, first_keys, n, dk, head_scores);
        } else if (plan.row_dot) {
          if (!plan.quantized && (rows == 1 || plan.key_load == Load::kWords)) {
            // Segment by segment: each writes its 16-key blocks at its own offset in the row.
            for (int segment = 0; segment < (first_keys < n ? 2 : 1); ++segment) {
              const std::byte* seg_keys = segment == 0 ? key_tile : key_rest;
              const int64_t seg_n = segment == 0 ? first_keys : n - first_keys;
              float* seg_scores = head_scores + (segment == 0 ? 0 : first_keys);
              switch (plan.key_load) {
                case Load::kWords:
                  ScoresRowDot<Load::kWords>(head_q, rows, plan.q_words, seg_keys, key_stride_bytes,
                                             seg_n, dk, seg_scores);
                  break;
                case Load::kF16ToF32:
                  ScoresRowDot<Load::kF16ToF32>(head_q, rows, plan.q_words, seg_keys,
                                                key_stride_bytes, seg_n, dk, seg_scores);
                  break;
                case Load::kBF16ToF32:
                  ScoresRowDot<Load::kBF16ToF32>(head_q, rows, plan.q_words, seg_keys,
                                                 key_stride_bytes, seg_n, dk, seg_scores);
                  break;
                case Load::kF8ToF32:
                case Load::kI8ToF32:
                  break;  // not here: fp8/int8 tiles are widened first (below)
              }
            }
          } else {
            // Several rows reread each key, or fp8/int8 codes: widen the tile once (zero-padded
            // to q_words).
            ConvertValues(key_tile, key_stride_bytes, first_keys, dk, plan.q_words, plan.key_load,
                          kt);
            if (first_keys < n) {
              ConvertValues(key_rest, key_stride_bytes, n - first_keys, dk, plan.q_words,
                            plan.key_load, kt + first_keys * plan.q_words);
            }
            ScoresRowDot<Load::kWords>(head_q, rows, plan.q_words,
                                       reinterpret_cast<const std::byte*>(kt), plan.q_words * 4, n,
                                       plan.q_words, head_scores);
          }
        } else {
          // A split tile's halves are its two segments (first_keys is 16 when pages are a
          // multiple of 16 and the tile starts on a 16-key boundary).
          PackKeysTransposed(key_tile, key_rest, key_stride_bytes, n, plan.q_words, plan.key_words,
                             plan.key_load, kt);
          for (int64_t r0 = 0; r0 < rows; r0 += 8) {
            const int64_t count = std::min<int64_t>(8, rows - r0);
            scores_fns[count - 1](head_q + r0 * plan.q_words, plan.q_words, kt,
                                  head_scores + r0 * kTileKeys);
          }
        }

        // fp8/int8 keys: each score times its key's scale (the codes' dot product times the row
        // scale is the dequantized key's), before soft-capping, ALiBi and the softmax.
        if (plan.quantized) {
          GatherScales(kv, kv.key_scales, g, t0, first_keys, n, 1.0f, tile_scales);
          ScaleTileRows(head_scores, rows, tile_scales);
        }

        if (p.non_finite_scores != nullptr) {
          // NaN/Inf among the n real scores of a row (lanes past n are stale or repeat key 0).
          const uint32_t real = n == 32 ? ~0u : ((1u << n) - 1u);
          uint32_t found = 0;
          for (int64_t r = 0; r < rows; ++r) {
            const float* row = head_scores + r * kTileKeys;
            found |= (static_cast<uint32_t>(_mm512_fpclass_ps_mask(_mm512_loadu_ps(row), 0x99)) |
                      static_cast<uint32_t>(_mm512_fpclass_ps_mask(_mm512_loadu_ps(row + 16), 0x99))
                          << 16) &
                     real;
          }
          if (found != 0) p.non_finite_scores->store(true, std::memory_order_relaxed);
        }

        // Soft-capping (Gemma 2) acts on the scaled scores, before the mask and the softmax.
        __m512 softmax_scale = score_scale;
        if (p.softcap > 0.0f) {
          for (int64_t r = 0; r < rows; ++r) {
            SoftCapTileRow(head_scores + r * kTileKeys, score_scale, p.softcap * kLog2e);
          }
          softmax_scale = _mm512_set1_ps(1.0f);
        }
        // ALiBi adds m_h·(t − p) to the (capped) score of every key, in base-2 units.
        if (p.alibi_slopes != nullptr) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t h = g * plan.group + r % plan.group;
            const int64_t slot = first_slot + r / plan.group;
            AlibiTileRow(head_scores + r * kTileKeys, softmax_scale, p.alibi_slopes[h] * kLog2e,
                         static_cast<float>(t0 - slot));
          }
          softmax_scale = _mm512_set1_ps(1.0f);
        }
        // Online softmax: scores become P = 2^(S - m'), O and l rescale by 2^(m - m').
        for (int64_t r = 0; r < rows; ++r) {
          SoftmaxTileRow(head_scores + r * kTileKeys, masks[r], softmax_scale, head_m[r], head_l[r],
                         head_o + r * dv_pad, dv_pad);
        }

        // fp8/int8 values: fold each value's scale into its P column (l already holds the
        // unscaled P). Lanes past n get 0.
        if (plan.quantized) {
          GatherScales(kv, kv.value_scales, g, t0, first_keys, n, 0.0f, tile_scales);
          // narrow_row_dot.h's fp8 values are 2^-8 times the codes': P carries the 2^8 (exact).
          if (plan.narrow_row_dot && CodeUnit(plan.value_load) != 1.0f) {
            MultiplyTileScales(tile_scales, CodeUnit(plan.value_load));
          }
          ScaleTileRows(head_scores, rows, tile_scales);
        }

        // O += P V.
        if (plan.narrow_row_dot) {
          AccumulateCodesTileFor(plan.value_load)(head_scores, rows, value_tile, value_rest,
                                                  value_stride_bytes, first_keys, n, dv, dv_pad,
                                                  head_o);
        } else {
          AccumulateTile(head_scores, rows, value_tile, value_stride_bytes, first_keys, dv, dv_pad,
                         plan.value_load, vt, head_o);
          if (first_keys < n) {
            AccumulateTile(head_scores + first_keys, rows, value_rest, value_stride_bytes,
                           n - first_keys, dv, dv_pad, plan.value_load, vt, head_o);
          }
        }
      }
    }
    span_begin = span_end;
  }

  if (plan.splits == 1) {
    for (int64_t j = 0; j < plan.item_heads; ++j) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t row_index = j * plan.max_rows + r;
        float* out = OutputRow(plan, range, range.g0 + j, r);
        // No visible key: zeros.
        const float inverse =
            l[row_index] > 0.0f
                ? 1.0f / (l[row_index] + SinkWeight(plan, range.g0 + j, r, m[row_index]))
                : 0.0f;
        for (int64_t d = 0; d < dv; ++d) out[d] = o[row_index * dv_pad + d] * inverse;
        if (float* lse = LseOf(plan, range, range.g0 + j, r)) {
          *lse = RowLse(plan, range.g0 + j, r, m[row_index], l[row_index]);
        }
      }
    }
    return;
  }
  const int64_t slot_index = item * plan.splits + split;
  std::copy_n(o, item_rows * dv_pad, plan.partial_o + slot_index * item_rows * dv_pad);
  std::copy_n(m, item_rows, plan.partial_m + slot_index * item_rows);
  std::copy_n(l, item_rows, plan.partial_l + slot_index * item_rows);
}

// Combines the splits of one item: m* = max_k m_k, w_k = 2^(m_k - m*),
// out = Σ_k w_k O_k / Σ_k w_k l_k.
void MergeSplits(const Plan& plan, int64_t item) {
  const int64_t dv = plan.problem->kv.value_dim;
  const ItemRange range = RangeOf(plan, item);
  const int64_t item_rows = plan.item_heads * plan.max_rows;
  for (int64_t j = 0; j < plan.item_heads; ++j) {
    for (int64_t r = 0; r < range.rows; ++r) {
      const int64_t row_index = j * plan.max_rows + r;
      float m_star = kNegInf;
      for (int64_t k = 0; k < plan.splits; ++k) {
        m_star = std::max(m_star, plan.partial_m[(item * plan.splits + k) * item_rows + row_index]);
      }
      float* out = OutputRow(plan, range, range.g0 + j, r);
      std::fill(out, out + dv, 0.0f);
      float* lse = LseOf(plan, range, range.g0 + j, r);
      if (lse != nullptr) *lse = kNegInf;
      if (m_star == kNegInf) continue;  // no visible key in any split
      float total = 0.0f;
      for (int64_t k = 0; k < plan.splits; ++k) {
        const int64_t index = (item * plan.splits + k) * item_rows + row_index;
        if (plan.partial_m[index] == kNegInf) continue;
        const float weight = std::exp2(plan.partial_m[index] - m_star);
        total += weight * plan.partial_l[index];
        const float* o = plan.partial_o + index * plan.dv_pad;
        for (int64_t d = 0; d < dv; ++d) out[d] += weight * o[d];
      }
      const float inverse = 1.0f / (total + SinkWeight(plan, range.g0 + j, r, m_star));
      for (int64_t d = 0; d < dv; ++d) out[d] *= inverse;
      if (lse != nullptr) *lse = RowLse(plan, range.g0 + j, r, m_star, total);
    }
  }
}

Plan PlanProblem(const AttentionProblem& problem, bool bf16_dot) {
  const QueryRows& q = problem.queries;
  const KVView& kv = problem.kv;
  Plan plan;
  plan.problem = &problem;
  plan.group = q.heads / kv.kv_heads;
  plan.block_tokens = std::max<int64_t>(1, kTargetRows / plan.group);
  plan.blocks = (q.tokens + plan.block_tokens - 1) / plan.block_tokens;
  plan.splits = 1;
  plan.max_rows = std::min(plan.block_tokens, q.tokens) * plan.group;
  // Few rows per kv head read each key once for almost no arithmetic: memory-bound, so fp32
  // products from widened keys cost nothing and keep Q unrounded.
  plan.row_dot = plan.max_rows <= kRowDotMaxRows;
  // A memory-bound item over one kv head of a token-major cache would read a few hundred bytes
  // per token a whole token apart: a new page (TLB walk) and DRAM row for every key. Taking all
  // heads of a token together walks the cache in address order instead.
  const bool heads_side_by_side =
      kv.key_head_stride < kv.key_token_stride && kv.value_head_stride < kv.value_token_stride;
  // A paged cache keeps one kv head's rows of a page together (a few KiB: 4 KiB for 16 bf16 rows
  // of 128) and its next page anywhere in the pool, so an item over one head would jump after
  // every such run; an item over all heads walks each page's keys, then its values, in address
  // order (docs/performance.md, "Paged caches").
  const bool paged = kv.page_size > 0;
  plan.item_heads = plan.row_dot && (heads_side_by_side || paged) ? kv.kv_heads : 1;
  plan.items = plan.blocks * kv.kv_heads / plan.item_heads;
  plan.bf16_dot = bf16_dot && !plan.row_dot && kv.dtype == DType::kBF16 && q.dim % 2 == 0;
  plan.key_words = plan.bf16_dot ? q.dim / 2 : q.dim;
  plan.q_words = (plan.key_words + 15) / 16 * 16;
  plan.dv_pad = (kv.value_dim + 15) / 16 * 16;
  plan.quantized = IsQuantizedKV(kv.dtype);
  // 16-bit K/V with one row per kv head (MHA decode) keeps the widened path: there its one-row
  // loops with two FMA chains measured ~10 % faster (docs/performance.md, "Paged caches").
  plan.narrow_row_dot = plan.row_dot && kv.dtype != DType::kF32 && kv.value_dim % 32 == 0 &&
                        (plan.quantized || plan.max_rows > 1);
  const Load byte_load = kv.dtype == DType::kF8E4M3 ? Load::kF8ToF32 : Load::kI8ToF32;
  plan.key_load = kv.dtype == DType::kF16    ? Load::kF16ToF32
                  : kv.dtype == DType::kBF16 ? (plan.bf16_dot ? Load::kWords : Load::kBF16ToF32)
                  : plan.quantized           ? byte_load
                                             : Load::kWords;
  plan.value_load = kv.dtype == DType::kF16    ? Load::kF16ToF32
                    : kv.dtype == DType::kBF16 ? Load::kBF16ToF32
                    : plan.quantized           ? byte_load
                                               : Load::kWords;
  plan.element_bytes = DTypeSize(kv.dtype);
  return plan;
}

// Keys the last query of a problem may see (window, chunk): the split decision's measure of the
// latest block's length.
int64_t VisibleSpan(const AttentionProblem& p) {
  if (!p.visibility.causal) return p.kv.length;
  const int64_t last = std::min(p.visibility.first_query_slot + p.queries.tokens, p.kv.length);
  if (last <= 0) return 0;
  return last - LowestVisibleKey(last - 1, p.visibility);
}

}  // namespace

bool FlashAttendSupports(const AttentionProblem& problem, const IsaSupport& isa) {
  const KVView& kv = problem.kv;
  return isa.isa == Isa::kAvx512 && (kv.dtype == DType::kF32 || kv.dtype == DType::kF16 ||
                                     kv.dtype == DType::kBF16 || IsQuantizedKV(kv.dtype));
}

void FlashAttendBatchAvx512(const AttentionProblem* problems, int64_t count, bool bf16_dot) {
  thread_local std::vector<Plan> plans;
  plans.clear();
  int64_t items = 0;
  int64_t item_keys = 0;  // Σ items × visible keys: the work to spread
  for (int64_t i = 0; i < count; ++i) {
    if (problems[i].queries.tokens == 0) continue;
    plans.push_back(PlanProblem(problems[i], bf16_dot));
    items += plans.back().items;
    item_keys += plans.back().items * VisibleSpan(problems[i]);
  }
  if (plans.empty()) return;

  // Enough tasks that the pool's shared counter balances them (a core that another process
  // slows takes fewer), each at least kMinKeysPerSplit keys: with fewer items than that
  // (decode), items are split along their keys into chunks of about the same length across
  // the batch, and the partial states merged exactly afterwards.
  const int64_t threads = NumThreads();
  const int64_t wanted_tasks = kTasksPerThread * threads;
  if (items < wanted_tasks) {
    const int64_t chunk = std::max(kMinKeysPerSplit, (item_keys + wanted_tasks - 1) / wanted_tasks);
    for (Plan& plan : plans) {
      const int64_t span = VisibleSpan(*plan.problem);
      plan.splits = std::max<int64_t>(1, (span + chunk - 1) / chunk);
    }
  }
  int64_t tasks = 0;
  int64_t states = 0;
  for (Plan& plan : plans) {
    plan.first_task = tasks;
    tasks += plan.items * plan.splits;
    if (plan.splits > 1) states += plan.items * plan.splits * plan.item_heads * plan.max_rows;
  }
  int64_t dv_pad_max = 0;
  for (const Plan& plan : plans) dv_pad_max = std::max(dv_pad_max, plan.dv_pad);
  thread_local std::vector<float> partials;
  if (states > 0) {
    float* next = Grow(partials, states * (dv_pad_max + 2));
    for (Plan& plan : plans) {
      if (plan.splits == 1) continue;
      const int64_t own = plan.items * plan.splits * plan.item_heads * plan.max_rows;
      plan.partial_o = next;
      plan.partial_m = next + own * plan.dv_pad;
      plan.partial_l = plan.partial_m + own;
      next = plan.partial_l + own;
    }
  }

  const std::vector<Plan>* shared = &plans;
  // The plan holding task `task`: plans are few, so a linear walk from the back is cheap.
  auto plan_of = [shared](int64_t task) -> const Plan& {
    size_t i = shared->size() - 1;
    while ((*shared)[i].first_task > task) --i;
    return (*shared)[i];
  };
  ParallelFor(tasks, [&plan_of](int64_t task, int /*thread*/) {
    const Plan& plan = plan_of(task);
    const int64_t local = task - plan.first_task;
    RunItem(plan, local / plan.splits, local % plan.splits);
  });
  if (states > 0) {
    thread_local std::vector<std::pair<const Plan*, int64_t>> merge_list;
    merge_list.clear();
    for (const Plan& plan : plans) {
      if (plan.splits == 1) continue;
      for (int64_t item = 0; item < plan.items; ++item) merge_list.emplace_back(&plan, item);
    }
    const auto* list = &merge_list;
    ParallelFor(static_cast<int64_t>(merge_list.size()), [list](int64_t task, int /*thread*/) {
      MergeSplits(*(*list)[static_cast<size_t>(task)].first,
                  (*list)[static_cast<size_t>(task)].second);
    });
  }
}

void FlashAttendAvx512(const AttentionProblem& problem, bool bf16_dot) {
  FlashAttendBatchAvx512(&problem, 1, bf16_dot);
}

}  // namespace attn::cpu
