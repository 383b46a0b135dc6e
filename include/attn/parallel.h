// SPDX-License-Identifier: Apache-2.0
// One attention layer split across the ranks of a Communicator (docs/distributed.md):
//   tensor parallel (tp)   query heads (and their kv heads) split across ranks, o_proj split by
//                          input columns, partial outputs summed by an all-reduce. MLA: query
//                          heads split, the latent (kv_a_proj_with_mqa, its norm, the cache)
//                          replicated on every rank.
//   data parallel (dp)     whole weights on every rank, the batch's sequences (and their caches)
//                          split across ranks, outputs gathered.
//   context parallel (cp)  whole weights on every rank, each sequence's cached keys split
//                          across ranks; each rank attends every query to its own keys and the
//                          partial softmax states (m, l, O) are merged exactly across ranks.
// Each split layer is an AttentionLayer: Step, PrefillThenDecode and its caches work as for one
// process, and every rank's output is the whole [B, S, D] output, equal to one process's up to
// fp32 rounding.
#ifndef ATTN_PARALLEL_H_
#define ATTN_PARALLEL_H_

#include <cstdint>
#include <memory>
#include <string>

#include "attn/checkpoint.h"
#include "attn/communicator.h"
#include "attn/config.h"
#include "attn/layer.h"
#include "attn/layer_weights.h"

namespace attn {

enum class ParallelMode { kTensor, kData, kContext };
// "tp" | "dp" | "cp"; anything else throws Error(kInvalidArgument).
ParallelMode ParallelModeFromString(const std::string& name);
const char* ParallelModeName(ParallelMode mode);

// Which part of the work a process does: rank 0 … world - 1.
struct Shard {
  int rank = 0;
  int world = 1;
};

// The heads a rank holds under tensor parallelism. Query heads are split evenly and in order;
// GQA kv heads follow their query heads: with G >= world each rank holds G / world of them,
// with G < world each kv head is replicated on the world / G ranks whose query heads read it (as
// Megatron does). MLA has no kv heads to split (first_kv_head = kv_heads = 0): every rank keeps
// the whole latent.
struct HeadShard {
  int64_t first_head = 0;
  int64_t heads = 0;
  int64_t first_kv_head = 0;
  int64_t kv_heads = 0;
};
// Throws Error(kInvalidArgument) naming the numbers when world does not divide H, or (GQA) when
// neither G nor world divides the other; Error(kUnsupported) for what cannot be split by heads:
// a q/k norm over the whole projection (OLMo 2: its mean runs over every head) and ALiBi
// (slopes follow the global head index).
HeadShard TensorParallelHeads(const ModelConfig& config, Shard shard);
// The config of one rank's part: num_heads = heads and, GQA, gqa.num_kv_heads = kv_heads; every
// other value (hidden size, head widths, RoPE, softmax scale) is the model's own.
ModelConfig TensorParallelConfig(const ModelConfig& config, Shard shard);

// A hash of every field of the config: what the split layers compare across ranks at
// construction (CheckRanksAgree), so ranks that read different configs fail at once with
// Error(kCommunication) instead of computing a wrong sum.
int64_t ModelConfigHash(const ModelConfig& config);

// This rank's slice of one layer's weights (short names, consumed), under tensor parallelism
// (docs/distributed.md): the result builds with BuildAttentionLayer(TensorParallelConfig(config,
// shard), …). GQA: q_proj rows (and bias) of the rank's query heads, k/v_proj rows (and biases)
// of its kv heads, sinks of its heads, per-head q/k norms whole, o_proj input columns of its
// heads; o_proj.bias kept on rank 0 and zero elsewhere, so the all-reduce adds it once. MLA:
// q_proj / q_b_proj rows and kv_b_proj rows (per head dn rows of W_UK then dv of W_UV) of its
// heads, o_proj columns of its heads; q_a_proj, kv_a_proj_with_mqa and their norms whole. Row
// slices are views (no copy), column slices copies in the stored dtype. Throws what
// TensorParallelHeads throws, Error(kInvalidArgument) naming a misshapen tensor, and
// Error(kUnsupported) naming the tensor, the cut and the block size when an fp8 weight would be
// cut inside a scale block.
NamedWeights ShardAttentionWeights(const ModelConfig& config, NamedWeights weights, Shard shard);

// ShardAttentionWeights of LoadHfAttentionWeights(checkpoint, config, layer), touching only this
// rank's slice: row slices stay views of the mapped file and the finiteness check reads the
// slice alone, so the pages of other ranks' rows are never read; o_proj's column block is copied
// a band of rows at a time, each band's mapped pages released once copied. A rank's resident
// weights, at peak and after, are about 1/world of the layer's (plus the replicated MLA latent
// projections). Falcon's fused query_key_value is loaded whole as fp32, then sliced; Phi-3's
// stacked qkv_proj is sliced as views. Megatron checkpoints: load whole, then
// ShardAttentionWeights.
NamedWeights LoadAttentionWeightShard(const Checkpoint& checkpoint, const ModelConfig& config,
                                      int64_t layer, Shard shard);

// The tensor-parallel layer of rank comm->rank() of comm->world(): `shard_weights` (from
// ShardAttentionWeights or LoadAttentionWeightShard for that shard) build the rank's local layer;
// each step runs it and sums the output rows over the ranks (AllReduceSum), so every rank
// returns the whole output. config() is the whole model's; caches and page pools hold the
// rank's heads only (MLA: the whole latent, replicated). Every rank must construct it together:
// ranks whose configs differ throw Error(kCommunication) on every rank, and a rank whose weights
// fail to build makes every other rank throw Error(kCommunication) naming it.
std::unique_ptr<AttentionLayer> MakeTensorParallelLayer(const ModelConfig& config, int64_t layer,
                                                        NamedWeights shard_weights,
                                                        std::shared_ptr<Communicator> comm);

// The sequences a rank takes under data parallelism: contiguous blocks in rank order, the
// remainder of batch / world spread over the first ranks (rank r gets batch / world sequences,
// plus one when r < batch % world). A rank may get none.
struct SequenceRange {
  int64_t first = 0;
  int64_t count = 0;
};
SequenceRange DataParallelSequences(int64_t batch, Shard shard);

// The data-parallel layer: every rank holds the whole `layer` and runs its own block of the
// batch's sequences (DataParallelSequences), and the output rows are gathered so that every
// rank returns the whole [B, S, D] (or packed [N, D]) output. NewCache(batch, …) stores the
// rank's sequences only (its lengths() are the whole batch's, kept alike on every rank). An error
// in one rank's step makes every other rank throw Error(kCommunication) naming it. Paged pools are
// per rank: StepPagedInto throws Error(kUnsupported).
std::unique_ptr<AttentionLayer> MakeDataParallelLayer(std::unique_ptr<AttentionLayer> layer,
                                                      std::shared_ptr<Communicator> comm);

}  // namespace attn

#endif  // ATTN_PARALLEL_H_
