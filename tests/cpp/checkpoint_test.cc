// SPDX-License-Identifier: Apache-2.0
#include "attn/checkpoint.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "attn/safetensors.h"
#include "attn/tensor.h"
#include "test_util.h"

namespace attn {
namespace {

namespace fs = std::filesystem;

using testing::ExpectError;

// ---------------------------------------------------------------- ParseSafetensorsIndex

TEST(SafetensorsIndexTest, ParsesWeightMapIgnoringMetadataAndOtherKeys) {
  const auto map = ParseSafetensorsIndex(R"({
    "metadata": {"total_size": 1234, "format": "pt"},
    "something_else": [1, 2],
    "weight_map": {
      "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00002.safetensors",
      "model.layers.1.self_attn.q_proj.weight": "model-00002-of-00002.safetensors",
      "lm_head.weight": "model-00002-of-00002.safetensors"
    }
  })",
                                         "idx.json");
  const std::map<std::string, std::string> expected = {
      {"lm_head.weight", "model-00002-of-00002.safetensors"},
      {"model.layers.0.self_attn.q_proj.weight", "model-00001-of-00002.safetensors"},
      {"model.layers.1.self_attn.q_proj.weight", "model-00002-of-00002.safetensors"},
  };
  EXPECT_EQ(map, expected);
  // No metadata at all is fine, and so are names that merely start with dots.
  EXPECT_EQ(ParseSafetensorsIndex(R"({"weight_map": {"a": "..a.safetensors"}})", "i").at("a"),
            "..a.safetensors");
}

TEST(SafetensorsIndexTest, RejectsMalformedJson) {
  ExpectError([] { ParseSafetensorsIndex(R"({"weight_map": {"a": "b")", "idx.json"); },
              ErrorKind::kCorruptFile, {"idx.json", "malformed JSON"});
  ExpectError([] { ParseSafetensorsIndex(std::string_view("{}\0x", 4), "idx.json"); },
              ErrorKind::kCorruptFile, {"idx.json", "NUL"});
  ExpectError([] { ParseSafetensorsIndex("", "idx.json"); }, ErrorKind::kCorruptFile, {"idx.json"});
}

TEST(SafetensorsIndexTest, RejectsDuplicateKeys) {
  ExpectError(
      [] {
        ParseSafetensorsIndex(R"({"weight_map": {"w": "a.safetensors", "w": "b.safetensors"}})",
                              "idx.json");
      },
      ErrorKind::kCorruptFile, {"idx.json", "duplicate key", "w"});
  ExpectError(
      [] {
        ParseSafetensorsIndex(R"({"weight_map": {"w": "a.safetensors"}, "weight_map": {}})",
                              "idx.json");
      },
      ErrorKind::kCorruptFile, {"idx.json", "duplicate key", "weight_map"});
}

TEST(SafetensorsIndexTest, RejectsMissingOrMistypedWeightMap) {
  ExpectError([] { ParseSafetensorsIndex(R"({"metadata": {}})", "idx.json"); },
              ErrorKind::kCorruptFile, {"idx.json", "no 'weight_map'"});
  ExpectError([] { ParseSafetensorsIndex(R"({"weight_map": ["a"]})", "idx.json"); },
              ErrorKind::kCorruptFile, {"idx.json", "'weight_map' must be an object"});
  ExpectError([] { ParseSafetensorsIndex(R"({"weight_map": null})", "idx.json"); },
              ErrorKind::kCorruptFile, {"idx.json", "'weight_map' must be an object"});
  ExpectError([] { ParseSafetensorsIndex(R"([{"weight_map": {}}])", "idx.json"); },
              ErrorKind::kCorruptFile, {"idx.json", "must be a JSON object"});
  ExpectError([] { ParseSafetensorsIndex(R"({"weight_map": {}})", "idx.json"); },
              ErrorKind::kCorruptFile, {"idx.json", "'weight_map' is empty"});
}

