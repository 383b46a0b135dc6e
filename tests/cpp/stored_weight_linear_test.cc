// SPDX-License-Identifier: Apache-2.0
// Projections from weights in their stored dtypes (attn/weight.h): BF16, F16 and F8_E4M3 with
// block scales, through every linear path a layer can take — the small-batch kernel (decode rows,
// AVX-512 and portable), oneDNN (bf16 matmul or dequantized tiles), the backend's dequantize op —
// against a float64 loop over the weights as the published formulas define them
// (docs/semantics.md §9), computed here element by element from the raw bytes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "attn/dtype.h"
#include "attn/error.h"
#include "attn/kernels.h"
#include "attn/layer_weights.h"
#include "attn/threads.h"
#include "attn/weight.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/small_batch_linear.h"
#include "test_util.h"

namespace attn {
namespace cpu {
void OneDnnLinear(const LinearProblem& problem);
}  // namespace cpu
namespace {

using testing::ExpectError;
using testing::RelativeError;

struct Format {
  DType dtype;
  int64_t block_rows = 0, block_cols = 0;  // F8_E4M3 only
  std::string Name() const {
    std::string name = DTypeName(dtype);
    if (dtype == DType::kF8E4M3) {
      name += "_b" + std::to_string(block_rows) + "x" + std::to_string(block_cols);
    }
    return name;
  }
};

// `values` stored as `format`: bf16/f16 by the scalar roundings of dtype.h, fp8 by DeepSeek's
// block quantizer.
Weight Store(const Tensor& values, const Format& format) {
  if (format.dtype == DType::kF8E4M3) {
    return QuantizeF8E4M3Blocks(values, format.block_rows, format.block_cols);
  }
  auto bits = std::make_shared<std::vector<uint16_t>>(static_cast<size_t>(values.size()));
  for (int64_t i = 0; i < values.size(); ++i) {
    (*bits)[static_cast<size_t>(i)] =
        format.dtype == DType::kBF16 ? F32ToBF16(values.data()[i]) : F32ToF16(values.data()[i]);
  }
  const void* data = bits->data();
  return Weight::View(format.dtype, values.shape(), data, std::move(bits));
}

// w[o, i] from the raw bytes: the element's own decoding times its block's scale.
double Element(const Weight& w, int64_t o, int64_t i) {
  const int64_t index = o * w.dim(1) + i;
  switch (w.dtype()) {
    case DType::kBF16:
      return BF16ToF32(static_cast<const uint16_t*>(w.data())[index]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(w.data())[index]);
    default: {
      const int64_t scale_cols = (w.dim(1) + w.block_cols() - 1) / w.block_cols();
      const double scale = w.block_scales()[o / w.block_rows() * scale_cols + i / w.block_cols()];
      return F8E4M3ToF32(static_cast<const uint8_t*>(w.data())[index]) * scale;
    }
  }
}

// y = x wᵀ + b in float64; `bf16_inputs` rounds x and w to bf16 first, as the oneDNN bf16 path
// documents (it multiplies bf16 x by bf16 W, or by fp8 W dequantized to bf16).
std::vector<float> Float64Linear(const Tensor& x, const Weight& w, const Tensor& b,
                                 bool bf16_inputs) {
  const int64_t rows = x.dim(0), in = w.dim(1), out = w.dim(0);
  std::vector<float> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t o = 0; o < out; ++o) {
      double sum = b.data()[o];
      for (int64_t i = 0; i < in; ++i) {
        double xi = x.data()[r * in + i];
        double wi = Element(w, o, i);
        if (bf16_inputs) {
          xi = BF16ToF32(F32ToBF16(static_cast<float>(xi)));
          wi = BF16ToF32(F32ToBF16(static_cast<float>(wi)));
        }
        sum += xi * wi;
      }
      y[static_cast<size_t>(r * out + o)] = static_cast<float>(sum);
    }
  }
  return y;
}

std::vector<Format> Formats() {
  return {{DType::kBF16},
          {DType::kF16},
          {DType::kF8E4M3, 128, 128},
          {DType::kF8E4M3, 64, 32},
          {DType::kF8E4M3, 7, 40}};  // 40 columns: not a multiple of 16 (portable loops)
}

constexpr float kGuard = -12345.0f;

// Without AVX-512 in the hardware (test.sh's run under an emulated Haswell, where every scalar
// loop costs tens of times more) the grid keeps its short rows and one thread count: the
// portable paths are still checked there, and natively in full (ForcedReferenceIsa).
bool EmulatedRun() { return __builtin_cpu_supports("avx512f") == 0; }

