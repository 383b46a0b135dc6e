// SPDX-License-Identifier: Apache-2.0
// The numbers behind a model's attention: parameters, KV-cache sizes in every form the model
// can run in, FLOPs per token and decode arithmetic intensity, each next to an MHA with the
// same hidden size and heads. `attn info` prints them; the tests pin them for real models.
// Cache sizes come from CacheValuesPerToken (kv_cache.h), the one formula for them.
#ifndef ATTN_MODEL_STATS_H_
#define ATTN_MODEL_STATS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "attn/config.h"
#include "attn/dtype.h"
#include "attn/kv_cache.h"

namespace attn {

// Σ over AttentionWeightSpecs of the tensor sizes: one layer's attention parameters.
int64_t AttentionParameterCount(const ModelConfig& config);

// The MHA a comparison means: same D, H and layers, G = H, d = D / H (docs/semantics.md §6,
// §7.6: the comparison behind V3's 0.91x parameters of a same-size MHA), no biases, no window,
// same RoPE. When H does not divide D, d is the model's own query/key head width.
ModelConfig MhaBaseline(const ModelConfig& config);

// FLOPs of one token in one layer (multiply-add = 2 FLOPs).
struct TokenFlops {
  double projections = 0.0;  // q/k/v/o and MLA down/up projections, absorption, decompression
  double attention = 0.0;    // scores and the weighted sum over the visible keys
  double total() const { return projections + attention; }
};

// One token decoded in layer `layer` with `context` keys visible before the window (itself
// included), in cache form `form`:
//   GQA           proj 2·D·(H+2G)·d + 2·H·d·D;  attention 4·H·d·T
//   MLA naive     q path + 2·D·(rk+dr) + 2·rk·H·(dn+dv) (the new token's K/V) + 2·H·dv·D;
//                 attention 2·H·(dn+dr+dv)·T
//   MLA latent    q path + 2·D·(rk+dr) + 2·H·dn·rk + 2·H·rk·dv + 2·H·dv·D;
//                 attention 2·H·(2·rk+dr)·T            (absorbed)
// with q path = 2·D·rq + 2·rq·H·(dn+dr), or 2·D·H·(dn+dr) without q_lora, and T = min(context,
// window) for a windowed layer, (context − 1) mod C + 1 for a chunked one (chunk size C).
TokenFlops DecodeFlopsPerToken(const ModelConfig& config, CacheForm form, int64_t context,
                               int64_t layer = 0);
// One token of a causal prefill of `context` tokens, averaged over the prompt (query p sees
// min(p, W) keys, or (p − 1) mod C + 1 on a chunked layer). The latent form prefills the cheaper of
// absorbed and decompress-then-attend (what MlaForm::kAuto picks for a long prompt; decompression
// costs 2·rk·H·(dn+dv) per token).
TokenFlops PrefillFlopsPerToken(const ModelConfig& config, CacheForm form, int64_t context,
                                int64_t layer = 0);

// Decode arithmetic intensity of the attention itself: attention FLOPs per KV-cache byte read,
// 2·(H/G)/b for GQA, 2/b for MLA naive, 2·H·(2·rk+dr)/((rk+dr)·b) for MLA latent (b = bytes per
// cache value). Independent of context and batch.
double DecodeAttentionIntensity(const ModelConfig& config, CacheForm form, DType cache_dtype);

// Compute and bandwidth peaks of a machine; ridge = FLOP/s over byte/s.
struct MachinePeak {
  double gflops = 0.0;
  double gbytes_per_s = 0.0;
  std::string origin;  // "measured", "given", or "reference anchors, not measured"
  double ridge() const { return gflops / gbytes_per_s; }
};
// The dev machine kind's anchors (docs/semantics.md §9): 444 GFLOP/s fp32 FMA or 888 bf16 on 2
// threads, ~60 GB/s DRAM.
MachinePeak ReferenceAnchors(DType cache_dtype);

struct InfoOptions {
  int64_t context = 0;  // tokens; 0 = the model's max_position_embeddings (or 4096)
  int64_t batch = 1;
  DType dtype = DType::kBF16;  // cache values
  double memory_bytes = 0.0;   // KV-cache budget; 0 = none given
};

struct FormStats {
  std::string name;  // "K/V per head", "MLA naive (K/V per head)", "MLA latent (absorbed)"
  CacheForm form;
  int64_t values_per_token_layer = 0;
  double bytes_per_token_layer = 0.0;
  double bytes_per_token_model = 0.0;  // all layers
  // All layers, context x batch tokens. Every token is counted, as attn's caches keep them all;
  // a rolling-buffer cache for a windowed layer would hold min(context, W).
  double bytes_at_context = 0.0;
  double ratio_to_mha = 0.0;             // values per token vs the MHA baseline
  int64_t longest_context = -1;          // fits memory_bytes at this batch; -1 = no budget given
  double prefill_flops_per_token = 0.0;  // whole model
  double decode_flops_per_token = 0.0;   // whole model, at context
  double decode_intensity = 0.0;         // attention FLOPs per KV byte
};

struct ModelStats {
  ModelConfig config;
  InfoOptions options;
  int64_t attention_params_layer = 0;
  int64_t attention_params_model = 0;
  int64_t mha_params_layer = 0;
  double params_ratio_to_mha = 0.0;
  std::vector<FormStats> forms;  // the model's own forms
  FormStats mha;                 // the baseline's single form
};

// Throws Error(kInvalidArgument) for context/batch < 1, and when a memory budget is given that
// holds not even one token of every sequence in the model's smallest-cache form.
ModelStats ComputeModelStats(const ModelConfig& config, const InfoOptions& options);

// "131072", "128k" (x1024), "1m" (x1024²) -> tokens. Error(kInvalidArgument) naming `what`.
int64_t ParseTokenCount(const std::string& text, const std::string& what);
// "80GiB", "80GB" (1e9), "512MiB", "1.5TiB", "123" (bytes) -> bytes.
double ParseByteSize(const std::string& text, const std::string& what);

}  // namespace attn

#endif  // ATTN_MODEL_STATS_H_
