// SPDX-License-Identifier: Apache-2.0
// The attn subcommands. Each returns the process exit code; bad input throws attn::Error.
#ifndef ATTN_CLI_COMMANDS_H_
#define ATTN_CLI_COMMANDS_H_

#include <string>
#include <vector>

namespace attn::cli {

int RunRandomWeights(const std::vector<std::string>& args);
int RunForward(const std::vector<std::string>& args);
int RunDemo(const std::vector<std::string>& args);
int RunInfo(const std::vector<std::string>& args);
int RunCheckScale(const std::vector<std::string>& args);
int RunConvert(const std::vector<std::string>& args);
int RunBench(const std::vector<std::string>& args);

}  // namespace attn::cli

#endif  // ATTN_CLI_COMMANDS_H_