TEST(SafetensorsIndexTest, RejectsNonStringShard) {
  for (const char* value : {"1", "null", "true", "[\"a.safetensors\"]", "{}"}) {
    ExpectError(
        [&] {
          ParseSafetensorsIndex(std::string(R"({"weight_map": {"w": )") + value + "}}", "idx.json");
        },
        ErrorKind::kCorruptFile, {"idx.json", "tensor 'w'", "must be a file name string"});
  }
}

TEST(SafetensorsIndexTest, RejectsShardNamesOutsideTheDirectory) {
  // JSON spellings of names that would make a reader leave the model directory.
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {R"("../x.safetensors")", "path separator"},
      {R"("/etc/passwd")", "path separator"},
      {R"("a/b.safetensors")", "path separator"},
      {R"("..\\x.safetensors")", "path separator"},
      {R"("C:\\x.safetensors")", "path separator"},
      {R"("")", "is empty"},
      {R"(".")", "is not a file name"},
      {R"("..")", "is not a file name"},
      {R"("x\u0000.safetensors")", "NUL"},
  };
  for (const auto& [json_name, problem] : hostile) {
    SCOPED_TRACE(json_name);
    ExpectError(
        [&] {
          ParseSafetensorsIndex(
              R"({"weight_map": {"ok": "a.safetensors", "bad": )" + json_name + "}}", "idx.json");
        },
        ErrorKind::kCorruptFile, {"idx.json", "tensor 'bad'", "shard name", problem});
  }
}

TEST(SafetensorsIndexTest, MessagesQuoteHostileNamesBriefly) {
  const std::string long_name(100000, 'n');
  try {
    ParseSafetensorsIndex(R"({"weight_map": {")" + long_name + R"(": "../x"}})", "idx.json");
    ADD_FAILURE() << "expected an attn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kCorruptFile);
    EXPECT_LT(std::string(e.what()).size(), 400u) << e.what();
  }
}

// ---------------------------------------------------------------- Checkpoint

class CheckpointTest : public testing::ScratchDirTest {
 protected:
  // Writes a safetensors file `name` (under the scratch dir) holding one 2-element F32 tensor
  // per entry of `tensors`, the values {first, first + 1}.
  std::string WriteShard(const std::string& name,
                         const std::vector<std::pair<std::string, float>>& tensors) const {
    SafetensorsWriter writer;
    for (const auto& [tensor, first] : tensors) {
      writer.AddF32(tensor, Tensor({2}, {first, first + 1.0f}));
    }
    const std::string path = PathOf(name);
    writer.Write(path);
    return path;
  }

  // A two-shard model in `subdir`: a, b in shard 1; c in shard 2; and its index.
  std::string WriteTwoShardModel(const std::string& subdir = "model") const {
    fs::create_directories(dir_ / subdir);
    WriteShard(subdir + "/model-00001-of-00002.safetensors", {{"a", 1.0f}, {"b", 3.0f}});
    WriteShard(subdir + "/model-00002-of-00002.safetensors", {{"c", 5.0f}});
    WriteFile(subdir + "/model.safetensors.index.json", R"({
      "metadata": {"total_size": 24},
      "weight_map": {
        "a": "model-00001-of-00002.safetensors",
        "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"
      }
    })");
    return PathOf(subdir);
  }

  // Writes an index in the scratch dir's "model" directory; returns the directory.
  std::string WriteIndex(const std::string& weight_map_body) const {
    fs::create_directories(dir_ / "model");
    WriteFile("model/model.safetensors.index.json", "{\"weight_map\": {" + weight_map_body + "}}");
    return PathOf("model");
  }
};

