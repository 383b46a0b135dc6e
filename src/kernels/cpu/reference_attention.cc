// Reference attention: one query row at a time, scores materialised for that row only,
// two-pass softmax in fp32. Written to be obviously right, not fast.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attn/kernels.h"
#include "kernels/cpu/element_load.h"

namespace attn::cpu {

void ReferenceAttend(const AttentionProblem& problem) {
  ValidateAttentionProblem(problem);
  const QueryRows& q = problem.queries;
  const KVView& kv = problem.kv;
  const int64_t group_size = q.heads / kv.kv_heads;  // H / G query heads per kv head
  std::vector<float> scores(static_cast<size_t>(kv.length));
  std::vector<float> key_row(static_cast<size_t>(kv.key_dim));
  std::vector<float> value_row(static_cast<size_t>(kv.value_dim));

  for (int64_t s = 0; s < q.tokens; ++s) {
    const int64_t slot = problem.visibility.first_query_slot + s;
    const int64_t last = std::min(slot, kv.length - 1);
    const int64_t first = problem.visibility.window > 0
                              ? std::max<int64_t>(0, slot - problem.visibility.window + 1)
                              : 0;
    for (int64_t h = 0; h < q.heads; ++h) {
      const int64_t g = h / group_size;
      const float* query = q.data + (s * q.heads + h) * q.dim;
      float* out = problem.out + (s * q.heads + h) * kv.value_dim;
      std::fill(out, out + kv.value_dim, 0.0f);

      // Pass 1: scores of visible keys and their maximum.
      float max_score = -std::numeric_limits<float>::infinity();
      for (int64_t t = first; t <= last; ++t) {
        if (kv.keep != nullptr && kv.keep[t] == 0) continue;
        LoadRow(kv.dtype, kv.keys, g * kv.key_head_stride + t * kv.key_token_stride, kv.key_dim,
                key_row.data());
        float dot = 0.0f;
        for (int64_t i = 0; i < q.dim; ++i) dot += query[i] * key_row[static_cast<size_t>(i)];
        scores[static_cast<size_t>(t)] = problem.scale * dot;
        max_score = std::max(max_score, scores[static_cast<size_t>(t)]);
      }
      if (max_score == -std::numeric_limits<float>::infinity()) continue;  // no visible key

      // Pass 2: p_t = exp(score_t - max) / Σ exp(...); out = Σ p_t v_t.
      float denominator = 0.0f;
      for (int64_t t = first; t <= last; ++t) {
        if (kv.keep != nullptr && kv.keep[t] == 0) continue;
        const float weight = std::exp(scores[static_cast<size_t>(t)] - max_score);
        denominator += weight;
        LoadRow(kv.dtype, kv.values, g * kv.value_head_stride + t * kv.value_token_stride,
                kv.value_dim, value_row.data());
        for (int64_t i = 0; i < kv.value_dim; ++i)
          out[i] += weight * value_row[static_cast<size_t>(i)];
      }
      const float inverse = 1.0f / denominator;
      for (int64_t i = 0; i < kv.value_dim; ++i) out[i] *= inverse;
    }
  }
}

}  // namespace attn::cpu
