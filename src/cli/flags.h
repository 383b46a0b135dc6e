// Minimal "--name value" / "--switch" command-line parsing for the attn subcommands.
// Unknown flags, missing values and malformed numbers are attn::Error(kInvalidArgument),
// which main() turns into exit code 2.
#ifndef ATTN_CLI_FLAGS_H_
#define ATTN_CLI_FLAGS_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace attn::cli {

class Flags {
 public:
  // `valued` flags take a value, `switches` do not. Anything else throws.
  Flags(const std::vector<std::string>& args, const std::set<std::string>& valued,
        const std::set<std::string>& switches);

  bool Has(const std::string& name) const { return values_.count(name) > 0; }
  // The value of a flag that must be given ("--config is required").
  const std::string& Required(const std::string& name) const;
  std::string Get(const std::string& name, const std::string& fallback) const;
  int64_t GetInt(const std::string& name, int64_t fallback) const;

 private:
  std::map<std::string, std::string> values_;
};

// Applies --threads N (1 … 4096) to the kernel thread pool when given; returns the count in
// force.
int ApplyThreadsFlag(const Flags& flags);

}  // namespace attn::cli

#endif  // ATTN_CLI_FLAGS_H_
