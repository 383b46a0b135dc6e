// SPDX-License-Identifier: Apache-2.0
#include "cli/flags.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <sstream>
#include <stdexcept>

#include "attn/threads.h"

namespace attn::cli {
namespace {

// "--name". Built by append: GCC 12 emits a false -Wrestrict for `"--" + name` at -O2.
std::string Dashed(const std::string& name) {
  std::string dashed = "--";
  dashed.append(name);
  return dashed;
}

// Usage lines stay within this many columns: it is read in a terminal.
constexpr size_t kUsageWidth = 100;

// Word-wraps each line of `text` at `width` columns (a longer word keeps its own line).
std::string Wrap(const std::string& text, size_t width) {
  std::string wrapped;
  std::stringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (!wrapped.empty()) wrapped += '\n';
    std::stringstream words(line);
    size_t column = 0;
    for (std::string word; words >> word;) {
      if (column > 0 && column + 1 + word.size() > width) {
        wrapped += '\n';
        column = 0;
      }
      if (column > 0) {
        wrapped += ' ';
        ++column;
      }
      wrapped += word;
      column += word.size();
    }
  }
  return wrapped;
}

// CLI11's formatter, with descriptions wrapped to kUsageWidth.
class WrappingFormatter : public CLI::Formatter {
 public:
  std::string make_description(const CLI::App* app) const override {
    return Wrap(app->get_description(), kUsageWidth) + "\n";
  }
  std::string make_option_desc(const CLI::Option* option) const override {
    return Wrap(option->get_description(), kUsageWidth - get_column_width());
  }
};

bool ParseInt64(const std::string& text, int64_t* value) {
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return error == std::errc() && end == text.data() + text.size();
}

}  // namespace

Flags::Flags(const std::string& command, const std::string& about)
    : command_(command), app_(std::make_unique<CLI::App>(about, "attn " + command)) {
  app_->set_help_flag("-h,--help", "print this usage and exit");
  // Leftover arguments are reported by Parse, in the wording of the other attn errors.
  app_->allow_extras(true);
  auto formatter = std::make_shared<WrappingFormatter>();
  formatter->column_width(32);
  formatter->label("Usage", "usage");
  app_->formatter(formatter);
}

Flags::~Flags() = default;

Flags& Flags::Add(const std::string& name, const std::string& placeholder, const std::string& help,
                  const std::string& fallback, bool integer) {
  Entry& entry = entries_[name];
  order_.push_back(name);
  entry.value = fallback;
  entry.integer = integer;
  CLI::Option* option = app_->add_option(Dashed(name), entry.value, help);
  option->type_name(placeholder);
  // A flag given twice takes its last value, as shells' "override the default" idiom expects.
  option->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  if (!fallback.empty()) option->default_str(fallback);
  last_ = name;
  return *this;
}

Flags& Flags::Text(const std::string& name, const std::string& placeholder, const std::string& help,
                   const std::string& fallback) {
  return Add(name, placeholder, help, fallback, false);
}

Flags& Flags::Integer(const std::string& name, const std::string& placeholder,
                      const std::string& help, const std::string& fallback) {
  return Add(name, placeholder, help, fallback, true);
}

Flags& Flags::Switch(const std::string& name, const std::string& help) {
  Entry& entry = entries_[name];
  order_.push_back(name);
  entry.is_switch = true;
  app_->add_flag(Dashed(name), entry.on, help);
  last_ = name;
  return *this;
}

Flags& Flags::Mandatory() {
  // Checked by Parse, not by CLI11's required(): CLI11 reports a missing flag before an unknown
  // one, and "--weights is required" would hide the typo "--weight".
  entries_.at(last_).mandatory = true;
  CLI::Option* option = app_->get_option(Dashed(last_));
  option->description("required: " + option->get_description());
  return *this;
}

Flags& Flags::Footer(const std::string& text) {
  app_->footer(text);
  return *this;
}

