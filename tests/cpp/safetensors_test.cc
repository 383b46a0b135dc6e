// SPDX-License-Identifier: Apache-2.0
#include "attn/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "attn/dtype.h"
#include "attn/error.h"
#include "attn/tensor.h"
#include "test_util.h"

namespace attn {
namespace {

namespace fs = std::filesystem;

using testing::ExpectError;

std::string LittleEndianU64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

// A file image: length prefix, header text as given, then the data bytes.
std::string Framed(const std::string& header, const std::string& data) {
  return LittleEndianU64(header.size()) + header + data;
}

template <typename T>
std::string RawBytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

class SafetensorsTest : public testing::ScratchDirTest {
 protected:
  std::string ReadFile(const std::string& path) const {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
};

TEST_F(SafetensorsTest, F32RoundTripIsExact) {
  const std::vector<float> values = {1.0f, -2.5f, 3.14159f, 1e-30f, -65504.0f, 0.1f};
  SafetensorsWriter writer;
  writer.AddF32("w", Tensor({2, 3}, values));
  const std::string path = PathOf("f32.safetensors");
  writer.Write(path);

  const SafetensorsFile file = SafetensorsFile::Open(path);
  const TensorView& view = file.Get("w");
  EXPECT_EQ(view.dtype, DType::kF32);
  EXPECT_EQ(view.shape, (Shape{2, 3}));
  EXPECT_EQ(view.nbytes, 24u);
  const Tensor tensor = file.ReadF32("w");
  EXPECT_EQ(tensor.shape(), (Shape{2, 3}));
  EXPECT_EQ(std::vector<float>(tensor.values().begin(), tensor.values().end()), values);
}

TEST_F(SafetensorsTest, F16AndBF16RoundTripRoundToStorage) {
  const std::vector<float> values = {1.0f, -2.5f, 0.1f, 65504.0f, std::ldexp(1.0f, -24)};
  SafetensorsWriter writer;
  writer.AddF32("half", Tensor({5}, values), DType::kF16);
  writer.AddF32("brain", Tensor({5}, values), DType::kBF16);
  const std::string path = PathOf("low.safetensors");
  writer.Write(path);

  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.Get("half").dtype, DType::kF16);
  EXPECT_EQ(file.Get("half").nbytes, 10u);
  EXPECT_EQ(file.Get("brain").dtype, DType::kBF16);
  const Tensor half = file.ReadF32("half");
  const Tensor brain = file.ReadF32("brain");
  const std::vector<float> expected_half = {1.0f, -2.5f, 0.0999755859375f, 65504.0f,
                                            std::ldexp(1.0f, -24)};
  const std::vector<float> expected_brain = {1.0f, -2.5f, 0.10009765625f, 65536.0f,
                                             std::ldexp(1.0f, -24)};
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(half.values()[i], expected_half[i]) << i;
    EXPECT_EQ(brain.values()[i], expected_brain[i]) << i;
  }
  // Stored bits are the documented conversions.
  uint16_t bits;
  std::memcpy(&bits, file.ReadBytes("half").data() + 2, sizeof(bits));
  EXPECT_EQ(bits, 0xc100);
  std::memcpy(&bits, file.ReadBytes("brain").data() + 2, sizeof(bits));
  EXPECT_EQ(bits, 0xc020);
}

TEST_F(SafetensorsTest, I64RoundTripIncludingExtremes) {
  const std::vector<int64_t> values = {0,
                                       -1,
                                       7,
                                       std::numeric_limits<int64_t>::min(),
                                       std::numeric_limits<int64_t>::max(),
                                       1234567890123};
  SafetensorsWriter writer;
  writer.AddI64("positions", {3, 2}, values);
  const std::string path = PathOf("i64.safetensors");
  writer.Write(path);

  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.Get("positions").dtype, DType::kI64);
  Shape shape;
  EXPECT_EQ(file.ReadI64("positions", &shape), values);
  EXPECT_EQ(shape, (Shape{3, 2}));
  ExpectError([&] { file.ReadF32("positions"); }, ErrorKind::kInvalidArgument,
              {"'positions'", "I64", path});
}

