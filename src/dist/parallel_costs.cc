// SPDX-License-Identifier: Apache-2.0
// The scaling model behind `attn info --parallel` (formulas in parallel_costs.h and
// docs/distributed.md "Modes").
#include "attn/parallel_costs.h"

#include <algorithm>
#include <string>

#include "attn/error.h"
#include "attn/layer_weights.h"
#include "attn/model_stats.h"

namespace attn {
namespace {

double D(int64_t value) { return static_cast<double>(value); }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

constexpr double kFloatBytes = 4.0;  // collectives move fp32 (communicator.h)

// Mean over the layers of one decoded token's FLOPs, with at most `keys_cap` of the visible keys
// on this rank (cp: its ⌈T/W⌉ slice; otherwise T). A windowed layer sees min(T, window) keys;
// the rank's slice of them is at most its slice of the sequence.
TokenFlops MeanDecodeFlops(const ModelConfig& config, CacheForm form, int64_t context,
                           int64_t keys_cap) {
  TokenFlops sum;
  for (int64_t layer = 0; layer < config.num_layers; ++layer) {
    const TokenFlops all_keys = DecodeFlopsPerToken(config, form, context, layer);
    // Attention FLOPs are linear in the keys: one key's worth times the keys this rank reads.
    const double per_key = DecodeFlopsPerToken(config, form, 1, layer).attention;
    const double visible = all_keys.attention / per_key;
    sum.projections += all_keys.projections;
    sum.attention += per_key * std::min(visible, D(keys_cap));
  }
  const double layers = D(config.num_layers);
  return {sum.projections / layers, sum.attention / layers};
}

// Width of the per-head output the cp merge carries: d for the GQA family, rk for absorbed MLA
// (the merge runs on the latent output, before W_UV).
int64_t MergedValueWidth(const ModelConfig& config) {
  return config.kind == AttentionKind::kMla ? config.mla.kv_lora_rank : config.gqa.head_dim;
}

}  // namespace

double ParallelCosts::DecodeMemorySeconds(double dram_gbytes_per_s) const {
  return memory_bytes() / (dram_gbytes_per_s * 1e9);
}

double ParallelCosts::DecodeNetworkSeconds(double network_gbytes_per_s) const {
  return comm_bytes_decode_step / (network_gbytes_per_s * 1e9);
}

double ParallelCosts::DecodeStepSeconds(double dram_gbytes_per_s,
                                        double network_gbytes_per_s) const {
  return DecodeMemorySeconds(dram_gbytes_per_s) + DecodeNetworkSeconds(network_gbytes_per_s);
}

double AttentionWeightBytes(const ModelConfig& config, DType weight_dtype) {
  const bool fp8 = weight_dtype == DType::kF8E4M3;
  double bytes = 0.0;
  for (const WeightSpec& spec : AttentionWeightSpecs(config)) {
    const double values = D(NumElements(spec.shape));
    if (spec.kind != WeightSpec::Kind::kMatrix) {
      bytes += values * kFloatBytes;  // layer_weights.cc keeps vectors in fp32
      continue;
    }
    bytes += values * D(static_cast<int64_t>(DTypeSize(weight_dtype)));
    if (fp8) {
      bytes += D(CeilDiv(spec.shape[0], config.quantization.block_rows)) *
               D(CeilDiv(spec.shape[1], config.quantization.block_cols)) * kFloatBytes;
    }
  }
  return bytes;
}

ParallelCosts EstimateParallelCosts(const ModelConfig& config, ParallelMode mode, int world,
                                    int64_t batch, int64_t context, DType weight_dtype,
                                    DType cache_dtype) {
  ValidateConfig(config);
  Check(world >= 1, ErrorKind::kInvalidArgument,
        "world (" + std::to_string(world) + ") must be >= 1 rank");
  Check(batch >= 1, ErrorKind::kInvalidArgument,
        "batch (" + std::to_string(batch) + ") must be >= 1 sequence");
  Check(context >= 1, ErrorKind::kInvalidArgument,
        "context (" + std::to_string(context) + ") must be >= 1 token");
  Check(weight_dtype == DType::kF32 || weight_dtype == DType::kF16 ||
            weight_dtype == DType::kBF16 || weight_dtype == DType::kF8E4M3,
        ErrorKind::kInvalidArgument,
        std::string("weights are held as f32, f16, bf16 or fp8, not ") + DTypeName(weight_dtype));
  Check(
      cache_dtype == DType::kF32 || cache_dtype == DType::kF16 || cache_dtype == DType::kBF16,
      ErrorKind::kInvalidArgument,
      std::string("the cost model's KV cache is f32, f16 or bf16, not ") + DTypeName(cache_dtype));

  ParallelCosts costs;
  costs.mode = mode;
  costs.world = world;
  costs.batch = batch;
  costs.context = context;
  costs.form = config.kind == AttentionKind::kMla ? CacheForm::kLatent : CacheForm::kHeads;
  costs.sequences_per_rank = batch;
  costs.tokens_per_rank = context;

  const double w = D(world);
  const double hidden = D(config.hidden_size);
  // An all-reduce of n floats: all-gather + local sum (received), and the ring reference.
  auto gather_reduce = [&](double n) { return (w - 1.0) * n * kFloatBytes; };
  auto ring_reduce = [&](double n) { return 2.0 * (w - 1.0) / w * n * kFloatBytes; };

  // The config whose shapes one rank holds: tp shrinks the heads, dp and cp keep the model.
  ModelConfig local = config;
  TokenFlops per_token;
  int64_t rows = batch;  // query rows a rank computes per decode step
  switch (mode) {
    case ParallelMode::kTensor: {
      // Every rank's part has the same shapes (heads split evenly; kv heads G/W each, or one
      // replicated), so rank 0 stands for all. Throws for a world that cannot split the heads.
      local = TensorParallelConfig(config, Shard{0, world});
      per_token = MeanDecodeFlops(local, costs.form, context, context);
      // One all-reduce of the partial o_proj outputs: rows × D floats.
      costs.comm_bytes_decode_step = gather_reduce(D(batch) * hidden);
      costs.comm_bytes_decode_step_ring = ring_reduce(D(batch) * hidden);
      costs.comm_bytes_prefill_token = gather_reduce(hidden);
      costs.comm_bytes_prefill_token_ring = ring_reduce(hidden);
      break;
    }
    case ParallelMode::kData: {
      costs.sequences_per_rank = CeilDiv(batch, world);
      rows = costs.sequences_per_rank;
      per_token = MeanDecodeFlops(config, costs.form, context, context);
      // The output all-gather: a rank receives every row but its own. The rank with the fewest
      // sequences (⌊B/W⌋) receives the most.
      const double gathered = (D(batch) - D(batch / world)) * hidden * kFloatBytes;
      costs.comm_bytes_decode_step = gathered;
      costs.comm_bytes_decode_step_ring = gathered;
      // A prompt is prefilled whole on its own rank; only its output rows are gathered, (W-1)/W
      // of them per rank on average over prompts spread evenly.
      costs.comm_bytes_prefill_token = (w - 1.0) / w * hidden * kFloatBytes;
      costs.comm_bytes_prefill_token_ring = costs.comm_bytes_prefill_token;
      break;
    }
    case ParallelMode::kContext: {
      costs.tokens_per_rank = CeilDiv(context, world);
      per_token = MeanDecodeFlops(config, costs.form, context, costs.tokens_per_rank);
      // The exact merge of the partial softmax states: AllReduceMax over rows·H running maxima,
      // AllReduceSum over rows·H·(Dv + 1) rescaled outputs and denominators.
      const double per_row = D(config.num_heads) * D(MergedValueWidth(config) + 2);
      costs.comm_bytes_decode_step = gather_reduce(D(batch) * per_row);
      costs.comm_bytes_decode_step_ring = ring_reduce(D(batch) * per_row);
      costs.comm_bytes_prefill_token = gather_reduce(per_row);
      costs.comm_bytes_prefill_token_ring = ring_reduce(per_row);
      break;
    }
  }
  costs.weight_bytes = AttentionWeightBytes(local, weight_dtype);
  costs.cache_bytes_per_token =
      D(static_cast<int64_t>(CacheBytesPerToken(local, costs.form, cache_dtype)));
  costs.cache_bytes =
      D(costs.sequences_per_rank) * D(costs.tokens_per_rank) * costs.cache_bytes_per_token;
  costs.decode_projection_flops = D(rows) * per_token.projections;
  costs.decode_attention_flops = D(rows) * per_token.attention;
  return costs;
}

}  // namespace attn
