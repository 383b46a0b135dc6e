// SPDX-License-Identifier: Apache-2.0
// FlashAttention with Intel AMX tiles for bf16 K/V and many query rows per kv head (prefill,
// chunked prefill, absorbed MLA). This file is compiled with AVX-512 and AMX enabled; the backend
// runs it only after isa.cc found amx_tile + amx_bf16 and the OS granted the tile state.
//
// One work item is a block of 128 or 256 query rows (consecutive tokens × the H/G query heads of
// one kv head, token-major) against every key that block may see, walked in blocks of 128 keys:
//   pack      each 32-key tile of K transposed into bf16 pairs (the B operand of S = Q Kᵀ: 16
//             words of d × 16 keys), of V into pairs of keys (the B operand of P V: 16 key pairs
//             × 16 columns) — once per block, shared by every row of the item
//   then, per pair of 16-row blocks (so that their scores, P and O stay close in cache):
//   S = Q Kᵀ  tdpbf16ps, Q rounded to bf16 as the AVX-512 bf16 path does, fp32 scores
//   softmax   masking, soft-capping and ALiBi as in the AVX-512 kernel (avx512_common.h), then
//             an online softmax in base 2 whose running maximum m moves only when a block
//             exceeds it by more than 2^8 (O and the row sums l rescale rarely)
//   O += P V  P rounded to bf16 (as FlashAttention does), fp32 O tiles loaded, accumulated over
//             the block's keys, stored
// and at the end out = O / (l + sink) (rows that saw no key: zeros). Keys are read through
// KeyOffset / ValueOffset one row at a time, so paged views work like contiguous ones.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attn/dtype.h"
#include "attn/threads.h"
#include "kernels/cpu/flash_attention.h"
// Last: everything below is compiled for AVX-512 (and, by the pragma after it, AMX).
#include "kernels/cpu/avx512_common.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c,amx-tile,amx-bf16")

namespace attn::cpu {
namespace {

using namespace avx512;  // NOLINT(google-build-using-namespace): this file's own toolbox

constexpr int64_t kTargetRows = 256;    // query rows per work item (or half as many)
constexpr int64_t kMinLargeItems = 32;  // fewer items of kTargetRows rows: take half as many
constexpr int64_t kPrefetchRows = 8;    // Q rows fetched ahead while rounding to bf16
// Outputs at least this large are streamed to memory (written once, read by the next layer
// long after): about the L2 share of a few cores.
constexpr int64_t kStreamOutputBytes = int64_t{8} << 20;
constexpr int64_t kBlockRows = 16;              // rows of an AMX tile
constexpr int64_t kSubTiles = 4;                // 32-key tiles per softmax step
constexpr int64_t kBlockKeys = kSubTiles * 32;  // keys per softmax step

// The tile configuration (palette 1): tiles 0 … 7 all 16 rows × 64 bytes.
//   0-3  C: scores or O (fp32, 16 × 16)
//   4-5  A: Q or P rows (bf16, 16 × 32)
//   6-7  B: K or V in bf16 pairs (16 pairs × 16 columns)
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

void LoadTileConfig() {
  TileConfig config{};
  config.palette_id = 1;
  for (int i = 0; i < 8; ++i) {
    config.colsb[i] = 64;
    config.rows[i] = 16;
  }
  _tile_loadconfig(&config);
}

// Indices that interleave the 16-bit elements of two rows a, b: lo takes a[0..15] and
// b[0..15] as a0 b0 a1 b1 …, hi a[16..31] and b[16..31].
struct PairIndices {
  alignas(64) int16_t lo[32];
  alignas(64) int16_t hi[32];
};
constexpr PairIndices MakePairIndices() {
  PairIndices indices{};
  for (int n = 0; n < 16; ++n) {
    indices.lo[2 * n] = static_cast<int16_t>(n);
    indices.lo[2 * n + 1] = static_cast<int16_t>(32 + n);
    indices.hi[2 * n] = static_cast<int16_t>(16 + n);
    indices.hi[2 * n + 1] = static_cast<int16_t>(48 + n);
  }
  return indices;
}
constexpr PairIndices kPairIndices = MakePairIndices();

// kt[w][key] (w < 16·chunks, key < 32, as 32-bit words holding bf16 pairs (k[2w], k[2w+1])):
// the tile's n keys transposed; keys >= n and words past the key width (dk/2) are zero. B tile
// (c, half) is kt + c·16·32 + half·16 with rows 128 bytes apart.
void PackKeys(const uint16_t* const* key_rows, int64_t n, int64_t dk, int64_t chunks, float* kt) {
  const int64_t words = dk / 2;
  __m512 r[16];
  for (int64_t half = 0; half < 2; ++half) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t valid = words - c * 16;
      const __mmask16 mask =
          valid >= 16 ? static_cast<__mmask16>(0xffff) : static_cast<__mmask16>((1u << valid) - 1u);
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t key = half * 16 + j;
        r[j] = key < n ? _mm512_maskz_loadu_ps(
                             mask, reinterpret_cast<const float*>(key_rows[key]) + c * 16)
                       : _mm512_setzero_ps();
      }
      Transpose16(r);
      for (int64_t i = 0; i < 16; ++i) {
        _mm512_storeu_ps(kt + (c * 16 + i) * kTileKeys + half * 16, r[i]);
      }
    }
  }
}