TEST_F(SafetensorsTest, ScalarAndEmptyTensors) {
  SafetensorsWriter writer;
  writer.AddF32("scalar", Tensor({}, {42.0f}));
  writer.AddF32("empty", Tensor({0, 3}));
  writer.AddI64("none", {0}, {});
  const std::string path = PathOf("edge.safetensors");
  writer.Write(path);

  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.ReadF32("scalar").values()[0], 42.0f);
  EXPECT_EQ(file.ReadF32("scalar").shape(), Shape{});
  EXPECT_EQ(file.ReadF32("empty").size(), 0);
  EXPECT_EQ(file.ReadF32("empty").shape(), (Shape{0, 3}));
  EXPECT_TRUE(file.ReadI64("none", nullptr).empty());
}

TEST_F(SafetensorsTest, EmptyFileHasNoTensors) {
  const std::string path = PathOf("nothing.safetensors");
  SafetensorsWriter().Write(path);
  EXPECT_EQ(ReadFile(path), LittleEndianU64(8) + "{}      ");
  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.Names().empty());
  EXPECT_TRUE(file.metadata().empty());
}

TEST_F(SafetensorsTest, LayoutIsSortedContiguousAndPadded) {
  SafetensorsWriter writer;
  writer.AddF32("zeta", Tensor({1}, {2.0f}));
  writer.AddF32("alpha", Tensor({2}, {1.0f, 1.5f}));
  const std::string path = PathOf("layout.safetensors");
  writer.Write(path);

  const std::string bytes = ReadFile(path);
  uint64_t header_size;
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  EXPECT_EQ(header_size % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + header_size + 12);
  const std::string header = bytes.substr(8, header_size);
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1),
            R"({"alpha":{"data_offsets":[0,8],"dtype":"F32","shape":[2]},)"
            R"("zeta":{"data_offsets":[8,12],"dtype":"F32","shape":[1]}})");
  const std::vector<float> data = {1.0f, 1.5f, 2.0f};
  EXPECT_EQ(bytes.substr(8 + header_size), RawBytes(data));

  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.Names(), (std::vector<std::string>{"alpha", "zeta"}));
  EXPECT_TRUE(file.Contains("zeta"));
  EXPECT_FALSE(file.Contains("beta"));
}

TEST_F(SafetensorsTest, MetadataRoundTrip) {
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  writer.SetMetadata("note", "first");
  writer.SetMetadata("note", "quotes \" and unicode \u00e9");
  writer.AddF32("x", Tensor({1}, {1.0f}));
  const std::string path = PathOf("meta.safetensors");
  writer.Write(path);

  const SafetensorsFile file = SafetensorsFile::Open(path);
  const std::map<std::string, std::string> expected = {{"format", "pt"},
                                                       {"note", "quotes \" and unicode \u00e9"}};
  EXPECT_EQ(file.metadata(), expected);
  EXPECT_EQ(file.Names(), std::vector<std::string>{"x"});
}

TEST_F(SafetensorsTest, MissingTensorIsNotFound) {
  SafetensorsWriter writer;
  writer.AddF32("present", Tensor({1}, {1.0f}));
  const std::string path = PathOf("W.safetensors");
  writer.Write(path);
  const SafetensorsFile file = SafetensorsFile::Open(path);
  ExpectError([&] { file.Get("x"); }, ErrorKind::kNotFound, {"tensor 'x' not found in " + path});
  ExpectError([&] { file.ReadF32("x"); }, ErrorKind::kNotFound, {"'x'"});
  ExpectError([&] { file.ReadI64("x", nullptr); }, ErrorKind::kNotFound, {"'x'"});
}

TEST_F(SafetensorsTest, MissingFileIsIo) {
  const std::string path = PathOf("absent.safetensors");
  ExpectError([&] { SafetensorsFile::Open(path); }, ErrorKind::kIo,
              {path, "No such file or directory"});
  ExpectError([&] { SafetensorsFile::Open(dir_.string()); }, ErrorKind::kIo, {dir_.string()});
}

