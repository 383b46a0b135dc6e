// SPDX-License-Identifier: Apache-2.0
// Reading and writing the safetensors format (https://huggingface.co/docs/safetensors):
//   [u64 little-endian N][N bytes of JSON header][data region]
// The header maps each tensor name to {dtype, shape, data_offsets: [begin, end)} relative to
// the data region, plus an optional "__metadata__" object of string -> string.
// Open() reads and validates the header as the official reader does (the tensors, sorted by
// offset, must tile the data region exactly; no duplicate keys), within the limits listed in
// docs/reference.md ("Limits and hostile input"); a corrupt or hostile file yields
// Error(kCorruptFile) naming the problem, never a crash, hang or runaway allocation.
// Tensor bytes are read with pread when asked for (ReadF32, ReadBytes): a file truncated by
// another process while open gives Error(kCorruptFile) on the next read instead of SIGBUS.
// Weights (ReadWeight) are memory-mapped instead, in their stored dtype: a layer then holds no
// copy of them. The price is the one every mmap loader pays: the file must not be truncated
// while a layer made from it lives (docs/reference.md, "Weights files").
#ifndef ATTN_SAFETENSORS_H_
#define ATTN_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/tensor.h"
#include "attn/weight.h"

namespace attn {

// Where one tensor lies in the file.
struct TensorView {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t offset;  // of the first byte, from the start of the file
  size_t nbytes;    // == NumElements(shape) * DTypeSize(dtype), checked at open
};

class SafetensorsFile {
 public:
  // Opens `path` and validates its header. Throws Error(kIo) if it cannot be opened or is not a
  // regular file (a FIFO or device is refused without blocking), Error(kCorruptFile) if the
  // header or offsets are inconsistent or exceed attn's limits, and Error(kUnsupported) for a
  // valid file holding a dtype attn does not read (F8_E5M2, I8, U16, ...).
  static SafetensorsFile Open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  bool Contains(const std::string& name) const;
  // Throws Error(kNotFound) naming the tensor and the file.
  const TensorView& Get(const std::string& name) const;
  // Tensor names, sorted.
  std::vector<std::string> Names() const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The file's size when it was opened.
  uint64_t size() const { return size_; }

  // The tensor's raw bytes. Throws Error(kCorruptFile) if the file has shrunk since Open.
  std::vector<std::byte> ReadBytes(const std::string& name) const;

  // The tensor converted to fp32. Accepts F32, F16, BF16, F64; other dtypes (F8_E4M3 too: its
  // values mean nothing without their scales) throw Error(kInvalidArgument) naming the tensor.
  Tensor ReadF32(const std::string& name) const;
  // The tensor in its stored dtype (F32, BF16, F16 or F8_E4M3), memory-mapped: no copy, no
  // conversion. The mapping (one per file, made on first use) lives as long as any weight using
  // it. A tensor whose offset is not a multiple of its element size is read into an aligned
  // buffer instead. Throws Error(kInvalidArgument) naming the tensor for another dtype,
  // Error(kCorruptFile) if the file changed size since Open, Error(kIo) if mmap fails.
  Weight ReadWeight(const std::string& name) const;
  // The tensor converted to int64. Accepts I64, I32, U8, BOOL, and float dtypes whose values
  // are all integral (a mask stored as F32 1.0/0.0); anything else throws kInvalidArgument.
  std::vector<int64_t> ReadI64(const std::string& name, Shape* shape) const;

 private:
  // Closes a descriptor on destruction; movable.
  class Fd {
   public:
    Fd() = default;
    Fd& operator=(Fd&& other) noexcept;
    Fd(Fd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
    ~Fd();
    int get() const { return fd_; }

   private:
    friend class SafetensorsFile;
    int fd_ = -1;
  };

  SafetensorsFile() = default;
  void ReadInto(const TensorView& view, void* destination) const;
  std::shared_ptr<const void> Mapping() const;

  std::string path_;
  Fd fd_;
  uint64_t size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
  // The whole file mapped read-only, made by the first ReadWeight (guarded, so that threads may
  // load layers from one file at once).
  mutable std::shared_ptr<const void> mapping_;
  std::unique_ptr<std::mutex> mapping_mutex_ = std::make_unique<std::mutex>();
};

// Collects tensors, then writes them in one go. Write() goes to a fresh temporary file beside
// the destination (created exclusively, so a planted symlink cannot redirect it), keeps the
// mode of a file it replaces, fsyncs and renames it into place: a failed write never leaves a
// truncated file.
class SafetensorsWriter {
 public:
  // Stores `tensor` as `dtype` (F32, F16 or BF16; values rounded to nearest even).
  // Throws Error(kInvalidArgument) for a duplicate name or an unsupported dtype.
  void AddF32(const std::string& name, const Tensor& tensor, DType dtype = DType::kF32);
  void AddI64(const std::string& name, const Shape& shape, const std::vector<int64_t>& values);
  // Stores `bytes` as they are: NumElements(shape) elements of `dtype` (F8_E4M3 weights).
  void AddBytes(const std::string& name, DType dtype, const Shape& shape,
                std::vector<std::byte> bytes);
  void SetMetadata(const std::string& key, const std::string& value);
  // Throws Error(kIo) naming the path if the file cannot be written.
  void Write(const std::string& path) const;

 private:
  struct Entry {
    DType dtype;
    Shape shape;
    std::vector<std::byte> bytes;
  };
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace attn

#endif  // ATTN_SAFETENSORS_H_
