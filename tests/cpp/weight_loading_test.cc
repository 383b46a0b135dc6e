// SPDX-License-Identifier: Apache-2.0
// Loading a layer's weights in their stored dtype (LoadHfAttentionWeights): the weights come
// mapped from the file (one mapping per file, shared by every weight and kept alive by them after
// the file and checkpoint objects are gone), an fp8 layer computes what a layer built from its
// dequantized values computes, and every broken fp8 layout is refused naming the tensor.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "attn/checkpoint.h"
#include "attn/error.h"
#include "attn/fused_qkv.h"
#include "attn/hf_weights.h"
#include "attn/layer_weights.h"
#include "attn/safetensors.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::ExpectError;
using testing::RelativeError;

class WeightLoadingTest : public testing::ScratchDirTest {
 protected:
  // An MLA config whose matrices span several 32 × 32 blocks, some of them ragged.
  static ModelConfig Fp8Config() {
    ModelConfig config = testing::SmallMlaConfig(/*q_lora_rank=*/40);
    config.quantization.fp8_blocks = true;
    config.quantization.block_rows = 32;
    config.quantization.block_cols = 32;
    return config;
  }

  std::string WriteLayer(const ModelConfig& config, DType dtype, const std::string& name) {
    SafetensorsWriter writer;
    AddHfAttentionWeights(writer, config, RandomAttentionWeights(config, 5), /*layer=*/1, dtype);
    const std::string path = PathOf(name);
    writer.Write(path);
    return path;
  }

  // Rewrites `path` with `edit` applied to its tensors (raw bytes kept, dtypes kept).
  void Rewrite(const std::string& path,
               const std::function<void(std::map<std::string, TensorView>&, SafetensorsWriter&,
                                        const SafetensorsFile&)>& edit) {
    const SafetensorsFile file = SafetensorsFile::Open(path);
    std::map<std::string, TensorView> views;
    for (const std::string& name : file.Names()) views.emplace(name, file.Get(name));
    SafetensorsWriter writer;
    edit(views, writer, file);
    for (const auto& [name, view] : views) {
      writer.AddBytes(name, view.dtype, view.shape, file.ReadBytes(name));
    }
    writer.Write(path + ".new");
    std::filesystem::rename(path + ".new", path);
  }

  static Tensor Hidden(const ModelConfig& config) {
    return RandomUniform({1, 4, config.hidden_size}, 9, 1.0f);
  }
};

const std::string kPrefix = "model.layers.1.self_attn.";

TEST_F(WeightLoadingTest, Fp8LayerEqualsLayerOnDequantizedWeights) {
  const ModelConfig config = Fp8Config();
  const std::string path = WriteLayer(config, DType::kF8E4M3, "fp8.safetensors");
  std::unique_ptr<AttentionLayer> fp8;
  NamedTensors dequantized;
  {
    const Checkpoint checkpoint = Checkpoint::Open(path);
    NamedWeights weights = LoadHfAttentionWeights(checkpoint, config, 1);
    const Weight& kv_b = weights.at("kv_b_proj.weight");
    EXPECT_EQ(kv_b.dtype(), DType::kF8E4M3);
    EXPECT_EQ(kv_b.block_scale_shape(), (Shape{(4 * (32 + 24) + 31) / 32, 64 / 32}));
    EXPECT_EQ(weights.at("kv_a_layernorm.weight").dtype(), DType::kBF16);
    for (const auto& [name, weight] : weights) dequantized.emplace(name, weight.ToF32());
    fp8 = BuildAttentionLayer(config, 1, std::move(weights));
  }  // the checkpoint and its files are gone; the layer's weights keep the mapping alive
  const std::unique_ptr<AttentionLayer> exact =
      BuildAttentionLayer(config, 1, std::move(dequantized));
  const Tensor x = Hidden(config);
  for (const MlaForm form : {MlaForm::kNaive, MlaForm::kAbsorbed}) {
    // Four rows per projection: the decode path, which widens fp8 exactly.
    const Tensor got = fp8->Forward({&x, {}, {}}, form);
    const Tensor want = exact->Forward({&x, {}, {}}, form);
    EXPECT_LT(RelativeError(got, want), 1e-5) << MlaFormName(form);
  }
}

