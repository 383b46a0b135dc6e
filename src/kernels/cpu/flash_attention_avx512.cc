// SPDX-License-Identifier: Apache-2.0
// FlashAttention on AVX-512 (this file is compiled with AVX-512 enabled; callers check the CPU
// first). One work item is a block of query rows — consecutive tokens × the H/G query heads of
// one kv group — against a range of keys. Per 32-key tile:
//   Kᵀ tile   packed once, shared by every row of the block (16×16 in-register transposes)
//   S = Q Kᵀ  rows × 32 scores, Q pre-scaled by scale·log2(e) so that softmax uses 2^x
//   online softmax: m' = max(m, max_t S), l' = l·2^(m-m') + Σ_t 2^(S-m'), O ← O·2^(m-m')
//   O += P V  with P = 2^(S - m')
// and at the end out = O / l (rows that saw no key: zeros). Tiles wholly past the causal
// diagonal, outside the window, or all padding are skipped before any arithmetic. When there
// are fewer work items than threads (decode), the key range is split and the partial (m, l, O)
// states are merged exactly: O = Σ_k 2^(m_k - m*) O_k, l = Σ_k 2^(m_k - m*) l_k.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "attn/dtype.h"
#include "attn/threads.h"
#include "kernels/cpu/flash_attention.h"

// Everything defined below is compiled for AVX-512; what the includes above define (std
// templates, attn inline helpers) stays baseline, so the linker never picks an AVX-512 copy of
// a function the rest of the library shares.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")

namespace attn::cpu {
namespace {

constexpr int64_t kTileKeys = 32;
constexpr int64_t kTargetRows = 128;  // query rows per work item
constexpr int64_t kMinKeysPerSplit = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// How a K/V element is turned into the 32-bit words the kernels consume.
enum class Load {
  kWords,      // f32 as is, or bf16 pairs kept packed for bf16 dot products
  kF16ToF32,   // 16 halves -> 16 floats
  kBF16ToF32,  // 16 bf16 -> 16 floats
};

// 2^x, |relative error| < 2e-7 for x in [-126, 0]: x = n + f, f in [-0.5, 0.5],
// 2^f by its degree-7 Taylor polynomial in f·ln2, then scaled by 2^n exactly.
inline __m512 Exp2(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5252733804059841e-05f);  // ln2^7/7!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393381610e-04f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146428443e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

inline __m512 LoadBF16(const uint16_t* src) {
  const __m512i wide =
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline __m512 LoadF16(const uint16_t* src) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)));
}

// Sixteen 32-bit words of row `row` (of `rows` valid ones), chunk `chunk`, as one vector. Rows
// are `width` words wide; words past the width read as zeros (head widths that are not a
// multiple of 16 are zero-padded, which leaves dot products and outputs unchanged).
inline __m512 LoadRowChunk(const std::byte* base, int64_t row_stride_bytes, int64_t row,
                           int64_t rows, int64_t chunk, int64_t width, Load load) {
  const int64_t valid = width - chunk * 16;
  if (row >= rows || valid <= 0) return _mm512_setzero_ps();
  const std::byte* p = base + row * row_stride_bytes;
  if (valid >= 16) {
    switch (load) {
      case Load::kWords:
        return _mm512_loadu_ps(reinterpret_cast<const float*>(p) + chunk * 16);
      case Load::kF16ToF32:
        return LoadF16(reinterpret_cast<const uint16_t*>(p) + chunk * 16);
      case Load::kBF16ToF32:
        return LoadBF16(reinterpret_cast<const uint16_t*>(p) + chunk * 16);
    }
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
  switch (load) {
    case Load::kWords:
      return _mm512_maskz_loadu_ps(mask, reinterpret_cast<const float*>(p) + chunk * 16);
    case Load::kF16ToF32:
      return _mm512_cvtph_ps(
          _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t*>(p) + chunk * 16));
    case Load::kBF16ToF32: {
      const __m256i raw =
          _mm256_maskz_loadu_epi16(mask, reinterpret_cast<const uint16_t*>(p) + chunk * 16);
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    }
  }
  return _mm512_setzero_ps();
}

