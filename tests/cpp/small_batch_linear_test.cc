// SPDX-License-Identifier: Apache-2.0
// The small-batch linear kernel (decode projections) against the reference kernel and a float64
// loop: every row count it serves in one pass and past it, input widths around the 16-float
// vector (tails), output counts around its blocks and tasks, with and without bias, on 1 and 3
// threads; the AVX-512 path where the CPU has it and the forced portable path.
#include "kernels/cpu/small_batch_linear.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "attn/kernels.h"
#include "attn/layer_weights.h"
#include "attn/threads.h"
#include "kernels/cpu/isa.h"
#include "test_util.h"

namespace attn {
namespace {

using testing::RelativeError;

constexpr float kGuard = -12345.0f;

struct LinearCase {
  int64_t rows, in, out;
  bool bias;
};

std::string Name(const LinearCase& c) {
  return "R" + std::to_string(c.rows) + "I" + std::to_string(c.in) + "O" + std::to_string(c.out) +
         (c.bias ? "bias" : "");
}

struct Inputs {
  Tensor x, w, b;
};

Inputs MakeInputs(const LinearCase& c) {
  return {RandomUniform({c.rows, c.in}, 21, 1.0f), RandomUniform({c.out, c.in}, 22, 1.0f),
          RandomUniform({c.out}, 23, 1.0f)};
}

// y [rows][out] followed by a guard element the kernel must not write.
std::vector<float> Run(void (*linear)(const LinearProblem&), const LinearCase& c,
                       const Inputs& in) {
  std::vector<float> y(static_cast<size_t>(c.rows * c.out) + 1, kGuard);
  LinearProblem p;
  p.x = in.x.data();
  p.w = in.w.data();
  p.bias = c.bias ? in.b.data() : nullptr;
  p.rows = c.rows;
  p.in = c.in;
  p.out = c.out;
  p.y = y.data();
  linear(p);
  return y;
}

std::vector<float> Float64Linear(const LinearCase& c, const Inputs& in) {
  std::vector<float> y(static_cast<size_t>(c.rows * c.out));
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t o = 0; o < c.out; ++o) {
      double sum = c.bias ? in.b.data()[o] : 0.0;
      for (int64_t i = 0; i < c.in; ++i) {
        sum += static_cast<double>(in.x.data()[r * c.in + i]) * in.w.data()[o * c.in + i];
      }
      y[static_cast<size_t>(r * c.out + o)] = static_cast<float>(sum);
    }
  }
  return y;
}

void SmallBatch(const LinearProblem& p) { cpu::SmallBatchLinear(p); }

// Runs `linear` on every case at 1 and 3 threads and compares it with both oracles.
void ExpectMatches(void (*linear)(const LinearProblem&), const std::vector<LinearCase>& cases) {
  const int saved_threads = NumThreads();
  for (int threads : {1, 3}) {
    SetNumThreads(threads);
    for (const LinearCase& c : cases) {
      SCOPED_TRACE(Name(c) + " threads " + std::to_string(threads));
      const Inputs inputs = MakeInputs(c);
      const std::vector<float> got = Run(linear, c, inputs);
      const std::vector<float> reference = Run(ReferenceBackend().linear, c, inputs);
      const std::vector<float> exact = Float64Linear(c, inputs);
      const int64_t n = c.rows * c.out;
      EXPECT_EQ(got[static_cast<size_t>(n)], kGuard);
      EXPECT_LT(RelativeError(got.data(), reference.data(), n), 1e-5);
      EXPECT_LT(RelativeError(got.data(), exact.data(), n), 1e-5);
    }
  }
  SetNumThreads(saved_threads);
}

// Rows 1..8 (one pass over W), widths below, at and around the 16-float vector and a long row,
// output counts of one, below a block, past several blocks and past many tasks.
std::vector<LinearCase> DecodeCases() {
  std::vector<LinearCase> cases;
  for (int64_t rows = 1; rows <= cpu::kSmallBatchMaxRows; ++rows) {
    for (int64_t in : {1, 15, 16, 33, 1000}) {
      for (int64_t out : {1, 7, 65}) {
        cases.push_back({rows, in, out, (rows + in + out) % 2 == 0});
      }
    }
    cases.push_back({rows, 4099, 301, rows % 2 == 1});  // many tasks, a partial last block
    cases.push_back({rows, 8200, 50, rows % 2 == 0});   // several column panels for every row count
  }
  return cases;
}

TEST(SmallBatchLinear, MatchesReferenceForDecodeRows) { ExpectMatches(&SmallBatch, DecodeCases()); }

TEST(SmallBatchLinear, DefaultBackendLinearMatchesReference) {
  ExpectMatches(DefaultBackend().linear, DecodeCases());
}

// Past one pass the rows are served in groups (W read again per group).
TEST(SmallBatchLinear, MoreRowsThanOnePass) {
  ExpectMatches(&SmallBatch, {{9, 33, 65, true}, {17, 1000, 7, false}, {24, 16, 1, true}});
}

TEST(SmallBatchLinear, EmptyInputGivesBias) {
  ExpectMatches(&SmallBatch, {{3, 0, 7, true}, {2, 0, 5, false}});
}

// The portable loop, which a CPU without AVX-512 runs: forced here so that it is checked on
// every machine.
TEST(SmallBatchLinear, ForcedReferenceIsaUsesPortableLoop) {
  const cpu::IsaSupport saved = cpu::ActiveIsa();
  cpu::ForceIsa(cpu::Isa::kReference, false);
  ExpectMatches(&SmallBatch, DecodeCases());
  ExpectMatches(&SmallBatch, {{9, 33, 65, true}});
  cpu::ForceIsa(saved.isa, saved.bf16_dot);
}

}  // namespace
}  // namespace attn
