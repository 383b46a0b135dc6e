// SPDX-License-Identifier: Apache-2.0
#include "cli/config_flags.h"

#include <filesystem>
#include <sstream>

#include "attn/error.h"
#include "attn/presets.h"

namespace attn::cli {
namespace {

LoadedConfig FromPreset(const std::string& name) {
  LoadedConfig loaded;
  loaded.config = LoadPreset(name);
  loaded.format = "hf";
  loaded.source = "preset " + name;
  return loaded;
}

}  // namespace

void AddConfigFlags(Flags& flags) {
  flags.Text("config", "C.json", "model config.json, Hugging Face or Megatron-Core names")
      .Text("preset", "NAME", "a built-in model instead of --config (names below)");
  // The preset names, wrapped: the usage is read in a terminal.
  std::string footer = "presets:";
  size_t line = footer.size();
  std::stringstream names(PresetList());
  for (std::string name; std::getline(names, name, ',');) {
    if (name.front() == ' ') name.erase(0, 1);
    if (line + 1 + name.size() > 96) {
      footer += "\n ";
      line = 1;
    }
    footer += " " + name;
    line += 1 + name.size();
  }
  flags.Footer(footer + "\n");
}

LoadedConfig ConfigFromFlags(const Flags& flags) {
  const bool has_config = flags.Has("config");
  const bool has_preset = flags.Has("preset");
  flags.Require(
      has_config != has_preset,
      has_config ? "give --config or --preset, not both"
                 : "--config C.json or --preset NAME is required (presets: " + PresetList() + ")");
  if (has_preset) return FromPreset(flags.Required("preset"));
  return LoadAnyConfig(flags.Required("config"));
}

LoadedConfig ConfigFromName(const std::string& name) {
  std::error_code ec;
  if (std::filesystem::exists(name, ec)) return LoadAnyConfig(name);
  return FromPreset(name);  // unknown: the message lists the presets
}

std::string ModelLabel(const LoadedConfig& loaded) {
  if (loaded.source.rfind("preset ", 0) == 0) return loaded.source.substr(7);
  return std::filesystem::path(loaded.source).filename().string();
}

}  // namespace attn::cli
