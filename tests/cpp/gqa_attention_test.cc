// SPDX-License-Identifier: Apache-2.0
// The GQA-family layer against invariants and against an independent straightforward MHA:
// decode == prefill, GQA == MHA with duplicated kv heads, G = H == plain MHA, position-shift
// invariance, padding invariance, fully masked rows, sliding windows, and every bad input.
#include "attn/gqa_attention.h"

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "attn/error.h"
#include "attn/layer_weights.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::RelativeError;

std::unique_ptr<AttentionLayer> MakeLayer(const ModelConfig& c, uint64_t seed = 1) {
  return BuildAttentionLayer(c, 0, RandomAttentionWeights(c, seed));
}

Tensor Input(int64_t batch, int64_t tokens, int64_t hidden, uint64_t seed = 9) {
  return RandomUniform({batch, tokens, hidden}, seed, 1.0f);
}

TEST(GqaAttention, DecodeByTokenEqualsPrefill) {
  for (int64_t kv_heads : {1, 2, 8}) {
    const ModelConfig c = testing::SmallGqaConfig(8, kv_heads);
    const auto layer = MakeLayer(c);
    const Tensor x = Input(2, 11, c.hidden_size);
    const std::vector<int64_t> positions = {3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                            0, 1, 2, 3, 4, 5, 6, 7,  8,  9,  10};
    std::vector<uint8_t> keep(22, 1);
    keep[11] = keep[12] = 0;  // left padding in sequence 1
    const TokenBatch batch{&x, positions, keep};
    const Tensor full = layer->Forward(batch, MlaForm::kAuto);
    for (int64_t prefill : {1, 4, 11}) {
      const Tensor stepped = layer->PrefillThenDecode(batch, prefill, MlaForm::kAuto, DType::kF32);
      EXPECT_LT(RelativeError(stepped, full), 1e-5) << "G=" << kv_heads << " prefill=" << prefill;
    }
    const Tensor bf16 = layer->PrefillThenDecode(batch, 4, MlaForm::kAuto, DType::kBF16);
    EXPECT_LT(RelativeError(bf16, full), 2e-2);
    EXPECT_GT(RelativeError(bf16, full), 0.0);  // the cache really is bf16
  }
}

// Query head h must read kv head h / (H/G): a GQA layer equals the MHA layer whose k/v weights
// repeat each group's rows for its H/G query heads.
TEST(GqaAttention, EqualsMhaWithRepeatedKvHeads) {
  const ModelConfig gqa = testing::SmallGqaConfig(8, 2);
  const ModelConfig mha = testing::SmallGqaConfig(8, 8);
  NamedTensors w = RandomAttentionWeights(gqa, 5);
  NamedTensors w_mha;
  const int64_t d = gqa.gqa.head_dim, hidden = gqa.hidden_size, group = 4;
  for (const char* name : {"k_proj.weight", "v_proj.weight"}) {
    Tensor repeated({8 * d, hidden});
    for (int64_t h = 0; h < 8; ++h) {
      const float* src = w.at(name).data() + (h / group) * d * hidden;
      std::copy(src, src + d * hidden, repeated.data() + h * d * hidden);
    }
    w_mha.emplace(name, std::move(repeated));
  }
  w_mha.emplace("q_proj.weight", w.at("q_proj.weight").Copy());
  w_mha.emplace("o_proj.weight", w.at("o_proj.weight").Copy());
  const auto layer_gqa = BuildAttentionLayer(gqa, 0, std::move(w));
  const auto layer_mha = BuildAttentionLayer(mha, 0, std::move(w_mha));
  const Tensor x = Input(1, 9, hidden);
  const TokenBatch batch{&x, {}, {}};
  EXPECT_LT(RelativeError(layer_gqa->Forward(batch, MlaForm::kAuto),
                          layer_mha->Forward(batch, MlaForm::kAuto)),
            1e-6);
}

