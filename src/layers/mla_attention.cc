// SPDX-License-Identifier: Apache-2.0
// One forward call of multi-head latent attention (docs/semantics.md §3), top to bottom:
//   query:  cq = RMSNorm(x Wq_aᵀ); q = cq Wq_bᵀ   (or q = x Wqᵀ)  -> [B,S,H, dn | dr]
//           q_pe <- RoPE(position)
//   latent: x Wkv_aᵀ -> [c (rk) | k_pe (dr)];  c <- RMSNorm(c);  k_pe <- RoPE(position)
//   then one of three forms, all computing
//     score[h,s,t] = scale·(q_nope[h,s]·k_nope[h,t] + q_pe[h,s]·k_pe[t]),
//     o[h,s] = Σ_t softmax(score) v[h,t],   with [k_nope | v][h,t] = c[t] Wkv_b[h]ᵀ
//   naive:      cache per-head K = [k_nope | k_pe], V = v; attend with G = H.
//   absorbed:   cache rows [c | k_pe]; q'[h] = [q_nope[h] W_UK[h] | q_pe[h]] against those rows
//               (MQA, Dk = rk+dr, values = c); o[h] = W_UV[h] · (Σ_t p c[t]).
//   decompress: cache rows [c | k_pe]; per call rebuild K, V for all cached tokens, then naive.
//   y = o Woᵀ, o flattened to [B,S,H·dv]
#include "attn/mla_attention.h"

#include <algorithm>
#include <vector>

#include "attn/error.h"
#include "attn/kernels.h"
#include "attn/threads.h"
#include "layers/kv_store.h"
#include "layers/layer_util.h"

// Sanitizer builds skip the clones: ifunc resolvers run before the sanitizer runtime starts.
#if defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define ATTN_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define ATTN_VECTOR_CLONES
#endif

namespace attn {

// One call's projections, in per-thread scratch (layers::Scratch).
struct MlaAttention::Projected {
  layers::BatchShape shape;
  const TokenBatch* batch;
  float* q;       // [B·S][H][dn+dr], q_pe rotated
  float* latent;  // [B·S][rk+dr] = [normalised c | rotated k_pe]
  const uint8_t* keep(int64_t sequence) const { return layers::KeepFlags(*batch, shape, sequence); }
};

namespace {

// W_UK[h] = rows [h·(dn+dv), h·(dn+dv)+dn) of Wkv_b, each rk wide:
//   absorbed[j] = Σ_i q_nope[i] · W_UK[h][i][j]   (so q_nope·k_nope = absorbed·c)
// Both helpers stream a slice of Wkv_b per head and token; they are compiled for AVX-512 and for
// baseline x86-64, and the loader picks the clone this CPU runs (GCC target_clones).
ATTN_VECTOR_CLONES
void AbsorbQuery(const float* q_nope, const float* w_uk, int64_t nope_dim, int64_t latent_dim,
                 float* absorbed) {
  std::fill(absorbed, absorbed + latent_dim, 0.0f);
  for (int64_t i = 0; i < nope_dim; ++i) {
    const float qi = q_nope[i];
    const float* w_row = w_uk + i * latent_dim;
#pragma omp simd
    for (int64_t j = 0; j < latent_dim; ++j) absorbed[j] += qi * w_row[j];
  }
}

// W_UV[h] = rows [h·(dn+dv)+dn, (h+1)·(dn+dv)) of Wkv_b:
//   out[m] = Σ_j W_UV[h][m][j] · latent_out[j]   (Σ_t p v[h,t] = W_UV[h] Σ_t p c[t])
ATTN_VECTOR_CLONES
void ExpandLatentOutput(const float* latent_out, const float* w_uv, int64_t value_dim,
                        int64_t latent_dim, float* out) {
  for (int64_t m = 0; m < value_dim; ++m) {
    const float* w_row = w_uv + m * latent_dim;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < latent_dim; ++j) dot += w_row[j] * latent_out[j];
    out[m] = dot;
  }
}

}  // namespace