std::string Flags::Usage() const { return app_->help(); }

void Flags::Require(bool condition, const std::string& message) const {
  if (!condition) throw UsageError(message, Usage());
}

bool Flags::Parse(const std::vector<std::string>& args) {
  // CLI11 consumes its argument list from the back.
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app_->parse(reversed);
  } catch (const CLI::CallForHelp&) {
    std::fputs(Usage().c_str(), stdout);
    return false;
  } catch (const CLI::ParseError& error) {
    throw UsageError(error.what(), Usage());
  }
  const std::vector<std::string> extra = app_->remaining();
  if (!extra.empty()) {
    const std::string& first = extra.front();
    throw UsageError(first.rfind('-', 0) == 0 ? "unknown option '" + first + "'"
                                              : "unexpected argument '" + first + "'",
                     Usage());
  }
  for (const std::string& name : order_) {
    Entry& entry = entries_.at(name);
    entry.given = app_->count(Dashed(name)) > 0;
    Require(entry.given || !entry.mandatory, Dashed(name) + " is required");
    int64_t value = 0;
    // Checked here, before the command does any work, so "--layer 1x" fails as a syntax error.
    Require(!entry.integer || !entry.given || ParseInt64(entry.value, &value),
            Dashed(name) + " expects an integer, got '" + entry.value + "'");
  }
  return true;
}

const Flags::Entry& Flags::Find(const std::string& name) const {
  const auto it = entries_.find(name);
  // Asking for an undeclared flag is a bug in the command, not a user error.
  if (it == entries_.end()) throw std::logic_error("attn " + command_ + ": no flag --" + name);
  return it->second;
}

bool Flags::Has(const std::string& name) const {
  // A flag this command does not declare cannot have been given (shared helpers such as
  // PeakOptionsFrom ask about flags only some commands have).
  const auto it = entries_.find(name);
  if (it == entries_.end()) return false;
  return it->second.is_switch ? it->second.on : it->second.given;
}

const std::string& Flags::Required(const std::string& name) const {
  const Entry& entry = Find(name);
  Require(entry.given, Dashed(name) + " is required");
  return entry.value;
}

const std::string& Flags::Get(const std::string& name) const { return Find(name).value; }

std::string Flags::Get(const std::string& name, const std::string& fallback) const {
  const Entry& entry = Find(name);
  return entry.given ? entry.value : fallback;
}

int64_t Flags::GetInt(const std::string& name) const {
  const Entry& entry = Find(name);
  int64_t value = 0;
  if (!ParseInt64(entry.value, &value)) {
    throw std::logic_error("attn " + command_ + ": --" + name + " has no integer value");
  }
  return value;
}

int64_t Flags::GetInt(const std::string& name, int64_t fallback) const {
  return Find(name).given ? GetInt(name) : fallback;
}

std::string SubcommandUsage(const std::string& program, const std::vector<Subcommand>& commands,
                            const std::string& footer) {
  size_t width = 0;
  for (const Subcommand& command : commands) width = std::max(width, command.name.size());
  std::string usage = "usage: " + program + " <command> [options]\n\ncommands:\n";
  for (const Subcommand& command : commands) {
    usage += "  " + command.name + std::string(width + 2 - command.name.size(), ' ') +
             command.about + "\n";
  }
  return usage + "\n" + footer;
}

void AddThreadsFlag(Flags& flags) {
  flags.Integer("threads", "N",
                "kernel threads, 1 to 4096 (default: $ATTN_NUM_THREADS, else all CPUs)");
}

int ApplyThreadsFlag(const Flags& flags) {
  if (flags.Has("threads")) {
    const int64_t threads = flags.GetInt("threads");
    Check(threads >= 1 && threads <= 4096, ErrorKind::kInvalidArgument,
          "--threads must lie in [1, 4096], got " + std::to_string(threads));
    SetNumThreads(static_cast<int>(threads));
  }
  return NumThreads();
}

}  // namespace attn::cli