TEST_F(CheckpointTest, OpensSingleFile) {
  const std::string path = WriteShard("weights.safetensors", {{"x", 1.0f}, {"y", 2.0f}});
  const Checkpoint checkpoint = Checkpoint::Open(path);
  EXPECT_EQ(checkpoint.path(), path);
  EXPECT_EQ(checkpoint.directory(), dir_.string());
  EXPECT_FALSE(checkpoint.sharded());
  EXPECT_EQ(checkpoint.Names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_TRUE(checkpoint.Contains("x"));
  EXPECT_FALSE(checkpoint.Contains("z"));
  ASSERT_EQ(checkpoint.Files().size(), 1u);
  EXPECT_EQ(&checkpoint.FileFor("y"), checkpoint.Files()[0]);
  EXPECT_EQ(checkpoint.FileFor("y").ReadF32("y").data()[1], 3.0f);
}

TEST_F(CheckpointTest, OpensDirectoryWithIndex) {
  const std::string model = WriteTwoShardModel();
  const Checkpoint checkpoint = Checkpoint::Open(model);
  EXPECT_EQ(checkpoint.path(), model);
  EXPECT_EQ(checkpoint.directory(), model);
  EXPECT_TRUE(checkpoint.sharded());
  EXPECT_EQ(checkpoint.Names(), (std::vector<std::string>{"a", "b", "c"}));
  const std::vector<const SafetensorsFile*> files = checkpoint.Files();
  ASSERT_EQ(files.size(), 2u);
  EXPECT_EQ(files[0]->path(), model + "/model-00001-of-00002.safetensors");
  EXPECT_EQ(files[1]->path(), model + "/model-00002-of-00002.safetensors");
  EXPECT_EQ(&checkpoint.FileFor("a"), files[0]);
  EXPECT_EQ(&checkpoint.FileFor("b"), files[0]);
  EXPECT_EQ(&checkpoint.FileFor("c"), files[1]);
  EXPECT_EQ(checkpoint.FileFor("b").ReadF32("b").data()[0], 3.0f);
  EXPECT_EQ(checkpoint.FileFor("c").ReadF32("c").data()[1], 6.0f);
}

TEST_F(CheckpointTest, OpensIndexPathItself) {
  const std::string model = WriteTwoShardModel();
  const Checkpoint checkpoint = Checkpoint::Open(model + "/model.safetensors.index.json");
  EXPECT_TRUE(checkpoint.sharded());
  EXPECT_EQ(checkpoint.directory(), model);
  EXPECT_EQ(checkpoint.FileFor("c").path(), model + "/model-00002-of-00002.safetensors");

  // Any name ending in .json is read as an index.
  fs::copy_file(model + "/model.safetensors.index.json", model + "/other-name.json");
  const Checkpoint renamed = Checkpoint::Open(model + "/other-name.json");
  EXPECT_TRUE(renamed.sharded());
  EXPECT_EQ(renamed.Names(), (std::vector<std::string>{"a", "b", "c"}));
}

TEST_F(CheckpointTest, OpensDirectoryWithOnlySingleFile) {
  fs::create_directories(dir_ / "single");
  const std::string file = WriteShard("single/model.safetensors", {{"w", 7.0f}});
  const Checkpoint checkpoint = Checkpoint::Open(PathOf("single"));
  EXPECT_FALSE(checkpoint.sharded());
  EXPECT_EQ(checkpoint.directory(), PathOf("single"));
  EXPECT_EQ(checkpoint.FileFor("w").path(), file);
  EXPECT_EQ(checkpoint.Names(), (std::vector<std::string>{"w"}));
}

TEST_F(CheckpointTest, DirectoryWithBothFilesIsReadThroughTheIndex) {
  const std::string model = WriteTwoShardModel();
  WriteShard("model/model.safetensors", {{"only_in_single", 0.0f}});
  const Checkpoint checkpoint = Checkpoint::Open(model);
  EXPECT_TRUE(checkpoint.sharded());
  EXPECT_FALSE(checkpoint.Contains("only_in_single"));
}

TEST_F(CheckpointTest, DirectoryWithNeitherFileIsNotFound) {
  fs::create_directories(dir_ / "empty");
  ExpectError([&] { Checkpoint::Open(PathOf("empty")); }, ErrorKind::kNotFound,
              {PathOf("empty"), "model.safetensors.index.json", "model.safetensors"});
}

TEST_F(CheckpointTest, BareFileNamesAreRelativeToTheCurrentDirectory) {
  WriteTwoShardModel();
  char* saved = ::getcwd(nullptr, 0);
  ASSERT_NE(saved, nullptr);
  ASSERT_EQ(::chdir(PathOf("model").c_str()), 0);
  try {
    const Checkpoint checkpoint = Checkpoint::Open("model.safetensors.index.json");
    EXPECT_EQ(checkpoint.directory(), ".");
    EXPECT_EQ(checkpoint.FileFor("a").path(), "model-00001-of-00002.safetensors");
    const Checkpoint single = Checkpoint::Open("model-00002-of-00002.safetensors");
    EXPECT_EQ(single.directory(), ".");
    EXPECT_EQ(single.Names(), (std::vector<std::string>{"c"}));
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what();
  }
  EXPECT_EQ(::chdir(saved), 0);
  std::free(saved);
}

TEST_F(CheckpointTest, FileForUnknownTensorIsNotFound) {
  const std::string model = WriteTwoShardModel();
  const Checkpoint checkpoint = Checkpoint::Open(model);
  ExpectError([&] { checkpoint.FileFor("nope"); }, ErrorKind::kNotFound,
              {"tensor 'nope' not found in " + model});
}

TEST_F(CheckpointTest, MoveKeepsFileReferences) {
  const std::string model = WriteTwoShardModel();
  Checkpoint first = Checkpoint::Open(model);
  const SafetensorsFile* shard = &first.FileFor("c");
  Checkpoint moved = std::move(first);
  EXPECT_EQ(&moved.FileFor("c"), shard);
  Checkpoint assigned = Checkpoint::Open(WriteShard("one.safetensors", {{"z", 0.0f}}));
  assigned = std::move(moved);
  EXPECT_EQ(&assigned.FileFor("c"), shard);
  EXPECT_EQ(assigned.FileFor("c").ReadF32("c").data()[0], 5.0f);
}

TEST_F(CheckpointTest, MissingShardIsNotFound) {
  const std::string model = WriteTwoShardModel();
  fs::remove(model + "/model-00002-of-00002.safetensors");
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kNotFound,
              {"model-00002-of-00002.safetensors", model + "/model.safetensors.index.json",
               "tensor 'c'", "does not exist"});
}