// In-register transpose of a 16×16 block of 32-bit words. Stage b swaps the off-diagonal b×b
// sub-blocks of every 2b×2b block (bit b of the row index trades places with bit b of the
// lane index); the four stages together transpose.
// Permutation indices of stage b (b = 8, 4, 2, 1): lane j of the first output takes a[j] or
// c[j-b]; lane j of the second takes a[j+b] or c[j].
struct TransposeIndices {
  alignas(64) int32_t lo[4][16];
  alignas(64) int32_t hi[4][16];
};
// Computed at compile time: a static initialiser here would be AVX-512 code that runs on every
// CPU at load.
constexpr TransposeIndices MakeTransposeIndices() {
  TransposeIndices indices{};
  for (int stage = 0; stage < 4; ++stage) {
    const int b = 8 >> stage;
    for (int j = 0; j < 16; ++j) {
      indices.lo[stage][j] = (j & b) ? 16 + j - b : j;
      indices.hi[stage][j] = (j & b) ? 16 + j : j + b;
    }
  }
  return indices;
}
constexpr TransposeIndices kTransposeIndices = MakeTransposeIndices();

inline void Transpose16(__m512 r[16]) {
  for (int stage = 0; stage < 4; ++stage) {
    const int b = 8 >> stage;
    const __m512i index_lo = _mm512_load_si512(kTransposeIndices.lo[stage]);
    const __m512i index_hi = _mm512_load_si512(kTransposeIndices.hi[stage]);
    for (int i = 0; i < 16; ++i) {
      if (i & b) continue;
      const __m512 a = r[i];
      const __m512 c = r[i + b];
      r[i] = _mm512_permutex2var_ps(a, index_lo, c);
      r[i + b] = _mm512_permutex2var_ps(a, index_hi, c);
    }
  }
}

