// SPDX-License-Identifier: Apache-2.0
// The scaling model of docs/distributed.md: what one rank of a split attention layer holds,
// moves and computes, for tensor-, data- and context-parallel attention (attn/parallel.h).
// `attn info --parallel` prints it. The numbers come from the formulas the code itself uses:
// a tensor-parallel rank's weights are AttentionWeightSpecs of TensorParallelConfig (the tensors
// its loader reads), cache bytes per token are CacheBytesPerToken (kv_cache.h), FLOPs are
// DecodeFlopsPerToken (model_stats.h).
//
// All numbers are for one layer on the most loaded rank (the one that sets the step time); a
// stack of L layers holds and moves L times as much. Decode runs in the serving form: K/V per
// head for the GQA family, the latent (absorbed) cache for MLA.
#ifndef ATTN_PARALLEL_COSTS_H_
#define ATTN_PARALLEL_COSTS_H_

#include <cstdint>

#include "attn/config.h"
#include "attn/dtype.h"
#include "attn/kv_cache.h"
#include "attn/parallel.h"

namespace attn {

struct ParallelCosts {
  ParallelMode mode = ParallelMode::kTensor;
  int world = 1;
  int64_t batch = 0;    // B sequences in the step
  int64_t context = 0;  // T tokens cached per sequence
  CacheForm form = CacheForm::kHeads;

  // What the most loaded rank holds: dp ⌈B/W⌉ sequences, cp ⌈T/W⌉ tokens of each; tp all of
  // both (its cache is split by heads instead, or not at all for MLA).
  int64_t sequences_per_rank = 0;
  int64_t tokens_per_rank = 0;

  // Memory per rank: projection matrices in the weight dtype (fp8 with its fp32 block scales),
  // biases and norm scales in fp32 as the layer keeps them; the KV cache.
  double weight_bytes = 0.0;
  double cache_bytes_per_token = 0.0;  // one token of one sequence, as this rank caches it
  double cache_bytes = 0.0;            // sequences_per_rank × tokens_per_rank × per token

  // Bytes one rank receives, per decode step (one token of each of the B sequences) and per
  // token of prefill, as our Communicator implements the collectives: an all-reduce of n floats
  // is an all-gather and a local sum, (W-1)·n·4 bytes in; an all-gather of the other ranks'
  // rows is those rows. `*_ring` is what a ring all-reduce (2·(W-1)/W·n·4) would move, the
  // reference figure of NCCL and most MPI libraries; dp has no all-reduce and the same number.
  double comm_bytes_decode_step = 0.0;
  double comm_bytes_decode_step_ring = 0.0;
  double comm_bytes_prefill_token = 0.0;
  double comm_bytes_prefill_token_ring = 0.0;

  // FLOPs one rank does per decode step: projections and attention of its rows (the mean over
  // the layers where sliding windows make layers differ).
  double decode_projection_flops = 0.0;
  double decode_attention_flops = 0.0;
  double decode_flops() const { return decode_projection_flops + decode_attention_flops; }

  // What the rank holds; decode reads all of it once per step (memory-bound at serving batch
  // sizes: docs/distributed.md "The scaling model", step bound).
  double memory_bytes() const { return weight_bytes + cache_bytes; }

  // A lower bound on one decode step of this layer: the bytes read at `dram_gbytes_per_s` plus
  // the bytes received at `network_gbytes_per_s`. Added, not overlapped: the collective waits
  // for the rank's partial result and the next layer waits for the collective.
  double DecodeMemorySeconds(double dram_gbytes_per_s) const;
  double DecodeNetworkSeconds(double network_gbytes_per_s) const;
  double DecodeStepSeconds(double dram_gbytes_per_s, double network_gbytes_per_s) const;
};

// One layer's costs when `world` ranks split `batch` sequences of `context` cached tokens in
// `mode`. Weight dtype: f32, f16, bf16 or F8_E4M3 (block size from config.quantization); cache
// dtype: f32, f16 or bf16. Throws Error(kInvalidArgument) for world, batch or context < 1 or
// another dtype, and under tp whatever TensorParallelHeads throws for a world that cannot split
// the model's heads.
ParallelCosts EstimateParallelCosts(const ModelConfig& config, ParallelMode mode, int world,
                                    int64_t batch, int64_t context, DType weight_dtype,
                                    DType cache_dtype);

// Bytes one rank holds of these weights: Σ over `config`'s AttentionWeightSpecs of matrices at
// DTypeSize(weight_dtype) (plus ⌈rows/br⌉·⌈cols/bc⌉ fp32 block scales for F8_E4M3) and of
// biases, norm scales and sinks at 4 bytes. For a tensor-parallel rank pass
// TensorParallelConfig(config, shard).
double AttentionWeightBytes(const ModelConfig& config, DType weight_dtype);

}  // namespace attn

#endif  // ATTN_PARALLEL_COSTS_H_