TEST_F(WeightLoadingTest, WeightsOfOneFileShareOneMapping) {
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const std::string path = WriteLayer(config, DType::kBF16, "bf16.safetensors");
  const SafetensorsFile file = SafetensorsFile::Open(path);
  const Weight a = file.ReadWeight(kPrefix + "q_proj.weight");
  const Weight b = file.ReadWeight(kPrefix + "q_proj.weight");
  EXPECT_EQ(a.dtype(), DType::kBF16);
  EXPECT_EQ(a.data(), b.data());  // the same bytes of the same mapping, not two copies
  const TensorView& view = file.Get(kPrefix + "q_proj.weight");
  const std::vector<std::byte> bytes = file.ReadBytes(kPrefix + "q_proj.weight");
  EXPECT_EQ(std::memcmp(a.data(), bytes.data(), view.nbytes), 0);
}

// Phi-3's stacked qkv_proj: q, k and v are row views of the mapped bf16 tensor (no copy), and
// the layer computes what one built from separate fp32 q/k/v of the same values computes.
TEST_F(WeightLoadingTest, Phi3StackedQkvIsViewedInPlace) {
  ModelConfig config = testing::SmallGqaConfig(4, 2);
  config.model_type = "phi3";
  const std::string path = WriteLayer(config, DType::kBF16, "phi3.safetensors");
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.Contains(kPrefix + "qkv_proj.weight"));
  ASSERT_FALSE(file.Contains(kPrefix + "q_proj.weight"));
  const Weight stacked = file.ReadWeight(kPrefix + "qkv_proj.weight");
  NamedWeights weights = LoadHfAttentionWeights(file, config, 1);
  const int64_t q_rows = config.num_heads * config.gqa.head_dim;
  const int64_t kv_rows = config.gqa.num_kv_heads * config.gqa.head_dim;
  const auto* base = static_cast<const std::byte*>(stacked.data());
  const size_t row_bytes = static_cast<size_t>(config.hidden_size) * 2;
  EXPECT_EQ(weights.at("q_proj.weight").data(), base);
  EXPECT_EQ(weights.at("k_proj.weight").data(), base + static_cast<size_t>(q_rows) * row_bytes);
  EXPECT_EQ(weights.at("v_proj.weight").data(),
            base + static_cast<size_t>(q_rows + kv_rows) * row_bytes);
  EXPECT_EQ(weights.at("v_proj.weight").shape(), (Shape{kv_rows, config.hidden_size}));
  EXPECT_EQ(weights.at("k_proj.weight").dtype(), DType::kBF16);
  NamedTensors exact;
  for (const auto& [name, weight] : weights) exact.emplace(name, weight.ToF32());
  const std::unique_ptr<AttentionLayer> viewed = BuildAttentionLayer(config, 1, std::move(weights));
  const std::unique_ptr<AttentionLayer> copied = BuildAttentionLayer(config, 1, std::move(exact));
  const Tensor x = Hidden(config);
  EXPECT_LT(RelativeError(viewed->Forward({&x, {}, {}}, MlaForm::kAuto),
                          copied->Forward({&x, {}, {}}, MlaForm::kAuto)),
            1e-5);

  // A stacked tensor of the wrong height names the split it expected.
  Rewrite(path, [&](std::map<std::string, TensorView>& views, SafetensorsWriter& writer,
                    const SafetensorsFile&) {
    views.erase(kPrefix + "qkv_proj.weight");
    writer.AddF32(kPrefix + "qkv_proj.weight",
                  RandomUniform({q_rows + kv_rows, config.hidden_size}, 3, 1.0f), DType::kBF16);
  });
  ExpectError([&] { LoadHfAttentionWeights(SafetensorsFile::Open(path), config, 1); },
              ErrorKind::kInvalidArgument, {"qkv_proj.weight", "(q 64 + k 32 + v 32 rows)"});
}

TEST(WeightRowSlice, SharesBytesAndKeepsWholeFp8Blocks) {
  const Tensor values = RandomUniform({64, 32}, 4, 1.0f);
  const Weight bf16 = StoreMatrix(RandomUniform({64, 32}, 4, 1.0f), DType::kBF16);
  const Weight rows = bf16.RowSlice(8, 16);
  EXPECT_EQ(rows.shape(), (Shape{16, 32}));
  EXPECT_EQ(rows.data(), static_cast<const std::byte*>(bf16.data()) + 8 * 32 * 2);
  ExpectError([&] { bf16.RowSlice(60, 8); }, ErrorKind::kInvalidArgument, {"outside"});
  const Weight fp8 = QuantizeF8E4M3Blocks(values, 16, 16);
  const Weight blocks = fp8.RowSlice(16, 32);
  std::vector<float> want(32 * 32), got(32 * 32);
  fp8.DequantizeRows(16, 32, want.data());
  blocks.DequantizeRows(0, 32, got.data());
  EXPECT_EQ(got, want);
  ExpectError([&] { fp8.RowSlice(8, 16); }, ErrorKind::kInvalidArgument, {"scale blocks"});
}

