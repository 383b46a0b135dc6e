// SPDX-License-Identifier: Apache-2.0
// Which instruction set the fast CPU kernels may use, decided once per process from cpuid and
// the ATTN_CPU_ISA environment variable ("avx512" or "reference"; tests and users force the
// portable path with ATTN_CPU_ISA=reference).
#ifndef ATTN_KERNELS_CPU_ISA_H_
#define ATTN_KERNELS_CPU_ISA_H_

namespace attn::cpu {

enum class Isa {
  kReference,  // portable C++: every x86-64 (and any other CPU)
  kAvx512,     // AVX-512 F/BW/VL/DQ + FMA + F16C; bf16 dot products when kAvx512Bf16 too
};

struct IsaSupport {
  Isa isa;
  bool bf16_dot;  // avx512_bf16 (vdpbf16ps)
};

// The ISA in use. Cheap after the first call.
const IsaSupport& ActiveIsa();
const char* IsaName(const IsaSupport& support);
// Overrides the choice (tests); throws Error(kInvalidArgument) for an ISA this CPU lacks.
void ForceIsa(Isa isa, bool bf16_dot);

}  // namespace attn::cpu

#endif  // ATTN_KERNELS_CPU_ISA_H_