MlaFormCosts EstimateMlaFormCosts(const ModelConfig& config, int64_t queries, int64_t keys) {
  const double s = static_cast<double>(queries);
  const double t = static_cast<double>(keys);
  const double h = static_cast<double>(config.num_heads);
  const double rk = static_cast<double>(config.mla.kv_lora_rank);
  const double dn = static_cast<double>(config.mla.qk_nope_head_dim);
  const double dr = static_cast<double>(config.mla.qk_rope_head_dim);
  const double dv = static_cast<double>(config.mla.v_head_dim);
  MlaFormCosts costs;
  costs.decompress_flops = 2 * t * rk * h * (dn + dv) + 2 * s * t * h * (dn + dr + dv);
  costs.absorbed_flops = 2 * s * h * dn * rk + 2 * s * h * rk * dv + 2 * s * t * h * (rk + dr + rk);
  return costs;
}

bool AutoPrefersDecompress(const ModelConfig& config, int64_t queries, int64_t keys) {
  const MlaFormCosts costs = EstimateMlaFormCosts(config, queries, keys);
  return costs.decompress_flops < costs.absorbed_flops;
}

MlaAttention::MlaAttention(const ModelConfig& config, MlaWeights weights)
    : config_(layers::Validated(config)),
      scale_(static_cast<float>(SoftmaxScale(config))),
      rope_(config_.rope),
      weights_(std::move(weights)) {
  ATTN_CHECK(config.kind == AttentionKind::kMla, ErrorKind::kInvalidArgument,
             "MlaAttention needs an MLA config, got '" + config.model_type + "'");
  const MlaDims& m = config.mla;
  const int64_t h = config.num_heads;
  const int64_t hidden = config.hidden_size;
  const int64_t q_width = h * (m.qk_nope_head_dim + m.qk_rope_head_dim);
  if (m.q_lora_rank > 0) {
    layers::CheckWeight(weights_.q_a_proj, {m.q_lora_rank, hidden}, "q_a_proj.weight");
    layers::CheckWeight(weights_.q_a_layernorm, {m.q_lora_rank}, "q_a_layernorm.weight");
    layers::CheckWeight(weights_.q_b_proj, {q_width, m.q_lora_rank}, "q_b_proj.weight");
  } else {
    layers::CheckWeight(weights_.q_proj, {q_width, hidden}, "q_proj.weight");
  }
  layers::CheckWeight(weights_.kv_a_proj_with_mqa, {m.kv_lora_rank + m.qk_rope_head_dim, hidden},
                      "kv_a_proj_with_mqa.weight");
  layers::CheckWeight(weights_.kv_a_layernorm, {m.kv_lora_rank}, "kv_a_layernorm.weight");
  layers::CheckWeight(weights_.kv_b_proj, {h * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank},
                      "kv_b_proj.weight");
  layers::CheckWeight(weights_.o_proj, {hidden, h * m.v_head_dim}, "o_proj.weight");
}

std::unique_ptr<Cache> MlaAttention::NewCache(int64_t batch, int64_t capacity, DType dtype,
                                              MlaForm form) const {
  const MlaDims& m = config_.mla;
  if (form == MlaForm::kNaive) {
    return std::make_unique<KVCache>(batch, capacity, config_.num_heads,
                                     m.qk_nope_head_dim + m.qk_rope_head_dim, m.v_head_dim, dtype);
  }
  return std::make_unique<LatentKVCache>(batch, capacity, m.kv_lora_rank, m.qk_rope_head_dim,
                                         dtype);
}

MlaAttention::Projected MlaAttention::Project(const TokenBatch& batch,
                                              const layers::BatchShape& shape,
                                              std::span<const int64_t> positions) const {
  const MlaDims& m = config_.mla;
  const int64_t h = config_.num_heads;
  const int64_t qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim;
  const int64_t row_dim = m.kv_lora_rank + m.qk_rope_head_dim;
  Projected p;
  p.shape = shape;
  p.batch = &batch;
  const int64_t rows = shape.rows;
  const float* x = batch.hidden_states->data();
  const Tensor no_bias;

  p.q = layers::Scratch(layers::Slot::kQuery, rows * h * qk_dim);
  if (m.q_lora_rank > 0) {
    float* cq = layers::Scratch(layers::Slot::kQueryLatent, rows * m.q_lora_rank);
    layers::Project(x, rows, weights_.q_a_proj, no_bias, cq);
    layers::RmsNormRows(cq, rows, m.q_lora_rank, weights_.q_a_layernorm, m.rms_norm_eps);
    layers::Project(cq, rows, weights_.q_b_proj, no_bias, p.q);
  } else {
    layers::Project(x, rows, weights_.q_proj, no_bias, p.q);
  }
  std::optional<RotaryEmbedding> call_rope;
  const RotaryEmbedding& rope = layers::RopeForCall(rope_, positions, shape, call_rope);
  layers::RotateHeads(rope, positions, p.q, h * qk_dim, m.qk_nope_head_dim, h, qk_dim);

  p.latent = layers::Scratch(layers::Slot::kLatent, rows * row_dim);
  layers::Project(x, rows, weights_.kv_a_proj_with_mqa, no_bias, p.latent);
  layers::RmsNormRows(p.latent, rows, row_dim, weights_.kv_a_layernorm, m.rms_norm_eps);
  layers::RotateHeads(rope, positions, p.latent, row_dim, m.kv_lora_rank, 1, row_dim);
  return p;
}