TEST_F(WeightLoadingTest, Fp8WithoutScalesIsNotFound) {
  const ModelConfig config = Fp8Config();
  const std::string path = WriteLayer(config, DType::kF8E4M3, "fp8.safetensors");
  Rewrite(path,
          [](auto& views, auto&, auto&) { views.erase(kPrefix + "o_proj.weight_scale_inv"); });
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { LoadHfAttentionWeights(file, config, 1); }, ErrorKind::kNotFound,
              {"'" + kPrefix + "o_proj.weight'", "o_proj.weight_scale_inv", path});
}

TEST_F(WeightLoadingTest, BlockSizeOtherThanTheConfigsIsRefused) {
  ModelConfig config = Fp8Config();
  const std::string path = WriteLayer(config, DType::kF8E4M3, "fp8.safetensors");
  config.quantization.block_rows = 16;
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { LoadHfAttentionWeights(file, config, 1); }, ErrorKind::kInvalidArgument,
              {"_scale_inv", "expected shape", "[16, 32]"});
}

TEST_F(WeightLoadingTest, WrongScaleDTypeOrValuesAreRefused) {
  const ModelConfig config = Fp8Config();
  const std::string path = WriteLayer(config, DType::kF8E4M3, "fp8.safetensors");
  const std::string scale = kPrefix + "q_b_proj.weight_scale_inv";
  Rewrite(path, [&](auto& views, auto& writer, auto& file) {
    Tensor values = file.ReadF32(scale);
    values.data()[1] = 0.0f;  // a zero scale: every weight of that block would vanish
    writer.AddF32(scale, values);
    views.erase(scale);
  });
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { LoadHfAttentionWeights(file, config, 1); }, ErrorKind::kInvalidArgument,
              {scale, "finite and positive"});
}

TEST_F(WeightLoadingTest, NanFp8CodeIsRefused) {
  const ModelConfig config = Fp8Config();
  const std::string path = WriteLayer(config, DType::kF8E4M3, "fp8.safetensors");
  const std::string name = kPrefix + "kv_b_proj.weight";
  Rewrite(path, [&](auto& views, auto& writer, auto& file) {
    std::vector<std::byte> bytes = file.ReadBytes(name);
    bytes[70] = std::byte{0xff};  // row 1, column 6 of [224, 64]
    writer.AddBytes(name, DType::kF8E4M3, views.at(name).shape, std::move(bytes));
    views.erase(name);
  });
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { LoadHfAttentionWeights(file, config, 1); }, ErrorKind::kInvalidArgument,
              {name, "non-finite", "[1, 6]", "F8_E4M3"});
}

TEST_F(WeightLoadingTest, Fp8NormScaleIsRefused) {
  const ModelConfig config = Fp8Config();
  const std::string path = WriteLayer(config, DType::kF8E4M3, "fp8.safetensors");
  const std::string name = kPrefix + "kv_a_layernorm.weight";
  Rewrite(path, [&](auto& views, auto& writer, auto&) {
    writer.AddBytes(
        name, DType::kF8E4M3, views.at(name).shape,
        std::vector<std::byte>(static_cast<size_t>(views.at(name).shape[0]), std::byte{0x38}));
    writer.AddF32(name + "_scale_inv", Tensor({1, 1}, {1.0f}));
    views.erase(name);
  });
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { LoadHfAttentionWeights(file, config, 1); }, ErrorKind::kInvalidArgument,
              {name, "projection matrices"});
}

TEST_F(WeightLoadingTest, Fp8IsNotReadAsFloats) {
  // ReadF32 would hand out the codes without their scales: refused.
  const ModelConfig config = Fp8Config();
  const std::string path = WriteLayer(config, DType::kF8E4M3, "fp8.safetensors");
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { file.ReadF32(kPrefix + "o_proj.weight"); }, ErrorKind::kInvalidArgument,
              {"o_proj.weight", "F8_E4M3"});
}

