// SPDX-License-Identifier: Apache-2.0
// Built-in configurations of real models (docs/semantics.md §6), so
// that `attn info --preset deepseek-v3` needs no file. Each preset is the attention-relevant
// subset of the model's public config.json, parsed by the same ParseHfConfig as a file would be.
#ifndef ATTN_PRESETS_H_
#define ATTN_PRESETS_H_

#include <string>
#include <vector>

#include "attn/config.h"

namespace attn {

// Preset names in the order `attn info` lists them: "llama-2-7b", …, "kimi-k2".
std::vector<std::string> PresetNames();

// The config.json text of preset `name` (case-insensitive). Throws Error(kInvalidArgument)
// naming `name` and listing every known preset when there is no such preset.
const std::string& PresetConfigJson(const std::string& name);

// ParseHfConfig(PresetConfigJson(name)).
ModelConfig LoadPreset(const std::string& name);

// "llama-2-7b, llama-3-8b, …" for messages.
std::string PresetList();

}  // namespace attn

#endif  // ATTN_PRESETS_H_