TEST_F(CheckpointTest, TensorMissingFromItsShardIsCorrupt) {
  const std::string model = WriteTwoShardModel();
  // The index says c is in shard 1; it is in shard 2.
  WriteFile("model/model.safetensors.index.json", R"({"weight_map": {
      "a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors",
      "b": "model-00001-of-00002.safetensors", "d": "model-00002-of-00002.safetensors"}})");
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
              {"tensor 'c'", model + "/model-00001-of-00002.safetensors", "does not hold it",
               "it is in '" + model + "/model-00002-of-00002.safetensors'"});
  // A tensor no shard holds.
  WriteFile("model/model.safetensors.index.json", R"({"weight_map": {
      "a": "model-00001-of-00002.safetensors", "ghost": "model-00002-of-00002.safetensors"}})");
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
              {"tensor 'ghost'", model + "/model-00002-of-00002.safetensors", "does not hold it",
               "no shard"});
}

TEST_F(CheckpointTest, TensorInTwoShardsIsCorrupt) {
  const std::string model = WriteTwoShardModel();
  // Shard 2 also holds "a", which the index maps to shard 1.
  WriteShard("model/model-00002-of-00002.safetensors", {{"a", 9.0f}, {"c", 5.0f}});
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
              {"tensor 'a'", model + "/model-00001-of-00002.safetensors",
               model + "/model-00002-of-00002.safetensors"});
  // Also when the index lists neither copy.
  WriteShard("model/model-00002-of-00002.safetensors", {{"c", 5.0f}, {"extra", 0.0f}});
  WriteShard("model/model-00001-of-00002.safetensors", {{"a", 1.0f}, {"b", 3.0f}, {"extra", 0.0f}});
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
              {"tensor 'extra'", "two shards", model + "/model-00001-of-00002.safetensors",
               model + "/model-00002-of-00002.safetensors"});
}