// kt[w][key] for w < words (a multiple of 16), key < 32: the tile's keys transposed; rows >= n
// and words >= width are zero.
void PackKeysTransposed(const std::byte* keys, int64_t stride_bytes, int64_t n, int64_t words,
                        int64_t width, Load load, float* kt) {
  __m512 r[16];
  for (int64_t half = 0; half < 2; ++half) {
    const std::byte* base = keys + half * 16 * stride_bytes;
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

// vt[t][d] = V[t][d] as fp32 for t < n, rows dv_pad wide (zeros past dv).
void ConvertValues(const std::byte* values, int64_t stride_bytes, int64_t n, int64_t dv,
                   int64_t dv_pad, Load load, float* vt) {
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t chunk = 0; chunk < dv_pad / 16; ++chunk) {
      _mm512_storeu_ps(vt + t * dv_pad + chunk * 16,
                       LoadRowChunk(values, stride_bytes, t, n, chunk, dv, load));
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

// Sixteen values starting at element `offset` of `v` (stored as L) as fp32.
template <Load L>
inline __m512 LoadValues(const void* v, int64_t offset) {
  if constexpr (L == Load::kWords) return _mm512_loadu_ps(static_cast<const float*>(v) + offset);
  if constexpr (L == Load::kF16ToF32) return LoadF16(static_cast<const uint16_t*>(v) + offset);
  if constexpr (L == Load::kBF16ToF32) return LoadBF16(static_cast<const uint16_t*>(v) + offset);
  return _mm512_setzero_ps();
}

// o[r][0..16C) += Σ_t p[r][t] v[t][0..16C) for R rows and n keys; v rows `v_stride` elements
// apart, stored as L; o rows `o_stride` floats apart.
template <int R, int C, Load L>
void AccumulateValues(const float* p, const void* v, int64_t v_stride, int64_t n, float* o,
                      int64_t o_stride) {
  __m512 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_loadu_ps(o + r * o_stride + c * 16);
  for (int64_t t = 0; t < n; ++t) {
    __m512 vv[C];
    for (int c = 0; c < C; ++c) vv[c] = LoadValues<L>(v, t * v_stride + c * 16);
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[r * kTileKeys + t]);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_fmadd_ps(pb, vv[c], acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(o + r * o_stride + c * 16, acc[r][c]);
}

using AccumulateFn = void (*)(const float*, const void*, int64_t, int64_t, float*, int64_t);
constexpr int kValueRows = 6;  // 6 rows × 4 vectors = 24 accumulators of 32 registers

template <Load L>
constexpr AccumulateFn kAccumulate[kValueRows][4] = {
    {AccumulateValues<1, 1, L>, AccumulateValues<1, 2, L>, AccumulateValues<1, 3, L>,
     AccumulateValues<1, 4, L>},
    {AccumulateValues<2, 1, L>, AccumulateValues<2, 2, L>, AccumulateValues<2, 3, L>,
     AccumulateValues<2, 4, L>},
    {AccumulateValues<3, 1, L>, AccumulateValues<3, 2, L>, AccumulateValues<3, 3, L>,
     AccumulateValues<3, 4, L>},
    {AccumulateValues<4, 1, L>, AccumulateValues<4, 2, L>, AccumulateValues<4, 3, L>,
     AccumulateValues<4, 4, L>},
    {AccumulateValues<5, 1, L>, AccumulateValues<5, 2, L>, AccumulateValues<5, 3, L>,
     AccumulateValues<5, 4, L>},
    {AccumulateValues<6, 1, L>, AccumulateValues<6, 2, L>, AccumulateValues<6, 3, L>,
     AccumulateValues<6, 4, L>},
};

// Per-thread buffers, grown on first use and then reused: no allocation per call after warm-up.
struct Scratch {
  std::vector<float> q;       // rows × q_words
  std::vector<float> kt;      // q_words × 32
  std::vector<float> vt;      // 32 × Dv (converted values)
  std::vector<float> scores;  // rows × 32
  std::vector<float> o;       // rows × Dv
  std::vector<float> m, l;    // rows
  std::vector<uint32_t> masks;
};

template <typename T>
T* Grow(std::vector<T>& buffer, int64_t size) {
  if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(static_cast<size_t>(size));
  return buffer.data();
}

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Everything a work item needs, shared read-only by all threads of one call.
struct Plan {
  const AttentionProblem* problem;
  int64_t group;         // H / G query heads per kv head
  int64_t block_tokens;  // query tokens per work item
  int64_t blocks;
  int64_t splits;  // key-range splits per block (decode)
  int64_t max_rows;
  bool bf16_dot;      // Q·Kᵀ with vdpbf16ps
  int64_t key_words;  // 32-bit words per key row: Dk, or Dk/2 for bf16 pairs
  int64_t q_words;    // key_words rounded up to 16 (zero padding)
  int64_t dv_pad;     // Dv rounded up to 16: the width of O and converted V rows
  Load key_load;
  Load value_load;
  size_t element_bytes;
  // Partial states when splits > 1: [item][split] × (rows × Dv | rows | rows).
  float* partial_o = nullptr;
  float* partial_m = nullptr;
  float* partial_l = nullptr;
};

// Bit t of the result is set iff key t0 + t is visible to the query at `slot`.
inline uint32_t RowMask(int64_t slot, int64_t t0, int64_t window, uint32_t key_bits) {
  const int64_t last = slot - t0;  // highest visible offset (causal)
  if (last < 0) return 0;
  uint32_t mask = last >= 31 ? ~0u : ((2u << last) - 1u);
  if (window > 0) {
    const int64_t first = slot - window + 1 - t0;  // lowest visible offset
    if (first >= 32) return 0;
    if (first > 0) mask &= ~((1u << first) - 1u);
  }
  return mask & key_bits;
}

void RunItem(const Plan& plan, int64_t item, int64_t split) {
  const AttentionProblem& p = *plan.problem;
  const KVView& kv = p.kv;
  const int64_t heads = p.queries.heads;
  const int64_t dk = p.queries.dim;
  const int64_t dv = kv.value_dim;
  const int64_t dv_pad = plan.dv_pad;
  const int64_t g = item % kv.kv_heads;
  const int64_t block = plan.blocks - 1 - item / kv.kv_heads;  // heaviest (latest) blocks first
  const int64_t s0 = block * plan.block_tokens;
  const int64_t s1 = std::min(p.queries.tokens, s0 + plan.block_tokens);
  const int64_t rows = (s1 - s0) * plan.group;
  const int64_t first_slot = p.visibility.first_query_slot + s0;
  const int64_t last_slot = p.visibility.first_query_slot + s1 - 1;
  const int64_t window = p.visibility.window;

  // Keys any row of the block may see, then this split's share of them (whole tiles).
  const int64_t key_begin = window > 0 ? std::max<int64_t>(0, first_slot - window + 1) : 0;
  const int64_t key_end = std::min(last_slot + 1, kv.length);
  const int64_t span = std::max<int64_t>(0, key_end - key_begin);
  const int64_t per_split =
      (span + plan.splits * kTileKeys - 1) / (plan.splits * kTileKeys) * kTileKeys;
  const int64_t begin = key_begin + split * per_split;
  const int64_t end = std::min(key_end, begin + per_split);

  Scratch& scratch = ThreadScratch();
  float* q = Grow(scratch.q, plan.max_rows * plan.q_words);
  float* kt = Grow(scratch.kt, plan.q_words * kTileKeys);
  float* vt = Grow(scratch.vt, kTileKeys * dv_pad);
  float* scores = Grow(scratch.scores, plan.max_rows * kTileKeys);
  float* o = Grow(scratch.o, plan.max_rows * dv_pad);
  float* m = Grow(scratch.m, plan.max_rows);
  float* l = Grow(scratch.l, plan.max_rows);
  uint32_t* masks = Grow(scratch.masks, plan.max_rows);

  // Q rows (token-major, then the group's heads). fp32 rows are pre-scaled by scale·log2(e);
  // bf16 rows are rounded unscaled, so that bf16 inputs stay exact, and the scores are scaled
  // in fp32 instead (plan.score_scale).
  const float q_scale = plan.bf16_dot ? 1.0f : p.scale * kLog2e;
  const __m512 score_scale = _mm512_set1_ps(plan.bf16_dot ? p.scale * kLog2e : 1.0f);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = s0 + r / plan.group;
    const int64_t h = g * plan.group + r % plan.group;
    const float* src = p.queries.data + (s * heads + h) * dk;
    float* row = q + r * plan.q_words;
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
    m[r] = kNegInf;
    l[r] = 0.0f;
  }
  std::fill(o, o + rows * dv_pad, 0.0f);

  const size_t eb = plan.element_bytes;
  const std::byte* key_base = static_cast<const std::byte*>(kv.keys) + g * kv.key_head_stride * eb;
  const std::byte* value_base =
      static_cast<const std::byte*>(kv.values) + g * kv.value_head_stride * eb;
  const int64_t key_stride_bytes = kv.key_token_stride * static_cast<int64_t>(eb);
  const int64_t value_stride_bytes = kv.value_token_stride * static_cast<int64_t>(eb);
  const ScoresFn* scores_fns = plan.bf16_dot ? kScoresBF16 : kScoresF32;

  for (int64_t t0 = begin; t0 < end; t0 += kTileKeys) {
    const int64_t n = std::min(kTileKeys, end - t0);
    uint32_t key_bits = n == 32 ? ~0u : ((1u << n) - 1u);
    if (kv.keep != nullptr) {
      for (int64_t i = 0; i < n; ++i) {
        if (kv.keep[t0 + i] == 0) key_bits &= ~(1u << i);
      }
    }
    uint32_t any = 0;
    for (int64_t r = 0; r < rows; ++r) {
      masks[r] = RowMask(first_slot + r / plan.group, t0, window, key_bits);
      any |= masks[r];
    }
    if (any == 0) continue;  // causal, window or padding hides the whole tile

    // S = Q Kᵀ for the tile.
    PackKeysTransposed(key_base + t0 * key_stride_bytes, key_stride_bytes, n, plan.q_words,
                       plan.key_words, plan.key_load, kt);
    for (int64_t r0 = 0; r0 < rows; r0 += 8) {
      const int64_t count = std::min<int64_t>(8, rows - r0);
      scores_fns[count - 1](q + r0 * plan.q_words, plan.q_words, kt, scores + r0 * kTileKeys);
    }

    // Online softmax: scores become P = 2^(S - m'), O and l rescale by 2^(m - m').
    for (int64_t r = 0; r < rows; ++r) {
      float* s = scores + r * kTileKeys;
      const uint32_t mask = masks[r];
      if (mask == 0) {
        _mm512_storeu_ps(s, _mm512_setzero_ps());
        _mm512_storeu_ps(s + 16, _mm512_setzero_ps());
        continue;
      }
      const __mmask16 m0 = static_cast<__mmask16>(mask & 0xffffu);
      const __mmask16 m1 = static_cast<__mmask16>(mask >> 16);
      const __m512 s0v = _mm512_mul_ps(_mm512_loadu_ps(s), score_scale);
      const __m512 s1v = _mm512_mul_ps(_mm512_loadu_ps(s + 16), score_scale);
      const __m512 neg_inf = _mm512_set1_ps(kNegInf);
      const float tile_max = _mm512_reduce_max_ps(_mm512_max_ps(
          _mm512_mask_mov_ps(neg_inf, m0, s0v), _mm512_mask_mov_ps(neg_inf, m1, s1v)));
      const float m_new = std::max(m[r], tile_max);
      const __m512 shift = _mm512_set1_ps(m_new);
      const __m512 p0 = _mm512_maskz_mov_ps(m0, Exp2(_mm512_sub_ps(s0v, shift)));
      const __m512 p1 = _mm512_maskz_mov_ps(m1, Exp2(_mm512_sub_ps(s1v, shift)));
      _mm512_storeu_ps(s, p0);
      _mm512_storeu_ps(s + 16, p1);
      const float correction = std::exp2(m[r] - m_new);  // 0 when m was -inf
      if (correction != 1.0f) {
        const __m512 c = _mm512_set1_ps(correction);
        float* row = o + r * dv_pad;
        for (int64_t d = 0; d < dv_pad; d += 16) {
          _mm512_storeu_ps(row + d, _mm512_mul_ps(_mm512_loadu_ps(row + d), c));
        }
      }
      l[r] = l[r] * correction + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
      m[r] = m_new;
    }

    // O += P V. With one row block each value is read once, so f16/bf16 convert on the fly;
    // with more rows the tile is converted once up front and reread as fp32.
    const std::byte* v_tile = value_base + t0 * value_stride_bytes;
    const void* v = v_tile;
    int64_t v_stride = kv.value_token_stride;
    Load v_load = plan.value_load;
    if (dv != dv_pad || (v_load != Load::kWords && rows > kValueRows)) {
      ConvertValues(v_tile, value_stride_bytes, n, dv, dv_pad, v_load, vt);
      v = vt;
      v_stride = dv_pad;
      v_load = Load::kWords;
    }
    const auto& accumulate = v_load == Load::kWords      ? kAccumulate<Load::kWords>
                             : v_load == Load::kF16ToF32 ? kAccumulate<Load::kF16ToF32>
                                                         : kAccumulate<Load::kBF16ToF32>;
    const size_t v_element = v_load == Load::kWords ? sizeof(float) : sizeof(uint16_t);
    for (int64_t d0 = 0; d0 < dv_pad; d0 += 64) {
      const int64_t vectors = std::min<int64_t>(4, (dv_pad - d0) / 16);
      const void* v_chunk = static_cast<const std::byte*>(v) + d0 * static_cast<int64_t>(v_element);
      for (int64_t r0 = 0; r0 < rows; r0 += kValueRows) {
        const int64_t count = std::min<int64_t>(kValueRows, rows - r0);
        accumulate[count - 1][vectors - 1](scores + r0 * kTileKeys, v_chunk, v_stride, n,
                                           o + r0 * dv_pad + d0, dv_pad);
      }
    }
  }

  if (plan.splits == 1) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t s = s0 + r / plan.group;
      const int64_t h = g * plan.group + r % plan.group;
      float* out = p.out + (s * heads + h) * dv;
      const float inverse = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;  // no visible key: zeros
      for (int64_t d = 0; d < dv; ++d) out[d] = o[r * dv_pad + d] * inverse;
    }
    return;
  }
  const int64_t slot_index = item * plan.splits + split;
  std::copy_n(o, rows * dv_pad, plan.partial_o + slot_index * plan.max_rows * dv_pad);
  std::copy_n(m, rows, plan.partial_m + slot_index * plan.max_rows);
  std::copy_n(l, rows, plan.partial_l + slot_index * plan.max_rows);
}

// Combines the splits of one item: m* = max_k m_k, w_k = 2^(m_k - m*),
// out = Σ_k w_k O_k / Σ_k w_k l_k.
void MergeSplits(const Plan& plan, int64_t item) {
  const AttentionProblem& p = *plan.problem;
  const int64_t heads = p.queries.heads;
  const int64_t dv = p.kv.value_dim;
  const int64_t g = item % p.kv.kv_heads;
  const int64_t block = plan.blocks - 1 - item / p.kv.kv_heads;
  const int64_t s0 = block * plan.block_tokens;
  const int64_t s1 = std::min(p.queries.tokens, s0 + plan.block_tokens);
  const int64_t rows = (s1 - s0) * plan.group;
  for (int64_t r = 0; r < rows; ++r) {
    float m_star = kNegInf;
    for (int64_t k = 0; k < plan.splits; ++k) {
      m_star = std::max(m_star, plan.partial_m[(item * plan.splits + k) * plan.max_rows + r]);
    }
    const int64_t s = s0 + r / plan.group;
    const int64_t h = g * plan.group + r % plan.group;
    float* out = p.out + (s * heads + h) * dv;
    std::fill(out, out + dv, 0.0f);
    if (m_star == kNegInf) continue;  // no visible key in any split
    float total = 0.0f;
    for (int64_t k = 0; k < plan.splits; ++k) {
      const int64_t index = (item * plan.splits + k) * plan.max_rows + r;
      if (plan.partial_m[index] == kNegInf) continue;
      const float weight = std::exp2(plan.partial_m[index] - m_star);
      total += weight * plan.partial_l[index];
      const float* o = plan.partial_o + index * plan.dv_pad;
      for (int64_t d = 0; d < dv; ++d) out[d] += weight * o[d];
    }
    const float inverse = 1.0f / total;
    for (int64_t d = 0; d < dv; ++d) out[d] *= inverse;
  }
}

}  // namespace

