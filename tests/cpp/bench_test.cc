// SPDX-License-Identifier: Apache-2.0
// The counting behind every number `attn bench` reports: visible pairs, FLOPs and unique K/V
// bytes checked against values worked out by hand for issue 3's cases, the roofline placement,
// the benchmark buffers against a brute-force attention, and the peak file format.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "attn/error.h"
#include "attn/kernels.h"
#include "bench/kernel_case.h"
#include "bench/peak.h"
#include "kernels/cpu/element_load.h"
#include "test_util.h"

namespace attn::bench {
namespace {

KernelShape Shape(Variant variant, int64_t h, int64_t g, int64_t d, int64_t s, int64_t t,
                  bool causal, DType dtype) {
  KernelShape shape;
  shape.variant = variant;
  shape.heads = h;
  shape.kv_heads = g;
  shape.head_dim = d;
  shape.q_len = s;
  shape.kv_len = t;
  shape.causal = causal;
  shape.dtype = dtype;
  return NormalizeKernelShape(shape);
}

TEST(BenchCountingTest, CausalPrefillH32G8D128) {
  const KernelShape f32 = Shape(Variant::kGqa, 32, 8, 128, 2048, 2048, true, DType::kF32);
  // 1 + 2 + … + 2048 = 2048·2049/2 visible pairs.
  EXPECT_EQ(VisiblePairs(f32), 2098176);
  // 2·32·(128+128) = 16384 FLOPs per pair.
  EXPECT_DOUBLE_EQ(KernelFlops(f32), 34376515584.0);
  // 2048 tokens · 8 heads · (128+128) values · 4 bytes.
  EXPECT_DOUBLE_EQ(KernelKvBytes(f32), 16777216.0);
  const KernelShape bf16 = Shape(Variant::kGqa, 32, 8, 128, 2048, 2048, true, DType::kBF16);
  EXPECT_DOUBLE_EQ(KernelFlops(bf16), 34376515584.0);
  EXPECT_DOUBLE_EQ(KernelKvBytes(bf16), 8388608.0);
}

TEST(BenchCountingTest, NonCausalIsTheFullRectangle) {
  const KernelShape full = Shape(Variant::kGqa, 32, 8, 128, 2048, 2048, false, DType::kF32);
  EXPECT_EQ(VisiblePairs(full), 2048 * 2048);
  EXPECT_DOUBLE_EQ(KernelFlops(full), 2.0 * 32 * 2048 * 256 * 2048);
  // Queries at slots 6 … 9 of 10 keys see 7 + 8 + 9 + 10 keys.
  EXPECT_EQ(VisiblePairs(Shape(Variant::kGqa, 1, 1, 4, 4, 10, true, DType::kF32)), 34);
  EXPECT_EQ(VisiblePairs(Shape(Variant::kGqa, 1, 1, 4, 4, 10, false, DType::kF32)), 40);
}

TEST(BenchCountingTest, DecodeGqaMqaMha) {
  const KernelShape gqa = Shape(Variant::kGqa, 32, 8, 128, 1, 16384, false, DType::kBF16);
  EXPECT_DOUBLE_EQ(KernelFlops(gqa), 2.0 * 32 * 256 * 16384);  // 268435456
  EXPECT_DOUBLE_EQ(KernelKvBytes(gqa), 67108864.0);            // 16384·8·256·2
  // One query: causal or not, it sees every key.
  EXPECT_DOUBLE_EQ(KernelFlops(Shape(Variant::kGqa, 32, 8, 128, 1, 16384, true, DType::kBF16)),
                   KernelFlops(gqa));
  EXPECT_DOUBLE_EQ(KernelKvBytes(Shape(Variant::kGqa, 32, 1, 128, 1, 16384, false, DType::kBF16)),
                   8388608.0);
  EXPECT_DOUBLE_EQ(KernelKvBytes(Shape(Variant::kGqa, 32, 32, 128, 1, 16384, false, DType::kBF16)),
                   268435456.0);
}

TEST(BenchCountingTest, MlaDefaultsAndSharedRow) {
  KernelShape shape;
  shape.variant = Variant::kMla;
  shape.heads = 128;
  shape.q_len = 1;
  shape.kv_len = 4096;
  shape.dtype = DType::kBF16;
  shape = NormalizeKernelShape(shape);
  EXPECT_EQ(shape.head_dim, 576);
  EXPECT_EQ(shape.value_dim, 512);
  EXPECT_EQ(shape.kv_heads, 1);
  EXPECT_DOUBLE_EQ(KernelFlops(shape), 2.0 * 128 * 1088 * 4096);  // 1140850688
  // The value is the first 512 entries of the same 576-wide row: counted once.
  EXPECT_DOUBLE_EQ(KernelKvBytes(shape), 4096.0 * 576 * 2);
}

TEST(BenchCountingTest, RejectsBadShapes) {
  EXPECT_THROW(Shape(Variant::kMla, 128, 2, 0, 1, 10, false, DType::kBF16), Error);
  EXPECT_THROW(Shape(Variant::kGqa, 32, 5, 128, 1, 10, false, DType::kF32), Error);
  EXPECT_THROW(Shape(Variant::kGqa, 32, 8, 128, 11, 10, false, DType::kF32), Error);
  EXPECT_THROW(Shape(Variant::kGqa, 32, 8, 128, 0, 10, false, DType::kF32), Error);
  EXPECT_THROW(Shape(Variant::kGqa, 32, 8, 128, 1, 10, false, DType::kI32), Error);
  EXPECT_THROW(VariantFromString("mqa"), Error);
}

TEST(BenchCountingTest, RooflinePlacement) {
  // Intensity 10 FLOP/B under 50 GFLOP/s and 2 GB/s: the memory roof (20 GFLOP/s) binds.
  RooflinePoint p = PlaceOnRoofline(100.0, 10.0, 100.0 / 10e9, 50.0, 2.0);
  EXPECT_DOUBLE_EQ(p.intensity, 10.0);
  EXPECT_TRUE(p.memory_bound);
  EXPECT_DOUBLE_EQ(p.roof_gflops, 20.0);
  EXPECT_NEAR(p.fraction, 0.5, 1e-12);
  // Intensity 1000: compute binds.
  p = PlaceOnRoofline(1e4, 10.0, 1e4 / 25e9, 50.0, 2.0);
  EXPECT_FALSE(p.memory_bound);
  EXPECT_DOUBLE_EQ(p.roof_gflops, 50.0);
  EXPECT_NEAR(p.fraction, 0.5, 1e-12);
}

TEST(BenchCountingTest, Median) {
  EXPECT_DOUBLE_EQ(Median({3.0, 1.0, 2.0}), 2.0);
  EXPECT_DOUBLE_EQ(Median({4.0, 1.0, 3.0, 2.0}), 2.5);
  EXPECT_DOUBLE_EQ(Median({}), 0.0);
}

// out[s, h] by the definition with every query seeing all T keys (non-causal) or its causal
// prefix, reading the case's own K/V storage.
std::vector<double> BruteForce(const KernelCase& c) {
  const AttentionProblem& p = c.problem();
  const KernelShape& s = c.shape();
  const KVView& kv = p.kv;
  std::vector<double> out(static_cast<size_t>(s.q_len * s.heads * s.value_dim), 0.0);
  std::vector<float> key(static_cast<size_t>(s.head_dim));
  std::vector<float> value(static_cast<size_t>(s.value_dim));
  for (int64_t q = 0; q < s.q_len; ++q) {
    const int64_t last = s.causal ? s.kv_len - s.q_len + q : s.kv_len - 1;
    for (int64_t h = 0; h < s.heads; ++h) {
      const int64_t g = h / (s.heads / s.kv_heads);
      const float* query = p.queries.data + (q * s.heads + h) * s.head_dim;
      std::vector<double> scores;
      double max_score = -INFINITY;
      for (int64_t t = 0; t <= last; ++t) {
        cpu::LoadRow(kv.dtype, kv.keys, g * kv.key_head_stride + t * kv.key_token_stride,
                     s.head_dim, key.data());
        double dot = 0.0;
        for (int64_t i = 0; i < s.head_dim; ++i) dot += double{query[i]} * key[i];
        scores.push_back(dot * p.scale);
        max_score = std::max(max_score, scores.back());
      }
      double total = 0.0;
      double* row = out.data() + (q * s.heads + h) * s.value_dim;
      for (int64_t t = 0; t <= last; ++t) {
        const double w = std::exp(scores[static_cast<size_t>(t)] - max_score);
        total += w;
        cpu::LoadRow(kv.dtype, kv.values, g * kv.value_head_stride + t * kv.value_token_stride,
                     s.value_dim, value.data());
        for (int64_t i = 0; i < s.value_dim; ++i) row[i] += w * value[i];
      }
      for (int64_t i = 0; i < s.value_dim; ++i) row[i] /= total;
    }
  }
  return out;
}

double MaxRelativeError(const std::vector<float>& got, const std::vector<double>& want) {
  double diff = 0.0;
  double ref = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff = std::max(diff, std::fabs(got[i] - want[i]));
    ref = std::max(ref, std::fabs(want[i]));
  }
  return diff / ref;
}

TEST(KernelCaseTest, NonCausalSeesEveryKey) {
  const KernelCase c(Shape(Variant::kGqa, 4, 2, 8, 3, 7, false, DType::kF32), 7);
  EXPECT_EQ(c.problem().kv.length, 7);
  EXPECT_FALSE(c.problem().visibility.causal);
  c.Run(ReferenceBackend());
  EXPECT_LT(MaxRelativeError(c.output(), BruteForce(c)), 1e-5);
}

// A ragged token-major batch: lengths T - floor(b*T/(2B)), one attend_batch call whose outputs
// equal each sequence alone through the reference kernel; bytes and FLOPs sum over the batch.
TEST(KernelCaseTest, RaggedTokenMajorBatch) {
  KernelShape shape = Shape(Variant::kGqa, 8, 2, 16, 2, 40, true, DType::kF16);
  shape.batch = 4;
  shape.token_major = true;
  const KernelCase c(shape, 9);
  EXPECT_EQ(SequenceLengths(c.shape()), (std::vector<int64_t>{40, 35, 30, 25}));
  EXPECT_EQ(c.problem().kv.key_token_stride, 2 * 16);
  EXPECT_DOUBLE_EQ(KernelKvBytes(c.shape()), 130.0 * 2 * (16 + 16) * 2);
  EXPECT_EQ(VisiblePairs(c.shape()), 2 * 130 - 4 * 1);
  c.Run(DefaultBackend());
  for (size_t b = 0; b < 4; ++b) {
    std::vector<float> want(c.output(b).size());
    AttentionProblem alone = c.problems()[b];
    alone.out = want.data();
    ReferenceBackend().attend(alone);
    EXPECT_LT(
        testing::RelativeError(c.output(b).data(), want.data(), static_cast<int64_t>(want.size())),
        1e-5)
        << b;
  }
}

TEST(KernelCaseTest, CausalPrefill) {
  const KernelCase c(Shape(Variant::kGqa, 4, 1, 8, 5, 5, true, DType::kBF16), 3);
  EXPECT_EQ(c.problem().kv.keep, nullptr);
  EXPECT_EQ(c.problem().visibility.first_query_slot, 0);
  c.Run(ReferenceBackend());
  EXPECT_LT(MaxRelativeError(c.output(), BruteForce(c)), 1e-5);
}

TEST(KernelCaseTest, MlaValuesAliasKeys) {
  KernelShape shape;
  shape.variant = Variant::kMla;
  shape.heads = 2;
  shape.head_dim = 12;
  shape.value_dim = 8;
  shape.q_len = 2;
  shape.kv_len = 6;
  shape.causal = true;
  shape.dtype = DType::kF16;
  const KernelCase c(shape, 5);
  EXPECT_EQ(c.problem().kv.keys, c.problem().kv.values);
  EXPECT_EQ(c.problem().kv.key_token_stride, 12);
  c.Run(DefaultBackend());
  EXPECT_LT(MaxRelativeError(c.output(), BruteForce(c)), 1e-4);
}

TEST(PeakTest, SmallMeasurementAndJsonRoundTrip) {
  PeakOptions options;
  options.thread_counts = {1};
  options.dram_buffer_bytes = 1 << 20;
  options.trials = 1;
  options.seconds_per_trial = 0.005;
  const MachinePeak peak = MeasurePeak(options);
  ASSERT_EQ(peak.points.size(), 1u);
  EXPECT_GT(peak.points[0].fp32_gflops, 0.0);
  EXPECT_GT(peak.points[0].dram_gbps, 0.0);
  EXPECT_GT(peak.points[0].dram_gbps_median, 0.0);
  EXPECT_GT(peak.points[0].dram_triad_gbps, 0.0);
  EXPECT_GT(peak.points[0].dram_triad_gbps_median, 0.0);
  EXPECT_EQ(peak.points[0].bf16_gflops > 0.0, peak.bf16_isa != "none");
  // Three arrays of whole 64-double blocks, together at most the bytes asked for.
  EXPECT_LE(peak.dram_buffer_bytes, 1 << 20);
  EXPECT_GT(peak.dram_buffer_bytes, (1 << 20) - 3 * 64 * 8);
  EXPECT_EQ(peak.dram_buffer_bytes % (3 * 64 * 8), 0);
  const nlohmann::json json = PeakToJson(peak);
  EXPECT_EQ(json.at("format"), kPeakFileFormat);
  const MachinePeak back = PeakFromJson(json);
  EXPECT_EQ(back.fp32_isa, peak.fp32_isa);
  EXPECT_EQ(back.dram_buffer_bytes, peak.dram_buffer_bytes);
  ASSERT_NE(back.ForThreads(1), nullptr);
  EXPECT_DOUBLE_EQ(back.ForThreads(1)->dram_gbps, peak.points[0].dram_gbps);
  EXPECT_DOUBLE_EQ(back.ForThreads(1)->dram_triad_gbps, peak.points[0].dram_triad_gbps);
  EXPECT_DOUBLE_EQ(back.ForThreads(1)->dram_triad_gbps_median,
                   peak.points[0].dram_triad_gbps_median);
  EXPECT_EQ(back.ForThreads(2), nullptr);
  EXPECT_THROW(PeakFromJson(nlohmann::json{{"cpu_model", "x"}}), Error);
}

// The error kind PeakFromJson throws for `json`, or nullopt when it accepts it.
std::optional<ErrorKind> PeakJsonError(const nlohmann::json& json) {
  try {
    PeakFromJson(json);
  } catch (const Error& error) {
    return error.kind();
  }
  return std::nullopt;
}

nlohmann::json SmallPeakJson() {
  MachinePeak peak;
  peak.cpu_model = "cpu";
  peak.logical_cpus = 2;
  peak.fp32_isa = "avx512f";
  peak.bf16_isa = "none";
  peak.dram_buffer_bytes = 3 << 20;
  peak.measured_at = "2026-11-29T00:00:00Z";
  peak.points = {{1, 100.0, 90.0, 0.0, 0.0, 20.0, 19.0, 18.0, 17.0}};
  return PeakToJson(peak);
}

TEST(PeakTest, TriadFieldsAreRequiredAndChecked) {
  EXPECT_EQ(PeakJsonError(SmallPeakJson()), std::nullopt);
  for (const char* key : {"dram_triad_gbps", "dram_triad_gbps_median", "dram_gbps"}) {
    nlohmann::json json = SmallPeakJson();
    json["points"][0].erase(key);
    EXPECT_EQ(PeakJsonError(json), ErrorKind::kCorruptFile) << key << " missing";
    json["points"][0][key] = "fast";
    EXPECT_EQ(PeakJsonError(json), ErrorKind::kCorruptFile) << key << " a string";
    json["points"][0][key] = -1.0;
    EXPECT_EQ(PeakJsonError(json), ErrorKind::kCorruptFile) << key << " negative";
  }
  nlohmann::json json = SmallPeakJson();
  json["format"] = "2";
  EXPECT_EQ(PeakJsonError(json), ErrorKind::kCorruptFile);
}

// A file of format 1 (no "format", no triad: DRAM read measured the old way) is no cache at
// all: its DRAM figure is measured again, not kept as the higher of old and new.
class PeakCacheTest : public testing::ScratchDirTest {};

TEST_F(PeakCacheTest, OldFormatIsMeasuredAgainNotMerged) {
  nlohmann::json old = SmallPeakJson();
  old.erase("format");
  for (auto& point : old["points"]) {
    point.erase("dram_triad_gbps");
    point.erase("dram_triad_gbps_median");
    point["dram_gbps"] = 1e9;  // a roof no measurement reaches: it must not survive
  }
  EXPECT_EQ(PeakJsonError(old), ErrorKind::kCorruptFile);
  old["format"] = 1;
  EXPECT_EQ(PeakJsonError(old), ErrorKind::kCorruptFile);
  const std::string path = WriteFile("peak.json", old.dump());
  EXPECT_FALSE(LoadPeak(path).has_value());

  // PeakFor on that file, with the same CPU as this machine so a merge would be possible.
  const MachinePeak here = MeasurePeak({{1}, 1 << 20, 1, 0.002});
  old["cpu_model"] = here.cpu_model;
  old["logical_cpus"] = here.logical_cpus;
  old["fp32_isa"] = here.fp32_isa;
  old["bf16_isa"] = here.bf16_isa;
  old["dram_buffer_bytes"] = here.dram_buffer_bytes;
  old.erase("format");
  WriteFile("peak.json", old.dump());
  const char* saved = std::getenv("ATTN_PEAK_CACHE");
  const std::string saved_value = saved != nullptr ? saved : "";
  ::setenv("ATTN_PEAK_CACHE", path.c_str(), 1);
  const MachinePeak peak = PeakFor({1}, {{}, 1 << 20, 1, 0.002});
  if (saved != nullptr) {
    ::setenv("ATTN_PEAK_CACHE", saved_value.c_str(), 1);
  } else {
    ::unsetenv("ATTN_PEAK_CACHE");
  }
  ASSERT_NE(peak.ForThreads(1), nullptr);
  EXPECT_LT(peak.ForThreads(1)->dram_gbps, 1e9);
  EXPECT_GT(peak.ForThreads(1)->dram_triad_gbps, 0.0);
  const std::optional<MachinePeak> stored = LoadPeak(path);
  ASSERT_TRUE(stored.has_value());  // rewritten in the current format
  EXPECT_DOUBLE_EQ(stored->ForThreads(1)->dram_gbps, peak.ForThreads(1)->dram_gbps);
}

TEST(PeakTest, MergeKeepsTheHigherRoof) {
  MachinePeak cached;
  cached.cpu_model = "cpu";
  cached.fp32_isa = "avx512f";
  cached.bf16_isa = "none";
  cached.dram_buffer_bytes = 1 << 30;
  cached.points = {{1, 100.0, 90.0, 0.0, 0.0, 20.0, 19.0}, {2, 200.0, 190.0, 0.0, 0.0, 30.0, 29.0}};
  MachinePeak fresh = cached;
  fresh.points = {{2, 150.0, 140.0, 0.0, 0.0, 35.0, 34.0}, {3, 250.0, 240.0, 0.0, 0.0, 31.0, 30.0}};
  MachinePeak merged = MergePeaks(cached, fresh);
  ASSERT_EQ(merged.points.size(), 3u);
  EXPECT_DOUBLE_EQ(merged.ForThreads(1)->fp32_gflops, 100.0);  // kept from the cache
  EXPECT_DOUBLE_EQ(merged.ForThreads(2)->fp32_gflops, 200.0);  // the cache's was higher
  EXPECT_DOUBLE_EQ(merged.ForThreads(2)->fp32_gflops_median, 190.0);
  EXPECT_DOUBLE_EQ(merged.ForThreads(2)->dram_gbps, 35.0);  // this run's was higher
  // The triad is kept the same way, on its own.
  cached.points[1].dram_triad_gbps = 28.0;
  fresh.points[0].dram_triad_gbps = 27.0;
  EXPECT_DOUBLE_EQ(MergePeaks(cached, fresh).ForThreads(2)->dram_triad_gbps, 28.0);
  EXPECT_DOUBLE_EQ(MergePeaks(cached, fresh).ForThreads(2)->dram_gbps, 35.0);
  EXPECT_DOUBLE_EQ(merged.ForThreads(3)->fp32_gflops, 250.0);
  // A different buffer size measured something else: its DRAM rate is not compared.
  fresh.dram_buffer_bytes = 4 << 20;
  merged = MergePeaks(cached, fresh);
  EXPECT_DOUBLE_EQ(merged.ForThreads(2)->dram_gbps, 35.0);
  fresh.points[0].dram_gbps = 1.0;
  EXPECT_DOUBLE_EQ(MergePeaks(cached, fresh).ForThreads(2)->dram_gbps, 1.0);
  EXPECT_EQ(MergePeaks(cached, fresh).ForThreads(1), nullptr);
  // Another CPU: nothing of the cache survives.
  fresh.cpu_model = "other";
  EXPECT_DOUBLE_EQ(MergePeaks(cached, fresh).ForThreads(2)->fp32_gflops, 150.0);
}

}  // namespace
}  // namespace attn::bench
