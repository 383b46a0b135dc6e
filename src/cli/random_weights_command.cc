// SPDX-License-Identifier: Apache-2.0
// attn random-weights: one attention layer's weights, deterministic in --seed, under HF names.
#include "attn/error.h"
#include "attn/hf_weights.h"
#include "attn/layer_weights.h"
#include "attn/megatron.h"
#include "attn/safetensors.h"
#include "cli/commands.h"
#include "cli/config_flags.h"
#include "cli/flags.h"
#include "io/files.h"

namespace attn::cli {

int RunRandomWeights(const std::vector<std::string>& args) {
  Flags flags("random-weights",
              "Writes one layer's random weights under HF names, deterministic in --seed.");
  AddConfigFlags(flags);
  flags.Text("output", "W.safetensors", "the weights file to write")
      .Mandatory()
      .Integer("seed", "N", "random seed", "0")
      .Integer("layer", "I", "the layer index in the tensor names", "0")
      .Text("dtype", "DTYPE",
            "storage: f32, f16, bf16, or fp8 (DeepSeek's F8_E4M3 with 128x128 block scales)", "f32")
      .Text("config-output", "C.json",
            "also write the model's HF config.json (with its quantization_config for fp8)");
  if (!flags.Parse(args)) return 0;
  ModelConfig config = ConfigFromFlags(flags).config;
  const int64_t layer = flags.GetInt("layer");
  Check(layer >= 0 && layer < config.num_layers, ErrorKind::kInvalidArgument,
        "--layer " + std::to_string(layer) + " out of range (model has " +
            std::to_string(config.num_layers) + " layers)");
  const int64_t seed = flags.GetInt("seed");
  const std::string dtype_name = flags.Get("dtype");
  const bool fp8 = dtype_name == "fp8";
  const DType dtype = WeightDTypeFromString(dtype_name, /*allow_fp8=*/true);
  if (fp8) config.quantization.fp8_blocks = true;
  const std::string& output = flags.Required("output");
  // The config is rendered before anything is written, so an unwritable config (a model HF
  // cannot spell) leaves no weights file behind either.
  const std::string config_text = flags.Has("config-output") ? HfConfigJson(config) : "";

  SafetensorsWriter writer;
  AddHfAttentionWeights(writer, config, RandomAttentionWeights(config, static_cast<uint64_t>(seed)),
                        layer, dtype);
  writer.SetMetadata("format", "pt");
  writer.Write(output);
  if (flags.Has("config-output")) io::AtomicWriteFile(flags.Required("config-output"), config_text);
  return 0;
}

}  // namespace attn::cli
