// SPDX-License-Identifier: Apache-2.0
// Counts heap allocations made through the global operator new, so `attn bench layer` can report
// whether a decode step allocates. Linking alloc_counter.cc into a program replaces its global
// operator new/delete with counting versions on top of malloc/free; memory obtained from malloc
// or mmap directly is not seen.
#ifndef ATTN_BENCH_ALLOC_COUNTER_H_
#define ATTN_BENCH_ALLOC_COUNTER_H_

#include <cstdint>

namespace attn::bench {

struct AllocationStats {
  uint64_t count = 0;
  uint64_t bytes = 0;
};

// Allocations since the program started, all threads together.
AllocationStats AllocationsSoFar();
// False in AddressSanitizer builds, whose allocator must keep operator new: nothing is counted.
bool AllocationCountingEnabled();

}  // namespace attn::bench

#endif  // ATTN_BENCH_ALLOC_COUNTER_H_