void MlaAttention::StepInto(const TokenBatch& batch, Cache& cache, MlaForm form,
                            Tensor& out) const {
  if (form == MlaForm::kNaive) {
    auto* heads_cache = dynamic_cast<KVCache*>(&cache);
    ATTN_CHECK(heads_cache != nullptr, ErrorKind::kInvalidArgument,
               "the naive MLA form needs the per-head cache from NewCache(..., MlaForm::kNaive)");
    layers::ContiguousHeads store(*heads_cache);
    StepWith(batch, store, form, out);
    return;
  }
  auto* latent_cache = dynamic_cast<LatentKVCache*>(&cache);
  ATTN_CHECK(latent_cache != nullptr, ErrorKind::kInvalidArgument,
             std::string("the ") + MlaFormName(form) +
                 " MLA form needs the latent cache from NewCache(..., MlaForm::k" +
                 (form == MlaForm::kAuto ? "Auto" : "Absorbed") + ")");
  layers::ContiguousLatent store(*latent_cache);
  StepWith(batch, store, form, out);
}

void MlaAttention::StepPagedInto(const TokenBatch& batch, PagedKVPool& pool,
                                 std::span<const PagedKVPool::SequenceId> ids, MlaForm form,
                                 Tensor& out) const {
  layers::PagedSequences store(pool, ids);
  StepWith(batch, store, form, out);
}

void MlaAttention::StepWithStore(const TokenBatch& batch, layers::KVStore& store, MlaForm form,
                                 Tensor& out) const {
  StepWith(batch, store, form, out);
}

