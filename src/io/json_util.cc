// SPDX-License-Identifier: Apache-2.0
#include "io/json_util.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace attn::io {
namespace {

using nlohmann::json;

constexpr const char* kEllipsis = "\xE2\x80\xA6";  // "…"

// Length of the longest prefix of `text` no longer than `limit` bytes that does not end inside
// a UTF-8 sequence (continuation bytes are 10xxxxxx).
size_t Utf8Prefix(std::string_view text, size_t limit) {
  if (text.size() <= limit) return text.size();
  size_t cut = limit;
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return cut;
}

void AppendEscaped(std::string& out, std::string_view text) {
  for (const char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (byte < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", byte);
      out += escaped;
    } else {
      out.push_back(c);
    }
  }
}

// Appends `value` until `out` reaches `budget` characters; false once it has been cut.
bool AppendExcerpt(std::string& out, const json& value, size_t budget, int depth) {
  if (out.size() >= budget) return false;
  constexpr int kMaxDepth = 4;
  switch (value.type()) {
    case json::value_t::string: {
      const std::string& text = value.get_ref<const std::string&>();
      const size_t room = budget - out.size();
      const size_t take = Utf8Prefix(text, room);
      out.push_back('"');
      AppendEscaped(out, std::string_view(text).substr(0, take));
      if (take < text.size()) return false;
      out.push_back('"');
      return true;
    }
    case json::value_t::array: {
      if (depth >= kMaxDepth) return value.empty() ? (out += "[]", true) : (out += "[", false);
      out.push_back('[');
      bool first = true;
      for (const json& item : value) {
        if (!first) out.push_back(',');
        first = false;
        if (!AppendExcerpt(out, item, budget, depth + 1)) return false;
        if (out.size() >= budget) return false;
      }
      out.push_back(']');
      return true;
    }
    case json::value_t::object: {
      if (depth >= kMaxDepth) return value.empty() ? (out += "{}", true) : (out += "{", false);
      out.push_back('{');
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out.push_back(',');
        first = false;
        if (!AppendExcerpt(out, json(key), budget, kMaxDepth)) return false;
        out.push_back(':');
        if (!AppendExcerpt(out, item, budget, depth + 1)) return false;
        if (out.size() >= budget) return false;
      }
      out.push_back('}');
      return true;
    }
    case json::value_t::binary:
      out += "<binary>";
      return true;
    case json::value_t::discarded:
      out += "<discarded>";
      return true;
    default:
      // null, boolean, numbers: short by construction.
      out += value.dump();
      return true;
  }
}

// Builds the document through nlohmann's SAX interface, checking the limits on every event.
// (Not the callback overload of json::parse: its DOM builder rescans the parent object for
// discarded values at every object end, which is quadratic in the number of entries.)
class BoundedDomBuilder : public nlohmann::json_sax<json> {
 public:
  BoundedDomBuilder(const std::string& source, ErrorKind kind, const JsonLimits& limits)
      : source_(source), kind_(kind), limits_(limits) {}

  json& root() { return root_; }

  bool null() override { return Put(json(nullptr)); }
  bool boolean(bool value) override { return Put(json(value)); }
  bool number_integer(number_integer_t value) override { return Put(json(value)); }
  bool number_unsigned(number_unsigned_t value) override { return Put(json(value)); }
  bool number_float(number_float_t value, const string_t& /*text*/) override {
    return Put(json(value));
  }
  bool string(string_t& value) override { return Put(json(std::move(value))); }
  bool binary(binary_t& value) override { return Put(json::binary(std::move(value))); }

  bool start_object(std::size_t /*elements*/) override { return Open(json::object(), false); }
  bool start_array(std::size_t /*elements*/) override { return Open(json::array(), true); }
  bool end_object() override { return Close(); }
  bool end_array() override { return Close(); }

