// SPDX-License-Identifier: Apache-2.0
#include "attn/safetensors.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "io/files.h"
#include "io/json_util.h"
#include "io/safetensors_internal.h"

namespace attn {

// The format is little-endian and every copy below is a plain memcpy of host values.
static_assert(std::endian::native == std::endian::little, "attn assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr size_t kLengthPrefixSize = 8;
constexpr const char* kMetadataKey = "__metadata__";

Error Corrupt(const std::string& path, const std::string& problem) {
  return Error(ErrorKind::kCorruptFile, path + ": " + problem);
}

Error CorruptTensor(const std::string& path, const std::string& name, const std::string& problem) {
  return Corrupt(path, "tensor '" + io::TextExcerpt(name) + "': " + problem);
}

// A JSON value for an error message, shortened so a hostile header cannot bloat the message.
std::string Brief(const Json& value) { return io::JsonExcerpt(value, 64); }

// A JSON value as a non-negative integer that fits in int64, or false. The official reader
// deserialises shapes and offsets as usize, so floats (even 2.0) and negatives are invalid.
bool AsNonNegativeInt(const Json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t raw = value.get<uint64_t>();
    if (raw > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(raw);
    return true;
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return *out >= 0;
  }
  return false;
}

// Every dtype name the official format defines (safetensors 0.8 Dtype), with its size in bits.
// A file may hold any of them; attn reads those DTypeFromName knows and refuses the rest only
// after the file has been validated, as Error(kUnsupported).
struct FormatDType {
  const char* name;
  uint64_t bits;
};
constexpr FormatDType kFormatDTypes[] = {
    {"BOOL", 8},        {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},
    {"I8", 8},          {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8},
    {"F8_E5M2FNUZ", 8}, {"I16", 16},    {"U16", 16},    {"F16", 16},    {"BF16", 16},
    {"I32", 32},        {"U32", 32},    {"F32", 32},    {"C64", 64},    {"F64", 64},
    {"I64", 64},        {"U64", 64},
};

const FormatDType* FindFormatDType(const std::string& name) {
  for (const FormatDType& entry : kFormatDTypes) {
    if (name == entry.name) return &entry;
  }
  return nullptr;
}

std::map<std::string, std::string> ParseMetadata(const std::string& path, const Json& value) {
  // The official reader reads __metadata__ as Option<HashMap<String, String>>: null is none.
  if (value.is_null()) return {};
  if (!value.is_object()) throw Corrupt(path, "__metadata__ is not an object");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      throw Corrupt(path, "__metadata__ key '" + io::TextExcerpt(key) + "' has a non-string value");
    }
    metadata[key] = item.get<std::string>();
  }
  return metadata;
}

const FormatDType& ParseDType(const std::string& path, const std::string& name, const Json& entry) {
  const auto it = entry.find("dtype");
  if (it == entry.end()) throw CorruptTensor(path, name, "missing dtype");
  if (!it->is_string()) throw CorruptTensor(path, name, "dtype is not a string");
  const FormatDType* dtype = FindFormatDType(it->get<std::string>());
  if (dtype == nullptr) {
    throw CorruptTensor(path, name, "dtype " + Brief(*it) + " is not a safetensors dtype");
  }
  return *dtype;
}

Shape ParseShape(const std::string& path, const std::string& name, const Json& entry) {
  const auto it = entry.find("shape");
  if (it == entry.end()) throw CorruptTensor(path, name, "missing shape");
  if (!it->is_array()) throw CorruptTensor(path, name, "shape is not an array");
  Shape shape;
  shape.reserve(it->size());
  for (const Json& extent : *it) {
    int64_t value;
    if (!AsNonNegativeInt(extent, &value)) {
      throw CorruptTensor(path, name,
                          "shape extent " + Brief(extent) + " is not a non-negative integer");
    }
    shape.push_back(value);
  }
  return shape;
}

