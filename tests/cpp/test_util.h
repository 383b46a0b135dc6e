// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the C++ tests: small configs built in code and the agreement metric.
#ifndef ATTN_TESTS_TEST_UTIL_H_
#define ATTN_TESTS_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "attn/config.h"
#include "attn/error.h"
#include "attn/tensor.h"

namespace attn::testing {

// Runs `action` in a forked child with a 10 s alarm, so that a blocking open fails the test
// instead of hanging it; the child exits 0 only on Error(kIo) whose message holds every word.
inline void ExpectRefusedWithoutBlocking(const std::function<void()>& action,
                                         const std::vector<std::string>& words) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        ::alarm(10);
        try {
          action();
        } catch (const Error& e) {
          bool ok = e.kind() == ErrorKind::kIo;
          for (const std::string& word : words) {
            ok = ok && std::string(e.what()).find(word) != std::string::npos;
          }
          std::fprintf(stderr, "%s\n", e.what());
          std::_Exit(ok ? 0 : 3);
        }
        std::_Exit(4);
      },
      ::testing::ExitedWithCode(0), "not a regular file");
}

// Runs `action`, expecting Error of `kind` whose message contains every entry of `words`.
template <typename Action>
void ExpectError(Action action, ErrorKind kind, const std::vector<std::string>& words) {
  try {
    action();
    ADD_FAILURE() << "expected an attn::Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const std::string& word : words) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos)
          << "message '" << e.what() << "' lacks '" << word << "'";
    }
  }
}

// A test fixture with a fresh private directory (mkdtemp), removed after each test.
class ScratchDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (std::filesystem::temp_directory_path() / "attn_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string PathOf(const std::string& name) const { return (dir_ / name).string(); }
  std::string WriteFile(const std::string& name, const std::string& bytes) const {
    const std::string path = PathOf(name);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  std::filesystem::path dir_;
};

// max |a - b| / max |b| over all elements (the metric of the oracle suite).
inline double RelativeError(const float* a, const float* b, int64_t n) {
  double max_diff = 0.0;
  double max_ref = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(b[i])));
  }
  return max_ref > 0.0 ? max_diff / max_ref : max_diff;
}
inline double RelativeError(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() ? RelativeError(a.data(), b.data(), b.size()) : INFINITY;
}

// A small Llama-style GQA config: hidden 64, `heads` heads of 16, `kv_heads` kv heads.
// ALiBi slopes of H heads as BLOOM builds them for a power of two, m_h = 2^(−8(h+1)/H) (other
// head counts get the same formula, which is all a kernel test needs): written here from the
// formula, independent of the library's AlibiSlopes.
inline std::vector<float> TestAlibiSlopes(int64_t heads) {
  std::vector<float> slopes(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h) {
    slopes[static_cast<size_t>(h)] =
        std::exp2(-8.0f * static_cast<float>(h + 1) / static_cast<float>(heads));
  }
  return slopes;
}

inline ModelConfig SmallGqaConfig(int64_t heads, int64_t kv_heads) {
  ModelConfig c;
  c.model_type = "llama";
  c.kind = AttentionKind::kGqa;
  c.hidden_size = 64;
  c.num_heads = heads;
  c.num_layers = 2;
  c.max_position_embeddings = 256;
  c.gqa.num_kv_heads = kv_heads;
  c.gqa.head_dim = 16;
  c.rope.theta = 10000.0;
  c.rope.rotary_dim = 16;
  c.rope.pairing = RopePairing::kRotateHalf;
  return c;
}

// A small DeepSeek-V3-style MLA config with q_lora (or without when q_lora_rank == 0) and yarn.
inline ModelConfig SmallMlaConfig(int64_t q_lora_rank) {
  ModelConfig c;
  c.model_type = "deepseek_v3";
  c.kind = AttentionKind::kMla;
  c.hidden_size = 96;
  c.num_heads = 4;
  c.num_layers = 2;
  c.max_position_embeddings = 4096;
  c.mla = {q_lora_rank, 64, 32, 16, 24, 1e-6};
  c.rope.theta = 10000.0;
  c.rope.rotary_dim = 16;
  c.rope.pairing = RopePairing::kInterleaved;
  c.rope.scaling.type = RopeScalingType::kYarn;
  c.rope.scaling.factor = 40.0;
  c.rope.scaling.original_max_position_embeddings = 32;
  c.rope.scaling.mscale = 1.0;
  c.rope.scaling.mscale_all_dim = 1.0;
  return c;
}

}  // namespace attn::testing

#endif  // ATTN_TESTS_TEST_UTIL_H_
