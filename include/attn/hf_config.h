// SPDX-License-Identifier: Apache-2.0
// Hugging Face config.json -> ModelConfig for llama, mistral, qwen2, falcon, deepseek_v2,
// deepseek_v3 and kimi_k2 (DeepSeek-V3's architecture).
// Keys that do not concern attention are ignored. A model_type outside that list, or a value
// that changes attention in a way attn does not implement (an unknown rope scaling type,
// attention biases on DeepSeek, …) throws Error(kUnsupported) naming the key and value.
#ifndef ATTN_HF_CONFIG_H_
#define ATTN_HF_CONFIG_H_

#include <string>

#include "attn/config.h"

namespace attn {

// Parses config.json text. Throws Error(kInvalidArgument) for malformed JSON or wrong value
// types, kNotFound for a required key that is missing, kUnsupported as above.
// `source` names the text in error messages.
ModelConfig ParseHfConfig(const std::string& json_text, const std::string& source = "config.json");
// Reads and parses a config.json file (Error(kIo) if it cannot be read).
ModelConfig LoadHfConfig(const std::string& path);
// The bytes of a config file; Error(kIo) naming the path if it is missing, a directory or
// unreadable. Shared by every config reader.
std::string ReadConfigFile(const std::string& path);

}  // namespace attn

#endif  // ATTN_HF_CONFIG_H_