// G = H against a plain, loop-by-loop MHA written here from docs/semantics.md §1.
TEST(GqaAttention, MhaEqualsStraightforwardImplementation) {
  const ModelConfig c = testing::SmallGqaConfig(4, 4);
  const NamedTensors w = RandomAttentionWeights(c, 3);
  NamedTensors copy;
  for (const auto& [name, t] : w) copy.emplace(name, t.Copy());
  const auto layer = BuildAttentionLayer(c, 0, std::move(copy));
  const int64_t S = 6, D = c.hidden_size, H = 4, d = 16;
  const Tensor x = Input(1, S, D);
  const Tensor got = layer->Forward({&x, {}, {}}, MlaForm::kAuto);

  auto linear = [&](const Tensor& weight, int64_t out) {
    std::vector<double> y(S * out);
    for (int64_t s = 0; s < S; ++s)
      for (int64_t o = 0; o < out; ++o)
        for (int64_t i = 0; i < weight.dim(1); ++i)
          y[s * out + o] += static_cast<double>(x.data()[s * D + i]) * weight.data()[o * D + i];
    return y;
  };
  std::vector<double> q = linear(w.at("q_proj.weight"), H * d);
  std::vector<double> k = linear(w.at("k_proj.weight"), H * d);
  const std::vector<double> v = linear(w.at("v_proj.weight"), H * d);
  // rotate-half RoPE, base 1e4, position s: pairs (i, i + d/2).
  for (auto* t : {&q, &k}) {
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < d / 2; ++i) {
          const double angle = s * std::pow(10000.0, -2.0 * i / d);
          double& a = (*t)[(s * H + h) * d + i];
          double& b = (*t)[(s * H + h) * d + i + d / 2];
          const double ra = a * std::cos(angle) - b * std::sin(angle);
          const double rb = b * std::cos(angle) + a * std::sin(angle);
          a = ra;
          b = rb;
        }
  }
  std::vector<double> heads(S * H * d, 0.0);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t s = 0; s < S; ++s) {
      std::vector<double> p(s + 1);
      double total = 0, max_score = -1e300;
      for (int64_t t = 0; t <= s; ++t) {
        double dot = 0;
        for (int64_t i = 0; i < d; ++i) dot += q[(s * H + h) * d + i] * k[(t * H + h) * d + i];
        p[t] = dot / std::sqrt(static_cast<double>(d));
        max_score = std::max(max_score, p[t]);
      }
      for (double& e : p) total += (e = std::exp(e - max_score));
      for (int64_t t = 0; t <= s; ++t)
        for (int64_t i = 0; i < d; ++i)
          heads[(s * H + h) * d + i] += p[t] / total * v[(t * H + h) * d + i];
    }
  const Tensor& wo = w.at("o_proj.weight");
  std::vector<float> expected(S * D);
  for (int64_t s = 0; s < S; ++s)
    for (int64_t o = 0; o < D; ++o) {
      double acc = 0;
      for (int64_t i = 0; i < H * d; ++i) acc += heads[s * H * d + i] * wo.data()[o * H * d + i];
      expected[s * D + o] = static_cast<float>(acc);
    }
  EXPECT_LT(testing::RelativeError(got.data(), expected.data(), S * D), 1e-5);
}

TEST(GqaAttention, OutputsDependOnRelativePositionsOnly) {
  const ModelConfig c = testing::SmallGqaConfig(8, 2);
  const auto layer = MakeLayer(c);
  const Tensor x = Input(1, 7, c.hidden_size);
  std::vector<int64_t> near(7), far(7);
  for (int64_t s = 0; s < 7; ++s) {
    near[s] = s;
    far[s] = 1000 + s;
  }
  const Tensor a = layer->Forward({&x, near, {}}, MlaForm::kAuto);
  const Tensor b = layer->Forward({&x, far, {}}, MlaForm::kAuto);
  EXPECT_LT(RelativeError(b, a), 1e-5);
  // Positions do matter: reversing them changes the output.
  std::vector<int64_t> reversed(near.rbegin(), near.rend());
  EXPECT_GT(RelativeError(layer->Forward({&x, reversed, {}}, MlaForm::kAuto), a), 1e-3);
}

