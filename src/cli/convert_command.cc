// SPDX-License-Identifier: Apache-2.0
// attn convert: one attention layer between Hugging Face and Megatron-Core names, and the
// config between the two namings. Values are copied, never recomputed: each tensor is written
// in the dtype its source had, so HF -> Megatron -> HF gives back the same bytes.
#include <cstdio>
#include <string>

#include "attn/error.h"
#include "attn/hf_weights.h"
#include "attn/megatron.h"
#include "attn/safetensors.h"
#include "cli/commands.h"
#include "cli/config_flags.h"
#include "cli/flags.h"
#include "io/files.h"

namespace attn::cli {
namespace {

// The storage dtype shared by every tensor of the layer in `file` (F64 -> F32, as the writer
// stores F32/F16/BF16 only; mixed dtypes -> F32, exact for all of them).
DType SourceDType(const SafetensorsFile& file, const std::string& prefix) {
  bool first = true;
  DType shared = DType::kF32;
  for (const std::string& name : file.Names()) {
    if (name.rfind(prefix, 0) != 0) continue;
    const DType dtype = file.Get(name).dtype;
    if (first) {
      shared = dtype;
      first = false;
    } else if (dtype != shared) {
      return DType::kF32;
    }
  }
  return shared == DType::kF16 || shared == DType::kBF16 ? shared : DType::kF32;
}

}  // namespace

int RunConvert(const std::vector<std::string>& args) {
  Flags flags("convert", "Converts one layer between Hugging Face and Megatron-Core names.");
  flags.Text("from", "NAMES", "the names of --input: hf or megatron")
      .Mandatory()
      .Text("to", "NAMES", "the names to write: hf or megatron")
      .Mandatory();
  AddConfigFlags(flags);
  flags.Text("input", "W.safetensors", "the layer's weights to convert (with --output)")
      .Text("output", "W2.safetensors", "the converted weights (with --input)")
      .Integer("layer", "I", "which layer", "0")
      .Text("dtype", "DTYPE", "storage f32, f16 or bf16 (default: the source's)")
      .Text("norm-names", "STYLE",
            "Megatron norm names: te (linear_*_up_proj.layer_norm_weight) or local "
            "(q_layernorm/kv_layernorm)",
            "te")
      .Text("config-output", "C2.json", "also write the config in --to names");
  if (!flags.Parse(args)) return 0;
  const std::string from = flags.Required("from");
  const std::string to = flags.Required("to");
  Check((from == "hf" || from == "megatron") && (to == "hf" || to == "megatron"),
        ErrorKind::kInvalidArgument,
        "--from and --to take 'hf' or 'megatron', got '" + from + "' and '" + to + "'");
  const LoadedConfig loaded = ConfigFromFlags(flags);
  const ModelConfig& config = loaded.config;
  const std::string norm_names = flags.Get("norm-names");
  Check(norm_names == "te" || norm_names == "local", ErrorKind::kInvalidArgument,
        "--norm-names takes 'te' (linear_*_up_proj.layer_norm_weight) or 'local' "
        "(q_layernorm/kv_layernorm), got '" +
            norm_names + "'");
  flags.Require(flags.Has("input") == flags.Has("output"), "--input and --output go together");
  flags.Require(flags.Has("input") || flags.Has("config-output"),
                "nothing to do: give --input W.safetensors --output W2.safetensors and/or "
                "--config-output C2.json");

  // Nothing is written until every input has been read and validated, and each output is
  // replaced atomically (io/files.h): a run that fails leaves existing outputs as they were.
  const std::string config_text =
      to == "megatron" ? MegatronConfigJson(config) : HfConfigJson(config);
  if (!flags.Has("input")) {
    io::AtomicWriteFile(flags.Required("config-output"), config_text);
    return 0;
  }

  const int64_t layer = flags.GetInt("layer");
  Check(layer >= 0 && layer < config.num_layers, ErrorKind::kInvalidArgument,
        "--layer " + std::to_string(layer) + " out of range (model has " +
            std::to_string(config.num_layers) + " layers)");
  const SafetensorsFile input = SafetensorsFile::Open(flags.Required("input"));
  const std::string source_prefix =
      from == "megatron" ? MegatronAttentionPrefix(layer) : HfAttentionPrefix(config, layer);
  const NamedTensors weights = from == "megatron"
                                   ? ReadMegatronAttentionWeights(input, config, layer)
                                   : ReadHfAttentionWeights(input, config, layer);
  const DType dtype = flags.Has("dtype") ? StorageDTypeFromString(flags.Required("dtype"))
                                         : SourceDType(input, source_prefix);
  SafetensorsWriter writer;
  if (to == "megatron") {
    AddMegatronAttentionWeights(
        writer, config, weights, layer, dtype,
        norm_names == "local" ? MegatronNormNames::kLocal : MegatronNormNames::kTransformerEngine);
  } else {
    AddHfAttentionWeights(writer, config, weights, layer, dtype);
  }
  writer.SetMetadata("format", "pt");
  writer.Write(flags.Required("output"));
  if (flags.Has("config-output")) io::AtomicWriteFile(flags.Required("config-output"), config_text);
  return 0;
}

}  // namespace attn::cli