// Byte size of `shape` x `bits`-wide elements, throwing when the product overflows or a
// sub-byte dtype does not fill whole bytes (the official reader refuses both).
size_t CheckedByteSize(const std::string& path, const std::string& name, const Shape& shape,
                       uint64_t bits) {
  uint64_t total_bits = bits;
  for (int64_t extent : shape) {
    if (__builtin_mul_overflow(total_bits, static_cast<uint64_t>(extent), &total_bits)) {
      throw CorruptTensor(path, name, "shape " + ShapeToString(shape) + " overflows");
    }
  }
  if (total_bits % 8 != 0) {
    throw CorruptTensor(path, name, "shape " + ShapeToString(shape) + " does not fill whole bytes");
  }
  const uint64_t bytes = total_bits / 8;
  // Capping bytes at int64 also caps the element count (every dtype attn reads is at least one
  // byte), so NumElements(shape) cannot throw later when a reader converts the tensor.
  if (bytes > static_cast<uint64_t>(INT64_MAX)) {
    throw CorruptTensor(path, name, "shape " + ShapeToString(shape) + " overflows");
  }
  return static_cast<size_t>(bytes);
}

struct Offsets {
  uint64_t begin;
  uint64_t end;
};

Offsets ParseOffsets(const std::string& path, const std::string& name, const Json& entry) {
  const auto it = entry.find("data_offsets");
  if (it == entry.end()) throw CorruptTensor(path, name, "missing data_offsets");
  int64_t begin, end;
  if (!it->is_array() || it->size() != 2 || !AsNonNegativeInt((*it)[0], &begin) ||
      !AsNonNegativeInt((*it)[1], &end)) {
    throw CorruptTensor(path, name,
                        "data_offsets " + Brief(*it) + " is not [begin, end] of integers");
  }
  if (end < begin) {
    throw CorruptTensor(path, name, "data_offsets " + Brief(*it) + " has end before begin");
  }
  return {static_cast<uint64_t>(begin), static_cast<uint64_t>(end)};
}

struct ParsedTensor {
  TensorView view;
  const FormatDType* format_dtype;
  Offsets offsets;
};

// Keys other than dtype, shape and data_offsets are ignored, as by the official reader (serde
// ignores unknown fields); a repeated key is refused by the parser before this.
ParsedTensor ParseTensor(const std::string& path, const std::string& name, const Json& entry,
                         uint64_t data_size) {
  if (!entry.is_object()) throw CorruptTensor(path, name, "entry is not an object");
  const FormatDType& dtype = ParseDType(path, name, entry);
  Shape shape = ParseShape(path, name, entry);
  const Offsets offsets = ParseOffsets(path, name, entry);
  const size_t nbytes = CheckedByteSize(path, name, shape, dtype.bits);
  if (offsets.end > data_size) {
    throw CorruptTensor(path, name,
                        "data_offsets end " + std::to_string(offsets.end) +
                            " is beyond the data region of " + std::to_string(data_size) +
                            " bytes");
  }
  if (offsets.end - offsets.begin != nbytes) {
    throw CorruptTensor(path, name,
                        "data_offsets span " + std::to_string(offsets.end - offsets.begin) +
                            " bytes but shape " + ShapeToString(shape) + " of " + dtype.name +
                            " needs " + std::to_string(nbytes));
  }
  // The attn DType is filled in once the whole file is known to be valid.
  return ParsedTensor{TensorView{name, DType::kU8, std::move(shape), offsets.begin, nbytes}, &dtype,
                      offsets};
}

// The official reader's rule (safetensors Metadata::validate): sorted by data_offsets, each
// tensor starts where the previous one ended, the first at 0, and the last ends exactly at the
// end of the file. So no gaps, no overlaps, and no bytes after the last tensor.
void CheckTiling(const std::string& path, const std::map<std::string, ParsedTensor>& tensors,
                 uint64_t data_size) {
  std::vector<const ParsedTensor*> sorted;
  sorted.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) sorted.push_back(&tensor);
  std::sort(sorted.begin(), sorted.end(), [](const ParsedTensor* a, const ParsedTensor* b) {
    return std::tie(a->offsets.begin, a->offsets.end) < std::tie(b->offsets.begin, b->offsets.end);
  });
  uint64_t expected = 0;
  const ParsedTensor* previous = nullptr;
  for (const ParsedTensor* tensor : sorted) {
    if (tensor->offsets.begin != expected) {
      const std::string relation =
          tensor->offsets.begin < expected ? "overlaps" : "leaves a gap after";
      throw CorruptTensor(
          path, tensor->view.name,
          "data_offsets [" + std::to_string(tensor->offsets.begin) + ", " +
              std::to_string(tensor->offsets.end) + ") " + relation +
              (previous != nullptr ? " tensor '" + io::TextExcerpt(previous->view.name) + "'"
                                   : std::string(" the start of the data region")) +
              " (tensors must tile the data region, which starts at 0)");
    }
    expected = tensor->offsets.end;
    previous = tensor;
  }
  if (expected != data_size) {
    throw Corrupt(path, "the data region holds " + std::to_string(data_size) +
                            " bytes but the tensors cover " + std::to_string(expected) +
                            " (trailing bytes after the last tensor)");
  }
}