void MlaAttention::StepWith(const TokenBatch& batch, layers::KVStore& cache, MlaForm form,
                            Tensor& out) const {
  const layers::BatchShape shape = layers::CheckTokenBatch(batch, config_.hidden_size);
  const MlaDims& m = config_.mla;
  const int64_t h = config_.num_heads;
  if (form == MlaForm::kNaive) {
    ATTN_CHECK(cache.form() == CacheForm::kHeads && cache.kv_heads() == h &&
                   cache.key_dim() == m.qk_nope_head_dim + m.qk_rope_head_dim &&
                   cache.value_dim() == m.v_head_dim,
               ErrorKind::kInvalidArgument,
               "the naive MLA form needs the per-head cache from NewCache(..., MlaForm::kNaive)");
  } else {
    ATTN_CHECK(cache.form() == CacheForm::kLatent && cache.value_dim() == m.kv_lora_rank &&
                   cache.key_dim() == m.kv_lora_rank + m.qk_rope_head_dim,
               ErrorKind::kInvalidArgument,
               std::string("the ") + MlaFormName(form) +
                   " MLA form needs the latent cache from NewCache(..., MlaForm::k" +
                   (form == MlaForm::kAuto ? "Auto" : "Absorbed") + ")");
  }
  ATTN_CHECK(cache.sequences() == shape.batch, ErrorKind::kInvalidArgument,
             "cache batch " + std::to_string(cache.sequences()) + " differs from the input batch " +
                 std::to_string(shape.batch));
  int64_t* first_slots = layers::IndexScratch(layers::IndexSlot::kFirstSlots, shape.batch);
  for (int64_t b = 0; b < shape.batch; ++b) first_slots[b] = cache.length(b);
  const std::span<const int64_t> lengths(first_slots, static_cast<size_t>(shape.batch));
  const std::span<const int64_t> positions = layers::ResolvePositions(batch, shape, lengths);
  layers::CheckPositionsAdvance(batch, shape, positions, cache);
  cache.Reserve(shape.counts);

  const Projected p = Project(batch, shape, positions);
  const int64_t rows = shape.rows;
  float* heads_out = layers::Scratch(layers::Slot::kHeadsOut, rows * h * m.v_head_dim);

  if (form == MlaForm::kNaive) {
    AttendNaive(p, cache, lengths, heads_out);
  } else {
    const int64_t row_dim = cache.key_dim();
    for (int64_t b = 0; b < shape.batch; ++b) {
      cache.AppendLatent(b, shape.counts[static_cast<size_t>(b)],
                         p.latent + shape.start(b) * row_dim, p.keep(b));
    }
    // Sequences that auto sends to decompress-then-attend go one by one; the absorbed ones
    // together.
    int64_t* absorbed = layers::IndexScratch(layers::IndexSlot::kAbsorbedSequences, shape.batch);
    int64_t absorbed_count = 0;
    for (int64_t b = 0; b < shape.batch; ++b) {
      const bool decompress =
          form == MlaForm::kAuto &&
          AutoPrefersDecompress(config_, shape.counts[static_cast<size_t>(b)], cache.length(b));
      if (decompress) {
        AttendDecompressed(p, b, cache, first_slots[b],
                           heads_out + shape.start(b) * h * m.v_head_dim);
      } else {
        absorbed[absorbed_count++] = b;
      }
    }
    if (absorbed_count > 0) {
      AttendAbsorbed(p, {absorbed, static_cast<size_t>(absorbed_count)}, cache, lengths, heads_out);
    }
  }
  layers::RecordMaxPositions(batch, shape, positions, cache);

  layers::ReshapeOutput(shape, config_.hidden_size, out);
  layers::Project(heads_out, rows, weights_.o_proj, Tensor(), out.data());
  layers::ZeroUnusedRows(shape, config_.hidden_size, out.data());
}

void MlaAttention::DecompressLatent(const float* rows, int64_t count, float* keys,
                                    float* values) const {
  const MlaDims& m = config_.mla;
  const int64_t h = config_.num_heads;
  const int64_t qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim;
  const int64_t kv_b_dim = m.qk_nope_head_dim + m.v_head_dim;
  const int64_t row_dim = m.kv_lora_rank + m.qk_rope_head_dim;
  // c must be contiguous for the projection: copy it out of the [c | k_pe] rows.
  float* c = layers::Scratch(layers::Slot::kDecompressInput, count * m.kv_lora_rank);
  for (int64_t t = 0; t < count; ++t) {
    std::copy_n(rows + t * row_dim, m.kv_lora_rank, c + t * m.kv_lora_rank);
  }
  float* kv = layers::Scratch(layers::Slot::kDecompressOutput, count * h * kv_b_dim);
  layers::Project(c, count, weights_.kv_b_proj, Tensor(), kv);
  for (int64_t t = 0; t < count; ++t) {
    const float* k_pe = rows + t * row_dim + m.kv_lora_rank;
    for (int64_t head = 0; head < h; ++head) {
      const float* source = kv + (t * h + head) * kv_b_dim;
      float* key = keys + (t * h + head) * qk_dim;
      std::copy_n(source, m.qk_nope_head_dim, key);
      std::copy_n(k_pe, m.qk_rope_head_dim, key + m.qk_nope_head_dim);  // shared rotated key
      std::copy_n(source + m.qk_nope_head_dim, m.v_head_dim,
                  values + (t * h + head) * m.v_head_dim);
    }
  }
}

