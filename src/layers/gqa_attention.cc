// SPDX-License-Identifier: Apache-2.0
// One forward call of the GQA family (docs/semantics.md §1), top to bottom:
//   q = x Wqᵀ (+bq) -> [B,S,H,d];  k = x Wkᵀ (+bk), v = x Wvᵀ (+bv) -> [B,S,G,d]
//   q, k <- RMSNorm per head (Qwen3, Gemma 3) or per projection (OLMo 2), where the family has it
//   q, k <- RoPE(position), the sliding layers' own RoPE where the family has two (Gemma 3);
//           none on NoPE layers (Llama 4) and ALiBi models (Falcon's alibi)
//   q, k <- weightless L2 norm per head after RoPE (Llama 4's RoPE layers)
//   q    <- q · temperature(slot) on Llama 4's NoPE layers
//   cache[b] += (k, v);  o[b] = Attend(q[b], cache[b]) with head h reading kv head h/(H/G),
//                        soft-capped scores (Gemma 2), sink logits (GPT-OSS), ALiBi biases and
//                        chunked visibility (Llama 4) where configured
//   y = o Woᵀ (+bo), o flattened to [B,S,H·d]
#include "attn/gqa_attention.h"

#include <cmath>
#include <vector>

#include "attn/error.h"
#include "attn/kernels.h"
#include "layers/kv_store.h"
#include "layers/layer_util.h"