Error WrongDType(const std::string& path, const TensorView& view, const char* accepted) {
  return Error(ErrorKind::kInvalidArgument, "tensor '" + view.name + "' in " + path +
                                                " has dtype " + DTypeName(view.dtype) +
                                                "; expected " + accepted);
}

// memcpy that tolerates the null data() of an empty vector, which memcpy itself does not.
void CopyBytes(void* destination, const void* source, size_t size) {
  if (size > 0) std::memcpy(destination, source, size);
}

template <typename T>
T LoadElement(const std::byte* data, size_t index) {
  T value;
  std::memcpy(&value, data + index * sizeof(T), sizeof(T));
  return value;
}

// Element `index` of a floating-point view, widened to double.
double LoadFloat(DType dtype, const std::byte* data, size_t index) {
  switch (dtype) {
    case DType::kF32:
      return LoadElement<float>(data, index);
    case DType::kF16:
      return F16ToF32(LoadElement<uint16_t>(data, index));
    case DType::kBF16:
      return BF16ToF32(LoadElement<uint16_t>(data, index));
    case DType::kF64:
      return LoadElement<double>(data, index);
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  std::string("LoadFloat on non-float dtype ") + DTypeName(dtype));
  }
}

bool IsFloatDType(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 ||
         dtype == DType::kF64;
}

std::string FormatDouble(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
}

int64_t IntegralOrThrow(const std::string& path, const TensorView& view, size_t index,
                        double value) {
  // 2^63 is exactly representable; int64 covers [-2^63, 2^63).
  constexpr double kLimit = 9223372036854775808.0;
  if (!std::isfinite(value) || std::trunc(value) != value || value < -kLimit || value >= kLimit) {
    throw Error(ErrorKind::kInvalidArgument,
                "tensor '" + view.name + "' in " + path + " holds value " + FormatDouble(value) +
                    " at element " + std::to_string(index) + ", which is not an int64 integer");
  }
  return static_cast<int64_t>(value);
}

void CheckNewTensorName(const std::string& name, bool already_added) {
  Check(name != kMetadataKey, ErrorKind::kInvalidArgument,
        "'__metadata__' is reserved and cannot name a tensor");
  Check(!already_added, ErrorKind::kInvalidArgument, "duplicate tensor name '" + name + "'");
}

template <typename T>
void AppendBytes(std::vector<std::byte>* bytes, const T& value) {
  const auto* raw = reinterpret_cast<const std::byte*>(&value);
  bytes->insert(bytes->end(), raw, raw + sizeof(T));
}

std::vector<std::byte> EncodeFloats(std::span<const float> values, DType dtype) {
  std::vector<std::byte> bytes;
  bytes.reserve(values.size() * DTypeSize(dtype));
  for (float value : values) {
    if (dtype == DType::kF32) {
      AppendBytes(&bytes, value);
    } else if (dtype == DType::kF16) {
      AppendBytes(&bytes, F32ToF16(value));
    } else {
      AppendBytes(&bytes, F32ToBF16(value));
    }
  }
  return bytes;
}

}  // namespace