void ExpectLinearMatches(void (*linear)(const LinearProblem&), bool onednn,
                         const std::vector<int64_t>& row_counts) {
  const int saved_threads = NumThreads();
  const bool light = EmulatedRun();
  const std::vector<int> thread_counts = light ? std::vector<int>{3} : std::vector<int>{1, 3};
  // Tails of the 16-wide vectors, several block rows and columns, one long row.
  std::vector<std::pair<int64_t, int64_t>> shapes = {{15, 7}, {200, 130}};
  if (!light) shapes.emplace_back(4099, 33);
  for (int threads : thread_counts) {
    SetNumThreads(threads);
    for (const Format& format : Formats()) {
      for (const int64_t rows : row_counts) {
        for (const auto& [in, out] : shapes) {
          SCOPED_TRACE(format.Name() + " rows " + std::to_string(rows) + " in " +
                       std::to_string(in) + " out " + std::to_string(out) + " threads " +
                       std::to_string(threads));
          const Tensor x = RandomUniform({rows, in}, 31, 1.0f);
          const Weight w = Store(RandomUniform({out, in}, 32, 0.5f), format);
          const Tensor b = RandomUniform({out}, 33, 1.0f);
          std::vector<float> y(static_cast<size_t>(rows * out) + 1, kGuard);
          linear(MakeLinearProblem(x.data(), rows, w, b.data(), y.data()));
          EXPECT_EQ(y.back(), kGuard);
          // oneDNN multiplies in bf16 when the CPU has a bf16 matmul (AVX-512) and the weight is
          // bf16 or fp8; elsewhere it dequantizes to fp32.
          const bool bf16_inputs =
              onednn && format.dtype != DType::kF16 && cpu::ActiveIsa().isa == cpu::Isa::kAvx512;
          const std::vector<float> exact = Float64Linear(x, w, b, bf16_inputs);
          // fp32 accumulation: a sequential sum (the unvectorised sanitizer build) of the
          // 4099-wide rows drifts past 2e-6; the shorter ones stay well inside it.
          EXPECT_LT(RelativeError(y.data(), exact.data(), rows * out), in > 1000 ? 1e-5 : 2e-6);
        }
      }
    }
  }
  SetNumThreads(saved_threads);
}

void SmallBatch(const LinearProblem& p) { cpu::SmallBatchLinear(p); }
void OneDnn(const LinearProblem& p) { cpu::OneDnnLinear(p); }

TEST(StoredWeightLinear, SmallBatchKernel) {
  ExpectLinearMatches(&SmallBatch, false, {1, 3, 8, 11});
}

TEST(StoredWeightLinear, ReferenceKernel) {
  ExpectLinearMatches(ReferenceBackend().linear, false, {1, 9});
}

TEST(StoredWeightLinear, OneDnnTiles) { ExpectLinearMatches(&OneDnn, true, {9, 33}); }

// The portable loops, which a CPU without AVX-512 runs, forced here on every machine.
TEST(StoredWeightLinear, ForcedReferenceIsa) {
  const cpu::IsaSupport saved = cpu::ActiveIsa();
  cpu::ForceIsa(cpu::Isa::kReference, false);
  ExpectLinearMatches(&SmallBatch, false, {1, 5});
  ExpectLinearMatches(&OneDnn, true, {12});
  cpu::ForceIsa(saved.isa, saved.bf16_dot);
}

// The backend's dequantize op (absorbed MLA's per-head W_UK/W_UV) and Weight::ToF32 give every
// element exactly as the formula does, on both ISAs.
TEST(StoredWeightLinear, DequantizeIsExact) {
  const cpu::IsaSupport saved = cpu::ActiveIsa();
  for (const cpu::Isa isa : {saved.isa, cpu::Isa::kReference}) {
    cpu::ForceIsa(isa, isa == saved.isa && saved.bf16_dot);
    for (const Format& format : Formats()) {
      SCOPED_TRACE(format.Name());
      const Weight w = Store(RandomUniform({300, 200}, 41, 2.0f), format);
      const LinearProblem p = MakeLinearProblem(nullptr, 0, w, nullptr, nullptr);
      for (const KernelBackend* backend : {&DefaultBackend(), &ReferenceBackend()}) {
        std::vector<float> rows(static_cast<size_t>(131 * 200));
        backend->dequantize(p, 150, 131, rows.data());  // crosses block rows, ragged end
        const Tensor all = w.ToF32();
        for (int64_t o = 150; o < 281; ++o) {
          for (int64_t i = 0; i < 200; ++i) {
            ASSERT_EQ(rows[static_cast<size_t>((o - 150) * 200 + i)],
                      static_cast<float>(Element(w, o, i)))
                << backend->name << " " << o << "," << i;
            ASSERT_EQ(all.data()[o * 200 + i], static_cast<float>(Element(w, o, i)));
          }
        }
      }
    }
  }
  cpu::ForceIsa(saved.isa, saved.bf16_dot);
}

