// SPDX-License-Identifier: Apache-2.0
// One safetensors file or a sharded Hugging Face checkpoint (model.safetensors.index.json plus
// the shards it lists). The index decides which shard holds which tensor, as in the HF loader;
// Open() checks it against the shards' own headers once, up front, so that the rest of attn can
// ask "which file holds X" without ever meeting an index that lies.
#include "attn/checkpoint.h"

#include <sys/stat.h>

#include <cerrno>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"
#include "io/files.h"
#include "io/json_util.h"

namespace attn {
namespace {

using nlohmann::json;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kSingleName = "model.safetensors";

std::string Quote(std::string_view text) { return "'" + io::TextExcerpt(text) + "'"; }

bool EndsWith(std::string_view text, std::string_view suffix) {
  return text.size() >= suffix.size() && text.substr(text.size() - suffix.size()) == suffix;
}

// Why `name` is not a plain file name in the index's own directory, or "" if it is one. Anything
// else could send a read elsewhere: "../x", "/etc/passwd", "sub/x" (a symlinked subdirectory),
// "C:\\x" or "..\\x" on a reader that treats '\\' as a separator, and a NUL that a C API would
// cut the name at.
std::string ShardNameProblem(const std::string& name) {
  if (name.empty()) return "is empty";
  if (name == "." || name == "..") return "is not a file name";
  if (name.find('\0') != std::string::npos) return "contains a NUL byte";
  if (name.find('/') != std::string::npos || name.find('\\') != std::string::npos) {
    return "is not a plain file name in the index's directory (it contains a path separator)";
  }
  return "";
}

enum class PathType { kMissing, kDirectory, kOther };

// stat(2) follows symlinks, as the later open does (HF's cache directory is symlinks to blobs).
// Only ENOENT/ENOTDIR count as missing; anything else (EACCES, ELOOP, ...) is left for the open
// to report with its own message.
PathType TypeOf(const std::string& path) {
  struct stat info;
  if (::stat(path.c_str(), &info) != 0) {
    return errno == ENOENT || errno == ENOTDIR ? PathType::kMissing : PathType::kOther;
  }
  return S_ISDIR(info.st_mode) ? PathType::kDirectory : PathType::kOther;
}

// `directory` + "/" + `name`, with no "./" for a bare file name's empty directory.
std::string Join(const std::string& directory, const std::string& name) {
  if (directory.empty()) return name;
  if (directory.back() == '/') return directory + name;
  return directory + "/" + name;
}

// The directory part of a file path: "" for a bare file name, "/" for a file at the root.
std::string DirectoryPart(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return "";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

std::map<std::string, std::string> ParseSafetensorsIndex(std::string_view json_text,
                                                         const std::string& source) {
  io::JsonLimits limits;
  // Two entries for one tensor would make the shard depend on which parser reads the index.
  limits.reject_duplicate_keys = true;
  const json root = io::ParseJson(json_text, source, ErrorKind::kCorruptFile, limits);
  const auto corrupt = [&](const std::string& problem) {
    return Error(ErrorKind::kCorruptFile, source + ": " + problem);
  };
  if (!root.is_object()) {
    throw corrupt("a safetensors index must be a JSON object, got " + io::JsonExcerpt(root));
  }
  const auto it = root.find("weight_map");
  if (it == root.end()) throw corrupt("no 'weight_map' (not a safetensors index?)");
  if (!it->is_object()) {
    throw corrupt("'weight_map' must be an object of tensor name -> shard file, got " +
                  io::JsonExcerpt(*it));
  }
  if (it->empty()) throw corrupt("'weight_map' is empty: the index lists no tensors");
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : it->items()) {
    if (!shard.is_string()) {
      throw corrupt("weight_map: tensor " + Quote(name) +
                    ": the shard must be a file name string, got " + io::JsonExcerpt(shard));
    }
    const std::string& file = shard.get_ref<const std::string&>();
    if (const std::string problem = ShardNameProblem(file); !problem.empty()) {
      throw corrupt("weight_map: tensor " + Quote(name) + ": shard name " + Quote(file) + " " +
                    problem);
    }
    weight_map.emplace(name, file);
  }
  return weight_map;
}

Checkpoint Checkpoint::Open(const std::string& path) {
  Checkpoint checkpoint;
  checkpoint.path_ = path;
  std::string file_path = path;  // the index or the single file
  std::string base;              // where file names are joined onto ("" = current directory)
  if (TypeOf(path) == PathType::kDirectory) {
    base = path;
    const std::string index_path = Join(base, kIndexName);
    const std::string single_path = Join(base, kSingleName);
    // The index first: a directory with both is read through the index, which lists every
    // tensor of the model.
    if (TypeOf(index_path) != PathType::kMissing) {
      file_path = index_path;
    } else if (TypeOf(single_path) != PathType::kMissing) {
      file_path = single_path;
    } else {
      throw Error(ErrorKind::kNotFound,
                  "directory '" + path + "' holds neither " + kIndexName + " nor " + kSingleName);
    }
  } else {
    base = DirectoryPart(path);
  }
  checkpoint.directory_ = base.empty() ? "." : base;

  if (!EndsWith(file_path, ".json")) {
    checkpoint.files_.push_back(
        std::make_unique<SafetensorsFile>(SafetensorsFile::Open(file_path)));
    for (const std::string& name : checkpoint.files_[0]->Names()) {
      checkpoint.file_of_.emplace(name, 0);
    }
    return checkpoint;
  }

  checkpoint.sharded_ = true;
  const std::map<std::string, std::string> weight_map = ParseSafetensorsIndex(
      io::ReadWholeFile(file_path, "index", kMaxSafetensorsIndexBytes), file_path);
  const std::string index_label = "index '" + file_path + "'";

  // Open each shard once, in file-name order (so that errors do not depend on map order), and
  // remember a tensor per shard to name in the message if the shard is missing.
  std::map<std::string, const std::string*> first_tensor_of;  // shard name -> a tensor in it
  for (const auto& [name, shard] : weight_map) first_tensor_of.emplace(shard, &name);
  std::map<std::string, size_t> shard_index;
  for (const auto& [shard, tensor] : first_tensor_of) {
    const std::string shard_path = Join(base, shard);
    if (TypeOf(shard_path) == PathType::kMissing) {
      throw Error(ErrorKind::kNotFound, index_label + " lists shard " + Quote(shard) +
                                            " (for tensor " + Quote(*tensor) + "), but '" +
                                            shard_path + "' does not exist");
    }
    try {
      checkpoint.files_.push_back(
          std::make_unique<SafetensorsFile>(SafetensorsFile::Open(shard_path)));
    } catch (const Error& e) {
      throw Error(e.kind(), std::string(e.what()) + " (a shard listed in " + index_label + ")");
    }
    shard_index.emplace(shard, checkpoint.files_.size() - 1);
  }

  // A tensor in two shards is an error even when the index lists only one of them: which copy a
  // reader gets would then depend on the reader (loaders that read whole shards keep the last).
  std::map<std::string, size_t> holder;
  for (size_t i = 0; i < checkpoint.files_.size(); ++i) {
    for (std::string& name : checkpoint.files_[i]->Names()) {
      const auto [it, inserted] = holder.emplace(std::move(name), i);
      if (!inserted) {
        throw Error(ErrorKind::kCorruptFile, "tensor " + Quote(it->first) + " is in two shards: '" +
                                                 checkpoint.files_[it->second]->path() + "' and '" +
                                                 checkpoint.files_[i]->path() + "' (" +
                                                 index_label + ")");
      }
    }
  }

  for (const auto& [name, shard] : weight_map) {
    const size_t i = shard_index.at(shard);
    if (!checkpoint.files_[i]->Contains(name)) {
      const auto found = holder.find(name);
      throw Error(ErrorKind::kCorruptFile,
                  index_label + " maps tensor " + Quote(name) + " to '" +
                      checkpoint.files_[i]->path() + "', which does not hold it" +
                      (found == holder.end()
                           ? std::string(" (no shard listed in the index does)")
                           : " (it is in '" + checkpoint.files_[found->second]->path() + "')"));
    }
    checkpoint.file_of_.emplace_hint(checkpoint.file_of_.end(), name, i);
  }
  return checkpoint;
}

Checkpoint::Checkpoint(Checkpoint&& other) noexcept = default;
Checkpoint& Checkpoint::operator=(Checkpoint&& other) noexcept = default;
Checkpoint::~Checkpoint() = default;

bool Checkpoint::Contains(const std::string& name) const { return file_of_.contains(name); }

const SafetensorsFile& Checkpoint::FileFor(const std::string& name) const {
  const auto it = file_of_.find(name);
  if (it == file_of_.end()) {
    throw Error(ErrorKind::kNotFound, "tensor " + Quote(name) + " not found in " + path_);
  }
  return *files_[it->second];
}

std::vector<std::string> Checkpoint::Names() const {
  std::vector<std::string> names;
  names.reserve(file_of_.size());
  for (const auto& [name, file] : file_of_) names.push_back(name);
  return names;
}

std::vector<const SafetensorsFile*> Checkpoint::Files() const {
  std::vector<const SafetensorsFile*> files;
  files.reserve(files_.size());
  for (const std::unique_ptr<SafetensorsFile>& file : files_) files.push_back(file.get());
  return files;
}

}  // namespace attn
