// SPDX-License-Identifier: Apache-2.0
#include "bench/alloc_counter.h"

#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <new>

namespace attn::bench {
namespace {

std::atomic<uint64_t> g_count{0};
std::atomic<uint64_t> g_bytes{0};

[[maybe_unused]] void* Allocate(std::size_t size, std::size_t alignment) {
  g_count.fetch_add(1, std::memory_order_relaxed);
  g_bytes.fetch_add(size, std::memory_order_relaxed);
  if (size == 0) size = 1;
  void* memory = nullptr;
  if (alignment <= alignof(std::max_align_t)) {
    memory = std::malloc(size);
  } else {
    // aligned_alloc wants a size that is a multiple of the alignment.
    memory = std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
  }
  if (memory == nullptr) throw std::bad_alloc();
  return memory;
}

}  // namespace

AllocationStats AllocationsSoFar() {
  return {g_count.load(std::memory_order_relaxed), g_bytes.load(std::memory_order_relaxed)};
}

#if defined(__SANITIZE_ADDRESS__)
bool AllocationCountingEnabled() { return false; }
#else
bool AllocationCountingEnabled() { return true; }
#endif

}  // namespace attn::bench

#if !defined(__SANITIZE_ADDRESS__)

// The replaceable global allocation functions. libstdc++'s array and nothrow forms call these,
// so every `new` in the program is counted.
void* operator new(std::size_t size) { return attn::bench::Allocate(size, 0); }
void* operator new(std::size_t size, std::align_val_t alignment) {
  return attn::bench::Allocate(size, static_cast<std::size_t>(alignment));
}
void operator delete(void* memory) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t) noexcept { std::free(memory); }
void operator delete(void* memory, std::align_val_t) noexcept { std::free(memory); }
void operator delete(void* memory, std::size_t, std::align_val_t) noexcept { std::free(memory); }
#endif  // !defined(__SANITIZE_ADDRESS__)
