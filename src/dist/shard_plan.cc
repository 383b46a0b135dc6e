// SPDX-License-Identifier: Apache-2.0
// How a layer's heads are split across ranks under tensor parallelism (docs/distributed.md).
// The loader, the split layers and the cost model (`attn info --parallel`) all ask here, so the
// bytes the model reports are the bytes the code holds.
#include <string>

#include "attn/error.h"
#include "attn/parallel.h"

namespace attn {

ParallelMode ParallelModeFromString(const std::string& name) {
  if (name == "tp") return ParallelMode::kTensor;
  if (name == "dp") return ParallelMode::kData;
  if (name == "cp") return ParallelMode::kContext;
  throw Error(ErrorKind::kInvalidArgument, "--parallel: expected tp, dp or cp, got '" + name + "'");
}

const char* ParallelModeName(ParallelMode mode) {
  switch (mode) {
    case ParallelMode::kTensor:
      return "tp";
    case ParallelMode::kData:
      return "dp";
    case ParallelMode::kContext:
      return "cp";
  }
  return "?";
}

HeadShard TensorParallelHeads(const ModelConfig& config, Shard shard) {
  const int64_t world = shard.world;
  const int64_t rank = shard.rank;
  Check(world >= 1 && rank >= 0 && rank < world, ErrorKind::kInvalidArgument,
        "shard: rank " + std::to_string(rank) + " of world " + std::to_string(world) +
            " is not a rank of that world");
  const int64_t heads = config.num_heads;
  Check(heads % world == 0, ErrorKind::kInvalidArgument,
        "tensor parallel: " + std::to_string(world) + " ranks do not divide " +
            std::to_string(heads) + " query heads");
  HeadShard out;
  out.heads = heads / world;
  out.first_head = rank * out.heads;
  if (config.kind == AttentionKind::kMla) return out;  // the latent is replicated

  Check(config.gqa.qk_norm != QkNorm::kWholeProjection, ErrorKind::kUnsupported,
        "tensor parallel: '" + config.model_type +
            "' normalises q and k over the whole projection (every head at once), which a split "
            "by heads cannot compute; use --parallel dp or cp");
  Check(!config.gqa.alibi, ErrorKind::kUnsupported,
        "tensor parallel: ALiBi slopes follow the global head index; use --parallel dp or cp");
  const int64_t kv_heads = config.gqa.num_kv_heads;
  if (kv_heads >= world) {
    Check(kv_heads % world == 0, ErrorKind::kInvalidArgument,
          "tensor parallel: " + std::to_string(world) + " ranks do not divide " +
              std::to_string(kv_heads) + " kv heads");
    out.kv_heads = kv_heads / world;
    out.first_kv_head = rank * out.kv_heads;
  } else {
    Check(world % kv_heads == 0, ErrorKind::kInvalidArgument,
          "tensor parallel: " + std::to_string(kv_heads) +
              " kv heads cannot be replicated "
              "evenly over " +
              std::to_string(world) + " ranks (world must be a multiple of G)");
    // world / G ranks share each kv head; their query heads are exactly the ones reading it.
    out.kv_heads = 1;
    out.first_kv_head = rank / (world / kv_heads);
  }
  return out;
}

ModelConfig TensorParallelConfig(const ModelConfig& config, Shard shard) {
  const HeadShard heads = TensorParallelHeads(config, shard);
  ModelConfig local = config;
  local.num_heads = heads.heads;
  if (config.kind == AttentionKind::kGqa) local.gqa.num_kv_heads = heads.kv_heads;
  return local;
}

}  // namespace attn