namespace io {

size_t SafetensorsHeaderLength(const std::string& path, const std::byte* prefix,
                               uint64_t file_size) {
  if (file_size < kLengthPrefixSize) {
    throw Corrupt(path, "file is " + std::to_string(file_size) +
                            " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_size;
  std::memcpy(&header_size, prefix, sizeof(header_size));
  if (header_size > kMaxSafetensorsHeaderBytes) {
    throw Corrupt(path, "header length " + std::to_string(header_size) +
                            " exceeds the 100 MB limit (" +
                            std::to_string(kMaxSafetensorsHeaderBytes) + " bytes)");
  }
  if (header_size > file_size - kLengthPrefixSize) {
    throw Corrupt(path, "header length " + std::to_string(header_size) +
                            " runs past the end of the " + std::to_string(file_size) +
                            "-byte file");
  }
  return static_cast<size_t>(header_size);
}

ParsedSafetensors ParseSafetensorsHeader(const std::string& path, std::string_view header,
                                         uint64_t data_size) {
  // nlohmann skips a UTF-8 byte order mark; the official reader (serde_json) does not.
  if (header.starts_with("\xEF\xBB\xBF"))
    throw Corrupt(path, "header starts with a byte order mark");
  JsonLimits limits;
  limits.reject_duplicate_keys = true;
  limits.max_top_level_keys = kMaxSafetensorsTensors + 1;  // + __metadata__
  limits.max_array_length = kMaxSafetensorsRank;
  limits.max_array_elements_total = kMaxSafetensorsArrayElements;
  const Json root = ParseJson(header, path + ": header", ErrorKind::kCorruptFile, limits);
  if (!root.is_object()) throw Corrupt(path, "header is not a JSON object");

  ParsedSafetensors parsed;
  std::map<std::string, ParsedTensor> tensors;
  for (const auto& [name, entry] : root.items()) {
    if (name == kMetadataKey) {
      parsed.metadata = ParseMetadata(path, entry);
    } else {
      tensors.emplace(name, ParseTensor(path, name, entry, data_size));
    }
  }
  // The parser allowed one top-level key more than the cap, for __metadata__.
  if (tensors.size() > kMaxSafetensorsTensors) {
    throw Corrupt(path, "more than " + std::to_string(kMaxSafetensorsTensors) + " tensors");
  }
  CheckTiling(path, tensors, data_size);
  // The file is valid safetensors; now, whether attn can read every dtype in it.
  for (auto& [name, tensor] : tensors) {
    try {
      tensor.view.dtype = DTypeFromName(tensor.format_dtype->name);
    } catch (const Error& e) {
      throw Error(ErrorKind::kUnsupported,
                  path + ": tensor '" + io::TextExcerpt(name) + "': " + e.what());
    }
    parsed.tensors.emplace(name, std::move(tensor.view));
  }
  return parsed;
}

ParsedSafetensors ParseSafetensorsImage(const std::string& label,
                                        std::span<const std::byte> image) {
  std::byte prefix[kLengthPrefixSize] = {};
  std::memcpy(prefix, image.data(), std::min(image.size(), kLengthPrefixSize));
  const size_t header_size = SafetensorsHeaderLength(label, prefix, image.size());
  const std::string_view header(reinterpret_cast<const char*>(image.data()) + kLengthPrefixSize,
                                header_size);
  return ParseSafetensorsHeader(label, header, image.size() - kLengthPrefixSize - header_size);
}

}  // namespace io

SafetensorsFile SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  io::RegularFile opened = io::OpenRegularFile(path, "safetensors file");
  std::byte prefix[kLengthPrefixSize] = {};
  if (opened.size >= kLengthPrefixSize) {
    io::ReadExactlyAt(opened.fd.get(), path, 0, prefix, kLengthPrefixSize);
  }
  const size_t header_size = io::SafetensorsHeaderLength(path, prefix, opened.size);
  std::string header(header_size, '\0');
  io::ReadExactlyAt(opened.fd.get(), path, kLengthPrefixSize, header.data(), header_size);
  const uint64_t data_start = kLengthPrefixSize + header_size;
  io::ParsedSafetensors parsed = io::ParseSafetensorsHeader(path, header, opened.size - data_start);
  for (auto& [name, view] : parsed.tensors) view.offset += data_start;
  file.tensors_ = std::move(parsed.tensors);
  file.metadata_ = std::move(parsed.metadata);
  file.size_ = opened.size;
  // The descriptor stays open: tensors are read with pread when asked for (ReadBytes).
  file.fd_.fd_ = opened.fd.release();
  return file;
}

SafetensorsFile::Fd& SafetensorsFile::Fd::operator=(Fd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

SafetensorsFile::Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

bool SafetensorsFile::Contains(const std::string& name) const { return tensors_.contains(name); }

const TensorView& SafetensorsFile::Get(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    throw Error(ErrorKind::kNotFound, "tensor '" + name + "' not found in " + path_);
  }
  return it->second;
}

std::vector<std::string> SafetensorsFile::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, view] : tensors_) names.push_back(name);
  return names;
}

void SafetensorsFile::ReadInto(const TensorView& view, void* destination) const {
  // pread, not a memory map: a file truncated by another process after Open gives a short read
  // and Error(kCorruptFile), where a mapping would deliver SIGBUS.
  io::ReadExactlyAt(fd_.get(), path_, view.offset, destination, view.nbytes);
}

