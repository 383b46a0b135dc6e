// SPDX-License-Identifier: Apache-2.0
// What this machine can do at best: fp32 FMA and bf16 dot-product GFLOP/s, and DRAM GB/s
// measured as STREAM measures it (a read, and STREAM's triad), per thread count. These are the
// roofs `attn bench kernel` reports its cases against. The measurement takes seconds, so results
// are cached per machine in a JSON file.
#ifndef ATTN_BENCH_PEAK_H_
#define ATTN_BENCH_PEAK_H_

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace attn::bench {

// One thread count's roofs. Each is the best of several trials (the machine reached it, so it
// is a roof); the median is kept to show how noisy the trials were.
struct PeakPoint {
  int threads = 0;
  double fp32_gflops = 0.0;
  double fp32_gflops_median = 0.0;
  double bf16_gflops = 0.0;  // 0 when the CPU has no bf16 dot-product instruction
  double bf16_gflops_median = 0.0;
  // DRAM read of STREAM's three arrays: the roof of read-bound kernels.
  double dram_gbps = 0.0;
  double dram_gbps_median = 0.0;
  // STREAM's triad a = b + 3·c, counted as STREAM counts it (24 bytes per element), to compare
  // with a STREAM or likwid-bench run on the same machine.
  double dram_triad_gbps = 0.0;
  double dram_triad_gbps_median = 0.0;
};

// The peak file's format. 2: DRAM measured STREAM's way (per-thread first touch, best of the
// repetitions after the first), with the triad. Files of another format are measured again.
constexpr int kPeakFileFormat = 2;

struct MachinePeak {
  std::string cpu_model;
  int logical_cpus = 0;
  std::string fp32_isa;           // "avx512f" | "avx2-fma" | "scalar": which FMA loop was measured
  std::string bf16_isa;           // "avx512bf16" or "none"
  int64_t dram_buffer_bytes = 0;  // the three DRAM arrays together
  std::string measured_at;        // UTC, ISO 8601
  std::vector<PeakPoint> points;

  // The point measured at `threads`, or null.
  const PeakPoint* ForThreads(int threads) const;
};

struct PeakOptions {
  std::vector<int> thread_counts;  // empty = 1 … hardware threads
  // The three DRAM arrays together; 0 = DefaultDramBytes().
  int64_t dram_buffer_bytes = 0;
  int trials = 5;                  // timed repetitions per roof (DRAM: after one untimed)
  double seconds_per_trial = 0.1;  // compute loops
};

// The last-level cache of the whole machine (every instance of the highest level, from sysfs),
// or 0 where sysfs does not say.
int64_t LastLevelCacheBytes();
// STREAM's sizing: three arrays, each at least 4 × LastLevelCacheBytes(); 1 GiB at least and a
// quarter of the RAM at most.
int64_t DefaultDramBytes();

// Runs the measurements for each thread count.
MachinePeak MeasurePeak(const PeakOptions& options);

// `fresh` with, per thread count, the higher of its roofs and those of `cached`: a rate the
// machine once reached stays a roof when a later measurement ran beside other work. Points only
// `cached` has are kept. Nothing is merged across CPU models or ISAs, and DRAM rates only when
// both used the same buffer size (a smaller buffer measures a cache, not DRAM).
MachinePeak MergePeaks(const MachinePeak& cached, const MachinePeak& fresh);

nlohmann::json PeakToJson(const MachinePeak& peak);
// Throws Error(kCorruptFile) when fields are missing or malformed, or the format is not
// kPeakFileFormat.
MachinePeak PeakFromJson(const nlohmann::json& json);

// $ATTN_PEAK_CACHE, else $XDG_CACHE_HOME/attn/peak-<id>.json, else ~/.cache/attn/peak-<id>.json,
// where <id> hashes the CPU model, the number of logical CPUs and the ISA found.
std::string PeakCachePath();
// The cached peak, or nullopt when there is none (or it is unreadable: it will be re-measured).
std::optional<MachinePeak> LoadPeak(const std::string& path);
// Writes `peak` (creating directories); throws Error(kIo) on failure.
void StorePeak(const std::string& path, const MachinePeak& peak);

// The cached peak, extended with the points for `thread_counts` it lacks (measured now, with
// `options` for sizes, merged and written back).
MachinePeak PeakFor(const std::vector<int>& thread_counts, const PeakOptions& options);

// fp32 FMA GFLOP/s on `threads` pinned threads right now, median of 3 trials of `seconds`: run
// beside a benchmark, it shows how much of the machine other processes left it at that moment.
double ProbeFp32Now(int threads, double seconds);

// The CPUs this process may run on (its affinity mask), in increasing order.
std::vector<int> AllowedCpus();
// Restricts the calling thread to `cpu`; false if the system refused.
bool PinCurrentThread(int cpu);

}  // namespace attn::bench

#endif  // ATTN_BENCH_PEAK_H_
