#include "attn/safetensors.h"

#include <fcntl.h>
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
#include <utility>
#include <vector>

#include "attn/error.h"

namespace attn {

// The format is little-endian and every copy below is a plain memcpy of host values.
static_assert(std::endian::native == std::endian::little, "attn assumes a little-endian host");

namespace {

using Json = nlohmann::json;

constexpr size_t kLengthPrefixSize = 8;
// Real headers are kilobytes; a larger claim is a corrupt or hostile file, not a model.
constexpr uint64_t kMaxHeaderSize = 100u * 1024u * 1024u;
constexpr const char* kMetadataKey = "__metadata__";

std::string ErrnoText() { return std::strerror(errno); }

Error Corrupt(const std::string& path, const std::string& problem) {
  return Error(ErrorKind::kCorruptFile, path + ": " + problem);
}

Error CorruptTensor(const std::string& path, const std::string& name, const std::string& problem) {
  return Corrupt(path, "tensor '" + name + "': " + problem);
}

// Closes a file descriptor on scope exit; mmap keeps its own reference to the file.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() { ::close(fd_); }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

// A JSON value for an error message, shortened so a hostile header cannot bloat the message.
std::string Brief(const Json& value) {
  constexpr size_t kMaxLength = 64;
  std::string text = value.dump();
  if (text.size() > kMaxLength) text = text.substr(0, kMaxLength) + "...";
  return text;
}

// A JSON value as a non-negative integer that fits in int64, or false.
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

struct Mapping {
  void* address;
  size_t size;
};

// Maps the whole file read-only. Files shorter than the length prefix are rejected first, which
// also keeps mmap from seeing a zero length (which it refuses with EINVAL).
Mapping MapReadOnly(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorKind::kIo, "cannot open " + path + ": " + ErrnoText());
  FdCloser closer(fd);
  struct stat info;
  if (::fstat(fd, &info) != 0) {
    throw Error(ErrorKind::kIo, "cannot stat " + path + ": " + ErrnoText());
  }
  if (!S_ISREG(info.st_mode)) {
    throw Error(ErrorKind::kIo, "cannot open " + path + ": not a regular file");
  }
  const size_t file_size = static_cast<size_t>(info.st_size);
  if (file_size < kLengthPrefixSize) {
    throw Corrupt(path, "file is " + std::to_string(file_size) +
                            " bytes, shorter than the 8-byte header length");
  }
  void* address = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (address == MAP_FAILED) {
    throw Error(ErrorKind::kIo, "cannot mmap " + path + ": " + ErrnoText());
  }
  return {address, file_size};
}

// The little-endian length prefix, checked against the file size and the sanity cap.
size_t ReadHeaderSize(const std::string& path, const std::byte* bytes, size_t file_size) {
  uint64_t header_size;
  std::memcpy(&header_size, bytes, sizeof(header_size));
  if (header_size > file_size - kLengthPrefixSize) {
    throw Corrupt(path, "header length " + std::to_string(header_size) +
                            " runs past the end of the " + std::to_string(file_size) +
                            "-byte file");
  }
  if (header_size > kMaxHeaderSize) {
    throw Corrupt(path,
                  "header length " + std::to_string(header_size) + " exceeds the 100 MB limit");
  }
  return static_cast<size_t>(header_size);
}

Json ParseHeader(const std::string& path, const char* begin, size_t size) {
  Json header;
  try {
    header = Json::parse(begin, begin + size);
  } catch (const Json::exception& e) {
    throw Corrupt(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw Corrupt(path, "header is not a JSON object");
  return header;
}

std::map<std::string, std::string> ParseMetadata(const std::string& path, const Json& value) {
  if (!value.is_object()) throw Corrupt(path, "__metadata__ is not an object");
  std::map<std::string, std::string> metadata;
  for (const auto& [key, item] : value.items()) {
    if (!item.is_string()) {
      throw Corrupt(path, "__metadata__ key '" + key + "' has a non-string value");
    }
    metadata[key] = item.get<std::string>();
  }
  return metadata;
}

DType ParseDType(const std::string& path, const std::string& name, const Json& entry) {
  const auto it = entry.find("dtype");
  if (it == entry.end()) throw CorruptTensor(path, name, "missing dtype");
  if (!it->is_string()) throw CorruptTensor(path, name, "dtype is not a string");
  try {
    return DTypeFromName(it->get<std::string>());
  } catch (const Error& e) {
    throw CorruptTensor(path, name, e.what());
  }
}

Shape ParseShape(const std::string& path, const std::string& name, const Json& entry) {
  const auto it = entry.find("shape");
  if (it == entry.end()) throw CorruptTensor(path, name, "missing shape");
  if (!it->is_array()) throw CorruptTensor(path, name, "shape is not an array");
  Shape shape;
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

// Byte size of `shape` x `dtype`, throwing when the product overflows.
size_t CheckedByteSize(const std::string& path, const std::string& name, const Shape& shape,
                       DType dtype) {
  uint64_t bytes = DTypeSize(dtype);
  for (int64_t extent : shape) {
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(extent), &bytes)) {
      throw CorruptTensor(path, name, "shape " + ShapeToString(shape) + " overflows");
    }
  }
  // Capping bytes at int64 also caps the element count (every dtype is at least one byte), so
  // NumElements(shape) cannot throw later when a reader converts the tensor.
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

void CheckKnownKeys(const std::string& path, const std::string& name, const Json& entry) {
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      throw CorruptTensor(path, name, "unexpected key '" + key + "'");
    }
  }
}

TensorView ParseTensor(const std::string& path, const std::string& name, const Json& entry,
                       const std::byte* data, size_t data_size) {
  if (!entry.is_object()) throw CorruptTensor(path, name, "entry is not an object");
  CheckKnownKeys(path, name, entry);
  const DType dtype = ParseDType(path, name, entry);
  Shape shape = ParseShape(path, name, entry);
  const Offsets offsets = ParseOffsets(path, name, entry);
  const size_t nbytes = CheckedByteSize(path, name, shape, dtype);
  if (offsets.end > data_size) {
    throw CorruptTensor(path, name,
                        "data_offsets end " + std::to_string(offsets.end) +
                            " is beyond the data region of " + std::to_string(data_size) +
                            " bytes");
  }
  if (offsets.end - offsets.begin != nbytes) {
    throw CorruptTensor(path, name,
                        "data_offsets span " + std::to_string(offsets.end - offsets.begin) +
                            " bytes but shape " + ShapeToString(shape) + " of " + DTypeName(dtype) +
                            " needs " + std::to_string(nbytes));
  }
  return TensorView{name, dtype, std::move(shape), data + offsets.begin, nbytes};
}

// Two tensors sharing bytes would alias; a writer never produces that, so the file is corrupt.
void CheckNoOverlap(const std::string& path, const std::map<std::string, TensorView>& tensors) {
  std::vector<const TensorView*> views;
  for (const auto& [name, view] : tensors) {
    if (view.nbytes > 0) views.push_back(&view);
  }
  std::sort(views.begin(), views.end(),
            [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
  for (size_t i = 1; i < views.size(); ++i) {
    if (views[i]->data < views[i - 1]->data + views[i - 1]->nbytes) {
      throw Corrupt(path,
                    "tensors '" + views[i - 1]->name + "' and '" + views[i]->name + "' overlap");
    }
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
double LoadFloat(const TensorView& view, size_t index) {
  switch (view.dtype) {
    case DType::kF32:
      return LoadElement<float>(view.data, index);
    case DType::kF16:
      return F16ToF32(LoadElement<uint16_t>(view.data, index));
    case DType::kBF16:
      return BF16ToF32(LoadElement<uint16_t>(view.data, index));
    case DType::kF64:
      return LoadElement<double>(view.data, index);
    default:
      throw Error(ErrorKind::kInvalidArgument,
                  std::string("LoadFloat on non-float dtype ") + DTypeName(view.dtype));
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

// Writes all of `size` bytes, retrying on partial writes and EINTR.
bool WriteAll(int fd, const void* data, size_t size) {
  const char* cursor = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t written = ::write(fd, cursor, size);
    if (written < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    cursor += written;
    size -= static_cast<size_t>(written);
  }
  return true;
}

// Removes the temporary file unless released; keeps every failure path in Write() clean.
class TempFileGuard {
 public:
  explicit TempFileGuard(std::string path) : path_(std::move(path)) {}
  ~TempFileGuard() {
    if (!path_.empty()) ::unlink(path_.c_str());
  }
  TempFileGuard(const TempFileGuard&) = delete;
  TempFileGuard& operator=(const TempFileGuard&) = delete;
  void Release() { path_.clear(); }

 private:
  std::string path_;
};

// Writes `chunks` to a temporary file beside `path`, then renames it over `path`.
void WriteAtomically(const std::string& path,
                     const std::vector<std::span<const std::byte>>& chunks) {
  const std::string temp_path = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(ErrorKind::kIo, "cannot write " + path + ": " + ErrnoText());
  TempFileGuard guard(temp_path);
  bool ok = true;
  for (size_t i = 0; ok && i < chunks.size(); ++i) {
    ok = WriteAll(fd, chunks[i].data(), chunks[i].size());
  }
  // fsync before rename so a crash cannot leave a renamed but empty file.
  ok = ok && ::fsync(fd) == 0;
  const int saved_errno = errno;
  const bool closed = ::close(fd) == 0;
  if (!ok) errno = saved_errno;
  if (!ok || !closed) throw Error(ErrorKind::kIo, "cannot write " + path + ": " + ErrnoText());
  if (::rename(temp_path.c_str(), path.c_str()) != 0) {
    throw Error(ErrorKind::kIo, "cannot rename " + temp_path + " to " + path + ": " + ErrnoText());
  }
  guard.Release();
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

SafetensorsFile SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile file;
  file.path_ = path;
  const Mapping mapping = MapReadOnly(path);
  // From here the destructor unmaps, including when validation below throws.
  file.mapping_ = mapping.address;
  file.mapping_size_ = mapping.size;

  const auto* bytes = static_cast<const std::byte*>(mapping.address);
  const size_t header_size = ReadHeaderSize(path, bytes, mapping.size);
  const Json header =
      ParseHeader(path, reinterpret_cast<const char*>(bytes + kLengthPrefixSize), header_size);
  const std::byte* data = bytes + kLengthPrefixSize + header_size;
  const size_t data_size = mapping.size - kLengthPrefixSize - header_size;
  for (const auto& [name, entry] : header.items()) {
    if (name == kMetadataKey) {
      file.metadata_ = ParseMetadata(path, entry);
    } else {
      file.tensors_.emplace(name, ParseTensor(path, name, entry, data, data_size));
    }
  }
  CheckNoOverlap(path, file.tensors_);
  return file;
}

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept
    : path_(std::move(other.path_)),
      mapping_(std::exchange(other.mapping_, nullptr)),
      mapping_size_(std::exchange(other.mapping_size_, 0)),
      tensors_(std::move(other.tensors_)),
      metadata_(std::move(other.metadata_)) {}

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_size_ = std::exchange(other.mapping_size_, 0);
    tensors_ = std::move(other.tensors_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

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

Tensor SafetensorsFile::ReadF32(const std::string& name) const {
  const TensorView& view = Get(name);
  if (!IsFloatDType(view.dtype)) throw WrongDType(path_, view, "F32, F16, BF16 or F64");
  const size_t count = static_cast<size_t>(NumElements(view.shape));
  std::vector<float> values(count);
  if (view.dtype == DType::kF32) {
    CopyBytes(values.data(), view.data, view.nbytes);
  } else {
    for (size_t i = 0; i < count; ++i) values[i] = static_cast<float>(LoadFloat(view, i));
  }
  return Tensor(view.shape, std::move(values));
}

std::vector<int64_t> SafetensorsFile::ReadI64(const std::string& name, Shape* shape) const {
  const TensorView& view = Get(name);
  const size_t count = static_cast<size_t>(NumElements(view.shape));
  std::vector<int64_t> values(count);
  switch (view.dtype) {
    case DType::kI64:
      CopyBytes(values.data(), view.data, view.nbytes);
      break;
    case DType::kI32:
      for (size_t i = 0; i < count; ++i) values[i] = LoadElement<int32_t>(view.data, i);
      break;
    case DType::kU8:
      for (size_t i = 0; i < count; ++i) values[i] = LoadElement<uint8_t>(view.data, i);
      break;
    case DType::kBool:
      for (size_t i = 0; i < count; ++i) values[i] = LoadElement<uint8_t>(view.data, i) != 0;
      break;
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF64:
      for (size_t i = 0; i < count; ++i) {
        values[i] = IntegralOrThrow(path_, view, i, LoadFloat(view, i));
      }
      break;
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
  WriteAtomically(path, chunks);
}

}  // namespace attn