std::vector<std::byte> SafetensorsFile::ReadBytes(const std::string& name) const {
  const TensorView& view = Get(name);
  std::vector<std::byte> bytes(view.nbytes);
  ReadInto(view, bytes.data());
  return bytes;
}

Tensor SafetensorsFile::ReadF32(const std::string& name) const {
  const TensorView& view = Get(name);
  if (!IsFloatDType(view.dtype)) throw WrongDType(path_, view, "F32, F16, BF16 or F64");
  const size_t count = static_cast<size_t>(NumElements(view.shape));
  std::vector<float> values(count);
  if (view.dtype == DType::kF32) {
    ReadInto(view, values.data());
  } else {
    const std::vector<std::byte> bytes = ReadBytes(name);
    for (size_t i = 0; i < count; ++i) {
      values[i] = static_cast<float>(LoadFloat(view.dtype, bytes.data(), i));
    }
  }
  return Tensor(view.shape, std::move(values));
}

namespace {

// A read-only private mapping of a whole file, unmapped when the last weight using it goes.
class FileMapping {
 public:
  FileMapping(void* base, size_t size) : base_(base), size_(size) {}
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;
  ~FileMapping() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }
  const std::byte* bytes() const { return static_cast<const std::byte*>(base_); }

 private:
  void* base_;
  size_t size_;
};

}  // namespace

std::shared_ptr<const void> SafetensorsFile::Mapping() const {
  const std::lock_guard<std::mutex> lock(*mapping_mutex_);
  if (mapping_ != nullptr) return mapping_;
  struct stat status {};
  Check(::fstat(fd_.get(), &status) == 0, ErrorKind::kIo,
        "cannot stat " + path_ + ": " + std::strerror(errno));
  // Mapping a file that shrank would turn the missing tail into SIGBUS on first touch.
  Check(static_cast<uint64_t>(status.st_size) == size_, ErrorKind::kCorruptFile,
        path_ + " changed size since it was opened (" + std::to_string(size_) + " -> " +
            std::to_string(status.st_size) + " bytes)");
  if (size_ == 0) {
    mapping_ = std::make_shared<FileMapping>(nullptr, 0);
    return mapping_;
  }
  void* base = ::mmap(nullptr, static_cast<size_t>(size_), PROT_READ, MAP_PRIVATE, fd_.get(), 0);
  Check(base != MAP_FAILED, ErrorKind::kIo, "cannot map " + path_ + ": " + std::strerror(errno));
  mapping_ = std::make_shared<FileMapping>(base, static_cast<size_t>(size_));
  return mapping_;
}

Weight SafetensorsFile::ReadWeight(const std::string& name) const {
  const TensorView& view = Get(name);
  const bool weight_dtype = view.dtype == DType::kF32 || view.dtype == DType::kBF16 ||
                            view.dtype == DType::kF16 || view.dtype == DType::kF8E4M3;
  if (!weight_dtype) throw WrongDType(path_, view, "F32, BF16, F16 or F8_E4M3");
  if (view.offset % DTypeSize(view.dtype) == 0) {
    std::shared_ptr<const void> mapping = Mapping();
    const auto* file = static_cast<const FileMapping*>(mapping.get());
    const std::byte* data = view.nbytes == 0 ? nullptr : file->bytes() + view.offset;
    return Weight::View(view.dtype, view.shape, data, std::move(mapping));
  }
  // A misaligned tensor (legal in the format, never written by the official writer): its own
  // buffer, which operator new aligns for any element type.
  auto bytes = std::make_shared<std::vector<std::byte>>(view.nbytes);
  ReadInto(view, bytes->data());
  const void* data = view.nbytes == 0 ? nullptr : bytes->data();
  return Weight::View(view.dtype, view.shape, data, std::move(bytes));
}