TEST_F(SafetensorsTest, ReadI64FromFloatMaskAndIntegerPositions) {
  SafetensorsWriter writer;
  writer.AddF32("mask", Tensor({2, 2}, {1.0f, 0.0f, 0.0f, 1.0f}));
  writer.AddF32("bf16_ids", Tensor({2}, {-3.0f, 256.0f}), DType::kBF16);
  writer.AddF32("half", Tensor({1}, {0.5f}), DType::kF16);
  writer.AddF32("fraction", Tensor({3}, {1.0f, 2.5f, 3.0f}));
  writer.AddF32("nan", Tensor({1}, {std::nanf("")}));
  writer.AddF32("huge", Tensor({1}, {1e19f}));
  writer.AddI64("positions", {4}, {0, 1, 2, 3});
  const std::string path = PathOf("mask.safetensors");
  writer.Write(path);

  const SafetensorsFile file = SafetensorsFile::Open(path);
  Shape shape;
  EXPECT_EQ(file.ReadI64("mask", &shape), (std::vector<int64_t>{1, 0, 0, 1}));
  EXPECT_EQ(shape, (Shape{2, 2}));
  EXPECT_EQ(file.ReadI64("bf16_ids", nullptr), (std::vector<int64_t>{-3, 256}));
  EXPECT_EQ(file.ReadI64("positions", &shape), (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_EQ(shape, (Shape{4}));
  ExpectError([&] { file.ReadI64("fraction", &shape); }, ErrorKind::kInvalidArgument,
              {"'fraction'", "value 2.5 at element 1"});
  ExpectError([&] { file.ReadI64("half", nullptr); }, ErrorKind::kInvalidArgument, {"'half'"});
  ExpectError([&] { file.ReadI64("nan", nullptr); }, ErrorKind::kInvalidArgument, {"'nan'"});
  ExpectError([&] { file.ReadI64("huge", nullptr); }, ErrorKind::kInvalidArgument,
              {"'huge'", "9.9999999805064479e+18"});
}

// Dtypes the writer cannot produce, at an odd data offset so every element load is unaligned.
TEST_F(SafetensorsTest, ReadsHandWrittenDTypesFromUnalignedData) {
  std::string header = R"({"i32":{"dtype":"I32","shape":[2],"data_offsets":[0,8]},)"
                       R"("u8":{"dtype":"U8","shape":[2],"data_offsets":[8,10]},)"
                       R"("flags":{"dtype":"BOOL","shape":[3],"data_offsets":[10,13]},)"
                       R"("f64":{"dtype":"F64","shape":[2],"data_offsets":[13,29]},)"
                       R"("f32":{"dtype":"F32","shape":[1],"data_offsets":[29,33]},)"
                       R"("f16":{"dtype":"F16","shape":[1],"data_offsets":[33,35]}})";
  // An odd header length puts the data region, and every tensor in it, at an odd file offset.
  if (header.size() % 2 == 0) header += ' ';
  const std::string data =
      RawBytes(std::vector<int32_t>{-5, 70000}) + RawBytes(std::vector<uint8_t>{0, 255}) +
      RawBytes(std::vector<uint8_t>{1, 0, 1}) + RawBytes(std::vector<double>{-1.25, 4.0}) +
      RawBytes(std::vector<float>{6.0f}) + RawBytes(std::vector<uint16_t>{0xc100});
  const std::string path = WriteFile("hand.safetensors", Framed(header, data));

  const SafetensorsFile file = SafetensorsFile::Open(path);
  EXPECT_EQ(file.ReadI64("i32", nullptr), (std::vector<int64_t>{-5, 70000}));
  EXPECT_EQ(file.ReadI64("u8", nullptr), (std::vector<int64_t>{0, 255}));
  EXPECT_EQ(file.ReadI64("flags", nullptr), (std::vector<int64_t>{1, 0, 1}));
  EXPECT_EQ(file.ReadI64("f32", nullptr), (std::vector<int64_t>{6}));
  ExpectError([&] { file.ReadI64("f16", nullptr); }, ErrorKind::kInvalidArgument,
              {"'f16'", "-2.5"});
  const Tensor f64 = file.ReadF32("f64");
  EXPECT_EQ(f64.values()[0], -1.25f);
  EXPECT_EQ(f64.values()[1], 4.0f);
  EXPECT_EQ(file.ReadF32("f32").values()[0], 6.0f);
  EXPECT_EQ(file.ReadF32("f16").values()[0], -2.5f);
  ExpectError([&] { file.ReadI64("f64", nullptr); }, ErrorKind::kInvalidArgument,
              {"'f64'", "-1.25"});
  ExpectError([&] { file.ReadF32("u8"); }, ErrorKind::kInvalidArgument, {"'u8'", "U8"});
  ExpectError([&] { file.ReadF32("flags"); }, ErrorKind::kInvalidArgument, {"BOOL"});
}

TEST_F(SafetensorsTest, MovedFileKeepsViewsValid) {
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({2}, {3.0f, 4.0f}));
  const std::string path = PathOf("move.safetensors");
  writer.Write(path);
  writer.Write(PathOf("other.safetensors"));

  SafetensorsFile first = SafetensorsFile::Open(path);
  SafetensorsFile second = std::move(first);
  EXPECT_EQ(second.ReadF32("a").values()[1], 4.0f);
  EXPECT_EQ(second.path(), path);
  SafetensorsFile third = SafetensorsFile::Open(PathOf("other.safetensors"));
  third = std::move(second);
  EXPECT_EQ(third.ReadF32("a").values()[0], 3.0f);
  EXPECT_EQ(third.path(), path);
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({1}, {1.0f}));
  ExpectError([&] { writer.AddF32("a", Tensor({1}, {2.0f})); }, ErrorKind::kInvalidArgument,
              {"duplicate", "'a'"});
  ExpectError([&] { writer.AddI64("a", {1}, {2}); }, ErrorKind::kInvalidArgument, {"'a'"});
  ExpectError([&] { writer.AddF32("b", Tensor({1}, {1.0f}), DType::kI64); },
              ErrorKind::kInvalidArgument, {"'b'", "I64"});
  ExpectError(
      [&] {
        writer.AddI64("c", {2, 2}, {1, 2, 3});
      },
      ErrorKind::kInvalidArgument, {"'c'", "[2, 2]", "3"});
  ExpectError([&] { writer.AddF32("__metadata__", Tensor({1}, {1.0f})); },
              ErrorKind::kInvalidArgument, {"__metadata__"});
  ExpectError([&] { writer.AddF32("d", Tensor()); }, ErrorKind::kInvalidArgument, {"'d'"});
}

