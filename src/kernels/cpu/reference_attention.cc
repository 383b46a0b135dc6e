// SPDX-License-Identifier: Apache-2.0
// Reference attention: one query row at a time, two passes over its visible keys in fp32 —
// the first finds the largest score, the second recomputes each score and accumulates
// exp(score - max) · v. Recomputing instead of storing the scores keeps the kernel free of
// buffers that grow with the context. Quantized K/V (fp8/int8) rows are dequantized as
// code · scale. Written to be obviously right, not fast.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attn/kernels.h"
#include "kernels/cpu/element_load.h"

namespace attn::cpu {
namespace {

// A quantized row (fp8/int8 codes as fp32) times its scale: the stored value.
void Dequantize(float scale, std::vector<float>& row) {
  for (float& x : row) x *= scale;
}

}  // namespace

void ReferenceAttend(const AttentionProblem& problem) {
  ValidateAttentionProblem(problem);
  const QueryRows& q = problem.queries;
  const KVView& kv = problem.kv;
  const int64_t group_size = q.heads / kv.kv_heads;  // H / G query heads per kv head
  // One K row and one V row as fp32, per thread and reused: no allocation once warm.
  thread_local std::vector<float> key_row, value_row;
  key_row.resize(static_cast<size_t>(kv.key_dim));
  value_row.resize(static_cast<size_t>(kv.value_dim));

  for (int64_t s = 0; s < q.tokens; ++s) {
    const int64_t slot = problem.visibility.first_query_slot + s;
    const bool causal = problem.visibility.causal;
    const int64_t last = causal ? std::min(slot, kv.length - 1) : kv.length - 1;
    int64_t first = causal && problem.visibility.window > 0
                        ? std::max<int64_t>(0, slot - problem.visibility.window + 1)
                        : 0;
    // Chunked attention: only the keys of the query's own block of `chunk` slots.
    if (causal && problem.visibility.chunk > 0) {
      first = std::max(first,
                       ChunkStart(slot, problem.visibility.chunk, problem.visibility.chunk_origin));
    }
    for (int64_t h = 0; h < q.heads; ++h) {
      const int64_t g = h / group_size;
      const float* query = q.data + (s * q.heads + h) * q.dim;
      float* out = problem.out + (s * q.heads + h) * kv.value_dim;
      std::fill(out, out + kv.value_dim, 0.0f);
      // ALiBi: a bias linear in the distance from the query's slot (docs/semantics.md §1).
      const float slope = problem.alibi_slopes != nullptr ? problem.alibi_slopes[h] : 0.0f;
      // score_t = softcap(scale · q·k_t) + slope · (t − slot)
      auto score = [&](int64_t t) {
        LoadRow(kv.dtype, kv.keys, KeyOffset(kv, g, t), kv.key_dim, key_row.data());
        if (kv.key_scales != nullptr) Dequantize(kv.key_scales[ScaleOffset(kv, g, t)], key_row);
        float dot = 0.0f;
        for (int64_t i = 0; i < q.dim; ++i) dot += query[i] * key_row[static_cast<size_t>(i)];
        if (!std::isfinite(dot) && problem.non_finite_scores != nullptr) {
          problem.non_finite_scores->store(true, std::memory_order_relaxed);
        }
        const float scaled = problem.scale * dot;
        const float capped =
            problem.softcap > 0.0f ? problem.softcap * std::tanh(scaled / problem.softcap) : scaled;
        return problem.alibi_slopes != nullptr ? capped + slope * static_cast<float>(t - slot)
                                               : capped;
      };
      auto visible = [&](int64_t t) {
        return kv.keep == nullptr || kv.keep[KeepOffset(kv, t)] != 0;
      };

      float* lse = problem.lse != nullptr ? problem.lse + s * q.heads + h : nullptr;
      if (lse != nullptr) *lse = -std::numeric_limits<float>::infinity();

      // Pass 1: the largest visible score.
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t t = first; t <= last; ++t) {
        if (visible(t)) max_score = std::max(max_score, score(t));
      }
      if (max_score == -std::numeric_limits<float>::infinity()) continue;  // no visible key
      // A sink is one more logit in the denominator, with no value (GPT-OSS).
      const bool sink = problem.sinks != nullptr;
      if (sink) max_score = std::max(max_score, problem.sinks[h]);

      // Pass 2: p_t = exp(score_t - max) / Σ exp(...); out = Σ p_t v_t.
      float denominator = sink ? std::exp(problem.sinks[h] - max_score) : 0.0f;
      for (int64_t t = first; t <= last; ++t) {
        if (!visible(t)) continue;
        const float weight = std::exp(score(t) - max_score);
        denominator += weight;
        LoadRow(kv.dtype, kv.values, ValueOffset(kv, g, t), kv.value_dim, value_row.data());
        if (kv.value_scales != nullptr) {
          Dequantize(kv.value_scales[ScaleOffset(kv, g, t)], value_row);
        }
        for (int64_t i = 0; i < kv.value_dim; ++i) {
          out[i] += weight * value_row[static_cast<size_t>(i)];
        }
      }
      const float inverse = 1.0f / denominator;
      for (int64_t i = 0; i < kv.value_dim; ++i) out[i] *= inverse;
      // ln Σ exp(score) (sink included) = max + ln Σ exp(score − max).
      if (lse != nullptr) *lse = max_score + std::log(denominator);
    }
  }
}

}  // namespace attn::cpu
