// SPDX-License-Identifier: Apache-2.0
// attn check-scale: the softmax scale and RoPE attention factor a config implies, and the
// known framework pitfalls it would trigger (scale_check.h).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "attn/scale_check.h"
#include "cli/commands.h"
#include "cli/config_flags.h"
#include "cli/flags.h"

namespace attn::cli {

int RunCheckScale(const std::vector<std::string>& args) {
  Flags flags("check-scale",
              "The softmax scale, RoPE attention factor and framework pitfalls of a config.");
  AddConfigFlags(flags);
  flags.Switch("json", "print JSON instead of text");
  if (!flags.Parse(args)) return 0;
  const LoadedConfig loaded = ConfigFromFlags(flags);
  const ModelConfig& config = loaded.config;
  const ScaleReport report = CheckScale(config, loaded.megatron);
  const char* pairing =
      config.rope.pairing == RopePairing::kInterleaved ? "interleaved pairs" : "rotate-half";

  if (flags.Has("json")) {
    nlohmann::json pitfalls = nlohmann::json::array();
    for (const Pitfall& p : report.pitfalls) {
      pitfalls.push_back({{"id", p.id},
                          {"triggered", p.triggered},
                          {"wrong_value", p.wrong_value ? nlohmann::json(*p.wrong_value)
                                                        : nlohmann::json(nullptr)},
                          {"explanation", p.explanation}});
    }
    const nlohmann::json out = {{"model", ModelLabel(loaded)},
                                {"format", loaded.format},
                                {"softmax_scale", report.softmax_scale},
                                {"formula", report.formula},
                                {"rope_attention_factor", report.rope_attention_factor},
                                {"rope_pairing", pairing},
                                {"pitfalls", pitfalls}};
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("%s (%s config, %s)\n", ModelLabel(loaded).c_str(),
              loaded.format == "megatron" ? "Megatron-Core" : "Hugging Face",
              config.kind == AttentionKind::kMla ? "MLA" : "GQA family");
  std::printf("softmax scale          %.9g  = %s\n", report.softmax_scale, report.formula.c_str());
  std::printf("rope attention factor  %.9g  (multiplies cos and sin)\n",
              report.rope_attention_factor);
  std::printf("rope pairing           %s\n\npitfalls:\n", pairing);
  int triggered = 0;
  for (const Pitfall& p : report.pitfalls) {
    triggered += p.triggered ? 1 : 0;
    std::printf("  [%s] %-24s %s\n", p.triggered ? "!!" : "ok", p.id.c_str(),
                p.explanation.c_str());
  }
  std::printf("\n%d pitfall(s) this config would trigger in a framework that makes the mistake.\n",
              triggered);
  return 0;
}

}  // namespace attn::cli
