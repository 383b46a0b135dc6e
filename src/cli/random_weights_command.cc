// SPDX-License-Identifier: Apache-2.0
// attn random-weights: one attention layer's weights, deterministic in --seed, under HF names.
#include "attn/error.h"
#include "attn/hf_weights.h"
#include "attn/layer_weights.h"
#include "attn/safetensors.h"
#include "cli/commands.h"
#include "cli/config_flags.h"
#include "cli/flags.h"

namespace attn::cli {

int RunRandomWeights(const std::vector<std::string>& args) {
  Flags flags("random-weights",
              "Writes one layer's random weights under HF names, deterministic in --seed.");
  AddConfigFlags(flags);
  flags.Text("output", "W.safetensors", "the weights file to write")
      .Mandatory()
      .Integer("seed", "N", "random seed", "0")
      .Integer("layer", "I", "the layer index in the tensor names", "0")
      .Text("dtype", "DTYPE", "storage: f32, f16 or bf16", "f32");
  if (!flags.Parse(args)) return 0;
  const ModelConfig config = ConfigFromFlags(flags).config;
  const int64_t layer = flags.GetInt("layer");
  Check(layer >= 0 && layer < config.num_layers, ErrorKind::kInvalidArgument,
        "--layer " + std::to_string(layer) + " out of range (model has " +
            std::to_string(config.num_layers) + " layers)");
  const int64_t seed = flags.GetInt("seed");
  const DType dtype = StorageDTypeFromString(flags.Get("dtype"));
  const std::string& output = flags.Required("output");

  SafetensorsWriter writer;
  AddHfAttentionWeights(writer, config, RandomAttentionWeights(config, static_cast<uint64_t>(seed)),
                        layer, dtype);
  writer.SetMetadata("format", "pt");
  writer.Write(output);
  return 0;
}

}  // namespace attn::cli
