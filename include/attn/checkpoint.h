// SPDX-License-Identifier: Apache-2.0
// A model's tensors as Hugging Face publishes them: one model.safetensors, or shards
// (model-00001-of-00004.safetensors, ...) listed by model.safetensors.index.json, whose
// "weight_map" maps each tensor name to the shard file that holds it.
//
// The index is as hostile as any other input (docs/reference.md, "Limits and hostile input"): a
// shard name must be a plain file name in the index's own directory, so an index cannot make attn
// read outside the model directory. Open() opens every shard (headers only; tensor bytes are
// read with pread when asked for) and checks the index against what the shards hold before it
// returns, so a wrong index fails at once, naming the tensor and the files, not at the first
// read of a missing tensor.
#ifndef ATTN_CHECKPOINT_H_
#define ATTN_CHECKPOINT_H_

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "attn/safetensors.h"

namespace attn {

// Parses the text of a model.safetensors.index.json:
//   {"metadata": {...optional, ignored...}, "weight_map": {tensor name: shard file name}}
// and returns tensor name -> shard file name. Other top-level keys are ignored, as the HF loader
// ignores them. Throws Error(kCorruptFile) "<source>: ..." naming the problem for malformed JSON,
// a duplicate key (anywhere), a top level that is not an object, "weight_map" missing or not an
// object, an empty "weight_map", a value that is not a string, and a shard name that is not a
// plain file name in the index's directory (empty, ".", "..", containing '/', '\\' or NUL —
// so also no absolute path).
std::map<std::string, std::string> ParseSafetensorsIndex(std::string_view json_text,
                                                         const std::string& source);

// The largest index file Open() reads. Real indexes are a few MB (DeepSeek-V3's ~9 MB for 91k
// tensors); the config files' 16 MiB cap would leave too little room for larger MoE models.
inline constexpr size_t kMaxSafetensorsIndexBytes = size_t{64} << 20;

class Checkpoint {
 public:
  // `path` is one of:
  //   (a) a .safetensors file (any name not ending in ".json");
  //   (b) an index file: any name ending in ".json" is read as one;
  //   (c) a directory holding model.safetensors.index.json (read as (b)), or else a single
  //       model.safetensors (read as (a)).
  // Through an index, every shard it names is opened with SafetensorsFile::Open and checked:
  //   - a shard that does not exist: Error(kNotFound) naming the shard and the index;
  //   - a tensor the index maps to a shard that does not hold it: Error(kCorruptFile) naming the
  //     tensor, the shard and the index;
  //   - a tensor held by two shards (listed in the index or not): Error(kCorruptFile) naming the
  //     tensor and both files.
  // Tensors a shard holds but the index does not list are ignored: the index says what the
  // checkpoint holds. A directory with neither file: Error(kNotFound) naming the directory and
  // both file names. Errors from reading the index (Error(kIo) for a FIFO, a device or an
  // unreadable file, Error(kInvalidArgument) past kMaxSafetensorsIndexBytes) and from opening a
  // file (SafetensorsFile::Open) propagate, a shard's naming the index too. On any error nothing
  // stays open.
  static Checkpoint Open(const std::string& path);

  Checkpoint(Checkpoint&& other) noexcept;
  Checkpoint& operator=(Checkpoint&& other) noexcept;
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;
  ~Checkpoint();

  // The path as given to Open().
  const std::string& path() const { return path_; }
  // The directory holding the files (where config.json usually is): the directory given, or
  // the one holding the file given ("." for a bare file name).
  const std::string& directory() const { return directory_; }
  // True when opened through an index.
  bool sharded() const { return sharded_; }

  bool Contains(const std::string& name) const;
  // The open file that holds `name`. Throws Error(kNotFound) "tensor 'X' not found in <path>".
  const SafetensorsFile& FileFor(const std::string& name) const;
  // Every tensor name (through an index: the names it lists), sorted.
  std::vector<std::string> Names() const;
  // Every open file once: the single file, or each shard in the order of its file name.
  std::vector<const SafetensorsFile*> Files() const;

 private:
  Checkpoint() = default;

  std::string path_;
  std::string directory_;
  bool sharded_ = false;
  // unique_ptr: each SafetensorsFile keeps its address while files_ grows and when the
  // Checkpoint is moved, so references FileFor hands out stay valid.
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> file_of_;  // tensor name -> index into files_
};

}  // namespace attn

#endif  // ATTN_CHECKPOINT_H_
