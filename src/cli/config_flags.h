// SPDX-License-Identifier: Apache-2.0
// `--config C.json` or `--preset NAME`: the one way every attn command gets its model.
#ifndef ATTN_CLI_CONFIG_FLAGS_H_
#define ATTN_CLI_CONFIG_FLAGS_H_

#include <string>

#include "attn/megatron.h"
#include "cli/flags.h"

namespace attn::cli {

// Declares --config and --preset.
void AddConfigFlags(Flags& flags);

// Exactly one of --config (a file in HF or Megatron-Core names) and --preset (a built-in
// model); anything else throws Error(kInvalidArgument) saying so.
LoadedConfig ConfigFromFlags(const Flags& flags);

// A model named on the command line: a preset name, or else a config file path.
LoadedConfig ConfigFromName(const std::string& name);

// What to call the model in output: the preset name or the file name.
std::string ModelLabel(const LoadedConfig& loaded);

}  // namespace attn::cli

#endif  // ATTN_CLI_CONFIG_FLAGS_H_