// Left padding with a 0 mask leaves the real tokens' outputs exactly as without padding.
TEST(GqaAttention, PaddingInvariance) {
  const ModelConfig c = testing::SmallGqaConfig(8, 2);
  const auto layer = MakeLayer(c);
  const int64_t D = c.hidden_size, real = 5, pad = 3;
  const Tensor x = Input(1, real, D);
  Tensor padded({1, real + pad, D});
  const Tensor junk = Input(1, pad, D, 77);
  std::copy_n(junk.data(), pad * D, padded.data());
  std::copy_n(x.data(), real * D, padded.data() + pad * D);
  const std::vector<int64_t> positions = {0, 0, 0, 0, 1, 2, 3, 4};
  const std::vector<uint8_t> keep = {0, 0, 0, 1, 1, 1, 1, 1};
  const Tensor unpadded = layer->Forward({&x, {}, {}}, MlaForm::kAuto);
  const Tensor with_pad = layer->Forward({&padded, positions, keep}, MlaForm::kAuto);
  EXPECT_LT(testing::RelativeError(with_pad.data() + pad * D, unpadded.data(), real * D), 1e-6);
  // Without the mask the padding leaks in.
  const Tensor unmasked = layer->Forward({&padded, positions, {}}, MlaForm::kAuto);
  EXPECT_GT(testing::RelativeError(unmasked.data() + pad * D, unpadded.data(), real * D), 1e-3);
}

// A query that sees only padding outputs o_proj(0) = o_proj bias (zeros when there is none).
TEST(GqaAttention, FullyMaskedRowsGiveZeros) {
  ModelConfig c = testing::SmallGqaConfig(4, 2);
  c.gqa.qkv_bias = true;
  c.gqa.o_bias = true;
  NamedTensors w = RandomAttentionWeights(c, 2);
  const Tensor o_bias = w.at("o_proj.bias").Copy();
  const auto layer = BuildAttentionLayer(c, 0, std::move(w));
  const Tensor x = Input(1, 3, c.hidden_size);
  const std::vector<uint8_t> keep = {0, 1, 1};
  const Tensor y = layer->Forward({&x, {}, keep}, MlaForm::kAuto);
  for (int64_t i = 0; i < c.hidden_size; ++i) {
    EXPECT_FLOAT_EQ(y.data()[i], o_bias.data()[i]) << i;
    EXPECT_FALSE(std::isnan(y.data()[c.hidden_size + i]));
  }
}

// With window W, the last token sees only the last W tokens: running just those gives the
// same output for it.
TEST(GqaAttention, SlidingWindowLimitsWhatIsSeen) {
  ModelConfig c = testing::SmallGqaConfig(4, 2);
  c.sliding_window = 3;
  const auto layer = MakeLayer(c);
  ModelConfig no_window = c;
  no_window.sliding_window = 0;
  const auto plain = MakeLayer(no_window);
  const int64_t D = c.hidden_size, S = 8;
  const Tensor x = Input(1, S, D);
  const Tensor windowed = layer->Forward({&x, {}, {}}, MlaForm::kAuto);
  Tensor tail({1, 3, D});
  std::copy_n(x.data() + (S - 3) * D, 3 * D, tail.data());
  const std::vector<int64_t> tail_positions = {S - 3, S - 2, S - 1};
  const Tensor tail_out = plain->Forward({&tail, tail_positions, {}}, MlaForm::kAuto);
  EXPECT_LT(testing::RelativeError(windowed.data() + (S - 1) * D, tail_out.data() + 2 * D, D),
            1e-6);
  const Tensor full = plain->Forward({&x, {}, {}}, MlaForm::kAuto);
  EXPECT_LT(testing::RelativeError(windowed.data(), full.data(), 3 * D), 1e-6);  // t < W: same
  EXPECT_GT(testing::RelativeError(windowed.data() + (S - 1) * D, full.data() + (S - 1) * D, D),
            1e-3);
  // Decode through the cache respects the window too.
  const Tensor stepped = layer->PrefillThenDecode({&x, {}, {}}, 2, MlaForm::kAuto, DType::kF32);
  EXPECT_LT(RelativeError(stepped, windowed), 1e-5);
}

