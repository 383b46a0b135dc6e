// SPDX-License-Identifier: Apache-2.0
// Bounded JSON parsing and short excerpts for error messages (internal header).
//
// Every JSON text attn reads (config.json, Megatron configs, safetensors headers) comes from a
// file the user points at, so it may be hostile. ParseJson enforces its limits while parsing,
// before a large or deep document exists in memory, and turns every nlohmann exception into an
// attn::Error naming the source and, where it can, the key. JsonExcerpt quotes at most a short,
// bounded prefix of a value, so that an error message never carries a megabyte string or
// recurses through a deep value.
#ifndef ATTN_IO_JSON_UTIL_H_
#define ATTN_IO_JSON_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "attn/error.h"

namespace attn::io {

struct JsonLimits {
  // Containers nested deeper than this are refused. Real configs nest 3 deep, safetensors
  // headers 3; 64 leaves room for anything sensible while keeping any recursive walk shallow.
  int max_depth = 64;
  // Refuse an object with the same key twice (JSON leaves it undefined; parsers disagree on
  // which value wins).
  bool reject_duplicate_keys = false;
  // Caps on the number of keys of the top-level object, on the length of any one array, and on
  // the number of array elements in the whole document.
  size_t max_top_level_keys = SIZE_MAX;
  size_t max_array_length = SIZE_MAX;
  size_t max_array_elements_total = SIZE_MAX;
};

// Parses `text`. Any failure throws Error(`kind`, "<source>: ...") naming the key being parsed
// when the failure happened (e.g. a number out of double range). No nlohmann exception escapes.
nlohmann::json ParseJson(std::string_view text, const std::string& source, ErrorKind kind,
                         const JsonLimits& limits = JsonLimits{});

// At most about `max_chars` characters of `value` as JSON, with "…" when cut. Never recurses
// deeper than a few levels and never copies more than it prints.
std::string JsonExcerpt(const nlohmann::json& value, size_t max_chars = 80);

// At most `max_chars` bytes of `text` (cut at a UTF-8 character boundary), with "…" when cut.
std::string TextExcerpt(std::string_view text, size_t max_chars = 80);

// `value` as an int64 if it is an integer, or a float with an integral value, within int64
// range; false otherwise (fractions, 1e26, non-numbers). Never casts out of range.
bool JsonToInt64(const nlohmann::json& value, int64_t* out);

// attn's upper limit for a size or count key of a config file (HF or Megatron spelling), or
// INT64_MAX for keys that are not sizes. Applied while reading, before anything is allocated
// from the value: real models stay far below (docs/reference.md, "Limits and hostile input").
int64_t ConfigKeyLimit(std::string_view key);

}  // namespace attn::io

#endif  // ATTN_IO_JSON_UTIL_H_
