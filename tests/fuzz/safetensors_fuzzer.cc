// SPDX-License-Identifier: Apache-2.0
// libFuzzer harness: a whole safetensors file image through the header parser SafetensorsFile
// uses (io::ParseSafetensorsImage). Any outcome but success or attn::Error is a finding:
// crashes and sanitizer reports directly, other exceptions by escaping the harness.
#include <cstddef>
#include <cstdint>
#include <span>

#include "attn/error.h"
#include "io/safetensors_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const attn::io::ParsedSafetensors parsed =
        attn::io::ParseSafetensorsImage("fuzz.safetensors", std::as_bytes(std::span(data, size)));
    // Views must lie inside the data region the image has.
    for (const auto& [name, view] : parsed.tensors) {
      if (view.offset + view.nbytes > size) __builtin_trap();
    }
  } catch (const attn::Error&) {
  }
  return 0;
}