void MlaAttention::AttendNaive(const Projected& p, layers::KVStore& cache,
                               std::span<const int64_t> first_slots, float* heads_out) const {
  const MlaDims& m = config_.mla;
  const int64_t h = config_.num_heads;
  const int64_t qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim;
  const int64_t rows = p.shape.rows;

  float* keys = layers::Scratch(layers::Slot::kDecompressedKeys, rows * h * qk_dim);
  float* values = layers::Scratch(layers::Slot::kDecompressedValues, rows * h * m.v_head_dim);
  DecompressLatent(p.latent, rows, keys, values);

  std::vector<AttentionProblem>& problems = layers::BatchProblems(p.shape.batch);
  for (int64_t b = 0; b < p.shape.batch; ++b) {
    const int64_t token0 = p.shape.start(b);
    const int64_t count = p.shape.counts[static_cast<size_t>(b)];
    cache.AppendHeads(b, count, keys + token0 * h * qk_dim, values + token0 * h * m.v_head_dim,
                      p.keep(b));
    AttentionProblem& problem = problems[static_cast<size_t>(b)];
    problem = AttentionProblem{};
    problem.queries = {p.q + token0 * h * qk_dim, count, h, qk_dim};
    problem.kv = cache.View(b);
    problem.visibility = {first_slots[static_cast<size_t>(b)], 0};
    problem.scale = scale_;
    problem.out = heads_out + token0 * h * m.v_head_dim;
  }
  cache.Attend(problems.data(), p.shape.batch);
}

namespace {

// What the per-head absorb/expand tasks read; one pointer is all the task function captures,
// so the pool's std::function never allocates (decode stays allocation-free).
struct AbsorbedJob {
  const MlaDims* m;
  int64_t heads, qk_dim, kv_b_dim, row_dim;
  std::span<const int64_t> starts;  // each sequence's first row
  const float* q;                   // projected queries [rows][H][qk_dim]
  LinearProblem kv_b;               // Wkv_b [H·(dn+dv)][rk] as stored (only the weight fields set)
  std::span<const int64_t> sequences;
  std::span<const int64_t> counts;
  float* absorbed;    // [rows][H][row_dim]
  float* latent_out;  // [rows][H][rk]
  float* heads_out;   // [rows][H][dv]
};

// Rows [first, first + count) of Wkv_b as fp32: the weight itself when it is stored in fp32,
// else dequantized into this thread's scratch (a head's 128 × rk block: 256 KiB, which stays in
// L2 for the task that uses it; docs/architecture.md, "Weights").
const float* KvBRows(const AbsorbedJob& j, int64_t first, int64_t count) {
  if (j.kv_b.w_dtype == DType::kF32) {
    return static_cast<const float*>(j.kv_b.w) + first * j.kv_b.in;
  }
  float* rows = layers::Scratch(layers::Slot::kHeadWeights, count * j.kv_b.in);
  DefaultBackend().dequantize(j.kv_b, first, count, rows);
  return rows;
}

}  // namespace

void MlaAttention::AttendAbsorbed(const Projected& p, std::span<const int64_t> sequences,
                                  layers::KVStore& cache, std::span<const int64_t> first_slots,
                                  float* heads_out) const {
  const MlaDims& m = config_.mla;
  const int64_t h = config_.num_heads;
  const int64_t rows = p.shape.rows;
  AbsorbedJob job{&m,
                  h,
                  m.qk_nope_head_dim + m.qk_rope_head_dim,
                  m.qk_nope_head_dim + m.v_head_dim,
                  cache.key_dim(),
                  p.shape.starts,
                  p.q,
                  MakeLinearProblem(nullptr, 0, weights_.kv_b_proj, nullptr, nullptr),
                  sequences,
                  p.shape.counts,
                  layers::Scratch(layers::Slot::kAbsorbed, rows * h * cache.key_dim()),
                  layers::Scratch(layers::Slot::kLatentOut, rows * h * m.kv_lora_rank),
                  heads_out};
  const AbsorbedJob* shared = &job;

  // q'[b,s,h] = [q_nope W_UK[h] | q_pe]: one MQA query row per head against the latent rows.
  // A task per head reads its 128 × rk block of W_UK once for every row of the step.
  ParallelFor(h, [shared](int64_t head, int /*thread*/) {
    const AbsorbedJob& j = *shared;
    const float* w_uk = KvBRows(j, head * j.kv_b_dim, j.m->qk_nope_head_dim);
    for (const int64_t b : j.sequences) {
      for (int64_t s = 0; s < j.counts[static_cast<size_t>(b)]; ++s) {
        const int64_t row = j.starts[static_cast<size_t>(b)] + s;
        const float* q = j.q + (row * j.heads + head) * j.qk_dim;
        float* out = j.absorbed + (row * j.heads + head) * j.row_dim;
        AbsorbQuery(q, w_uk, j.m->qk_nope_head_dim, j.m->kv_lora_rank, out);
        std::copy_n(q + j.m->qk_nope_head_dim, j.m->qk_rope_head_dim, out + j.m->kv_lora_rank);
      }
    }
  });

  std::vector<AttentionProblem>& problems =
      layers::BatchProblems(static_cast<int64_t>(sequences.size()));
  for (size_t i = 0; i < sequences.size(); ++i) {
    const int64_t b = sequences[i];
    AttentionProblem& problem = problems[i];
    problem = AttentionProblem{};
    problem.queries = {job.absorbed + p.shape.start(b) * h * job.row_dim,
                       p.shape.counts[static_cast<size_t>(b)], h, job.row_dim};
    problem.kv = cache.View(b);
    problem.visibility = {first_slots[static_cast<size_t>(b)], 0};
    problem.scale = scale_;
    problem.out = job.latent_out + p.shape.start(b) * h * m.kv_lora_rank;
  }
  cache.Attend(problems.data(), static_cast<int64_t>(sequences.size()));

  // out[b,s,h] = W_UV[h] latent_out[b,s,h], W_UV[h] read once per step by its head's task.
  ParallelFor(h, [shared](int64_t head, int /*thread*/) {
    const AbsorbedJob& j = *shared;
    const float* w_uv = KvBRows(j, head * j.kv_b_dim + j.m->qk_nope_head_dim, j.m->v_head_dim);
    for (const int64_t b : j.sequences) {
      for (int64_t s = 0; s < j.counts[static_cast<size_t>(b)]; ++s) {
        const int64_t row = j.starts[static_cast<size_t>(b)] + s;
        ExpandLatentOutput(j.latent_out + (row * j.heads + head) * j.m->kv_lora_rank, w_uv,
                           j.m->v_head_dim, j.m->kv_lora_rank,
                           j.heads_out + (row * j.heads + head) * j.m->v_head_dim);
      }
    }
  });
}

