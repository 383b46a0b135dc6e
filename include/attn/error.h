// SPDX-License-Identifier: Apache-2.0
// Errors raised by attn. Every failure caused by the caller's input (shapes, config values,
// files) is an attn::Error whose message names the offending thing; the CLI maps them to exit
// code 2. Anything else escaping the library is a bug.
#ifndef ATTN_ERROR_H_
#define ATTN_ERROR_H_

#include <stdexcept>
#include <string>

namespace attn {

enum class ErrorKind {
  kInvalidArgument,  // wrong shape, inconsistent sizes, bad option value
  kUnsupported,      // a config value that changes attention but attn does not implement
  kNotFound,         // a missing tensor or config key
  kCorruptFile,      // a file whose bytes contradict its own format
  kIo,               // the operating system refused (open, mmap, write)
  kCapacity,         // writing past a KV cache's capacity
  kCommunication,    // another rank failed, disagreed, or did not answer in time (docs/distributed.md)
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }

 private:
  ErrorKind kind_;
};

// Throws Error(kind, message) when `condition` is false. Keeps validation one line per rule.
// The message is built before the call: use ATTN_CHECK on paths that run per token.
inline void Check(bool condition, ErrorKind kind, const std::string& message) {
  if (!condition) throw Error(kind, message);
}

}  // namespace attn

// Check() for hot paths (per decode step, per kernel call): a macro so that the message —
// usually a concatenation of std::strings — is only built when the check fails, and a passing
// check allocates nothing.
#define ATTN_CHECK(condition, kind, message)                  \
  do {                                                        \
    if (!(condition)) throw ::attn::Error((kind), (message)); \
  } while (false)

#endif  // ATTN_ERROR_H_