  bool key(string_t& key) override {
    Frame& frame = stack_.back();
    ++frame.count;
    if (stack_.size() == 1 && frame.count > limits_.max_top_level_keys) {
      Fail("more than " + std::to_string(limits_.max_top_level_keys) + " top-level entries");
    }
    pending_key_ = std::move(key);
    if (limits_.reject_duplicate_keys && frame.value->contains(pending_key_)) {
      Fail("duplicate key" + Where());
    }
    return true;
  }

  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& error) override {
    // 406: a number beyond double range (1e400). Other ids are syntax errors, whose message
    // quotes the last token read — possibly a whole megabyte string, hence the excerpt.
    if (error.id == 406) {
      Fail("number out of range" + Where() + " (" + TextExcerpt(error.what(), 120) + ")");
    }
    Fail("malformed JSON" + Where() + ": " + TextExcerpt(error.what(), 200));
  }

 private:
  struct Frame {
    json* value;
    bool is_array;
    std::string key;  // the key this container sits under ("" at the top or in an array)
    size_t count;     // elements (arrays) or keys (objects) so far
  };

  // Stores `value` where the parser is: the root, the next array element, or under the
  // pending key. Returns a pointer to the stored value.
  json* Store(json&& value) {
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    Frame& frame = stack_.back();
    if (frame.is_array) {
      if (++frame.count > limits_.max_array_length) {
        Fail("array with more than " + std::to_string(limits_.max_array_length) + " elements" +
             Where());
      }
      if (++array_elements_ > limits_.max_array_elements_total) {
        Fail("more than " + std::to_string(limits_.max_array_elements_total) +
             " array elements in all");
      }
      frame.value->push_back(std::move(value));
      return &frame.value->back();
    }
    // A repeated key (when allowed) keeps the last value, as nlohmann's own parser does.
    json& slot = (*frame.value)[pending_key_];
    slot = std::move(value);
    return &slot;
  }

  bool Put(json&& value) {
    Store(std::move(value));
    pending_key_.clear();
    return true;
  }

  bool Open(json&& container, bool is_array) {
    // This container sits inside stack_.size() others.
    if (static_cast<int>(stack_.size()) + 1 > limits_.max_depth) {
      Fail("nesting deeper than " + std::to_string(limits_.max_depth) + " levels" + Where());
    }
    std::string key = stack_.empty() || stack_.back().is_array ? std::string() : pending_key_;
    json* stored = Store(std::move(container));
    stack_.push_back(Frame{stored, is_array, std::move(key), 0});
    pending_key_.clear();
    return true;
  }

  bool Close() {
    stack_.pop_back();
    return true;
  }

  // " at 'a.b.c'" for the key being parsed, or "" at the top level.
  std::string Where() const {
    std::string path;
    for (const Frame& frame : stack_) {
      if (frame.key.empty()) continue;
      if (!path.empty()) path += '.';
      path += TextExcerpt(frame.key, 60);
    }
    if (!pending_key_.empty()) {
      if (!path.empty()) path += '.';
      path += TextExcerpt(pending_key_, 60);
    }
    return path.empty() ? std::string() : " at '" + path + "'";
  }

  [[noreturn]] void Fail(const std::string& problem) const {
    throw Error(kind_, source_ + ": " + problem);
  }

  const std::string& source_;
  ErrorKind kind_;
  const JsonLimits& limits_;
  json root_;
  // Pointers into root_ stay valid: a container's elements move only when it grows, and only
  // the innermost open container (whose own elements no frame points into) ever grows.
  std::vector<Frame> stack_;
  std::string pending_key_;
  size_t array_elements_ = 0;
};

}  // namespace