std::vector<int64_t> SafetensorsFile::ReadI64(const std::string& name, Shape* shape) const {
  const TensorView& view = Get(name);
  const size_t count = static_cast<size_t>(NumElements(view.shape));
  std::vector<int64_t> values(count);
  if (view.dtype == DType::kI64) {
    ReadInto(view, values.data());
    if (shape != nullptr) *shape = view.shape;
    return values;
  }
  const std::vector<std::byte> bytes = ReadBytes(name);
  const std::byte* data = bytes.data();
  switch (view.dtype) {
    case DType::kI64:
      break;
    case DType::kI32:
      for (size_t i = 0; i < count; ++i) values[i] = LoadElement<int32_t>(data, i);
      break;
    case DType::kU8:
      for (size_t i = 0; i < count; ++i) values[i] = LoadElement<uint8_t>(data, i);
      break;
    case DType::kBool:
      for (size_t i = 0; i < count; ++i) values[i] = LoadElement<uint8_t>(data, i) != 0;
      break;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF64:
      for (size_t i = 0; i < count; ++i) {
        values[i] = IntegralOrThrow(path_, view, i, LoadFloat(view.dtype, data, i));
      }
      break;
    case DType::kF8E4M3:
    case DType::kI8:  // never parsed from a file (DTypeFromName)
      throw WrongDType(path_, view, "I64, I32, U8, BOOL or an integral float");
  }
  if (shape != nullptr) *shape = view.shape;
  return values;
}

void SafetensorsWriter::AddF32(const std::string& name, const Tensor& tensor, DType dtype) {
  CheckNewTensorName(name, entries_.contains(name));
  Check(dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16,
        ErrorKind::kInvalidArgument,
        "tensor '" + name + "': cannot store floats as " + DTypeName(dtype) +
            " (valid: F32, F16, BF16)");
  // A default-constructed Tensor has shape [] (one element) but no values.
  Check(NumElements(tensor.shape()) == tensor.size(), ErrorKind::kInvalidArgument,
        "tensor '" + name + "': shape " + ShapeToString(tensor.shape()) + " does not match its " +
            std::to_string(tensor.size()) + " values");
  entries_.emplace(name, Entry{dtype, tensor.shape(), EncodeFloats(tensor.values(), dtype)});
}

void SafetensorsWriter::AddI64(const std::string& name, const Shape& shape,
                               const std::vector<int64_t>& values) {
  CheckNewTensorName(name, entries_.contains(name));
  Check(NumElements(shape) == static_cast<int64_t>(values.size()), ErrorKind::kInvalidArgument,
        "tensor '" + name + "': shape " + ShapeToString(shape) + " does not match its " +
            std::to_string(values.size()) + " values");
  std::vector<std::byte> bytes(values.size() * sizeof(int64_t));
  CopyBytes(bytes.data(), values.data(), bytes.size());
  entries_.emplace(name, Entry{DType::kI64, shape, std::move(bytes)});
}

void SafetensorsWriter::AddBytes(const std::string& name, DType dtype, const Shape& shape,
                                 std::vector<std::byte> bytes) {
  CheckNewTensorName(name, entries_.contains(name));
  Check(static_cast<uint64_t>(NumElements(shape)) * DTypeSize(dtype) == bytes.size(),
        ErrorKind::kInvalidArgument,
        "tensor '" + name + "': shape " + ShapeToString(shape) + " of " + DTypeName(dtype) +
            " does not match its " + std::to_string(bytes.size()) + " bytes");
  entries_.emplace(name, Entry{dtype, shape, std::move(bytes)});
}

void SafetensorsWriter::SetMetadata(const std::string& key, const std::string& value) {
  metadata_[key] = value;
}

void SafetensorsWriter::Write(const std::string& path) const {
  // Json objects iterate in sorted-key order, matching entries_, so offsets assigned here line
  // up with the order the data is written below.
  Json header = Json::object();
  uint64_t offset = 0;
  for (const auto& [name, entry] : entries_) {
    const uint64_t end = offset + entry.bytes.size();
    header[name] = {
        {"dtype", DTypeName(entry.dtype)}, {"shape", entry.shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  if (!metadata_.empty()) header[kMetadataKey] = metadata_;
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const Json::exception& e) {
    throw Error(ErrorKind::kInvalidArgument,
                "cannot write " + path + ": a tensor name or metadata string is not UTF-8 (" +
                    e.what() + ")");
  }
  // The official writer pads with spaces so the data region starts 8-byte aligned.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_size = header_text.size();

  std::vector<std::span<const std::byte>> chunks;
  chunks.push_back(std::as_bytes(std::span(&header_size, 1)));
  chunks.push_back(std::as_bytes(std::span(header_text)));
  for (const auto& [name, entry] : entries_) chunks.push_back(entry.bytes);
  io::AtomicWriteFile(path, chunks);
}

}  // namespace attn
