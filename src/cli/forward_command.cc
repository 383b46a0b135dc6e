// SPDX-License-Identifier: Apache-2.0
// attn forward: one attention layer over the tokens in an input safetensors file.
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <vector>

#include "attn/checkpoint.h"
#include "attn/error.h"
#include "attn/layer_weights.h"
#include "attn/megatron.h"
#include "attn/safetensors.h"
#include "cli/commands.h"
#include "cli/config_flags.h"
#include "cli/flags.h"
#include "cli/parallel_flags.h"

namespace attn::cli {
namespace {

// Reads an optional [B, S] integer input and checks its shape.
std::vector<int64_t> ReadTokenGrid(const SafetensorsFile& input, const std::string& name,
                                   int64_t batch, int64_t tokens) {
  if (!input.Contains(name)) return {};
  Shape shape;
  std::vector<int64_t> values = input.ReadI64(name, &shape);
  Check(shape == Shape{batch, tokens}, ErrorKind::kInvalidArgument,
        name + ": expected shape " + ShapeToString({batch, tokens}) +
            " to match hidden_states, got " + ShapeToString(shape));
  return values;
}

}  // namespace

int RunForward(const std::vector<std::string>& args) {
  Flags flags("forward", "Runs one attention layer over the tokens of an input file.");
  AddConfigFlags(flags);
  flags
      .Text("weights", "W",
            "the weights: a .safetensors file (HF or Megatron-Core names), a sharded model's "
            "model.safetensors.index.json, or a model directory holding one (its config.json "
            "is used when neither --config nor --preset is given)")
      .Mandatory()
      .Text("input", "IN.safetensors",
            "hidden_states F32 [B,S,D], optional position_ids, attention_mask [B,S]")
      .Mandatory()
      .Text("output", "OUT.safetensors", "where attn_output [B,S,D] is written")
      .Mandatory()
      .Text("output-dtype", "DTYPE",
            "attn_output's dtype: f32, f16 or bf16 (default: hidden_states' own)")
      .Integer("layer", "I", "which layer of the checkpoint", "0")
      .Text("mla", "FORM", "MLA models only: naive, absorbed or auto", "auto")
      .Integer("prefill", "N", "first N tokens as one prefill, then one decode step per token")
      .Text("cache-dtype", "DTYPE", "KV cache storage with --prefill: f32, f16 or bf16", "f32");
  AddThreadsFlag(flags);
  AddParallelFlags(flags);
  if (!flags.Parse(args)) return 0;
  ApplyThreadsFlag(flags);
  const ParallelRun run = StartParallel(flags);

  // Everything each rank reads on its own (checkpoint headers, config, input) is checked under
  // RunOnEveryRank, so a rank that cannot read a file fails every rank, not only itself.
  std::optional<Checkpoint> weights;
  ModelConfig config;
  int64_t layer_index = 0;
  MlaForm form = MlaForm::kAuto;
  DType cache_dtype = DType::kF32;
  DType output_dtype = DType::kF32;
  Tensor hidden;
  std::vector<int64_t> positions;
  std::vector<uint8_t> keep;
  RunOnEveryRank(run, [&] {
    weights.emplace(Checkpoint::Open(flags.Required("weights")));
    const bool weights_directory = std::filesystem::is_directory(flags.Required("weights"));
    const bool config_from_directory =
        weights_directory && !flags.Has("config") && !flags.Has("preset");
    const std::string directory_config = weights->directory() + "/config.json";
    Check(!config_from_directory || std::filesystem::exists(directory_config), ErrorKind::kNotFound,
          "model directory '" + flags.Required("weights") +
              "' has no config.json; pass --config C.json or --preset NAME");
    config = config_from_directory ? LoadAnyConfig(directory_config).config
                                   : ConfigFromFlags(flags).config;
    layer_index = flags.GetInt("layer");
    Check(layer_index >= 0 && layer_index < config.num_layers, ErrorKind::kInvalidArgument,
          "--layer " + std::to_string(layer_index) + " out of range (model has " +
              std::to_string(config.num_layers) + " layers)");
    Check(!flags.Has("mla") || config.kind == AttentionKind::kMla, ErrorKind::kInvalidArgument,
          "--mla applies only to MLA models; '" + config.model_type + "' is GQA-family");
    form = MlaFormFromString(flags.Get("mla"));
    cache_dtype = StorageDTypeFromString(flags.Get("cache-dtype"));

    const SafetensorsFile input = SafetensorsFile::Open(flags.Required("input"));
    // Activations keep their dtype: computed in fp32 (accumulation included), written back as
    // hidden_states was given (F64 input gives F32), unless --output-dtype says otherwise.
    const DType input_dtype = input.Get("hidden_states").dtype;
    output_dtype = flags.Has("output-dtype") ? WeightDTypeFromString(flags.Get("output-dtype"))
                   : (input_dtype == DType::kF16 || input_dtype == DType::kBF16) ? input_dtype
                                                                                 : DType::kF32;
    hidden = input.ReadF32("hidden_states");
    Check(hidden.rank() == 3 && hidden.dim(2) == config.hidden_size && hidden.dim(0) > 0 &&
              hidden.dim(1) > 0,
          ErrorKind::kInvalidArgument,
          "hidden_states: expected shape [B, S, " + std::to_string(config.hidden_size) + "], got " +
              ShapeToString(hidden.shape()));
    CheckFinite(hidden, "hidden_states");
    const int64_t batch = hidden.dim(0);
    const int64_t tokens = hidden.dim(1);
    positions = ReadTokenGrid(input, "position_ids", batch, tokens);
    const std::vector<int64_t> mask = ReadTokenGrid(input, "attention_mask", batch, tokens);
    for (int64_t value : mask) {
      Check(value == 0 || value == 1, ErrorKind::kInvalidArgument,
            "attention_mask: values must be 0 (pad) or 1 (keep), got " + std::to_string(value));
      keep.push_back(static_cast<uint8_t>(value));
    }
  });
  CheckRanksAgree(*run.comm, hidden.size(), "the size of hidden_states");
  const int64_t tokens = hidden.dim(1);

  const std::unique_ptr<AttentionLayer> layer =
      BuildLayerForRun(run, *weights, config, layer_index);
  const int64_t prefill = flags.GetInt("prefill", tokens);
  const TokenBatch token_batch{&hidden, positions, keep};
  const Tensor output = layer->PrefillThenDecode(token_batch, prefill, form, cache_dtype);
  // Inputs were finite, so a NaN/Inf here comes from the weights or an overflow: refuse to write
  // it rather than hand on a silent NaN.
  CheckFinite(output, "layer " + std::to_string(layer_index) + " output attn_output");
  if (output_dtype == DType::kF16) {
    // Beyond ±65504 a half is ±inf: refuse rather than write an inf the fp32 result did not have.
    for (const float value : output.values()) {
      Check(std::fabs(value) < 65520.0f, ErrorKind::kInvalidArgument,
            "attn_output: value " + std::to_string(value) +
                " overflows f16 (largest 65504); use --output-dtype f32 or bf16");
    }
  }
  // Every rank holds the whole output; one writes it, after every rank has finished.
  run.comm->Barrier();
  if (!run.writes_output()) return 0;

  SafetensorsWriter writer;
  writer.AddF32("attn_output", output, output_dtype);
  writer.Write(flags.Required("output"));
  return 0;
}

}  // namespace attn::cli