namespace attn {

GqaAttention::GqaAttention(const ModelConfig& config, int64_t layer, GqaWeights weights)
    : config_(layers::Validated(config)),
      window_(0),
      chunk_(0),
      rotates_(true),
      scale_(0.0f),
      rope_(config_.sliding_rope_differs && config_.WindowForLayer(layer) > 0 ? config_.sliding_rope
                                                                              : config_.rope),
      weights_(std::move(weights)) {
  ATTN_CHECK(config.kind == AttentionKind::kGqa, ErrorKind::kInvalidArgument,
             "GqaAttention needs a GQA-family config, got '" + config.model_type + "'");
  ATTN_CHECK(layer >= 0 && layer < config.num_layers, ErrorKind::kInvalidArgument,
             "layer " + std::to_string(layer) + " out of range (model has " +
                 std::to_string(config.num_layers) + " layers)");
  window_ = config.WindowForLayer(layer);
  chunk_ = config.ChunkForLayer(layer);
  rotates_ = config.RotatesLayer(layer);
  scale_ = static_cast<float>(SoftmaxScale(config));
  if (config.gqa.alibi) {
    // Falcon adds slope·position to q·k before multiplying by 1/sqrt(d) (eager and SDPA paths
    // alike), so in logit units the slope carries the softmax scale (docs/semantics.md §1).
    for (const double slope : AlibiSlopes(config.num_heads)) {
      alibi_slopes_.push_back(static_cast<float>(slope * SoftmaxScale(config)));
    }
  }
  const int64_t d = config.gqa.head_dim;
  const int64_t q_width = config.num_heads * d;
  const int64_t kv_width = config.gqa.num_kv_heads * d;
  const int64_t hidden = config.hidden_size;
  layers::CheckWeight(weights_.q_proj, {q_width, hidden}, "q_proj.weight");
  layers::CheckWeight(weights_.k_proj, {kv_width, hidden}, "k_proj.weight");
  layers::CheckWeight(weights_.v_proj, {kv_width, hidden}, "v_proj.weight");
  layers::CheckWeight(weights_.o_proj, {hidden, q_width}, "o_proj.weight");
  if (config.gqa.qkv_bias) {
    layers::CheckWeight(weights_.q_bias, {q_width}, "q_proj.bias");
    layers::CheckWeight(weights_.k_bias, {kv_width}, "k_proj.bias");
    layers::CheckWeight(weights_.v_bias, {kv_width}, "v_proj.bias");
  } else {
    ATTN_CHECK(
        weights_.q_bias.size() == 0 && weights_.k_bias.size() == 0 && weights_.v_bias.size() == 0,
        ErrorKind::kInvalidArgument, "q/k/v biases given but the config has none");
  }
  if (config.gqa.o_bias) {
    layers::CheckWeight(weights_.o_bias, {hidden}, "o_proj.bias");
  } else {
    ATTN_CHECK(weights_.o_bias.size() == 0, ErrorKind::kInvalidArgument,
               "o_proj.bias given but the config has none");
  }
  if (config.gqa.attention_sinks) {
    layers::CheckWeight(weights_.sinks, {config.num_heads}, "sinks");
  } else {
    ATTN_CHECK(weights_.sinks.size() == 0, ErrorKind::kInvalidArgument,
               "sinks given but the config has none");
  }
  switch (config.gqa.qk_norm) {
    case QkNorm::kPerHead:
      layers::CheckWeight(weights_.q_norm, {d}, "q_norm.weight");
      layers::CheckWeight(weights_.k_norm, {d}, "k_norm.weight");
      break;
    case QkNorm::kWholeProjection:
      layers::CheckWeight(weights_.q_norm, {q_width}, "q_norm.weight");
      layers::CheckWeight(weights_.k_norm, {kv_width}, "k_norm.weight");
      break;
    case QkNorm::kL2:  // weightless
    case QkNorm::kNone:
      ATTN_CHECK(weights_.q_norm.size() == 0 && weights_.k_norm.size() == 0,
                 ErrorKind::kInvalidArgument, "q/k norms given but the config has none");
      break;
  }
  if (config.gqa.qk_norm_unit_offset) {
    // Gemma's RMSNorm scales by (1 + w): folded into the weights once, so a call runs the same
    // RmsNormRows as every other family.
    for (float& value : weights_.q_norm.values()) value += 1.0f;
    for (float& value : weights_.k_norm.values()) value += 1.0f;
  }
}

std::unique_ptr<Cache> GqaAttention::NewCache(int64_t batch, int64_t capacity, DType dtype,
                                              MlaForm /*form: GQA has one cache layout*/) const {
  return std::make_unique<KVCache>(batch, capacity, config_.gqa.num_kv_heads, config_.gqa.head_dim,
                                   config_.gqa.head_dim, dtype);
}

void GqaAttention::StepInto(const TokenBatch& batch, Cache& cache, MlaForm /*form*/,
                            Tensor& out) const {
  auto* kv = dynamic_cast<KVCache*>(&cache);
  ATTN_CHECK(kv != nullptr, ErrorKind::kInvalidArgument,
             "cache does not match this layer (need a KVCache)");
  layers::ContiguousHeads store(*kv);
  StepWith(batch, store, out);
}

void GqaAttention::StepPagedInto(const TokenBatch& batch, PagedKVPool& pool,
                                 std::span<const PagedKVPool::SequenceId> ids, MlaForm /*form*/,
                                 Tensor& out) const {
  layers::PagedSequences store(pool, ids);
  StepWith(batch, store, out);
}

void GqaAttention::StepWithStore(const TokenBatch& batch, layers::KVStore& store, MlaForm /*form*/,
                                 Tensor& out) const {
  StepWith(batch, store, out);
}

void GqaAttention::StepWith(const TokenBatch& batch, layers::KVStore& store, Tensor& out) const {
  const layers::BatchShape shape = layers::CheckTokenBatch(batch, config_.hidden_size);
  const int64_t heads = config_.num_heads;
  const int64_t kv_heads = config_.gqa.num_kv_heads;
  const int64_t d = config_.gqa.head_dim;
  ATTN_CHECK(store.form() == CacheForm::kHeads && store.kv_heads() == kv_heads &&
                 store.key_dim() == d && store.value_dim() == d && store.sequences() == shape.batch,
             ErrorKind::kInvalidArgument,
             "cache does not match this layer (need per-head K/V for " +
                 std::to_string(shape.batch) + " sequences, " + std::to_string(kv_heads) +
                 " kv heads of " + std::to_string(d) + ")");
  int64_t* first_slots = layers::IndexScratch(layers::IndexSlot::kFirstSlots, shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b) first_slots[b] = store.length(b);
  const std::span<const int64_t> lengths(first_slots, static_cast<size_t>(shape.batch));
  const std::span<const int64_t> positions = layers::ResolvePositions(batch, shape, lengths);
  layers::CheckPositionsAdvance(batch, shape, positions, store);
  store.Reserve(shape.counts);

  const int64_t rows = shape.rows;
  const float* x = batch.hidden_states->data();
  float* q = layers::Scratch(layers::Slot::kQuery, rows * heads * d);
  float* k = layers::Scratch(layers::Slot::kKey, rows * kv_heads * d);
  float* v = layers::Scratch(layers::Slot::kValue, rows * kv_heads * d);
  layers::Project(x, rows, weights_.q_proj, weights_.q_bias, q);
  layers::Project(x, rows, weights_.k_proj, weights_.k_bias, k);
  layers::Project(x, rows, weights_.v_proj, weights_.v_bias, v);

  // q/k norms (docs/semantics.md §1): RMSNorm of every head's vector (Qwen3), or of each token's
  // whole projection (OLMo 2), before RoPE.
  const double eps = config_.gqa.qk_norm_eps;
  if (config_.gqa.qk_norm == QkNorm::kPerHead) {
    layers::RmsNormRows(q, rows * heads, d, weights_.q_norm, eps);
    layers::RmsNormRows(k, rows * kv_heads, d, weights_.k_norm, eps);
  } else if (config_.gqa.qk_norm == QkNorm::kWholeProjection) {
    layers::RmsNormRows(q, rows, heads * d, weights_.q_norm, eps);
    layers::RmsNormRows(k, rows, kv_heads * d, weights_.k_norm, eps);
  }

  if (rotates_) {
    std::optional<RotaryEmbedding> call_rope;
    const RotaryEmbedding& rope = layers::RopeForCall(rope_, positions, shape, call_rope);
    layers::RotateHeads(rope, positions, q, heads * d, 0, heads, d);
    layers::RotateHeads(rope, positions, k, kv_heads * d, 0, kv_heads, d);
    if (config_.gqa.qk_norm == QkNorm::kL2) {
      // Llama 4's L2Norm: x·rsqrt(mean(x²) + eps) per head, no weight, after RoPE.
      layers::UnweightedRmsNormRows(q, rows * heads, d, eps);
      layers::UnweightedRmsNormRows(k, rows * kv_heads, d, eps);
    }
  } else if (config_.temperature.floor_scale > 0.0) {
    // Llama 4's temperature tuning on NoPE layers: the query at cache slot p is multiplied by
    // ln(⌊(p + 1) / floor_scale⌋ + 1)·attn_scale + 1 (docs/semantics.md §1).
    for (int64_t b = 0; b < shape.batch; ++b) {
      for (int64_t s = 0; s < shape.counts[static_cast<size_t>(b)]; ++s) {
        const auto slot = static_cast<double>(lengths[static_cast<size_t>(b)] + s);
        const double factor =
            std::log(std::floor((slot + 1.0) / config_.temperature.floor_scale) + 1.0) *
                config_.temperature.attn_scale +
            1.0;
        float* row = q + (shape.start(b) + s) * heads * d;
        for (int64_t i = 0; i < heads * d; ++i) row[i] = static_cast<float>(row[i] * factor);
      }
    }
  }

  float* heads_out = layers::Scratch(layers::Slot::kHeadsOut, rows * heads * d);
  // Every sequence's new tokens go into the cache first, then one kernel call attends for the
  // whole batch (ragged lengths and all), so a decode step keeps every thread busy.
  std::vector<AttentionProblem>& problems = layers::BatchProblems(shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b) {
    const int64_t first_slot = lengths[static_cast<size_t>(b)];
    const int64_t token0 = shape.start(b);
    const int64_t count = shape.counts[static_cast<size_t>(b)];
    store.AppendHeads(b, count, k + token0 * kv_heads * d, v + token0 * kv_heads * d,
                      layers::KeepFlags(batch, shape, b));
    AttentionProblem& problem = problems[static_cast<size_t>(b)];
    problem = AttentionProblem{};
    problem.queries = {q + token0 * heads * d, count, heads, d};
    problem.kv = store.View(b);
    problem.visibility = {first_slot, window_};
    problem.visibility.chunk = chunk_;
    if (chunk_ > 0) problem.visibility.chunk_origin = layers::FirstKeptSlot(problem.kv);
    problem.alibi_slopes = alibi_slopes_.empty() ? nullptr : alibi_slopes_.data();
    problem.scale = scale_;
    problem.sinks = weights_.sinks.size() > 0 ? weights_.sinks.data() : nullptr;
    problem.softcap = static_cast<float>(config_.attn_logit_softcapping);
    problem.out = heads_out + token0 * heads * d;
  }
  store.Attend(problems.data(), shape.batch);
  layers::RecordMaxPositions(batch, shape, positions, store);

  layers::ReshapeOutput(shape, config_.hidden_size, out);
  layers::Project(heads_out, rows, weights_.o_proj, weights_.o_bias, out.data());
  layers::ZeroUnusedRows(shape, config_.hidden_size, out.data());
}

}  // namespace attn