// vp[c][i][2·col + e] = v[2i + e][16c + col]: the tile's values in pairs of keys, B tile c
// (columns 16c … 16c+15) at vp + c·512 with rows 64 bytes apart. Keys >= n and columns >= dv
// are zero.
void PackValues(const uint16_t* const* value_rows, int64_t n, int64_t dv, int64_t chunks,
                uint16_t* vp) {
  const __m512i index_lo = _mm512_load_si512(kPairIndices.lo);
  const __m512i index_hi = _mm512_load_si512(kPairIndices.hi);
  for (int64_t i = 0; i < 16; ++i) {
    const uint16_t* a = 2 * i < n ? value_rows[2 * i] : nullptr;
    const uint16_t* b = 2 * i + 1 < n ? value_rows[2 * i + 1] : nullptr;
    for (int64_t c = 0; c < chunks; c += 2) {
      const int64_t valid = dv - c * 16;
      const __mmask32 mask = valid >= 32 ? static_cast<__mmask32>(0xffffffffu)
                                         : static_cast<__mmask32>((1u << valid) - 1u);
      const __m512i va =
          a != nullptr ? _mm512_maskz_loadu_epi16(mask, a + c * 16) : _mm512_setzero_si512();
      const __m512i vb =
          b != nullptr ? _mm512_maskz_loadu_epi16(mask, b + c * 16) : _mm512_setzero_si512();
      _mm512_storeu_si512(vp + (c * 16 + i) * 32, _mm512_permutex2var_epi16(va, index_lo, vb));
      if (c + 1 < chunks) {
        _mm512_storeu_si512(vp + ((c + 1) * 16 + i) * 32,
                            _mm512_permutex2var_epi16(va, index_hi, vb));
      }
    }
  }
}

