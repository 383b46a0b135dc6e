// SPDX-License-Identifier: Apache-2.0
// The safetensors header parser without the file around it (internal header): SafetensorsFile
// reads the length prefix and the header with pread and hands them here; the fuzz harness
// (tests/fuzz/safetensors_fuzzer.cc) and the test program attn_safetensors_check feed it bytes.
#ifndef ATTN_IO_SAFETENSORS_INTERNAL_H_
#define ATTN_IO_SAFETENSORS_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>

#include "attn/safetensors.h"

namespace attn::io {

// Limits attn adds to the format (docs/reference.md, "Limits and hostile input").
// The official reader caps the header at 100,000,000 bytes (safetensors MAX_HEADER_SIZE).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
// Real checkpoints hold at most ~100k tensors in one file (DeepSeek-V3 has ~92k in all 163
// shards together); the cap bounds the memory a header can make attn spend.
inline constexpr size_t kMaxSafetensorsTensors = size_t{1} << 18;
// NumPy 2 arrays have at most 64 dimensions; real weights have 1 to 4.
inline constexpr size_t kMaxSafetensorsRank = 64;
// Shape extents plus offsets in the whole header: 4M bounds the parsed header to well under a
// gigabyte even when every tensor is empty.
inline constexpr size_t kMaxSafetensorsArrayElements = size_t{1} << 22;

struct ParsedSafetensors {
  std::map<std::string, TensorView> tensors;  // TensorView::offset relative to the data region
  std::map<std::string, std::string> metadata;
};

// The header length from the 8-byte little-endian prefix, checked against the cap and the file
// size. Error(kCorruptFile) naming `path` otherwise.
size_t SafetensorsHeaderLength(const std::string& path, const std::byte* prefix,
                               uint64_t file_size);

// Validates the header JSON against a data region of `data_size` bytes, as the official reader
// does: every tensor's dtype, shape and offsets, and the tensors, sorted by offset, tiling the
// data region exactly. Error(kCorruptFile) naming `path` on any violation; Error(kUnsupported)
// for a valid file holding a dtype attn does not read.
ParsedSafetensors ParseSafetensorsHeader(const std::string& path, std::string_view header,
                                         uint64_t data_size);

// A whole file image: prefix, header, data region.
ParsedSafetensors ParseSafetensorsImage(const std::string& label, std::span<const std::byte> image);

}  // namespace attn::io

#endif  // ATTN_IO_SAFETENSORS_INTERNAL_H_
