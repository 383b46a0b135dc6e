#include "cli/flags.h"

#include <charconv>

#include "attn/error.h"
#include "attn/threads.h"

namespace attn::cli {
namespace {

// "--name". Built by append: GCC 12 emits a false -Wrestrict for `Dashed(name)` at -O2.
std::string Dashed(const std::string& name) {
  std::string dashed = "--";
  dashed.append(name);
  return dashed;
}

}  // namespace

Flags::Flags(const std::vector<std::string>& args, const std::set<std::string>& valued,
             const std::set<std::string>& switches) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    Check(arg.rfind("--", 0) == 0, ErrorKind::kInvalidArgument,
          "unexpected argument '" + arg + "'");
    const std::string name = arg.substr(2);
    if (switches.count(name) > 0) {
      values_.insert_or_assign(name, std::string(1, '1'));
    } else if (valued.count(name) > 0) {
      Check(i + 1 < args.size(), ErrorKind::kInvalidArgument, Dashed(name) + " needs a value");
      values_[name] = args[++i];
    } else {
      throw Error(ErrorKind::kInvalidArgument, "unknown option '" + arg + "'");
    }
  }
}

const std::string& Flags::Required(const std::string& name) const {
  auto it = values_.find(name);
  Check(it != values_.end(), ErrorKind::kInvalidArgument, Dashed(name) + " is required");
  return it->second;
}

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

int64_t Flags::GetInt(const std::string& name, int64_t fallback) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t value = 0;
  const std::string& text = it->second;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  Check(error == std::errc() && end == text.data() + text.size(), ErrorKind::kInvalidArgument,
        Dashed(name) + " expects an integer, got '" + text + "'");
  return value;
}

int ApplyThreadsFlag(const Flags& flags) {
  if (flags.Has("threads")) {
    const int64_t threads = flags.GetInt("threads", 1);
    Check(threads >= 1 && threads <= 4096, ErrorKind::kInvalidArgument,
          "--threads must lie in [1, 4096], got " + std::to_string(threads));
    SetNumThreads(static_cast<int>(threads));
  }
  return NumThreads();
}

}  // namespace attn::cli
