// SPDX-License-Identifier: Apache-2.0
// The consumer check: one GQA and one MLA layer call through the installed attn package, each
// compared with a value worked out here independently of attn's layer code.
//
// A single token attends only to itself, so its softmax weight is exactly 1 and the layer's
// output is the output projection of its own value vector; no RoPE, scale or mask can change
// that. The known-good value is therefore a few matrix-vector products over the same weights,
// computed below in double with plain loops:
//   GQA:  y = W_o · concat_h(W_v[g(h)] · x),            g(h) = h / (H/G)   (docs/semantics.md §1)
//   MLA:  c = RMSNorm(W_DKV · x)[:rk];  v_h = W_UV[h] · c;  y = W_o · concat_h(v_h)    (§3)
// A longer prompt then checks prefill-then-decode against a full prefill (the invariant every
// cache must keep), in both MLA forms.
#include <attn/hf_config.h>
#include <attn/layer.h>
#include <attn/layer_weights.h>
#include <attn/version.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr const char* kLlamaConfig = R"({"model_type": "llama", "hidden_size": 64,
  "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
  "num_hidden_layers": 1, "max_position_embeddings": 256, "rope_theta": 10000.0,
  "rms_norm_eps": 1e-5})";

constexpr const char* kDeepSeekConfig = R"({"model_type": "deepseek_v3", "hidden_size": 64,
  "num_attention_heads": 4, "num_key_value_heads": 4, "q_lora_rank": 24, "kv_lora_rank": 32,
  "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 12,
  "num_hidden_layers": 1, "max_position_embeddings": 256, "rope_theta": 10000,
  "rms_norm_eps": 1e-6})";

int failures = 0;

void Expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

// y[r] = Σ_c W[row0 + r, c] · x[c] for `rows` rows of a row-major [*, cols] matrix.
std::vector<double> MatVec(const attn::Tensor& w, int64_t row0, int64_t rows,
                           const std::vector<double>& x) {
  const int64_t cols = w.dim(1);
  std::vector<double> y(static_cast<size_t>(rows), 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      y[static_cast<size_t>(r)] +=
          static_cast<double>(w.data()[(row0 + r) * cols + c]) * x[static_cast<size_t>(c)];
    }
  }
  return y;
}

double RelativeError(const attn::Tensor& got, const std::vector<double>& want) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(got.data()[i]) - want[i]));
    scale = std::max(scale, std::abs(want[i]));
  }
  return diff / scale;
}

double RelativeError(const attn::Tensor& got, const attn::Tensor& want) {
  std::vector<double> values(want.values().begin(), want.values().end());
  return RelativeError(got, values);
}

std::string Sci(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1e", value);
  return text;
}

std::vector<double> AsDouble(const attn::Tensor& t) {
  return std::vector<double>(t.values().begin(), t.values().end());
}

const attn::Tensor& Weight(const attn::NamedTensors& weights, const std::string& name) {
  return weights.at(name);
}

// A layer of random weights, and a copy of those weights for the hand computation (building the
// layer consumes them).
std::unique_ptr<attn::AttentionLayer> RandomLayer(const attn::ModelConfig& config, uint64_t seed,
                                                  attn::NamedTensors& kept) {
  attn::NamedTensors weights = attn::RandomAttentionWeights(config, seed);
  for (const auto& [name, tensor] : weights) kept.emplace(name, tensor.Copy());
  return attn::BuildAttentionLayer(config, 0, std::move(weights));
}

