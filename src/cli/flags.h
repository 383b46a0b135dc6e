// SPDX-License-Identifier: Apache-2.0
// Command-line flags of the attn subcommands, parsed by CLI11. Each command declares its flags
// once, with a one-line description each, and the usage that --help prints and that follows a
// syntax error is generated from those declarations. "--name value" and "--name=value" both
// work. Unknown flags, missing values, malformed integers and missing required flags throw
// UsageError (an attn::Error of kind kInvalidArgument carrying the usage), which main() reports
// with exit code 2.
#ifndef ATTN_CLI_FLAGS_H_
#define ATTN_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "attn/error.h"

namespace CLI {
class App;
}  // namespace CLI

namespace attn::cli {

// A command-line mistake: main() prints the message, then the command's usage.
class UsageError : public Error {
 public:
  UsageError(const std::string& message, std::string usage)
      : Error(ErrorKind::kInvalidArgument, message), usage_(std::move(usage)) {}
  const std::string& usage() const { return usage_; }

 private:
  std::string usage_;
};

class Flags {
 public:
  // `command` as typed after the program name ("forward", "bench kernel"); `about` is the
  // first line of the usage.
  Flags(const std::string& command, const std::string& about);
  ~Flags();
  Flags(const Flags&) = delete;
  Flags& operator=(const Flags&) = delete;

  // Declarations, in the order the usage lists them. `placeholder` names the value in the
  // usage ("C.json", "N"); `fallback`, when not empty, is the value a flag has when not given,
  // and the usage shows it.
  Flags& Text(const std::string& name, const std::string& placeholder, const std::string& help,
              const std::string& fallback = "");
  // A value that must be a (64-bit) integer; checked when parsing.
  Flags& Integer(const std::string& name, const std::string& placeholder, const std::string& help,
                 const std::string& fallback = "");
  Flags& Switch(const std::string& name, const std::string& help);
  // Marks the flag declared last as required: parsing fails without it.
  Flags& Mandatory();
  // Text after the flag list in the usage.
  Flags& Footer(const std::string& text);

  // Reads the arguments after the command name. Returns false when --help or -h was given: the
  // usage is then printed on stdout and the command should return 0. Throws UsageError.
  bool Parse(const std::vector<std::string>& args);
  std::string Usage() const;
  // Throws UsageError(message) unless `condition` holds: for rules between flags that are about
  // how the command is called ("--q-len and --kv-len are required").
  void Require(bool condition, const std::string& message) const;

  // Whether the flag was given on the command line (false for flags not declared).
  bool Has(const std::string& name) const;
  // The value of a flag that must be given ("--config is required" otherwise).
  const std::string& Required(const std::string& name) const;
  // The value given, else the declared fallback (empty if none).
  const std::string& Get(const std::string& name) const;
  std::string Get(const std::string& name, const std::string& fallback) const;
  int64_t GetInt(const std::string& name) const;
  int64_t GetInt(const std::string& name, int64_t fallback) const;

 private:
  struct Entry {
    std::string value;
    bool integer = false;
    bool is_switch = false;
    bool on = false;  // a switch's state: "--json=false" turns it off again
    bool given = false;
    bool mandatory = false;
  };
  const Entry& Find(const std::string& name) const;
  Flags& Add(const std::string& name, const std::string& placeholder, const std::string& help,
             const std::string& fallback, bool integer);

  std::string command_;
  std::unique_ptr<CLI::App> app_;
  std::map<std::string, Entry> entries_;  // a map: CLI11 keeps pointers to the values
  std::vector<std::string> order_;        // declaration order, which errors follow
  std::string last_;
};

// A command that is a list of subcommands (attn itself, attn bench).
struct Subcommand {
  std::string name;
  std::string about;
  int (*run)(const std::vector<std::string>& args);
};

// The usage of a list of subcommands: "usage: PROGRAM <command> ..." and one line per entry.
std::string SubcommandUsage(const std::string& program, const std::vector<Subcommand>& commands,
                            const std::string& footer);

// Declares --threads N, the kernel thread-pool size.
void AddThreadsFlag(Flags& flags);
// Applies --threads N (1 … 4096) to the kernel thread pool when given; returns the count in
// force.
int ApplyThreadsFlag(const Flags& flags);

}  // namespace attn::cli

#endif  // ATTN_CLI_FLAGS_H_