void MlaAttention::AttendDecompressed(const Projected& p, int64_t sequence, layers::KVStore& cache,
                                      int64_t first_slot, float* heads_out) const {
  const MlaDims& m = config_.mla;
  const int64_t h = config_.num_heads;
  const int64_t qk_dim = m.qk_nope_head_dim + m.qk_rope_head_dim;
  const int64_t row_dim = cache.key_dim();
  const int64_t length = cache.length(sequence);

  // Every cached token's [c | k_pe] in fp32, then K = [c W_UKᵀ | k_pe], V = c W_UVᵀ per head.
  float* rows = layers::Scratch(layers::Slot::kLatentRows, length * row_dim);
  cache.ReadRows(sequence, rows);
  float* keys = layers::Scratch(layers::Slot::kDecompressedKeys, length * h * qk_dim);
  float* values = layers::Scratch(layers::Slot::kDecompressedValues, length * h * m.v_head_dim);
  DecompressLatent(rows, length, keys, values);

  const KVView latent_view = cache.View(sequence);
  AttentionProblem problem;
  problem.queries = {p.q + p.shape.start(sequence) * h * qk_dim,
                     p.shape.counts[static_cast<size_t>(sequence)], h, qk_dim};
  problem.kv.dtype = DType::kF32;
  problem.kv.keys = keys;
  problem.kv.values = values;
  problem.kv.kv_heads = h;
  problem.kv.key_dim = qk_dim;
  problem.kv.value_dim = m.v_head_dim;
  problem.kv.key_head_stride = qk_dim;
  problem.kv.key_token_stride = h * qk_dim;
  problem.kv.value_head_stride = m.v_head_dim;
  problem.kv.value_token_stride = h * m.v_head_dim;
  problem.kv.length = length;
  problem.kv.keep = latent_view.keep;
  if (latent_view.page_size > 0 && latent_view.keep != nullptr) {
    // The decompressed keys are contiguous: their padding flags must be too.
    thread_local std::vector<uint8_t> keep;
    if (keep.size() < static_cast<size_t>(length)) keep.resize(static_cast<size_t>(length));
    for (int64_t t = 0; t < length; ++t) {
      keep[static_cast<size_t>(t)] = latent_view.keep[KeepOffset(latent_view, t)];
    }
    problem.kv.keep = keep.data();
  }
  problem.visibility = {first_slot, 0};
  problem.scale = scale_;
  problem.out = heads_out;
  cache.Attend(&problem, 1);
}

}  // namespace attn