void CheckGqa() {
  const attn::ModelConfig config = attn::ParseHfConfig(kLlamaConfig, "consumer llama config");
  attn::NamedTensors kept;
  const std::unique_ptr<attn::AttentionLayer> layer = RandomLayer(config, 7, kept);

  const int64_t D = config.hidden_size, H = config.num_heads, G = config.gqa.num_kv_heads;
  const int64_t d = config.gqa.head_dim;
  const attn::Tensor x = attn::RandomUniform({1, 1, D}, 11, 1.0f);
  const attn::Tensor y = layer->Forward({&x, {}, {}}, attn::MlaForm::kAuto);

  const std::vector<double> v = MatVec(Weight(kept, "v_proj.weight"), 0, G * d, AsDouble(x));
  std::vector<double> heads;
  for (int64_t h = 0; h < H; ++h) {
    const int64_t g = h / (H / G);
    heads.insert(heads.end(), v.begin() + g * d, v.begin() + (g + 1) * d);
  }
  const std::vector<double> want = MatVec(Weight(kept, "o_proj.weight"), 0, D, heads);
  const double error = RelativeError(y, want);
  Expect(error < 1e-5, "GQA single token = W_o·W_v·x (relative error " + Sci(error) + ")");

  const attn::Tensor prompt = attn::RandomUniform({2, 9, D}, 12, 1.0f);
  const attn::Tensor full = layer->Forward({&prompt, {}, {}}, attn::MlaForm::kAuto);
  const attn::Tensor stepped =
      layer->PrefillThenDecode({&prompt, {}, {}}, 4, attn::MlaForm::kAuto, attn::DType::kF32);
  const double drift = RelativeError(stepped, full);
  Expect(drift < 1e-5, "GQA prefill 4 + decode 5 = prefill 9 (" + Sci(drift) + ")");
}

void CheckMla() {
  const attn::ModelConfig config = attn::ParseHfConfig(kDeepSeekConfig, "consumer deepseek config");
  attn::NamedTensors kept;
  const std::unique_ptr<attn::AttentionLayer> layer = RandomLayer(config, 8, kept);

  const int64_t D = config.hidden_size, H = config.num_heads;
  const int64_t rk = config.mla.kv_lora_rank, dn = config.mla.qk_nope_head_dim;
  const int64_t dv = config.mla.v_head_dim;
  const attn::Tensor x = attn::RandomUniform({1, 1, D}, 13, 1.0f);

  std::vector<double> c = MatVec(Weight(kept, "kv_a_proj_with_mqa.weight"), 0, rk, AsDouble(x));
  double mean_square = 0.0;
  for (double value : c) mean_square += value * value / static_cast<double>(rk);
  const attn::Tensor& norm = Weight(kept, "kv_a_layernorm.weight");
  for (int64_t i = 0; i < rk; ++i) {
    c[static_cast<size_t>(i)] *= norm.data()[i] / std::sqrt(mean_square + config.mla.rms_norm_eps);
  }
  std::vector<double> heads;
  for (int64_t h = 0; h < H; ++h) {
    // kv_b_proj rows per head: dn rows of W_UK, then dv rows of W_UV.
    const std::vector<double> v =
        MatVec(Weight(kept, "kv_b_proj.weight"), h * (dn + dv) + dn, dv, c);
    heads.insert(heads.end(), v.begin(), v.end());
  }
  const std::vector<double> want = MatVec(Weight(kept, "o_proj.weight"), 0, D, heads);
  for (attn::MlaForm form : {attn::MlaForm::kNaive, attn::MlaForm::kAbsorbed}) {
    const attn::Tensor y = layer->Forward({&x, {}, {}}, form);
    const double error = RelativeError(y, want);
    Expect(error < 1e-5, std::string("MLA ") + attn::MlaFormName(form) +
                             " single token = W_o·W_UV·RMSNorm(W_DKV·x) (relative error " +
                             Sci(error) + ")");
  }

  const attn::Tensor prompt = attn::RandomUniform({2, 9, D}, 14, 1.0f);
  const attn::Tensor full = layer->Forward({&prompt, {}, {}}, attn::MlaForm::kNaive);
  const attn::Tensor stepped =
      layer->PrefillThenDecode({&prompt, {}, {}}, 4, attn::MlaForm::kAbsorbed, attn::DType::kF32);
  const double drift = RelativeError(stepped, full);
  Expect(drift < 1e-5, "MLA absorbed prefill 4 + decode 5 = naive prefill 9 (" + Sci(drift) + ")");
}

}  // namespace

int main() {
  std::printf("attn consumer: built against %s, running with libattn %s\n", ATTN_VERSION_STRING,
              attn::Version());
  Expect(std::strcmp(ATTN_VERSION_STRING, attn::Version()) == 0,
         "header and library versions agree");
  try {
    CheckGqa();
    CheckMla();
  } catch (const std::exception& error) {
    std::printf("FAIL exception: %s\n", error.what());
    return 1;
  }
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