// Llama 4's layer kinds and Falcon's ALiBi keep decode == prefill: the chunk and the
// temperature follow the cache slot, the ALiBi bias the key/query slots (docs/semantics.md §1).
TEST(GqaAttention, Llama4AndAlibiDecodeEqualsPrefill) {
  ModelConfig llama4 = testing::SmallGqaConfig(4, 2);
  llama4.model_type = "llama4_text";
  llama4.num_layers = 4;
  llama4.rope.pairing = RopePairing::kInterleaved;
  llama4.gqa.qk_norm = QkNorm::kL2;
  llama4.gqa.qk_norm_eps = 1e-5;
  llama4.attention_chunk_size = 4;
  llama4.chunked_layers = {true, true, true, false};
  llama4.nope_layers = {false, false, false, true};
  llama4.temperature = {3.0, 0.5};  // floor_scale 3: the factor changes every 3 slots
  ModelConfig falcon = testing::SmallGqaConfig(6, 6);
  falcon.model_type = "falcon";
  falcon.gqa.alibi = true;
  const Tensor x = Input(2, 11, 64);
  const std::vector<int64_t> positions = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                          0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<uint8_t> keep(22, 1);
  keep[11] = keep[12] = 0;  // left padding in sequence 1
  const TokenBatch batch{&x, positions, keep};
  for (const auto& [config, layer] :
       {std::pair<const ModelConfig*, int64_t>{&llama4, 0}, {&llama4, 3}, {&falcon, 0}}) {
    const auto attention = BuildAttentionLayer(*config, layer, RandomAttentionWeights(*config, 2));
    const Tensor full = attention->Forward(batch, MlaForm::kAuto);
    for (int64_t prefill : {1, 5, 11}) {
      const Tensor stepped =
          attention->PrefillThenDecode(batch, prefill, MlaForm::kAuto, DType::kF32);
      EXPECT_LT(RelativeError(stepped, full), 1e-5)
          << config->model_type << " layer " << layer << " prefill " << prefill;
    }
  }
}

// A chunked layer's query sees only its own chunk: changing tokens of an earlier chunk leaves
// later chunks' outputs unchanged, while a NoPE (full) layer sees them.
TEST(GqaAttention, ChunkedLayerSeesOnlyItsChunk) {
  ModelConfig c = testing::SmallGqaConfig(4, 2);
  c.num_layers = 2;
  c.attention_chunk_size = 4;
  c.chunked_layers = {true, false};
  c.nope_layers = {false, true};
  Tensor x = Input(1, 12, 64);
  Tensor y = x.Copy();
  for (int64_t i = 0; i < 4 * 64; ++i) y.data()[i] += 0.5f;  // tokens 0-3: the first chunk
  for (int64_t layer : {0, 1}) {
    const auto attention = BuildAttentionLayer(c, layer, RandomAttentionWeights(c, 4));
    const Tensor a = attention->Forward({&x, {}, {}}, MlaForm::kAuto);
    const Tensor b = attention->Forward({&y, {}, {}}, MlaForm::kAuto);
    const float* pa = a.data() + 4 * 64;  // tokens 4-11
    const float* pb = b.data() + 4 * 64;
    const double change = RelativeError(pb, pa, 8 * 64);
    if (layer == 0) {
      EXPECT_EQ(change, 0.0);
    } else {
      EXPECT_GT(change, 1e-3);
    }
  }
}