TEST_F(SafetensorsTest, NonUtf8NameIsRejectedAtWrite) {
  SafetensorsWriter writer;
  writer.AddF32("bad\xff", Tensor({1}, {1.0f}));
  const std::string path = PathOf("utf8.safetensors");
  ExpectError([&] { writer.Write(path); }, ErrorKind::kInvalidArgument, {path, "UTF-8"});
  EXPECT_FALSE(fs::exists(path));
}

TEST_F(SafetensorsTest, WriteIntoMissingDirectoryThrowsAndLeavesNothing) {
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({1}, {1.0f}));
  const std::string path = PathOf("no_such_dir/out.safetensors");
  ExpectError([&] { writer.Write(path); }, ErrorKind::kIo, {path});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(PathOf("no_such_dir")));
}

TEST_F(SafetensorsTest, FailedRenameRemovesTemporaryFile) {
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({1}, {1.0f}));
  // A non-empty directory at the destination makes rename() fail after the data is written.
  const std::string path = PathOf("occupied");
  fs::create_directory(path);
  WriteFile("occupied/child", "x");
  ExpectError([&] { writer.Write(path); }, ErrorKind::kIo, {path});
  std::vector<std::string> entries;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    entries.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(entries, std::vector<std::string>{"occupied"});
}

TEST_F(SafetensorsTest, WriteReplacesExistingFile) {
  const std::string path = WriteFile("replace.safetensors", "old contents");
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({1}, {9.0f}));
  writer.Write(path);
  EXPECT_EQ(SafetensorsFile::Open(path).ReadF32("a").values()[0], 9.0f);
}

