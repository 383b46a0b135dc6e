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
  const Flags flags(args, {"config", "preset", "output", "seed", "layer", "dtype"}, {});
  const ModelConfig config = ConfigFromFlags(flags).config;
  const int64_t layer = flags.GetInt("layer", 0);
  Check(layer >= 0 && layer < config.num_layers, ErrorKind::kInvalidArgument,
        "--layer " + std::to_string(layer) + " out of range (model has " +
            std::to_string(config.num_layers) + " layers)");
  const int64_t seed = flags.GetInt("seed", 0);
  const DType dtype = StorageDTypeFromString(flags.Get("dtype", "f32"));
  const std::string& output = flags.Required("output");

  SafetensorsWriter writer;
  AddHfAttentionWeights(writer, config, RandomAttentionWeights(config, static_cast<uint64_t>(seed)),
                        layer, dtype);
  writer.SetMetadata("format", "pt");
  writer.Write(output);
  return 0;
}

}  // namespace attn::cli