TEST(GqaAttention, BadInputsAreErrors) {
  const ModelConfig c = testing::SmallGqaConfig(8, 2);
  const auto layer = MakeLayer(c);
  const Tensor wrong_width = Input(1, 4, c.hidden_size + 1);
  EXPECT_THROW(layer->Forward({&wrong_width, {}, {}}, MlaForm::kAuto), Error);
  const Tensor x = Input(2, 4, c.hidden_size);
  const std::vector<int64_t> short_positions = {0, 1, 2};
  EXPECT_THROW(layer->Forward({&x, short_positions, {}}, MlaForm::kAuto), Error);
  const std::vector<int64_t> negative(8, -1);
  EXPECT_THROW(layer->Forward({&x, negative, {}}, MlaForm::kAuto), Error);
  const std::vector<uint8_t> bad_mask(8, 2);
  EXPECT_THROW(layer->Forward({&x, {}, bad_mask}, MlaForm::kAuto), Error);

  // Overflow: nothing is appended, the cache is still usable.
  auto cache = layer->NewCache(2, 6, DType::kF32, MlaForm::kAuto);
  layer->Step({&x, {}, {}}, *cache, MlaForm::kAuto);
  try {
    layer->Step({&x, {}, {}}, *cache, MlaForm::kAuto);
    FAIL() << "expected kCapacity";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCapacity);
  }
  EXPECT_EQ(cache->length(0), 4);
  EXPECT_EQ(cache->length(1), 4);
  const auto wrong_batch = layer->NewCache(1, 8, DType::kF32, MlaForm::kAuto);
  EXPECT_THROW(layer->Step({&x, {}, {}}, *wrong_batch, MlaForm::kAuto), Error);

  // Weights: missing, misshapen, unexpected.
  NamedTensors missing = RandomAttentionWeights(c, 1);
  missing.erase("k_proj.weight");
  try {
    BuildAttentionLayer(c, 0, std::move(missing));
    FAIL() << "expected kNotFound";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kNotFound);
    EXPECT_NE(std::string(e.what()).find("k_proj.weight"), std::string::npos);
  }
  NamedTensors misshapen = RandomAttentionWeights(c, 1);
  misshapen["v_proj.weight"] = Tensor({3, 3});
  EXPECT_THROW(BuildAttentionLayer(c, 0, std::move(misshapen)), Error);
  NamedTensors extra = RandomAttentionWeights(c, 1);
  extra.emplace("q_proj.bias", Tensor({128}));
  EXPECT_THROW(BuildAttentionLayer(c, 0, std::move(extra)), Error);
  EXPECT_THROW(BuildAttentionLayer(c, 5, RandomAttentionWeights(c, 1)), Error);  // 2 layers
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// A ragged batch (sequences contributing different token counts to one call) equals running
// each sequence on its own; idle rows output zeros and leave the cache untouched.
TEST(GqaAttention, RaggedBatchEqualsSequencesAlone) {
  const ModelConfig c = testing::SmallGqaConfig(8, 2);
  const auto layer = BuildAttentionLayer(c, 0, RandomAttentionWeights(c, 1));
  const int64_t D = c.hidden_size, S = 6;
  const Tensor x = RandomUniform({2, S, D}, 4, 1.0f);
  const std::vector<int64_t> lengths = {6, 2};
  auto cache = layer->NewCache(2, 8, DType::kF32, MlaForm::kAuto);
  const Tensor y = layer->Step({&x, {}, {}, lengths}, *cache, MlaForm::kAuto);
  EXPECT_EQ(cache->length(0), 6);
  EXPECT_EQ(cache->length(1), 2);
  Tensor second({1, 2, D});
  std::copy_n(x.data() + S * D, 2 * D, second.data());
  const Tensor alone = layer->Forward({&second, {}, {}}, MlaForm::kAuto);
  EXPECT_LT(testing::RelativeError(y.data() + S * D, alone.data(), 2 * D), 1e-6);
  for (int64_t i = (S + 2) * D; i < 2 * S * D; ++i) ASSERT_EQ(y.data()[i], 0.0f);
  const std::vector<int64_t> too_long = {7, 0};
  EXPECT_THROW(layer->Step({&x, {}, {}, too_long}, *cache, MlaForm::kAuto), Error);
}

}  // namespace
}  // namespace attn