struct HostileCase {
  const char* label;
  std::string bytes;
  std::vector<std::string> words;
};

std::vector<HostileCase> HostileCases() {
  const std::string eight(8, '\0');
  const std::string twelve(12, '\0');
  auto one = [](const std::string& entry) { return R"({"t":)" + entry + "}"; };
  return {
      {"empty file", "", {"shorter than"}},
      {"five bytes", "\x01\x02\x03\x04\x05", {"shorter than"}},
      {"header past end", LittleEndianU64(100) + "{}", {"header length 100", "10-byte file"}},
      {"header length huge",
       LittleEndianU64(uint64_t{1} << 63) + "{}",
       {"header length 9223372036854775808"}},
      {"zero-length header", LittleEndianU64(0), {"malformed JSON"}},
      {"not json", Framed("{not json", ""), {"malformed JSON"}},
      {"trailing garbage", Framed("{}x", ""), {"malformed JSON"}},
      {"not an object", Framed("[1, 2]", ""), {"not a JSON object"}},
      {"entry not object", Framed(one("3"), ""), {"'t'", "not an object"}},
      {"missing dtype",
       Framed(one(R"({"shape":[2],"data_offsets":[0,8]})"), eight),
       {"'t'", "missing dtype"}},
      {"dtype not string",
       Framed(one(R"({"dtype":4,"shape":[2],"data_offsets":[0,8]})"), eight),
       {"'t'", "dtype is not a string"}},
      {"unknown dtype",
       Framed(one(R"({"dtype":"Q9","shape":[8],"data_offsets":[0,8]})"), eight),
       {"'t'", "Q9", "not a safetensors dtype"}},
      {"missing shape",
       Framed(one(R"({"dtype":"F32","data_offsets":[0,8]})"), eight),
       {"'t'", "missing shape"}},
      {"shape not array",
       Framed(one(R"({"dtype":"F32","shape":2,"data_offsets":[0,8]})"), eight),
       {"'t'", "shape is not an array"}},
      {"negative extent",
       Framed(one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})"), eight),
       {"'t'", "-2", "non-negative integer"}},
      {"fractional extent",
       Framed(one(R"({"dtype":"F32","shape":[2.5],"data_offsets":[0,8]})"), eight),
       {"'t'", "2.5"}},
      {"string extent",
       Framed(one(R"({"dtype":"F32","shape":["2"],"data_offsets":[0,8]})"), eight),
       {"'t'", "\"2\""}},
      {"extent beyond int64",
       Framed(one(R"({"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,8]})"), eight),
       {"'t'", "18446744073709551615"}},
      {"shape product overflow",
       Framed(one(R"({"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]})"),
              eight),
       {"'t'", "overflows"}},
      {"byte size overflow only",
       Framed(one(R"({"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8]})"), eight),
       {"'t'", "overflows"}},
      {"missing offsets",
       Framed(one(R"({"dtype":"F32","shape":[2]})"), eight),
       {"'t'", "missing data_offsets"}},
      {"offsets wrong length",
       Framed(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0]})"), eight),
       {"'t'", "data_offsets"}},
      {"offsets not integers",
       Framed(one(R"({"dtype":"F32","shape":[2],"data_offsets":[0,"8"]})"), eight),
       {"'t'", "data_offsets"}},
      {"negative offset",
       Framed(one(R"({"dtype":"F32","shape":[0],"data_offsets":[-4,-4]})"), eight),
       {"'t'", "data_offsets"}},
      {"end before begin",
       Framed(one(R"({"dtype":"F32","shape":[1],"data_offsets":[8,4]})"), eight),
       {"'t'", "end before begin"}},
      {"offsets beyond data",
       Framed(one(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})"), eight),
       {"'t'", "beyond the data region of 8 bytes"}},
      {"offset near uint64 max",
       Framed(one(R"({"dtype":"F32","shape":[0],)"
                  R"("data_offsets":[18446744073709551615,18446744073709551615]})"),
              eight),
       {"'t'", "data_offsets"}},
      {"byte size mismatch",
       Framed(one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})"), eight),
       {"'t'", "span 8 bytes", "needs 12"}},
      {"overlapping tensors",
       Framed(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
              twelve),
       {"'a'", "'b'", "overlap"}},
      {"metadata not object",
       Framed(R"({"__metadata__":["x"]})", ""),
       {"__metadata__", "not an object"}},
      {"metadata value not string",
       Framed(R"({"__metadata__":{"k":1}})", ""),
       {"__metadata__", "'k'", "non-string"}},
  };
}

