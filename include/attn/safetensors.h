// Reading and writing the safetensors format (https://huggingface.co/docs/safetensors):
//   [u64 little-endian N][N bytes of JSON header][data region]
// The header maps each tensor name to {dtype, shape, data_offsets: [begin, end)} relative to
// the data region, plus an optional "__metadata__" object of string -> string.
// Reading memory-maps the file and validates every offset before handing out views, so a
// corrupt or hostile file yields Error(kCorruptFile) naming the problem, never a crash.
#ifndef ATTN_SAFETENSORS_H_
#define ATTN_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/tensor.h"

namespace attn {

// A view of one tensor inside a mapped file. Valid while the SafetensorsFile lives.
struct TensorView {
  std::string name;
  DType dtype;
  Shape shape;
  const std::byte* data;  // not necessarily aligned
  size_t nbytes;          // == NumElements(shape) * DTypeSize(dtype), checked at open
};

class SafetensorsFile {
 public:
  // Maps `path` read-only. Throws Error(kIo) if it cannot be opened or mapped and
  // Error(kCorruptFile) if the header or offsets are inconsistent.
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

  // The tensor converted to fp32. Accepts F32, F16, BF16, F64; other dtypes throw
  // Error(kInvalidArgument) naming the tensor and its dtype.
  Tensor ReadF32(const std::string& name) const;
  // The tensor converted to int64. Accepts I64, I32, U8, BOOL, and float dtypes whose values
  // are all integral (a mask stored as F32 1.0/0.0); anything else throws kInvalidArgument.
  std::vector<int64_t> ReadI64(const std::string& name, Shape* shape) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors, then writes them in one go. Write() goes to a temporary file beside the
// destination and renames it into place, so a failed write never leaves a truncated file.
class SafetensorsWriter {
 public:
  // Stores `tensor` as `dtype` (F32, F16 or BF16; values rounded to nearest even).
  // Throws Error(kInvalidArgument) for a duplicate name or an unsupported dtype.
  void AddF32(const std::string& name, const Tensor& tensor, DType dtype = DType::kF32);
  void AddI64(const std::string& name, const Shape& shape, const std::vector<int64_t>& values);
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