TEST_F(CheckpointTest, TensorsTheIndexDoesNotListAreIgnored) {
  const std::string model = WriteTwoShardModel();
  WriteShard("model/model-00002-of-00002.safetensors", {{"c", 5.0f}, {"unlisted", 0.0f}});
  // A shard no entry names is never opened, so even a corrupt one does not matter.
  WriteFile("model/model-00003-of-00002.safetensors", "junk");
  const Checkpoint checkpoint = Checkpoint::Open(model);
  EXPECT_FALSE(checkpoint.Contains("unlisted"));
  EXPECT_EQ(checkpoint.Names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(checkpoint.Files().size(), 2u);
}

TEST_F(CheckpointTest, CorruptShardNamesTheIndex) {
  const std::string model = WriteTwoShardModel();
  WriteFile("model/model-00002-of-00002.safetensors", "not a safetensors file");
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
              {model + "/model-00002-of-00002.safetensors",
               "shard listed in index '" + model + "/model.safetensors.index.json'"});
}

TEST_F(CheckpointTest, HostileShardNamesAreRefusedBeforeAnyOpen) {
  // Real safetensors files where each hostile name would lead, so that only the name check can
  // refuse them.
  WriteShard("outside.safetensors", {{"t", 0.0f}});
  fs::create_directories(dir_ / "model" / "sub");
  WriteShard("model/sub/inner.safetensors", {{"t", 0.0f}});
  const std::string outside = PathOf("outside.safetensors");
  for (const std::string& shard :
       {std::string("../outside.safetensors"), outside, std::string("sub/inner.safetensors"),
        std::string(""), std::string("/etc/passwd"), std::string("..")}) {
    SCOPED_TRACE(shard);
    const std::string model = WriteIndex("\"t\": \"" + shard + "\"");
    ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
                {model + "/model.safetensors.index.json", "tensor 't'", "shard name"});
  }
}

TEST_F(CheckpointTest, DuplicateKeyInWeightMapIsCorrupt) {
  const std::string model = WriteTwoShardModel();
  WriteIndex(R"("a": "model-00001-of-00002.safetensors", "a": "model-00002-of-00002.safetensors")");
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
              {model + "/model.safetensors.index.json", "duplicate key", "'weight_map.a'"});
}

TEST_F(CheckpointTest, MalformedIndexIsCorrupt) {
  const std::string model = WriteTwoShardModel();
  WriteFile("model/model.safetensors.index.json", "{\"weight_map\": ");
  ExpectError([&] { Checkpoint::Open(model); }, ErrorKind::kCorruptFile,
              {model + "/model.safetensors.index.json", "malformed JSON"});
}

TEST_F(CheckpointTest, IndexLargerThanTheCapIsRefusedBeforeReading) {
  const std::string path = WriteFile("big.json", "{}");
  fs::resize_file(path, kMaxSafetensorsIndexBytes + 1);  // sparse: nothing is written
  ExpectError([&] { Checkpoint::Open(path); }, ErrorKind::kInvalidArgument,
              {path, "64 MiB limit for index files"});
}

TEST_F(CheckpointTest, MissingPathIsAnIoError) {
  ExpectError([&] { Checkpoint::Open(PathOf("none.safetensors")); }, ErrorKind::kIo,
              {PathOf("none.safetensors")});
  ExpectError([&] { Checkpoint::Open(PathOf("none.json")); }, ErrorKind::kIo,
              {PathOf("none.json"), "index"});
}

using testing::ExpectRefusedWithoutBlocking;

TEST_F(CheckpointTest, FifoIndexOrShardIsRefusedWithoutBlocking) {
  fs::create_directories(dir_ / "fifo_index");
  const std::string index = PathOf("fifo_index/model.safetensors.index.json");
  ASSERT_EQ(::mkfifo(index.c_str(), 0600), 0);
  ExpectRefusedWithoutBlocking([&] { Checkpoint::Open(PathOf("fifo_index")); }, {index, "FIFO"});
  ExpectRefusedWithoutBlocking([&] { Checkpoint::Open(index); }, {index, "FIFO"});

  const std::string model = WriteTwoShardModel();
  const std::string shard = model + "/model-00002-of-00002.safetensors";
  fs::remove(shard);
  ASSERT_EQ(::mkfifo(shard.c_str(), 0600), 0);
  ExpectRefusedWithoutBlocking([&] { Checkpoint::Open(model); },
                               {shard, "FIFO", "model.safetensors.index.json"});
}

}  // namespace
}  // namespace attn
