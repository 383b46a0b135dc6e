// SPDX-License-Identifier: Apache-2.0
// The softmax scale and RoPE attention factor a config implies, and the known ways frameworks
// have got them wrong (docs/semantics.md §3, §7): for each pitfall,
// whether this config would trigger it and the number a framework falling into it would use.
#ifndef ATTN_SCALE_CHECK_H_
#define ATTN_SCALE_CHECK_H_

#include <optional>
#include <string>
#include <vector>

#include "attn/config.h"
#include "attn/megatron.h"

namespace attn {

struct Pitfall {
  std::string id;  // "kv-channels", "absorbed-width", "mscale-vs-mscale-all-dim",
                   // "missing-mscale-squared", "yarn-attention-factor", "rope-pairing",
                   // "explicit-softmax-scale"
  bool triggered = false;
  std::optional<double> wrong_value;  // the scale (or factor) the mistake would give
  std::string explanation;
};

struct ScaleReport {
  double softmax_scale = 0.0;          // SoftmaxScale(config)
  double base_scale = 0.0;             // QueryKeyHeadDim^-0.5
  double mscale_squared = 1.0;         // mscale(s, mscale_all_dim)^2 on MLA yarn, else 1
  double rope_attention_factor = 1.0;  // RopeAttentionFactor(config.rope.scaling), on cos/sin
  std::string formula;                 // how softmax_scale was formed, in words
  std::vector<Pitfall> pitfalls;       // every known pitfall, triggered or not
};

// `megatron` carries a Megatron-style config's kv_channels / softmax_scale (empty for HF).
ScaleReport CheckScale(const ModelConfig& config, const MegatronExtras& megatron = {});

}  // namespace attn

#endif  // ATTN_SCALE_CHECK_H_