TEST_F(SafetensorsTest, HostileFilesAreCorrupt) {
  int index = 0;
  for (const HostileCase& c : HostileCases()) {
    SCOPED_TRACE(c.label);
    const std::string path = WriteFile("hostile" + std::to_string(index++), c.bytes);
    std::vector<std::string> words = c.words;
    words.push_back(path);
    ExpectError([&] { SafetensorsFile::Open(path); }, ErrorKind::kCorruptFile, words);
  }
}

// Empty tensors sit at a boundary between tensors (the official reader sorts by offsets and
// requires each tensor to start where the previous ended), never inside another tensor.
TEST_F(SafetensorsTest, EmptyTensorsSitAtBoundaries) {
  const std::string data = RawBytes(std::vector<float>{1.0f, 2.0f});
  const std::string good = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                           R"("c":{"dtype":"F32","shape":[0,5],"data_offsets":[8,8]}})";
  const SafetensorsFile file = SafetensorsFile::Open(WriteFile("empty_ok", Framed(good, data)));
  EXPECT_EQ(file.ReadF32("a").values()[1], 2.0f);
  EXPECT_EQ(file.ReadF32("c").shape(), (Shape{0, 5}));
  const std::string inside = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})";
  const std::string path = WriteFile("empty_inside", Framed(inside, data));
  ExpectError([&] { SafetensorsFile::Open(path); }, ErrorKind::kCorruptFile,
              {path, "'a'", "'b'", "overlaps"});
}

// Keys other than dtype/shape/data_offsets are ignored, as by the official reader; dtypes the
// format defines but attn does not read make a valid file attn refuses as unsupported.
TEST_F(SafetensorsTest, UnknownKeysIgnoredAndForeignDTypesUnsupported) {
  const std::string eight(8, '\0');
  const std::string extra = WriteFile(
      "extra", Framed(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":[1]}})", eight));
  EXPECT_EQ(SafetensorsFile::Open(extra).Get("t").shape, (Shape{2}));
  const std::string fp8 = WriteFile(
      "fp8", Framed(R"({"t":{"dtype":"F8_E5M2","shape":[8],"data_offsets":[0,8]}})", eight));
  ExpectError([&] { SafetensorsFile::Open(fp8); }, ErrorKind::kUnsupported,
              {fp8, "'t'", "F8_E5M2"});
  // ... but only once the file is otherwise valid: bad offsets are still corrupt.
  const std::string bad_fp8 = WriteFile(
      "bad_fp8", Framed(R"({"t":{"dtype":"F8_E5M2","shape":[9],"data_offsets":[0,8]}})", eight));
  ExpectError([&] { SafetensorsFile::Open(bad_fp8); }, ErrorKind::kCorruptFile, {"needs 9"});
}

// A header length above the cap is rejected before parsing, even when the file is big enough.
TEST_F(SafetensorsTest, HeaderLengthAboveCapIsCorrupt) {
  const uint64_t claimed = 101u * 1024u * 1024u;
  const std::string path = WriteFile("big", LittleEndianU64(claimed) + "{}");
  fs::resize_file(path, claimed + 64);  // sparse: costs no disk space
  ExpectError([&] { SafetensorsFile::Open(path); }, ErrorKind::kCorruptFile,
              {path, "header length 105906176", "100 MB"});
}

}  // namespace
}  // namespace attn
