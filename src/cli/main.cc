// SPDX-License-Identifier: Apache-2.0
// attn: command-line entry point. Dispatches to a subcommand and maps failures to exit codes:
// 0 success, 2 bad input (attn::Error, usage), 1 anything unexpected.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/presets.h"
#include "attn/version.h"
#include "cli/commands.h"
#include "cli/flags.h"

namespace {

// The one list of commands: dispatch and `attn --help` both read it.
const std::vector<attn::cli::Subcommand>& Commands() {
  static const std::vector<attn::cli::Subcommand> commands = {
      {"bench", "measure speed: kernel, layer, peak (the machine's roofs), --compare-torch",
       attn::cli::RunBench},
      {"check-scale", "softmax scale, RoPE attention factor and framework pitfalls of a config",
       attn::cli::RunCheckScale},
      {"convert", "one layer between Hugging Face and Megatron-Core names", attn::cli::RunConvert},
      {"demo", "MHA, GQA, MQA and MLA side by side on random weights", attn::cli::RunDemo},
      {"forward", "run one attention layer over the tokens of a safetensors file",
       attn::cli::RunForward},
      {"info", "parameters, KV cache, longest context, FLOPs and intensity of a model",
       attn::cli::RunInfo},
      {"random-weights", "write one layer's random weights under HF names",
       attn::cli::RunRandomWeights},
  };
  return commands;
}

std::string Usage() {
  return attn::cli::SubcommandUsage(
      "attn", Commands(),
      "options:\n"
      "  -h, --help      print this list and exit\n"
      "  --version       print the attn version and exit\n"
      "\n"
      "Run 'attn <command> --help' for a command's options; '--flag value' and '--flag=value'\n"
      "both work. Wherever --config C.json is accepted, --preset NAME works too: " +
          attn::PresetList() + ". See docs/reference.md.\n");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string command = argc < 2 ? "" : argv[1];
  if (command == "--help" || command == "-h" || command == "help") {
    std::fputs(Usage().c_str(), stdout);
    return 0;
  }
  if (command == "--version" || command == "version") {
    std::printf("attn %s\n", ATTN_VERSION_STRING);
    return 0;
  }
  const std::vector<std::string> args(argv + std::min(argc, 2), argv + argc);
  try {
    for (const attn::cli::Subcommand& entry : Commands()) {
      if (entry.name == command) return entry.run(args);
    }
    const std::string problem =
        command.empty() ? "which command?" : "unknown command '" + command + "'";
    std::fprintf(stderr, "attn: %s\n\n%s", problem.c_str(), Usage().c_str());
    return 2;
  } catch (const attn::cli::UsageError& error) {
    std::fprintf(stderr, "attn %s: error: %s\n\n%s", command.c_str(), error.what(),
                 error.usage().c_str());
    return 2;
  } catch (const attn::Error& error) {
    std::fprintf(stderr, "attn %s: error: %s\n", command.c_str(), error.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "attn %s: error: out of memory\n", command.c_str());
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "attn %s: internal error: %s\n", command.c_str(), error.what());
    return 1;
  }
}
