// SPDX-License-Identifier: Apache-2.0
// Which instruction set the fast CPU kernels may use, decided once per process from cpuid and
// the ATTN_CPU_ISA environment variable ("avx512" or "reference"; tests and users force the
// portable path with ATTN_CPU_ISA=reference). AMX tiles (amx_tile + amx_bf16, with the Linux
// permission to use them, granted per process by arch_prctl) serve bf16 prefill attention;
// ATTN_DISABLE_AMX=1 turns them off (the AVX-512 kernel takes those problems instead).
#ifndef ATTN_KERNELS_CPU_ISA_H_
#define ATTN_KERNELS_CPU_ISA_H_

namespace attn::cpu {

enum class Isa {
  kReference,  // portable C++: every x86-64 (and any other CPU)
  kAvx512,     // AVX-512 F/BW/VL/DQ + FMA + F16C; bf16 dot products when kAvx512Bf16 too
};

struct IsaSupport {
  Isa isa;
  bool bf16_dot;     // avx512_bf16 (vdpbf16ps)
  bool amx = false;  // amx_tile + amx_bf16, permitted by the OS (needs bf16_dot too)
};

// The ISA in use. Cheap after the first call.
const IsaSupport& ActiveIsa();
const char* IsaName(const IsaSupport& support);
// Overrides the choice (tests); throws Error(kInvalidArgument) for an ISA this CPU lacks. AMX
// stays on where it was detected (and not disabled) and bf16_dot is requested.
void ForceIsa(Isa isa, bool bf16_dot);

}  // namespace attn::cpu

#endif  // ATTN_KERNELS_CPU_ISA_H_