// s[r][0..31] = Σ_d q[r][d] k[·][d] for RB blocks of 16 rows (q: bf16 rows q_stride elements
// apart, `chunks` of 32 elements; kt from PackKeys; s rows kBlockKeys floats apart).
template <int RB>
void ScoreBlocks(const uint16_t* q, int64_t q_stride, int64_t chunks, const float* kt, float* s) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (RB == 2) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t q_bytes = q_stride * 2;
  for (int64_t c = 0; c < chunks; ++c) {
    _tile_loadd(6, kt + c * 16 * kTileKeys, kTileKeys * 4);
    _tile_loadd(7, kt + c * 16 * kTileKeys + 16, kTileKeys * 4);
    _tile_loadd(4, q + c * 32, q_bytes);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (RB == 2) {
      _tile_loadd(5, q + kBlockRows * q_stride + c * 32, q_bytes);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  constexpr int64_t kRowBytes = kBlockKeys * 4;
  _tile_stored(0, s, kRowBytes);
  _tile_stored(1, s + 16, kRowBytes);
  if constexpr (RB == 2) {
    _tile_stored(2, s + kBlockRows * kBlockKeys, kRowBytes);
    _tile_stored(3, s + kBlockRows * kBlockKeys + 16, kRowBytes);
  }
}

// o[r][16c … 16c+16·DC) += Σ_t p[r][t] v[t][·] over the first 32·subs keys of a block, for RB
// blocks of 16 rows and DC column tiles (p: bf16 rows × kBlockKeys; vp: PackValues' tile of
// keys 0-31 offset to column tile c, that of keys 32u … at vp + u·sub_stride; o rows o_stride
// floats apart).
template <int RB, int DC>
void AccumulateBlocks(const uint16_t* p, const uint16_t* vp, int64_t sub_stride, int64_t subs,
                      float* o, int64_t o_stride) {
  const int64_t o_bytes = o_stride * 4;
  constexpr int64_t kPBytes = kBlockKeys * 2;
  float* o1 = o + kBlockRows * o_stride;
  _tile_loadd(0, o, o_bytes);
  if constexpr (DC == 2) _tile_loadd(1, o + 16, o_bytes);
  if constexpr (RB == 2) {
    _tile_loadd(2, o1, o_bytes);
    if constexpr (DC == 2) _tile_loadd(3, o1 + 16, o_bytes);
  }
  for (int64_t k = 0; k < subs; ++k) {
    const uint16_t* v = vp + k * sub_stride;
    _tile_loadd(4, p + k * 32, kPBytes);
    _tile_loadd(6, v, 64);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (DC == 2) {
      _tile_loadd(7, v + 16 * 32, 64);
      _tile_dpbf16ps(1, 4, 7);
    }
    if constexpr (RB == 2) {
      _tile_loadd(5, p + kBlockRows * kBlockKeys + k * 32, kPBytes);
      _tile_dpbf16ps(2, 5, 6);
      if constexpr (DC == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, o, o_bytes);
  if constexpr (DC == 2) _tile_stored(1, o + 16, o_bytes);
  if constexpr (RB == 2) {
    _tile_stored(2, o1, o_bytes);
    if constexpr (DC == 2) _tile_stored(3, o1 + 16, o_bytes);
  }
}

// A row's running maximum moves only when a block's maximum exceeds it by more than this (in
// log2 units): P = 2^(s − m) then stays below 2^8, far from fp32's or bf16's range limits, and
// O and l are rescaled rarely instead of after almost every block (FlashAttention-4's
// conditional rescaling; the result is the same softmax, normalised by the same m at the end).
constexpr float kRescaleThreshold = 8.0f;

// 2^x for x <= 0 to ~3e-6 relative error (degree-5 Taylor polynomial of 2^f, f in [-0.5, 0.5]):
// P is rounded to bf16 (2^-9) before P·V, so the AVX-512 kernel's degree-7 Exp2 buys nothing.
inline __m512 Exp2Bf16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-126.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.3333558146428443e-03f);  // ln2^5/5!
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076284772e-03f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108664821580e-02f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650695910071e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718055994531e-01f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// One row's online-softmax step over the first 32·subs keys of a block: s (raw scores; their
// softmax value is s·scale, scale > 0) becomes P = 2^(s·scale − m) where visible (masks: one
// word per 32 keys), stored as bf16 in pb; m, the row's vector of partial sums l_vec (16 lanes)
// and its O row (dv_pad floats) rescale when m moves. The maximum is taken on the raw scores:
// with scale > 0, max(round(s·scale)) = round(max(s)·scale).
inline void SoftmaxBlockRow(const float* s, const uint32_t* masks, int64_t subs, float scale,
                            float& m, float* l_vec, float* o, int64_t dv_pad, uint16_t* pb) {
  uint32_t any = 0;
  for (int64_t u = 0; u < subs; ++u) any |= masks[u];
  if (any == 0) {
    for (int64_t u = 0; u < subs; ++u) _mm512_storeu_si512(pb + 32 * u, _mm512_setzero_si512());
    return;
  }
  __m512 top = _mm512_set1_ps(kNegInf);
  for (int64_t u = 0; u < subs; ++u) {
    const __mmask16 k0 = static_cast<__mmask16>(masks[u]);
    const __mmask16 k1 = static_cast<__mmask16>(masks[u] >> 16);
    top = _mm512_mask_max_ps(top, k0, top, _mm512_loadu_ps(s + 32 * u));
    top = _mm512_mask_max_ps(top, k1, top, _mm512_loadu_ps(s + 32 * u + 16));
  }
  const float block_max = _mm512_reduce_max_ps(top) * scale;
  if (block_max > m + kRescaleThreshold || m == kNegInf) {
    const float correction = std::exp2(m - block_max);  // 0 when m was -inf
    const __m512 c = _mm512_set1_ps(correction);
    _mm512_storeu_ps(l_vec, _mm512_mul_ps(_mm512_loadu_ps(l_vec), c));
    for (int64_t d = 0; d < dv_pad; d += 16) {
      _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), c));
    }
    m = block_max;
  }
  const __m512 shift = _mm512_set1_ps(m);
  const __m512 scale_v = _mm512_set1_ps(scale);
  __m512 sum = _mm512_loadu_ps(l_vec);
  for (int64_t u = 0; u < subs; ++u) {
    const __mmask16 k0 = static_cast<__mmask16>(masks[u]);
    const __mmask16 k1 = static_cast<__mmask16>(masks[u] >> 16);
    const __m512 p0 = _mm512_maskz_mov_ps(
        k0, Exp2Bf16(_mm512_fmsub_ps(_mm512_loadu_ps(s + 32 * u), scale_v, shift)));
    const __m512 p1 = _mm512_maskz_mov_ps(
        k1, Exp2Bf16(_mm512_fmsub_ps(_mm512_loadu_ps(s + 32 * u + 16), scale_v, shift)));
    sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
    _mm512_storeu_si512(pb + 32 * u, (__m512i)_mm512_cvtne2ps_pbh(p1, p0));
  }
  _mm512_storeu_ps(l_vec, sum);
}

