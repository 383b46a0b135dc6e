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

}  // namespace attn

#endif  // ATTN_PARALLEL_H_
