// SPDX-License-Identifier: Apache-2.0
// libFuzzer harness: model.safetensors.index.json text through ParseSafetensorsIndex, the
// parser Checkpoint::Open runs on an index. Any outcome but success or attn::Error is a finding:
// crashes and sanitizer reports directly, other exceptions by escaping the harness, and an
// accepted shard name that could lead outside the index's directory by a trap.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "attn/checkpoint.h"
#include "attn/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto weight_map = attn::ParseSafetensorsIndex(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz.index.json");
    if (weight_map.empty()) __builtin_trap();
    for (const auto& [name, shard] : weight_map) {
      if (shard.empty() || shard == "." || shard == ".." ||
          shard.find_first_of(std::string_view("/\\\0", 3)) != std::string::npos) {
        __builtin_trap();
      }
    }
  } catch (const attn::Error&) {
  }
  return 0;
}