// Per-thread buffers, grown on first use and then reused.
struct Scratch {
  std::vector<uint16_t> q;                   // padded rows × dk_pad (bf16)
  std::vector<float> kt;                     // 2 × dk_pad/2 words × 32
  std::vector<uint16_t> vp;                  // 2 × dv chunks × 16 × 32 (bf16 pairs)
  std::vector<float> scores;                 // 32 rows × 64
  std::vector<uint16_t> pb;                  // 32 rows × 64 (bf16 P)
  std::vector<int64_t> row_token, row_head;  // padded rows: r / group, r % group
  std::vector<float> o;                      // padded rows × dv_pad
  std::vector<float> m;                      // padded rows
  std::vector<float> l;                      // padded rows × 16 (partial sums per lane)
  std::vector<uint32_t> masks;               // block tokens × kSubTiles
  std::vector<int64_t> lowest;
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

struct Plan {
  const AttentionProblem* problem;
  int64_t group;         // H / G
  int64_t block_tokens;  // query tokens per item
  int64_t blocks;
  int64_t items;        // blocks × G
  int64_t max_rows;     // rows per item (the largest)
  int64_t padded_rows;  // max_rows rounded up to 16
  int64_t dk_pad;       // Dk rounded up to 32
  int64_t dv_pad;       // Dv rounded up to 16
  bool stream_output;   // write the output with streaming stores (large)
};

Plan MakePlan(const AttentionProblem& p) {
  Plan plan;
  plan.problem = &p;
  plan.group = p.queries.heads / p.kv.kv_heads;
  // Larger items share each packed K/V tile among more rows; smaller ones keep threads busy on
  // shorter prompts. The choice depends on the shape alone, not on the thread count, so that
  // results do not change with the number of threads (the softmax's block boundaries and
  // rescaling points follow the items).
  for (const int64_t target : {kTargetRows, kTargetRows / 2}) {
    plan.block_tokens = std::max<int64_t>(1, target / plan.group);
    plan.blocks = (p.queries.tokens + plan.block_tokens - 1) / plan.block_tokens;
    if (plan.blocks * p.kv.kv_heads >= kMinLargeItems) break;
  }
  plan.items = plan.blocks * p.kv.kv_heads;
  plan.max_rows = std::min(plan.block_tokens, p.queries.tokens) * plan.group;
  plan.padded_rows = (plan.max_rows + kBlockRows - 1) / kBlockRows * kBlockRows;
  plan.dk_pad = (p.queries.dim + 31) / 32 * 32;
  plan.dv_pad = (p.kv.value_dim + 15) / 16 * 16;
  const int64_t out_bytes = p.queries.tokens * p.queries.heads * p.kv.value_dim * 4;
  plan.stream_output =
      out_bytes >= kStreamOutputBytes && reinterpret_cast<uintptr_t>(p.out) % 4 == 0;
  return plan;
}

// Bits 0 … n-1 for keys t0 … t0+n-1 (n <= 32), cleared where keep says padding.
uint32_t KeptBits(const KVView& kv, int64_t t0, int64_t n) {
  if (n <= 0) return 0;
  uint32_t bits = n >= 32 ? ~0u : ((1u << n) - 1u);
  if (kv.keep == nullptr) return bits;
  for (int64_t i = 0; i < n;) {
    // Runs within one page (the whole range when contiguous): one KeepOffset per run.
    const int64_t t = t0 + i;
    const int64_t run = kv.page_size == 0 ? n : std::min(n - i, kv.page_size - t % kv.page_size);
    const uint8_t* keep = kv.keep + KeepOffset(kv, t);
    for (int64_t j = 0; j < run; ++j, ++i) {
      if (keep[j] == 0) bits &= ~(1u << i);
    }
  }
  return bits;
}

// key_rows[i] / value_rows[i] = kv head g's key / value row of slot t0 + i, i < n: one division
// per page rather than one per key (KeyOffset's rule, walked page by page).
void RowPointers(const KVView& kv, int64_t g, int64_t t0, int64_t n, const uint16_t* keys,
                 const uint16_t* values, const uint16_t** key_rows, const uint16_t** value_rows) {
  if (kv.page_size == 0) {
    const uint16_t* k = keys + KeyOffset(kv, g, t0);
    const uint16_t* v = values + ValueOffset(kv, g, t0);
    for (int64_t i = 0; i < n; ++i) {
      key_rows[i] = k + i * kv.key_token_stride;
      value_rows[i] = v + i * kv.value_token_stride;
    }
    return;
  }
  for (int64_t i = 0; i < n;) {
    const int64_t t = t0 + i;
    const int64_t run = std::min(n - i, kv.page_size - t % kv.page_size);
    const uint16_t* k = keys + KeyOffset(kv, g, t);
    const uint16_t* v = values + ValueOffset(kv, g, t);
    for (int64_t j = 0; j < run; ++j, ++i) {
      key_rows[i] = k + j * kv.key_token_stride;
      value_rows[i] = v + j * kv.value_token_stride;
    }
  }
}

// dst[0..n) = src[0..n) rounded to bf16 (to nearest even, as F32ToBF16).
void RoundToBF16(const float* src, int64_t n, uint16_t* dst) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16),
                                                              _mm512_loadu_ps(src + i)));
  }
  for (; i < n; ++i) dst[i] = F32ToBF16(src[i]);
}

