// SPDX-License-Identifier: Apache-2.0
// Regression tests for hostile files and faults (docs/reference.md, "Limits and hostile input"):
// every reader must answer a hostile file with an attn::Error naming it — no crash, no hang, no
// runaway memory — and every writer must neither lose nor redirect data.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/hf_config.h"
#include "attn/megatron.h"
#include "attn/safetensors.h"
#include "io/files.h"
#include "io/json_util.h"
#include "test_util.h"

#ifndef ATTN_SOURCE_DIR
#error "ATTN_SOURCE_DIR must name the repository root"
#endif

namespace attn {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Runs `action`, expecting an attn::Error of `kind` whose message holds every word and is
// short (at most `max_length` bytes: hostile values are quoted as excerpts only).
void ExpectError(const std::function<void()>& action, ErrorKind kind,
                 const std::vector<std::string>& words, size_t max_length = 2000) {
  try {
    action();
    ADD_FAILURE() << "expected an attn::Error";
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(static_cast<int>(e.kind()), static_cast<int>(kind)) << message.substr(0, 500);
    EXPECT_LE(message.size(), max_length) << message.substr(0, 500);
    for (const std::string& word : words) {
      EXPECT_NE(message.find(word), std::string::npos)
          << "message '" << message.substr(0, 500) << "' lacks '" << word << "'";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected an attn::Error, got std::exception: "
                  << std::string(e.what()).substr(0, 500);
  }
}

std::string LittleEndianU64(uint64_t value) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return bytes;
}

std::string Framed(const std::string& header, const std::string& data) {
  return LittleEndianU64(header.size()) + header + data;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string TinyConfigText(const std::string& name) {
  return ReadText(std::string(ATTN_SOURCE_DIR) + "/configs/" + name);
}

// A qwen2 config text with `key` replaced by raw JSON text `value`.
std::string QwenWith(const std::string& key, const std::string& raw_value) {
  json config = json::parse(TinyConfigText("tiny-qwen2.json"));
  config[key] = "@@";
  std::string text = config.dump();
  text.replace(text.find("\"@@\""), 4, raw_value);
  return text;
}

std::string MegatronText(const std::string& key, const std::string& raw_value) {
  json config = {{"num_layers", 2},       {"hidden_size", 64}, {"num_attention_heads", 4},
                 {"num_query_groups", 2}, {"kv_channels", 16}, {"max_position_embeddings", 128}};
  config[key] = "@@";
  std::string text = config.dump();
  text.replace(text.find("\"@@\""), 4, raw_value);
  return text;
}

class HostileInputTest : public testing::ScratchDirTest {};

// ---------------------------------------------------------------- D1: nesting and excerpts

TEST_F(HostileInputTest, DeeplyNestedConfigIsRefusedWhileParsing) {
  const std::string deep = std::string(60000, '[') + std::string(60000, ']');
  const std::string path = WriteFile("deep.json", QwenWith("hidden_size", deep));
  ExpectError([&] { LoadHfConfig(path); }, ErrorKind::kInvalidArgument,
              {path, "nesting deeper than 64", "hidden_size"});
  ExpectError([&] { LoadAnyConfig(path); }, ErrorKind::kInvalidArgument, {path, "nesting"});
  ExpectError([&] { ParseMegatronConfig(MegatronText("num_layers", deep), "m.json"); },
              ErrorKind::kInvalidArgument, {"m.json", "nesting", "num_layers"});
  // 64 levels are fine for the parser (the key is then simply the wrong type).
  const std::string ok = std::string(63, '[') + std::string(63, ']');
  ExpectError([&] { ParseHfConfig(QwenWith("hidden_size", ok)); }, ErrorKind::kInvalidArgument,
              {"'hidden_size' must be an integer"});
}

TEST_F(HostileInputTest, DeeplyNestedSafetensorsShapeIsCorrupt) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  const std::string path = WriteFile(
      "deep.safetensors",
      Framed(R"({"t":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,0]}})", ""));
  ExpectError([&] { SafetensorsFile::Open(path); }, ErrorKind::kCorruptFile,
              {path, "nesting deeper than 64"});
}

TEST_F(HostileInputTest, HugeValuesAreQuotedAsShortExcerpts) {
  const std::string huge(10 << 20, 'x');
  ExpectError([&] { ParseHfConfig(QwenWith("hidden_size", "\"" + huge + "\"")); },
              ErrorKind::kInvalidArgument, {"hidden_size", "xxxx"}, 400);
  json config = json::parse(TinyConfigText("tiny-qwen2.json"));
  config["model_type"] = huge;
  ExpectError([&] { ParseHfConfig(config.dump()); }, ErrorKind::kUnsupported, {"model_type"}, 400);
  ExpectError([&] { ParseMegatronConfig(MegatronText("num_layers", "\"" + huge + "\""), "m"); },
              ErrorKind::kInvalidArgument, {"num_layers"}, 400);
  // An unterminated megabyte string: nlohmann's own message quotes the token it last read.
  ExpectError([&] { ParseHfConfig("{\"model_type\": \"" + huge); }, ErrorKind::kInvalidArgument,
              {"malformed JSON"}, 400);
  const std::string path =
      WriteFile("long_name.safetensors",
                Framed(R"({")" + huge + R"(":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                       std::string(8, '\0')));
  ExpectError([&] { SafetensorsFile::Open(path); }, ErrorKind::kCorruptFile, {path, "needs 12"},
              400 + path.size());
}

TEST(JsonExcerptTest, BoundedAndUtf8Safe) {
  json deep = json::array();
  for (int i = 0; i < 1000; ++i) deep = json::array({deep});
  EXPECT_LE(io::JsonExcerpt(deep).size(), 90u);
  EXPECT_EQ(io::JsonExcerpt(json{{"a", 1}}), R"({"a":1})");
  // "é" is two bytes; a cut never splits it.
  const std::string text = io::TextExcerpt(std::string(79, 'a') + "\xC3\xA9", 80);
  EXPECT_EQ(text, std::string(79, 'a') + "\xE2\x80\xA6");
  // Control bytes and malformed UTF-8 are escaped, so messages stay printable UTF-8.
  EXPECT_EQ(io::TextExcerpt("a\xff\x01\xC3\xA9\xED\xA0\x80"), "a\\xFF\\x01\xC3\xA9\\xED\\xA0\\x80");
}

// ---------------------------------------------------------------- D2, D3: not regular files

// Every FIFO/device case: refused (Error(kIo), "not a regular file") without blocking.
void ExpectRefusedWithoutBlocking(const std::function<void()>& action) {
  testing::ExpectRefusedWithoutBlocking(action, {"not a regular file"});
}

TEST_F(HostileInputTest, FifoIsRefusedWithoutBlocking) {
  const std::string fifo = PathOf("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  ExpectRefusedWithoutBlocking([&] { LoadHfConfig(fifo); });
  ExpectRefusedWithoutBlocking([&] { LoadAnyConfig(fifo); });
  ExpectRefusedWithoutBlocking([&] { SafetensorsFile::Open(fifo); });
}

TEST_F(HostileInputTest, DevicesAreRefused) {
  ExpectRefusedWithoutBlocking([] { LoadAnyConfig("/dev/zero"); });
  ExpectRefusedWithoutBlocking([] { SafetensorsFile::Open("/dev/zero"); });
  ExpectError([&] { LoadHfConfig(dir_.string()); }, ErrorKind::kIo,
              {dir_.string(), "not a regular file", "directory"});
}

TEST_F(HostileInputTest, ConfigLargerThanCapIsRefusedBeforeReading) {
  const std::string path = WriteFile("big.json", "{}");
  fs::resize_file(path, (size_t{16} << 20) + 1);  // sparse
  ExpectError([&] { LoadAnyConfig(path); }, ErrorKind::kInvalidArgument, {path, "16 MiB"});
  EXPECT_EQ(io::ReadWholeFile(WriteFile("small.json", "{\"a\":1}"), "config"), "{\"a\":1}");
}

// ---------------------------------------------------------------- D4-D6: numbers

TEST_F(HostileInputTest, HugeLayerCountIsRefusedBeforeAllocating) {
  json config = json::parse(TinyConfigText("tiny-qwen2.json"));
  config["use_sliding_window"] = true;
  config["sliding_window"] = 16;
  config["num_hidden_layers"] = int64_t{1} << 34;
  const auto start = std::chrono::steady_clock::now();
  ExpectError([&] { ParseHfConfig(config.dump()); }, ErrorKind::kInvalidArgument,
              {"num_hidden_layers", "17179869184", "65536"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
  config["num_hidden_layers"] = 2;
  config["hidden_size"] = int64_t{1} << 40;
  ExpectError([&] { ParseHfConfig(config.dump()); }, ErrorKind::kInvalidArgument,
              {"hidden_size", "1048576"});
  ExpectError([&] { ParseMegatronConfig(MegatronText("num_layers", "4294967296"), "m"); },
              ErrorKind::kInvalidArgument, {"num_layers", "65536"});
}

TEST_F(HostileInputTest, NumberBeyondDoubleRangeIsAnAttnError) {
  ExpectError([&] { ParseHfConfig(QwenWith("rope_theta", "1e400")); }, ErrorKind::kInvalidArgument,
              {"config.json", "out of range", "rope_theta"});
  ExpectError([&] { ParseMegatronConfig(MegatronText("rotary_base", "-1e400"), "m.json"); },
              ErrorKind::kInvalidArgument, {"m.json", "out of range", "rotary_base"});
  const std::string path = WriteFile("e400.json", QwenWith("rope_theta", "1e400"));
  ExpectError([&] { LoadAnyConfig(path); }, ErrorKind::kInvalidArgument, {path, "rope_theta"});
  const std::string st =
      WriteFile("e400.safetensors",
                Framed(R"({"t":{"dtype":"F32","shape":[1e400],"data_offsets":[0,0]}})", ""));
  ExpectError([&] { SafetensorsFile::Open(st); }, ErrorKind::kCorruptFile, {st, "out of range"});
}

TEST_F(HostileInputTest, IntegersBeyondInt64AreRefusedBeforeAnyCast) {
  for (const char* raw : {"1e26", "-1e26", "9223372036854775808.0", "18446744073709551615"}) {
    SCOPED_TRACE(raw);
    try {
      ParseMegatronConfig(MegatronText("num_query_groups", raw), "m.json");
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("num_query_groups"), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find("-9223372036854775808"), std::string::npos) << e.what();
    }
    ExpectError([&] { ParseHfConfig(QwenWith("num_key_value_heads", raw)); },
                ErrorKind::kInvalidArgument, {"num_key_value_heads"});
  }
  // Integral floats stay accepted.
  EXPECT_EQ(
      ParseMegatronConfig(MegatronText("num_query_groups", "2.0"), "m").config.gqa.num_kv_heads, 2);
}

// ---------------------------------------------------------------- D7 and header cost

TEST_F(HostileInputTest, DuplicateTensorNamesAreCorrupt) {
  const std::string entry = R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string path =
      WriteFile("dup.safetensors",
                Framed(R"({"t":)" + entry + R"(,"t":)" + entry + "}", std::string(4, '\0')));
  ExpectError([&] { SafetensorsFile::Open(path); }, ErrorKind::kCorruptFile,
              {path, "duplicate key", "'t'"});
  const std::string twice =
      WriteFile("dup_field.safetensors",
                Framed(R"({"t":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                       std::string(4, '\0')));
  ExpectError([&] { SafetensorsFile::Open(twice); }, ErrorKind::kCorruptFile,
              {"duplicate key", "t.dtype"});
}

TEST_F(HostileInputTest, DataRegionMustBeTiledExactly) {
  const std::string a = R"("a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::string trailing = WriteFile("trailing", Framed("{" + a + "}", std::string(5, '\0')));
  ExpectError([&] { SafetensorsFile::Open(trailing); }, ErrorKind::kCorruptFile,
              {trailing, "trailing bytes", "holds 5", "cover 4"});
  const std::string gap = WriteFile(
      "gap", Framed("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                    std::string(12, '\0')));
  ExpectError([&] { SafetensorsFile::Open(gap); }, ErrorKind::kCorruptFile,
              {gap, "'b'", "gap", "'a'"});
  const std::string late = WriteFile(
      "late",
      Framed(R"({"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, '\0')));
  ExpectError([&] { SafetensorsFile::Open(late); }, ErrorKind::kCorruptFile,
              {late, "'b'", "start of the data region"});
  const std::string empty_with_data = WriteFile("empty_with_data", Framed("{}", "x"));
  ExpectError([&] { SafetensorsFile::Open(empty_with_data); }, ErrorKind::kCorruptFile,
              {"trailing bytes"});
}

TEST_F(HostileInputTest, HeaderCostIsBounded) {
  // 10M zero extents in one shape (the rank cap stops the parse at the 65th).
  std::string zeros = "[0";
  for (int i = 0; i < 10'000'000; ++i) zeros += ",0";
  zeros += "]";
  const std::string wide = WriteFile(
      "wide", Framed(R"({"t":{"dtype":"F32","shape":)" + zeros + R"(,"data_offsets":[0,0]}})", ""));
  auto start = std::chrono::steady_clock::now();
  ExpectError([&] { SafetensorsFile::Open(wide); }, ErrorKind::kCorruptFile,
              {wide, "more than 64 elements", "t.shape"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));

  // One more empty tensor than the cap.
  std::string header = "{";
  constexpr int kTensors = (1 << 18) + 1;
  for (int i = 0; i < kTensors; ++i) {
    if (i > 0) header += ',';
    header += "\"" + std::to_string(i) + R"(":{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  }
  header += "}";
  const std::string many = WriteFile("many", Framed(header, ""));
  start = std::chrono::steady_clock::now();
  ExpectError([&] { SafetensorsFile::Open(many); }, ErrorKind::kCorruptFile,
              {many, "more than 262144 tensors"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

// ---------------------------------------------------------------- D8: writes

TEST_F(HostileInputTest, PlantedTemporarySymlinkIsNotFollowed) {
  const std::string victim = WriteFile("victim", "precious");
  const std::string out = PathOf("out.safetensors");
  // Where the old writer put its temporary file.
  fs::create_symlink(victim, out + ".tmp." + std::to_string(::getpid()));
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({1}, {5.0f}));
  writer.Write(out);
  EXPECT_EQ(ReadText(victim), "precious");
  EXPECT_EQ(SafetensorsFile::Open(out).ReadF32("a").values()[0], 5.0f);
}

TEST_F(HostileInputTest, RewriteKeepsTheModeOfTheFileItReplaces) {
  const std::string out = WriteFile("private.safetensors", "old");
  ASSERT_EQ(::chmod(out.c_str(), 0600), 0);
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({1}, {1.0f}));
  writer.Write(out);
  struct stat info;
  ASSERT_EQ(::stat(out.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
  // A new file gets 0644 less the umask.
  const mode_t mask = ::umask(022);
  ::umask(mask);
  const std::string fresh = PathOf("fresh.safetensors");
  writer.Write(fresh);
  ASSERT_EQ(::stat(fresh.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0644u & ~mask);
}

TEST_F(HostileInputTest, FailedAtomicWriteLeavesTargetAndNoTemporary) {
  const std::string out = WriteFile("keep.txt", "original");
  EXPECT_THROW(io::AtomicWriteFile(out,
                                   [](int fd) {
                                     ASSERT_TRUE(io::WriteAll(fd, "partial", 7));
                                     throw Error(ErrorKind::kIo, "simulated failure");
                                   }),
               Error);
  EXPECT_EQ(ReadText(out), "original");
  std::vector<std::string> entries;
  for (const auto& entry : fs::directory_iterator(dir_)) {
    entries.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(entries, std::vector<std::string>{"keep.txt"});
  io::AtomicWriteFile(out, std::string_view("new"));
  EXPECT_EQ(ReadText(out), "new");
}

// ---------------------------------------------------------------- D11: truncated while open

TEST_F(HostileInputTest, FileTruncatedAfterOpenGivesErrorNotSignal) {
  SafetensorsWriter writer;
  writer.AddF32("a", Tensor({1024}, std::vector<float>(1024, 1.0f)));
  writer.AddI64("b", {4}, {1, 2, 3, 4});
  const std::string path = PathOf("shrinking.safetensors");
  writer.Write(path);
  const SafetensorsFile file = SafetensorsFile::Open(path);
  fs::resize_file(path, 64);  // another process truncates it
  ExpectError([&] { file.ReadF32("a"); }, ErrorKind::kCorruptFile, {path, "truncated"});
  ExpectError([&] { file.ReadI64("b", nullptr); }, ErrorKind::kCorruptFile, {path});
}

}  // namespace
}  // namespace attn
