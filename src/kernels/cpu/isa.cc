// SPDX-License-Identifier: Apache-2.0
#include "kernels/cpu/isa.h"

#include <cstdlib>
#include <cstring>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "attn/error.h"

namespace attn::cpu {
namespace {

// AMX bf16: cpuid leaf 7 EDX bit 22 (amx_bf16) and bit 24 (amx_tile), and Linux's permission
// to use the tile data state (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), per process,
// idempotent; it fails on kernels without AMX support, which then leave AMX off).
bool DetectAmx() {
#if defined(__linux__) && defined(__x86_64__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) == 0) return false;
  if (((edx >> 22) & 1u) == 0 || ((edx >> 24) & 1u) == 0) return false;
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

IsaSupport Detect() {
  IsaSupport support{Isa::kReference, false, false};
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (avx512) support = {Isa::kAvx512, __builtin_cpu_supports("avx512bf16") != 0};
#endif
  const char* no_amx = std::getenv("ATTN_DISABLE_AMX");
  const bool amx_disabled =
      no_amx != nullptr && std::strcmp(no_amx, "") != 0 && std::strcmp(no_amx, "0") != 0;
  support.amx = support.bf16_dot && !amx_disabled && DetectAmx();
  const char* requested = std::getenv("ATTN_CPU_ISA");
  if (requested != nullptr && std::strcmp(requested, "reference") == 0) {
    support = {Isa::kReference, false, false};
  } else if (requested != nullptr && std::strcmp(requested, "avx512-nobf16") == 0) {
    support.bf16_dot = false;
    support.amx = false;
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
  if (support.amx) return "avx512+bf16+amx";
  return support.bf16_dot ? "avx512+bf16" : "avx512";
}

void ForceIsa(Isa isa, bool bf16_dot) {
  const IsaSupport detected = Detect();
  Check(isa == Isa::kReference || detected.isa == Isa::kAvx512, ErrorKind::kInvalidArgument,
        "this CPU lacks AVX-512");
  Check(!bf16_dot || detected.bf16_dot, ErrorKind::kInvalidArgument, "this CPU lacks avx512_bf16");
  const bool fast_bf16 = isa == Isa::kAvx512 && bf16_dot;
  Active() = {isa, fast_bf16, fast_bf16 && detected.amx};
}

}  // namespace attn::cpu
