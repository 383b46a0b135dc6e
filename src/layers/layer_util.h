// SPDX-License-Identifier: Apache-2.0
// Pieces shared by the GQA-family and MLA layers: input checks, projections, RoPE over heads,
// RMSNorm. Internal to the library.
#ifndef ATTN_LAYERS_LAYER_UTIL_H_
#define ATTN_LAYERS_LAYER_UTIL_H_

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "attn/kernels.h"
#include "attn/kv_cache.h"
#include "attn/layer.h"
#include "attn/rope.h"
#include "attn/tensor.h"
#include "attn/weight.h"

namespace attn::layers {

// `config` after ValidateConfig() accepted it, for member initialisers.
const ModelConfig& Validated(const ModelConfig& config);

// The rows of a call, after checking hidden_states and that positions and keep, when given,
// hold one entry per row (keep values 0 or 1). Two layouts:
//   padded  [B, S, hidden]: sequence b owns rows b·S … b·S + S - 1 and uses the first counts[b]
//   packed  [N, hidden] with lengths: sequence b owns rows starts[b] … starts[b] + counts[b] - 1,
//           N = Σ counts (cu_seqlens style: prefill chunks and decode tokens in one call)
struct BatchShape {
  int64_t batch;
  int64_t tokens;                   // padded: S; packed: the largest count
  std::span<const int64_t> counts;  // [B] rows each sequence actually contributes
  std::span<const int64_t> starts;  // [B] each sequence's first row
  int64_t rows = 0;                 // rows of the input and output
  bool packed = false;
  int64_t start(int64_t b) const { return starts[static_cast<size_t>(b)]; }
};
BatchShape CheckTokenBatch(const TokenBatch& batch, int64_t hidden_size);

// Positions of every token: the given ones, or lengths[b] + s (the cache length of sequence b
// before this call) when none are given.
std::span<const int64_t> ResolvePositions(const TokenBatch& batch, const BatchShape& shape,
                                          std::span<const int64_t> lengths);

// Per-thread scratch buffers for one layer call, one per use, grown on first need and then
// reused: after warm-up a decode step allocates nothing. A layer call runs on one thread and
// does not nest, so each slot has one user at a time.
enum class Slot {
  kQuery,
  kKey,
  kValue,
  kQueryLatent,
  kLatent,
  kHeadsOut,
  kAbsorbed,
  kLatentOut,
  kLatentRows,
  kDecompressInput,
  kDecompressOutput,
  kDecompressedKeys,
  kDecompressedValues,
  kHeadWeights,
  kCount
};
float* Scratch(Slot slot, int64_t size);
enum class IndexSlot { kCounts, kStarts, kPositions, kFirstSlots, kAbsorbedSequences, kCount };
int64_t* IndexScratch(IndexSlot slot, int64_t size);
// A per-thread list of at least `count` attention problems for one attend_batch call (grown,
// never shrunk: no allocation per decode step once warm).
std::vector<AttentionProblem>& BatchProblems(int64_t count);

class KVStore;
// Refuses (Error(kInvalidArgument), before the caller changes anything) position ids that go
// backwards: every kept (non-padding) token of sequence b must have a position after the
// largest one its cache already holds (docs/semantics.md §4). Within one call the order is free
// (a stateless forward may reverse or restart positions); padding tokens' positions are not
// checked (transformers fills them with a placeholder).
void CheckPositionsAdvance(const TokenBatch& batch, const BatchShape& shape,
                           std::span<const int64_t> positions, const KVStore& store);
// Records each sequence's largest kept position in the store, after its tokens were appended.
void RecordMaxPositions(const TokenBatch& batch, const BatchShape& shape,
                        std::span<const int64_t> positions, KVStore& store);

// Pointer to sequence b's keep flags, or null when the batch has none.
const uint8_t* KeepFlags(const TokenBatch& batch, const BatchShape& shape, int64_t sequence);

// y = x Wᵀ (+ b) for `rows` rows of x; w is [out, in] in its stored dtype, bias empty or [out].
void Project(const float* x, int64_t rows, const Weight& w, const Tensor& bias, float* y);

// The first slot of `kv` whose keep flag is set (0 when none is, or without flags): where a
// left-padded sequence's attention chunks start, as transformers' chunked mask counts them from
// the first non-padding token (docs/semantics.md §1, Llama 4). Reads the leading padding only.
int64_t FirstKeptSlot(const KVView& kv);

// The output's shape: [B, S, width] padded, [N, width] packed.
void ReshapeOutput(const BatchShape& shape, int64_t width, Tensor& out);

// Zeroes rows counts[b] … S-1 of each sequence in out [B][S][width] (nothing when packed).
void ZeroUnusedRows(const BatchShape& shape, int64_t width, float* out);

// The rotation of this call: `rope` itself (no copy, so a decode step allocates nothing), or
// for the scalings that choose per call (dynamic NTK, longrope) rope.ForCall(the largest
// position among the used rows), built in `storage`.
const RotaryEmbedding& RopeForCall(const RotaryEmbedding& rope, std::span<const int64_t> positions,
                                   const BatchShape& shape,
                                   std::optional<RotaryEmbedding>& storage);

// Rotates `heads` vectors per token (each `stride` floats apart within a token, starting at
// `offset`) by that token's position. data is [tokens][token_stride].
void RotateHeads(const RotaryEmbedding& rope, std::span<const int64_t> positions, float* data,
                 int64_t token_stride, int64_t offset, int64_t heads, int64_t stride);

// x <- x / sqrt(mean(x²) + eps) · weight, for each of `rows` rows of width weight.size()
// spaced `stride` apart (HF RMSNorm: statistics in fp32 or wider, then scale).
void RmsNormRows(float* x, int64_t rows, int64_t stride, const Tensor& weight, double eps);

// x <- x / sqrt(mean(x²) + eps) for `rows` contiguous rows of `width` (Llama 4's weightless
// L2Norm).
void UnweightedRmsNormRows(float* x, int64_t rows, int64_t width, double eps);

// Throws Error(kInvalidArgument) "<name>: expected shape [..], got [..]" when a weight is off.
void CheckWeight(const Tensor& tensor, const Shape& expected, const std::string& name);
// The same for a projection weight; an F8_E4M3 one must also carry its block scales.
void CheckWeight(const Weight& weight, const Shape& expected, const std::string& name);

}  // namespace attn::layers

#endif  // ATTN_LAYERS_LAYER_UTIL_H_