TEST_F(WeightLoadingTest, TensorsTheLayerDoesNotUseAreRefused) {
  // A Qwen3-style layer (q/k norms) read with a llama config: every path names the tensor.
  const ModelConfig config = testing::SmallGqaConfig(4, 2);
  const std::string path = WriteLayer(config, DType::kBF16, "llama.safetensors");
  Rewrite(path, [&](auto&, auto& writer, auto&) {
    writer.AddF32(kPrefix + "q_norm.weight", Tensor({config.gqa.head_dim}));
    writer.AddF32(kPrefix + "rotary_emb.inv_freq", Tensor({config.gqa.head_dim / 2}));
  });
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { LoadHfAttentionWeights(file, config, 1); }, ErrorKind::kInvalidArgument,
              {kPrefix + "q_norm.weight", "not part of a llama attention layer"});
  ExpectError([&] { ReadHfAttentionWeights(file, config, 1); }, ErrorKind::kInvalidArgument,
              {kPrefix + "q_norm.weight"});
  // rotary_emb.inv_freq (older Llama checkpoints) alone is tolerated, on the dict path too.
  Rewrite(path, [&](auto& views, auto&, auto&) { views.erase(kPrefix + "q_norm.weight"); });
  const SafetensorsFile cleaned = SafetensorsFile::Open(path);
  NamedWeights weights = LoadHfAttentionWeights(cleaned, config, 1);
  weights.emplace("rotary_emb.inv_freq", Weight(Tensor({config.gqa.head_dim / 2})));
  EXPECT_NE(BuildAttentionLayer(config, 1, std::move(weights)), nullptr);
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// UnfuseAttentionTensors: the fused checkpoint projections of Falcon and Phi-3 split into the
// names the layer reads, equal to FuseGroupedQkv's inverse and to row slices; a fused tensor
// given beside its split parts, or of the wrong row count, is refused by name.
TEST(UnfuseAttentionTensors, SplitsFalconAndPhi3AndRefusesMixtures) {
  ModelConfig falcon = testing::SmallGqaConfig(4, 2);
  falcon.model_type = "falcon";
  const int64_t d = falcon.gqa.head_dim;
  const int64_t hidden = falcon.hidden_size;
  NamedTensors split = RandomAttentionWeights(falcon, 4);
  NamedTensors fused;
  fused.emplace("query_key_value.weight",
                FuseGroupedQkv(split.at("q_proj.weight"), split.at("k_proj.weight"),
                               split.at("v_proj.weight"), 4, 2, d));
  fused.emplace("dense.weight", split.at("o_proj.weight").Copy());
  const NamedTensors unfused = UnfuseAttentionTensors(falcon, std::move(fused));
  for (const char* name : {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}) {
    ASSERT_TRUE(unfused.contains(name)) << name;
    EXPECT_EQ(RelativeError(unfused.at(name), split.at(name)), 0.0) << name;
  }
  EXPECT_FALSE(unfused.contains("query_key_value.weight"));

  NamedTensors both;
  both.emplace("query_key_value.weight", Tensor({8 * d, hidden}));
  both.emplace("q_proj.weight", Tensor({4 * d, hidden}));
  ExpectError([&] { UnfuseAttentionTensors(falcon, std::move(both)); }, ErrorKind::kInvalidArgument,
              {"q_proj.weight", "beside", "query_key_value.weight"});
  NamedTensors short_rows;
  short_rows.emplace("query_key_value.weight", Tensor({7 * d, hidden}));
  ExpectError([&] { UnfuseAttentionTensors(falcon, std::move(short_rows)); },
              ErrorKind::kInvalidArgument, {"query_key_value.weight"});

  ModelConfig phi3 = testing::SmallGqaConfig(4, 2);
  phi3.model_type = "phi3";
  Tensor stacked({8 * d, hidden});
  for (int64_t i = 0; i < stacked.size(); ++i) stacked.data()[i] = static_cast<float>(i);
  NamedTensors phi;
  phi.emplace("qkv_proj.weight", std::move(stacked));
  const NamedTensors rows = UnfuseAttentionTensors(phi3, std::move(phi));
  EXPECT_EQ(rows.at("q_proj.weight").shape(), (Shape{4 * d, hidden}));
  EXPECT_EQ(rows.at("k_proj.weight").data()[0], static_cast<float>(4 * d * hidden));
  EXPECT_EQ(rows.at("v_proj.weight").data()[0], static_cast<float>(6 * d * hidden));
  NamedTensors wrong;
  wrong.emplace("qkv_proj.weight", Tensor({6 * d, hidden}));
  ExpectError([&] { UnfuseAttentionTensors(phi3, std::move(wrong)); }, ErrorKind::kInvalidArgument,
              {"qkv_proj.weight", "expected shape"});
}

}  // namespace
}  // namespace attn