void RunItem(const Plan& plan, int64_t item) {
  const AttentionProblem& p = *plan.problem;
  const KVView& kv = p.kv;
  const int64_t heads = p.queries.heads;
  const int64_t dk = p.queries.dim;
  const int64_t dv = kv.value_dim;
  const int64_t dk_pad = plan.dk_pad;
  const int64_t dv_pad = plan.dv_pad;
  const int64_t q_chunks = dk_pad / 32;
  const int64_t v_chunks = dv_pad / 16;
  const int64_t group = plan.group;

  const int64_t g = item % kv.kv_heads;
  const int64_t block = plan.blocks - 1 - item / kv.kv_heads;  // heaviest (latest) blocks first
  const int64_t s0 = block * plan.block_tokens;
  const int64_t s1 = std::min(p.queries.tokens, s0 + plan.block_tokens);
  const int64_t tokens = s1 - s0;
  const int64_t rows = tokens * group;
  const int64_t row_blocks = (rows + kBlockRows - 1) / kBlockRows;
  const int64_t padded = row_blocks * kBlockRows;
  const bool causal = p.visibility.causal;
  const int64_t first_slot = p.visibility.first_query_slot + s0;
  const int64_t last_slot = p.visibility.first_query_slot + s1 - 1;
  const int64_t key_begin = causal ? LowestVisibleKey(first_slot, p.visibility) : 0;
  const int64_t key_end = causal ? std::min(last_slot + 1, kv.length) : kv.length;

  Scratch& scratch = ThreadScratch();
  uint16_t* q = Grow(scratch.q, plan.padded_rows * dk_pad);
  const int64_t kt_stride = dk_pad / 2 * kTileKeys;  // floats per packed 32-key K tile
  const int64_t vp_stride = v_chunks * 16 * 32;      // bf16 per packed 32-key V tile
  float* kt = Grow(scratch.kt, kSubTiles * kt_stride);
  uint16_t* vp = Grow(scratch.vp, kSubTiles * vp_stride);
  float* scores = Grow(scratch.scores, 2 * kBlockRows * kBlockKeys);
  uint16_t* pb = Grow(scratch.pb, 2 * kBlockRows * kBlockKeys);
  int64_t* row_token = Grow(scratch.row_token, plan.padded_rows);
  int64_t* row_head = Grow(scratch.row_head, plan.padded_rows);
  float* o = Grow(scratch.o, plan.padded_rows * dv_pad);
  float* m = Grow(scratch.m, plan.padded_rows);
  float* l = Grow(scratch.l, plan.padded_rows * 16);
  uint32_t* masks = Grow(scratch.masks, plan.block_tokens * kSubTiles);
  int64_t* lowest = Grow(scratch.lowest, plan.block_tokens);

  // Q rows rounded to bf16 unscaled (bf16 inputs stay exact); scores are scaled in fp32.
  for (int64_t r = 0; r < padded; ++r) {
    uint16_t* row = q + r * dk_pad;
    std::fill(row, row + dk_pad, uint16_t{0});
    m[r] = kNegInf;
    std::fill(l + r * 16, l + (r + 1) * 16, 0.0f);
    std::fill(o + r * dv_pad, o + (r + 1) * dv_pad, 0.0f);
    if (r >= rows) continue;
    const int64_t s = s0 + r / group;
    const int64_t h = g * group + r % group;
    if (r + kPrefetchRows < rows) {
      // Q rows are a whole token (H·Dk floats) apart every `group` rows: fetch ahead.
      const int64_t ahead = r + kPrefetchRows;
      const char* next = reinterpret_cast<const char*>(
          p.queries.data + ((s0 + ahead / group) * heads + g * group + ahead % group) * dk);
      for (int64_t byte = 0; byte < dk * 4; byte += 64) _mm_prefetch(next + byte, _MM_HINT_T0);
    }
    RoundToBF16(p.queries.data + (s * heads + h) * dk, dk, row);
  }
  for (int64_t i = 0; i < tokens; ++i) lowest[i] = LowestVisibleKey(first_slot + i, p.visibility);
  for (int64_t r = 0; r < rows; ++r) {
    row_token[r] = r / group;
    row_head[r] = r % group;
  }

  const uint16_t* keys = static_cast<const uint16_t*>(kv.keys);
  const uint16_t* values = static_cast<const uint16_t*>(kv.values);
  const uint16_t* key_rows[kBlockKeys];
  const uint16_t* value_rows[kBlockKeys];

  LoadTileConfig();
  for (int64_t t0 = key_begin; t0 < key_end; t0 += kBlockKeys) {
    const int64_t n = std::min(kBlockKeys, key_end - t0);
    const int64_t subs = (n + kTileKeys - 1) / kTileKeys;  // 32-key tiles holding keys
    uint32_t bits[kSubTiles];
    for (int64_t u = 0; u < kSubTiles; ++u) {
      bits[u] = KeptBits(kv, t0 + u * kTileKeys, std::min(kTileKeys, n - u * kTileKeys));
    }
    uint32_t any = 0;
    for (int64_t i = 0; i < tokens; ++i) {
      const int64_t slot = first_slot + i;
      for (int64_t u = 0; u < kSubTiles; ++u) {
        masks[i * kSubTiles + u] = RowMask(slot, lowest[i], t0 + u * kTileKeys, causal, bits[u]);
        any |= masks[i * kSubTiles + u];
      }
    }
    if (any == 0) continue;  // causal, window, chunk or padding hides the whole block

    RowPointers(kv, g, t0, n, keys, values, key_rows, value_rows);
    for (int64_t u = 0; u < subs; ++u) {
      const int64_t count = std::min(kTileKeys, n - u * kTileKeys);
      PackKeys(key_rows + u * kTileKeys, count, dk, q_chunks, kt + u * kt_stride);
      PackValues(value_rows + u * kTileKeys, count, dv, v_chunks, vp + u * vp_stride);
    }

    // Pairs of 16-row blocks run S = Q Kᵀ, the softmax and O += P V back to back, so that
    // their scores, P and O rows stay in L1 while the packed K/V tiles serve every pair.
    for (int64_t b = 0; b < row_blocks; b += 2) {
      const int64_t r0 = b * kBlockRows;
      const int64_t r1 = std::min(rows, r0 + 2 * kBlockRows);
      const bool two_blocks = b + 1 < row_blocks;
      // A pair none of whose rows sees a key of the block (the first rows of an item near the
      // causal diagonal, or rows past a window): nothing to add.
      uint32_t pair_any = 0;
      for (int64_t i = row_token[r0] * kSubTiles; i < (row_token[r1 - 1] + 1) * kSubTiles; ++i) {
        pair_any |= masks[i];
      }
      if (pair_any == 0) continue;
      // Rows past `rows` in the last pair (padding up to 16) keep stale P and accumulate into O
      // rows that are never output: each tile row is independent of the others.
      const uint16_t* q_block = q + r0 * dk_pad;
      for (int64_t u = 0; u < subs; ++u) {
        if (two_blocks) {
          ScoreBlocks<2>(q_block, dk_pad, q_chunks, kt + u * kt_stride, scores + u * kTileKeys);
        } else {
          ScoreBlocks<1>(q_block, dk_pad, q_chunks, kt + u * kt_stride, scores + u * kTileKeys);
        }
      }

      if (p.non_finite_scores != nullptr) {
        // NaN/Inf among the real scores of a row (lanes past n score zero keys).
        uint32_t found = 0;
        for (int64_t u = 0; u < subs; ++u) {
          const int64_t count = std::min(kTileKeys, n - u * kTileKeys);
          const uint32_t real = count == 32 ? ~0u : ((1u << count) - 1u);
          for (int64_t r = r0; r < r1; ++r) {
            const float* row = scores + (r - r0) * kBlockKeys + u * kTileKeys;
            found |= (static_cast<uint32_t>(_mm512_fpclass_ps_mask(_mm512_loadu_ps(row), 0x99)) |
                      static_cast<uint32_t>(_mm512_fpclass_ps_mask(_mm512_loadu_ps(row + 16), 0x99))
                          << 16) &
                     real;
          }
        }
        if (found != 0) p.non_finite_scores->store(true, std::memory_order_relaxed);
      }

      float softmax_scale = p.scale * kLog2e;
      if (p.softcap > 0.0f || p.alibi_slopes != nullptr) {
        // Rewritten scores already carry scale · log2 e.
        const __m512 scale_v = _mm512_set1_ps(softmax_scale);
        for (int64_t r = r0; r < r1; ++r) {
          float* row = scores + (r - r0) * kBlockKeys;
          for (int64_t u = 0; u < subs; ++u) {
            __m512 row_scale = scale_v;
            if (p.softcap > 0.0f) {
              SoftCapTileRow(row + u * kTileKeys, row_scale, p.softcap * kLog2e);
              row_scale = _mm512_set1_ps(1.0f);
            }
            if (p.alibi_slopes != nullptr) {
              const float slope = p.alibi_slopes[g * group + row_head[r]] * kLog2e;
              const int64_t slot = first_slot + row_token[r];
              AlibiTileRow(row + u * kTileKeys, row_scale, slope,
                           static_cast<float>(t0 + u * kTileKeys - slot));
            }
          }
        }
        softmax_scale = 1.0f;
      }
      // Online softmax, P rounded to bf16 for the tiles.
      for (int64_t r = r0; r < r1; ++r) {
        SoftmaxBlockRow(scores + (r - r0) * kBlockKeys, masks + row_token[r] * kSubTiles, subs,
                        softmax_scale, m[r], l + r * 16, o + r * dv_pad, dv_pad,
                        pb + (r - r0) * kBlockKeys);
      }

      // O += P V.
      float* o_block = o + r0 * dv_pad;
      for (int64_t c = 0; c < v_chunks; c += 2) {
        const uint16_t* v = vp + c * 16 * 32;
        float* o_tile = o_block + c * 16;
        if (c + 1 < v_chunks) {
          if (two_blocks) {
            AccumulateBlocks<2, 2>(pb, v, vp_stride, subs, o_tile, dv_pad);
          } else {
            AccumulateBlocks<1, 2>(pb, v, vp_stride, subs, o_tile, dv_pad);
          }
        } else if (two_blocks) {
          AccumulateBlocks<2, 1>(pb, v, vp_stride, subs, o_tile, dv_pad);
        } else {
          AccumulateBlocks<1, 1>(pb, v, vp_stride, subs, o_tile, dv_pad);
        }
      }
    }
  }
  _tile_release();

  // A large output (beyond what caches would keep for its reader) is written with streaming
  // stores: no read of each line before it is overwritten.
  const bool stream = plan.stream_output;

  for (int64_t r = 0; r < rows; ++r) {
    const int64_t s = s0 + r / group;
    const int64_t h = g * group + r % group;
    float* out = p.out + (s * heads + h) * dv;
    const float sum = _mm512_reduce_add_ps(_mm512_loadu_ps(l + r * 16));
    // The sink's share of the denominator in the softmax's base-2 units: 2^(sink·log2 e − m).
    const float sink = p.sinks != nullptr ? std::exp2(p.sinks[h] * kLog2e - m[r]) : 0.0f;
    // No visible key: zeros.
    const float inverse = sum > 0.0f ? 1.0f / (sum + sink) : 0.0f;
    if (stream) {
      // Ordinary stores up to the first 64-byte boundary and after the last; streaming stores
      // between (a row shares its end lines with its neighbours).
      const float* src = o + r * dv_pad;
      const __m512 scale = _mm512_set1_ps(inverse);
      const int64_t misaligned = static_cast<int64_t>(reinterpret_cast<uintptr_t>(out) % 64 / 4);
      int64_t d = std::min(dv, misaligned == 0 ? 0 : 16 - misaligned);
      for (int64_t i = 0; i < d; ++i) out[i] = src[i] * inverse;
      for (; d + 16 <= dv; d += 16) {
        _mm512_stream_ps(out + d, _mm512_mul_ps(_mm512_loadu_ps(src + d), scale));
      }
      for (; d < dv; ++d) out[d] = src[d] * inverse;
    } else {
      for (int64_t d = 0; d < dv; ++d) out[d] = o[r * dv_pad + d] * inverse;
    }
  }
  if (stream) _mm_sfence();  // streaming stores visible before the pool reports the item done
}

}  // namespace

