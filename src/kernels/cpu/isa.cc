// SPDX-License-Identifier: Apache-2.0
#include "kernels/cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <string>

#include "attn/error.h"

namespace attn::cpu {
namespace {

IsaSupport Detect() {
  IsaSupport support{Isa::kReference, false};
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx512) support = {Isa::kAvx512, __builtin_cpu_supports("avx512bf16") != 0};
#endif
  const char* requested = std::getenv("ATTN_CPU_ISA");
  if (requested != nullptr && std::strcmp(requested, "reference") == 0) {
    support = {Isa::kReference, false};
  } else if (requested != nullptr && std::strcmp(requested, "avx512-nobf16") == 0) {
    support.bf16_dot = false;
  }
  return support;
}

IsaSupport& Active() {
  static IsaSupport support = Detect();
  return support;
}

}  // namespace

const IsaSupport& ActiveIsa() { return Active(); }

const char* IsaName(const IsaSupport& support) {
  if (support.isa == Isa::kReference) return "reference";
  return support.bf16_dot ? "avx512+bf16" : "avx512";
}

void ForceIsa(Isa isa, bool bf16_dot) {
  const IsaSupport detected = Detect();
  Check(isa == Isa::kReference || detected.isa == Isa::kAvx512, ErrorKind::kInvalidArgument,
        "this CPU lacks AVX-512");
  Check(!bf16_dot || detected.bf16_dot, ErrorKind::kInvalidArgument, "this CPU lacks avx512_bf16");
  Active() = {isa, isa == Isa::kAvx512 && bf16_dot};
}

}  // namespace attn::cpu