bool JsonToInt64(const json& value, int64_t* out) {
  if (value.is_number_unsigned()) {
    const uint64_t raw = value.get<uint64_t>();
    if (raw > static_cast<uint64_t>(INT64_MAX)) return false;
    *out = static_cast<int64_t>(raw);
    return true;
  }
  if (value.is_number_integer()) {
    *out = value.get<int64_t>();
    return true;
  }
  if (value.is_number_float()) {
    // Some exporters write 4096.0. int64 covers [-2^63, 2^63); both bounds are exact doubles,
    // and the check comes before the cast, which is undefined out of range.
    constexpr double kLimit = 9223372036854775808.0;
    const double d = value.get<double>();
    if (!(d >= -kLimit && d < kLimit) || std::trunc(d) != d) return false;
    *out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

int64_t ConfigKeyLimit(std::string_view key) {
  // Layers and heads: the largest released models have ~128 layers and ~128 heads.
  constexpr int64_t kMaxCount = int64_t{1} << 16;
  // Widths: the largest hidden size released is ~25k; latent ranks and head dims are smaller.
  constexpr int64_t kMaxWidth = int64_t{1} << 20;
  static constexpr std::string_view kCounts[] = {
      "num_hidden_layers",   "n_layer",   "num_layers",
      "num_attention_heads", "n_head",    "num_kv_heads",
      "num_key_value_heads", "n_head_kv", "num_query_groups",
      "max_window_layers"};
  static constexpr std::string_view kWidths[] = {
      "hidden_size", "n_embed",          "head_dim",           "kv_channels",
      "q_lora_rank", "kv_lora_rank",     "qk_head_dim",        "qk_nope_head_dim",
      "v_head_dim",  "qk_rope_head_dim", "qk_pos_emb_head_dim"};
  for (std::string_view name : kCounts) {
    if (key == name) return kMaxCount;
  }
  for (std::string_view name : kWidths) {
    if (key == name) return kMaxWidth;
  }
  return INT64_MAX;
}

std::string TextExcerpt(std::string_view text, size_t max_chars) {
  // Printable text is kept as is; control bytes and bytes that are not well-formed UTF-8 are
  // shown as \xNN, so that a message is always valid UTF-8 and safe on a terminal.
  std::string out;
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = static_cast<unsigned char>(text[i]);
    size_t length = byte < 0x80           ? 1
                    : (byte >> 5) == 0x6  ? 2
                    : (byte >> 4) == 0xE  ? 3
                    : (byte >> 3) == 0x1E ? 4
                                          : 0;
    bool valid = length > 0 && i + length <= text.size() && !(length == 2 && byte < 0xC2) &&
                 !(length == 4 && byte > 0xF4);
    for (size_t k = 1; valid && k < length; ++k) {
      valid = (static_cast<unsigned char>(text[i + k]) & 0xC0) == 0x80;
    }
    if (valid && length == 3) {
      // No overlong forms and no UTF-16 surrogates.
      const auto second = static_cast<unsigned char>(text[i + 1]);
      valid = !(byte == 0xE0 && second < 0xA0) && !(byte == 0xED && second >= 0xA0);
    }
    if (valid && length == 4) {
      const auto second = static_cast<unsigned char>(text[i + 1]);
      valid = !(byte == 0xF0 && second < 0x90) && !(byte == 0xF4 && second >= 0x90);
    }
    std::string_view piece = text.substr(i, valid ? length : 1);
    char escaped[8];
    if (!valid || byte < 0x20 || byte == 0x7F) {
      std::snprintf(escaped, sizeof(escaped), "\\x%02X", byte);
      piece = escaped;
    }
    if (out.size() + piece.size() > max_chars) break;  // never split a character or escape
    out.append(piece);
    i += valid ? length : 1;
  }
  if (i < text.size()) out += kEllipsis;
  return out;
}

std::string JsonExcerpt(const json& value, size_t max_chars) {
  std::string out;
  if (!AppendExcerpt(out, value, max_chars, 0)) out += kEllipsis;
  return out;
}

json ParseJson(std::string_view text, const std::string& source, ErrorKind kind,
               const JsonLimits& limits) {
  // nlohmann stops at a NUL byte as if the text ended there, so "{}\0garbage" would parse; a raw
  // NUL is never valid JSON (in a string it must be escaped), and other parsers refuse it.
  if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
    throw Error(kind, source + ": malformed JSON: NUL byte at offset " + std::to_string(nul));
  }
  BoundedDomBuilder builder(source, kind, limits);
  try {
    json::sax_parse(text.begin(), text.end(), &builder);
  } catch (const json::exception& e) {
    // The SAX path reports errors through parse_error; this is a safety net so that no
    // nlohmann exception ever escapes as anything but attn::Error.
    throw Error(kind, source + ": malformed JSON: " + TextExcerpt(e.what(), 200));
  }
  return std::move(builder.root());
}

}  // namespace attn::io