bool FlashAttendAmxSupports(const AttentionProblem& problem, const IsaSupport& isa) {
  // scale > 0: the softmax takes its maxima on unscaled scores.
  if (!isa.amx || problem.kv.dtype != DType::kBF16 || problem.queries.dim % 2 != 0 ||
      !(problem.scale > 0.0f)) {
    return false;
  }
  if (problem.queries.tokens == 0 || problem.kv.kv_heads <= 0) return false;
  // Problems that return their log-sum-exp (partial states to merge) take the AVX-512 kernel.
  if (problem.lse != nullptr) return false;
  const int64_t group = problem.queries.heads / problem.kv.kv_heads;
  if (group <= 0) return false;  // an invalid problem: validation reports it
  // The smaller item size bounds both choices of MakePlan.
  const int64_t block_tokens = std::max<int64_t>(1, kTargetRows / 2 / group);
  return std::min(block_tokens, problem.queries.tokens) * group >= kAmxMinRows;
}

void FlashAttendAmx(const AttentionProblem& problem) {
  if (problem.queries.tokens == 0) return;
  const Plan plan = MakePlan(problem);
  const Plan* shared = &plan;
  ParallelFor(plan.items, [shared](int64_t item, int /*thread*/) { RunItem(*shared, item); });
}

}  // namespace attn::cpu