bool FlashAttendSupports(const AttentionProblem& problem, const IsaSupport& isa) {
  const KVView& kv = problem.kv;
  return isa.isa == Isa::kAvx512 &&
         (kv.dtype == DType::kF32 || kv.dtype == DType::kF16 || kv.dtype == DType::kBF16);
}

void FlashAttendAvx512(const AttentionProblem& problem, bool bf16_dot) {
  const QueryRows& q = problem.queries;
  const KVView& kv = problem.kv;
  if (q.tokens == 0) return;
  Plan plan;
  plan.problem = &problem;
  plan.group = q.heads / kv.kv_heads;
  plan.block_tokens = std::max<int64_t>(1, kTargetRows / plan.group);
  plan.blocks = (q.tokens + plan.block_tokens - 1) / plan.block_tokens;
  plan.max_rows = std::min(plan.block_tokens, q.tokens) * plan.group;
  plan.bf16_dot = bf16_dot && kv.dtype == DType::kBF16 && q.dim % 2 == 0;
  plan.key_words = plan.bf16_dot ? q.dim / 2 : q.dim;
  plan.q_words = (plan.key_words + 15) / 16 * 16;
  plan.dv_pad = (kv.value_dim + 15) / 16 * 16;
  plan.key_load = kv.dtype == DType::kF16    ? Load::kF16ToF32
                  : kv.dtype == DType::kBF16 ? (plan.bf16_dot ? Load::kWords : Load::kBF16ToF32)
                                             : Load::kWords;
  plan.value_load = kv.dtype == DType::kF16    ? Load::kF16ToF32
                    : kv.dtype == DType::kBF16 ? Load::kBF16ToF32
                                               : Load::kWords;
  plan.element_bytes = DTypeSize(kv.dtype);

  // Fewer items than threads (decode): split each block's keys so every thread has work.
  const int64_t items = kv.kv_heads * plan.blocks;
  const int64_t threads = NumThreads();
  plan.splits = 1;
  if (items < 2 * threads) {
    const int64_t wanted = (4 * threads + items - 1) / items;
    plan.splits = std::max<int64_t>(1, std::min(wanted, kv.length / kMinKeysPerSplit));
  }
  thread_local std::vector<float> partials;
  if (plan.splits > 1) {
    const int64_t states = items * plan.splits * plan.max_rows;
    float* base = Grow(partials, states * (plan.dv_pad + 2));
    plan.partial_o = base;
    plan.partial_m = base + states * plan.dv_pad;
    plan.partial_l = plan.partial_m + states;
  }
  const Plan* shared = &plan;
  ParallelFor(items * plan.splits, [shared](int64_t task, int /*thread*/) {
    RunItem(*shared, task / shared->splits, task % shared->splits);
  });
  if (plan.splits > 1) {
    for (int64_t item = 0; item < items; ++item) MergeSplits(plan, item);
  }
}

}  // namespace attn::cpu
