// SPDX-License-Identifier: Apache-2.0
// libFuzzer harness: Megatron-Core config text through ParseMegatronConfig, and an accepted
// config back out through both writers. Any outcome but success or attn::Error is a finding.
#include <cstddef>
#include <cstdint>
#include <string>

#include "attn/error.h"
#include "attn/megatron.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    const attn::LoadedConfig loaded = attn::ParseMegatronConfig(text, "fuzz.json");
    try {
      attn::ParseMegatronConfig(attn::MegatronConfigJson(loaded.config), "round-trip");
    } catch (const attn::Error&) {
    }
    try {
      attn::HfConfigJson(loaded.config);
    } catch (const attn::Error&) {
    }
  } catch (const attn::Error&) {
  }
  return 0;
}
