// attn: command-line entry point. Dispatches to a subcommand and maps failures to exit codes:
// 0 success, 2 bad input (attn::Error, usage), 1 anything unexpected.
#include <cstdio>
#include <exception>
#include <new>
#include <string>
#include <vector>

#include "attn/error.h"
#include "cli/commands.h"

namespace {

constexpr const char* kUsage =
    "usage: attn <command> [options]\n"
    "\n"
    "commands:\n"
    "  bench           measure speed: kernel (one attention call vs this machine's roofs),\n"
    "                  layer (prefill/decode of a config), peak (the roofs), --compare-torch\n"
    "  check-scale     softmax scale, RoPE attention factor and framework pitfalls of a config:\n"
    "                  --config C.json (HF or Megatron-Core names) | --preset NAME [--json]\n"
    "  convert         one layer between HF and Megatron-Core names: --from hf|megatron\n"
    "                  --to hf|megatron --config C.json|--preset NAME --input W.safetensors\n"
    "                  --output W2.safetensors [--layer I] [--config-output C2.json]\n"
    "  demo            MHA, GQA, MQA and MLA side by side on random weights [--preset NAME]\n"
    "                  [--context N] [--decode M] [--plot FILE.png]\n"
    "  forward         run one attention layer: --config C.json --weights W.safetensors\n"
    "                  --input IN.safetensors --output OUT.safetensors [--layer I]\n"
    "                  [--mla naive|absorbed|auto] [--prefill N] [--cache-dtype f32|f16|bf16]\n"
    "                  [--threads N]\n"
    "  info            parameters, KV cache, longest context, FLOPs and intensity of a model:\n"
    "                  --preset NAME | --config C.json | --compare a,b,c [--context 128k]\n"
    "                  [--batch B] [--dtype bf16] [--memory 80GiB] [--json]\n"
    "  random-weights  write one layer's weights: --config C.json --output W.safetensors\n"
    "                  [--seed N] [--layer I] [--dtype f32|f16|bf16]\n"
    "\n"
    "Wherever --config C.json is accepted, --preset NAME works too: llama-2-7b, llama-3-8b,\n"
    "llama-3.1-8b, llama-3-70b, mistral-7b-v0.1, qwen2.5-7b, falcon-7b, deepseek-v2-lite,\n"
    "deepseek-v2, deepseek-v3, kimi-k2. See docs/reference.md for every option.\n";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (command == "forward") return attn::cli::RunForward(args);
    if (command == "info") return attn::cli::RunInfo(args);
    if (command == "check-scale") return attn::cli::RunCheckScale(args);
    if (command == "convert") return attn::cli::RunConvert(args);
    if (command == "random-weights") return attn::cli::RunRandomWeights(args);
    if (command == "demo") return attn::cli::RunDemo(args);
    if (command == "bench") return attn::cli::RunBench(args);
    std::fprintf(stderr, "attn: unknown command '%s'\n\n%s", command.c_str(), kUsage);
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