// DeepSeek's quantizer: each block's largest magnitude maps to ±448 exactly, every value is
// within half an E4M3 step of the original, and ragged edges get their own blocks.
TEST(StoredWeightLinear, Fp8BlockQuantizer) {
  const Tensor values = RandomUniform({300, 200}, 51, 3.0f);
  const Weight w = QuantizeF8E4M3Blocks(values, 128, 128);
  EXPECT_EQ(w.block_scale_shape(), (Shape{3, 2}));
  EXPECT_EQ(w.nbytes(), static_cast<size_t>(300 * 200 + 6 * 4));
  const Tensor back = w.ToF32();
  for (int64_t o = 0; o < 300; ++o) {
    for (int64_t i = 0; i < 200; ++i) {
      const float scale = w.block_scales()[o / 128 * 2 + i / 128];
      const float original = values.data()[o * 200 + i];
      // E4M3 keeps 3 mantissa bits: a relative step of 2^-3 at most, half of it after rounding;
      // below 2^-6 (subnormals) an absolute step of 2^-9 scale units.
      const float tolerance = std::max(std::fabs(original) / 16.0f, scale * 0x1p-10f) * 1.0001f;
      ASSERT_LE(std::fabs(back.data()[o * 200 + i] - original), tolerance) << o << "," << i;
    }
  }
  ExpectError(
      [&] {
        Store(values, {DType::kF8E4M3, 0, 128});
      },
      ErrorKind::kInvalidArgument, {"block"});
}

// An fp8 weight's scales must match its blocks; a projection refuses fp8 without scales.
TEST(StoredWeightLinear, BlockScaleChecks) {
  auto codes = std::make_shared<std::vector<uint8_t>>(300 * 200, 0x38);
  const Weight raw = Weight::View(DType::kF8E4M3, {300, 200}, codes->data(), codes);
  ExpectError(
      [&] {
        Weight(raw).WithBlockScales(Weight(Tensor({3, 1})), 128, 128, "w");
      },
      ErrorKind::kInvalidArgument, {"w_scale_inv", "[3, 2]", "[3, 1]"});
  Tensor zero({3, 2});
  ExpectError([&] { Weight(raw).WithBlockScales(Weight(std::move(zero)), 128, 128, "w"); },
              ErrorKind::kInvalidArgument, {"w_scale_inv", "positive"});
  Tensor ones({3, 2}, std::vector<float>(6, 1.0f));
  const Weight scaled = Weight(raw).WithBlockScales(Weight(std::move(ones)), 128, 128, "w");
  EXPECT_EQ(scaled.ToF32().data()[0], 1.0f);
  std::vector<uint8_t> nan_codes(4, 0x38);
  nan_codes[3] = 0xff;
  const Weight nan = Weight::View(DType::kF8E4M3, {2, 2}, nan_codes.data(), nullptr);
  ExpectError([&] { CheckFinite(nan, "w"); }, ErrorKind::kInvalidArgument, {"w", "[1, 1]"});
}

}  // namespace
}  // namespace attn

namespace attn {
namespace {

// A linear problem the kernels cannot run is refused by both backends before any arithmetic.
TEST(StoredWeightLinear, BackendsRefuseFp8WithoutScalesAndOtherDTypes) {
  const std::vector<uint8_t> codes(16, 0x38);
  std::vector<float> x(4, 1.0f), y(4, 0.0f);
  LinearProblem p;
  p.x = x.data();
  p.w = codes.data();
  p.w_dtype = DType::kF8E4M3;
  p.rows = 1;
  p.in = 4;
  p.out = 4;
  p.y = y.data();
  for (const KernelBackend* backend : {&DefaultBackend(), &ReferenceBackend()}) {
    testing::ExpectError([&] { backend->linear(p); }, ErrorKind::kInvalidArgument,
                         {"F8_E4M3", "block scales"});
    LinearProblem other = p;
    other.w_dtype = DType::kI32;
    testing::ExpectError([&] { backend->linear(other); }, ErrorKind::kInvalidArgument, {"I32"});
  }
}

}  // namespace
}  // namespace attn
