// SPDX-License-Identifier: Apache-2.0
#include "bench/peak.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <sstream>
#include <thread>

#include "attn/error.h"
#include "bench/kernel_case.h"
#include "io/files.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define ATTN_PEAK_X86 1
#endif

namespace attn::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Independent accumulator chains per loop: more than FMA latency × FMA ports (4 × 2 on current
// x86 cores), so the loop is bound by throughput, not by waiting on its own results.
#define ATTN_REPEAT8(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define ATTN_REPEAT12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
constexpr int kChains = 12;

// Every loop below is compiled for its ISA alone (target attribute) and only called after the
// runtime check says the CPU has it, so the binary still runs on any x86-64.
#ifdef ATTN_PEAK_X86
// Horizontal sum through memory: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized (its
// _mm512_undefined_* helpers) when the ISA comes from a target attribute.
__attribute__((target("avx512f"))) float SumLanes(__m512 v) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, v);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}

// acc = acc·a + b converges to b / (1 − a) and never reaches a subnormal or an infinity, both
// of which could slow the FMA units down.
__attribute__((target("avx512f"))) float Fp32LoopAvx512(int64_t iterations) {
  const __m512 a = _mm512_set1_ps(0.999f);
  const __m512 b = _mm512_set1_ps(0.001f);
#define DECLARE(i) __m512 acc##i = _mm512_set1_ps(static_cast<float>(i));
  ATTN_REPEAT12(DECLARE)
#undef DECLARE
  for (int64_t it = 0; it < iterations; ++it) {
#define STEP(i) acc##i = _mm512_fmadd_ps(acc##i, a, b);
    ATTN_REPEAT12(STEP)
#undef STEP
  }
  __m512 sum = _mm512_setzero_ps();
#define ADD(i) sum = _mm512_add_ps(sum, acc##i);
  ATTN_REPEAT12(ADD)
#undef ADD
  return SumLanes(sum);
}

__attribute__((target("avx2,fma"))) float Fp32LoopAvx2(int64_t iterations) {
  const __m256 a = _mm256_set1_ps(0.999f);
  const __m256 b = _mm256_set1_ps(0.001f);
#define DECLARE(i) __m256 acc##i = _mm256_set1_ps(static_cast<float>(i));
  ATTN_REPEAT12(DECLARE)
#undef DECLARE
  for (int64_t it = 0; it < iterations; ++it) {
#define STEP(i) acc##i = _mm256_fmadd_ps(acc##i, a, b);
    ATTN_REPEAT12(STEP)
#undef STEP
  }
  __m256 sum = _mm256_setzero_ps();
#define ADD(i) sum = _mm256_add_ps(sum, acc##i);
  ATTN_REPEAT12(ADD)
#undef ADD
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}

// vdpbf16ps: 16 fp32 lanes each += a[2i]·b[2i] + a[2i+1]·b[2i+1], i.e. 32 multiply-adds.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) float Bf16LoopAvx512(int64_t iterations) {
  const __m512 small = _mm512_set1_ps(0.001f);
  const __m512bh a = _mm512_cvtne2ps_pbh(small, small);
  const __m512bh b = _mm512_cvtne2ps_pbh(small, small);
#define DECLARE(i) __m512 acc##i = _mm512_set1_ps(static_cast<float>(i));
  ATTN_REPEAT12(DECLARE)
#undef DECLARE
  for (int64_t it = 0; it < iterations; ++it) {
#define STEP(i) acc##i = _mm512_dpbf16_ps(acc##i, a, b);
    ATTN_REPEAT12(STEP)
#undef STEP
  }
  __m512 sum = _mm512_setzero_ps();
#define ADD(i) sum = _mm512_add_ps(sum, acc##i);
  ATTN_REPEAT12(ADD)
#undef ADD
  return SumLanes(sum);
}

// Sums `count` floats (count a multiple of 128) with 8 independent accumulators, so that the
// adds never limit the rate at which cache lines arrive.
__attribute__((target("avx512f"))) float ReadSumAvx512(const float* data, int64_t count) {
#define DECLARE(i) __m512 acc##i = _mm512_setzero_ps();
  ATTN_REPEAT8(DECLARE)
#undef DECLARE
  for (int64_t i = 0; i < count; i += 128) {
#define STEP(k) acc##k = _mm512_add_ps(acc##k, _mm512_loadu_ps(data + i + 16 * (k)));
    ATTN_REPEAT8(STEP)
#undef STEP
  }
  __m512 sum = _mm512_setzero_ps();
#define ADD(i) sum = _mm512_add_ps(sum, acc##i);
  ATTN_REPEAT8(ADD)
#undef ADD
  return SumLanes(sum);
}

__attribute__((target("avx2"))) float ReadSumAvx2(const float* data, int64_t count) {
#define DECLARE(i) __m256 acc##i = _mm256_setzero_ps();
  ATTN_REPEAT8(DECLARE)
#undef DECLARE
  for (int64_t i = 0; i < count; i += 64) {
#define STEP(k) acc##k = _mm256_add_ps(acc##k, _mm256_loadu_ps(data + i + 8 * (k)));
    ATTN_REPEAT8(STEP)
#undef STEP
  }
  __m256 sum = _mm256_setzero_ps();
#define ADD(i) sum = _mm256_add_ps(sum, acc##i);
  ATTN_REPEAT8(ADD)
#undef ADD
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, sum);
  float total = 0.0f;
  for (float lane : lanes) total += lane;
  return total;
}
#endif  // ATTN_PEAK_X86

float Fp32LoopScalar(int64_t iterations) {
  float acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = static_cast<float>(i);
  for (int64_t it = 0; it < iterations; ++it) {
    for (float& a : acc) a = std::fma(a, 0.999f, 0.001f);
  }
  float total = 0.0f;
  for (float a : acc) total += a;
  return total;
}

float ReadSumScalar(const float* data, int64_t count) {
  float acc[8] = {};
  for (int64_t i = 0; i < count; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += data[i + k];
  }
  float total = 0.0f;
  for (float a : acc) total += a;
  return total;
}

struct Isa {
  std::string fp32 = "scalar";
  std::string bf16 = "none";
  std::string read = "scalar";
};

Isa DetectIsa() {
  Isa isa;
#ifdef ATTN_PEAK_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) {
    isa.fp32 = isa.read = "avx512f";
  } else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    isa.fp32 = "avx2-fma";
    isa.read = "avx2";
  }
  if (__builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw")) {
    isa.bf16 = "avx512bf16";
  }
#endif
  return isa;
}

// FLOPs one call of the loop does per iteration, and the loop itself.
struct ComputeLoop {
  double flops_per_iteration = 0.0;
  float (*run)(int64_t iterations) = nullptr;
};

ComputeLoop Fp32Loop(const Isa& isa) {
#ifdef ATTN_PEAK_X86
  if (isa.fp32 == "avx512f") return {kChains * 16 * 2.0, &Fp32LoopAvx512};
  if (isa.fp32 == "avx2-fma") return {kChains * 8 * 2.0, &Fp32LoopAvx2};
#endif
  (void)isa;
  return {kChains * 2.0, &Fp32LoopScalar};
}

ComputeLoop Bf16Loop(const Isa& isa) {
#ifdef ATTN_PEAK_X86
  if (isa.bf16 == "avx512bf16") return {kChains * 32 * 2.0, &Bf16LoopAvx512};
#endif
  (void)isa;
  return {};
}

float (*ReadLoop(const Isa& isa))(const float*, int64_t) {
#ifdef ATTN_PEAK_X86
  if (isa.read == "avx512f") return &ReadSumAvx512;
  if (isa.read == "avx2") return &ReadSumAvx2;
#endif
  (void)isa;
  return &ReadSumScalar;
}

// Results land here so that no loop can be optimised away.
std::atomic<float> g_sink{0.0f};

// Runs body(i) on `threads` threads released together; returns the seconds from the first
// start to the last finish (the wall time the whole machine needed for the work).
// Each thread is pinned to its own CPU when there are enough: a trial lasts a tenth of a second,
// too short for the scheduler to spread freshly created threads over a busy machine, and two
// threads sharing one core would measure that core twice instead of the machine.
double RunTogether(int threads, const std::function<float(int)>& body) {
  const std::vector<int> cpus = AllowedCpus();
  const bool pin = static_cast<int>(cpus.size()) >= threads;
  std::atomic<int> ready{0};
  std::atomic<bool> go{false};
  std::vector<Clock::time_point> starts(static_cast<size_t>(threads));
  std::vector<Clock::time_point> ends(static_cast<size_t>(threads));
  std::vector<std::thread> workers;
  for (int i = 0; i < threads; ++i) {
    workers.emplace_back([&, i] {
      if (pin) PinCurrentThread(cpus[static_cast<size_t>(i)]);
      ready.fetch_add(1);
      while (!go.load()) std::this_thread::yield();
      starts[static_cast<size_t>(i)] = Clock::now();
      const float result = body(i);
      ends[static_cast<size_t>(i)] = Clock::now();
      g_sink.store(g_sink.load() + result);
    });
  }
  while (ready.load() < threads) std::this_thread::yield();
  go.store(true);
  for (std::thread& worker : workers) worker.join();
  const auto first = *std::min_element(starts.begin(), starts.end());
  const auto last = *std::max_element(ends.begin(), ends.end());
  return std::chrono::duration<double>(last - first).count();
}

// Iterations that take about `seconds` on one thread.
int64_t Calibrate(const ComputeLoop& loop, double seconds) {
  int64_t iterations = 1 << 16;
  while (true) {
    const auto start = Clock::now();
    g_sink.store(loop.run(iterations));
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (elapsed > 0.02 || iterations > (int64_t{1} << 40)) {
      return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(iterations) * seconds /
                                                       std::max(elapsed, 1e-9)));
    }
    iterations *= 4;
  }
}

// Best and median GFLOP/s of `trials` runs of `loop` on `threads` threads.
std::pair<double, double> MeasureCompute(const ComputeLoop& loop, int64_t iterations, int threads,
                                         int trials) {
  std::vector<double> rates;
  for (int trial = 0; trial < trials; ++trial) {
    const double seconds = RunTogether(threads, [&](int) { return loop.run(iterations); });
    rates.push_back(loop.flops_per_iteration * static_cast<double>(iterations) * threads / seconds /
                    1e9);
  }
  return {*std::max_element(rates.begin(), rates.end()), Median(rates)};
}

std::string CpuModel() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        std::string model = line.substr(colon + 1);
        model.erase(0, model.find_first_not_of(" \t"));
        return model;
      }
    }
  }
  return "unknown";
}

int HardwareThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : static_cast<int>(n);
}

std::string UtcNow() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

}  // namespace

std::vector<int> AllowedCpus() {
  std::vector<int> cpus;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
      if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    }
  }
  return cpus;
}

bool PinCurrentThread(int cpu) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  return pthread_setaffinity_np(pthread_self(), sizeof(one), &one) == 0;
}

const PeakPoint* MachinePeak::ForThreads(int threads) const {
  for (const PeakPoint& point : points) {
    if (point.threads == threads) return &point;
  }
  return nullptr;
}

MachinePeak MeasurePeak(const PeakOptions& options) {
  Check(options.trials >= 1, ErrorKind::kInvalidArgument, "peak trials must be >= 1");
  Check(options.dram_buffer_bytes >= (int64_t{1} << 20), ErrorKind::kInvalidArgument,
        "--peak-bytes must be at least 1 MiB");
  const Isa isa = DetectIsa();
  MachinePeak peak;
  peak.cpu_model = CpuModel();
  peak.logical_cpus = HardwareThreads();
  peak.fp32_isa = isa.fp32;
  peak.bf16_isa = isa.bf16;
  peak.measured_at = UtcNow();
  std::vector<int> counts = options.thread_counts;
  if (counts.empty()) {
    for (int n = 1; n <= peak.logical_cpus; ++n) counts.push_back(n);
  }

  const ComputeLoop fp32 = Fp32Loop(isa);
  const ComputeLoop bf16 = Bf16Loop(isa);
  const int64_t fp32_iterations = Calibrate(fp32, options.seconds_per_trial);
  const int64_t bf16_iterations =
      bf16.run != nullptr ? Calibrate(bf16, options.seconds_per_trial) : 0;

  // Whole 128-float blocks (the read loops' stride), split evenly over the threads of a trial.
  const int64_t block = 128;
  const int64_t floats = options.dram_buffer_bytes / 4 / block * block;
  peak.dram_buffer_bytes = floats * 4;
  std::vector<float> buffer(static_cast<size_t>(floats), 1.0f);  // written: real pages
  float (*read)(const float*, int64_t) = ReadLoop(isa);

  for (int threads : counts) {
    Check(threads >= 1, ErrorKind::kInvalidArgument, "thread counts must be >= 1");
    PeakPoint point;
    point.threads = threads;
    std::tie(point.fp32_gflops, point.fp32_gflops_median) =
        MeasureCompute(fp32, fp32_iterations, threads, options.trials);
    if (bf16.run != nullptr) {
      std::tie(point.bf16_gflops, point.bf16_gflops_median) =
          MeasureCompute(bf16, bf16_iterations, threads, options.trials);
    }
    const int64_t blocks = floats / block;
    std::vector<double> rates;
    // One untimed pass first: the pages and the TLB are warm for the timed ones.
    for (int trial = 0; trial <= options.trials; ++trial) {
      const double seconds = RunTogether(threads, [&](int i) {
        const int64_t begin = blocks * i / threads * block;
        const int64_t end = blocks * (i + 1) / threads * block;
        return read(buffer.data() + begin, end - begin);
      });
      if (trial > 0) rates.push_back(static_cast<double>(floats) * 4.0 / seconds / 1e9);
    }
    point.dram_gbps = *std::max_element(rates.begin(), rates.end());
    point.dram_gbps_median = Median(rates);
    peak.points.push_back(point);
  }
  return peak;
}

MachinePeak MergePeaks(const MachinePeak& cached, const MachinePeak& fresh) {
  if (cached.cpu_model != fresh.cpu_model || cached.fp32_isa != fresh.fp32_isa ||
      cached.bf16_isa != fresh.bf16_isa) {
    return fresh;
  }
  const bool same_buffer = cached.dram_buffer_bytes == fresh.dram_buffer_bytes;
  MachinePeak merged = fresh;
  for (PeakPoint& point : merged.points) {
    const PeakPoint* old = cached.ForThreads(point.threads);
    if (old == nullptr) continue;
    auto keep_higher = [](double& best, double& median, double old_best, double old_median) {
      if (old_best > best) {
        best = old_best;
        median = old_median;
      }
    };
    keep_higher(point.fp32_gflops, point.fp32_gflops_median, old->fp32_gflops,
                old->fp32_gflops_median);
    keep_higher(point.bf16_gflops, point.bf16_gflops_median, old->bf16_gflops,
                old->bf16_gflops_median);
    if (same_buffer) {
      keep_higher(point.dram_gbps, point.dram_gbps_median, old->dram_gbps, old->dram_gbps_median);
    }
  }
  for (const PeakPoint& point : cached.points) {
    if (merged.ForThreads(point.threads) == nullptr && same_buffer) merged.points.push_back(point);
  }
  std::sort(merged.points.begin(), merged.points.end(),
            [](const PeakPoint& a, const PeakPoint& b) { return a.threads < b.threads; });
  return merged;
}

double ProbeFp32Now(int threads, double seconds) {
  const ComputeLoop fp32 = Fp32Loop(DetectIsa());
  const int64_t iterations = Calibrate(fp32, seconds);
  std::vector<double> rates;
  for (int trial = 0; trial < 3; ++trial) {
    const double elapsed = RunTogether(threads, [&](int) { return fp32.run(iterations); });
    rates.push_back(fp32.flops_per_iteration * static_cast<double>(iterations) * threads / elapsed /
                    1e9);
  }
  return Median(rates);
}

nlohmann::json PeakToJson(const MachinePeak& peak) {
  nlohmann::json points = nlohmann::json::array();
  for (const PeakPoint& p : peak.points) {
    points.push_back({{"threads", p.threads},
                      {"fp32_gflops", p.fp32_gflops},
                      {"fp32_gflops_median", p.fp32_gflops_median},
                      {"bf16_gflops", p.bf16_gflops},
                      {"bf16_gflops_median", p.bf16_gflops_median},
                      {"dram_gbps", p.dram_gbps},
                      {"dram_gbps_median", p.dram_gbps_median}});
  }
  return {{"cpu_model", peak.cpu_model},
          {"logical_cpus", peak.logical_cpus},
          {"fp32_isa", peak.fp32_isa},
          {"bf16_isa", peak.bf16_isa},
          {"dram_buffer_bytes", peak.dram_buffer_bytes},
          {"measured_at", peak.measured_at},
          {"points", points}};
}

MachinePeak PeakFromJson(const nlohmann::json& json) {
  try {
    MachinePeak peak;
    peak.cpu_model = json.at("cpu_model").get<std::string>();
    peak.logical_cpus = json.at("logical_cpus").get<int>();
    peak.fp32_isa = json.at("fp32_isa").get<std::string>();
    peak.bf16_isa = json.at("bf16_isa").get<std::string>();
    peak.dram_buffer_bytes = json.at("dram_buffer_bytes").get<int64_t>();
    peak.measured_at = json.at("measured_at").get<std::string>();
    for (const auto& p : json.at("points")) {
      PeakPoint point;
      point.threads = p.at("threads").get<int>();
      point.fp32_gflops = p.at("fp32_gflops").get<double>();
      point.fp32_gflops_median = p.at("fp32_gflops_median").get<double>();
      point.bf16_gflops = p.at("bf16_gflops").get<double>();
      point.bf16_gflops_median = p.at("bf16_gflops_median").get<double>();
      point.dram_gbps = p.at("dram_gbps").get<double>();
      point.dram_gbps_median = p.at("dram_gbps_median").get<double>();
      peak.points.push_back(point);
    }
    return peak;
  } catch (const nlohmann::json::exception& error) {
    throw Error(ErrorKind::kCorruptFile, std::string("peak file: ") + error.what());
  }
}

std::string PeakCachePath() {
  if (const char* explicit_path = std::getenv("ATTN_PEAK_CACHE")) {
    if (*explicit_path != '\0') return explicit_path;
  }
  const Isa isa = DetectIsa();
  const std::string identity = CpuModel() + "|" + std::to_string(HardwareThreads()) + "|" +
                               isa.fp32 + "|" + isa.bf16 + "|v1";
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : identity) hash = (hash ^ c) * 1099511628211ull;
  char name[40];
  std::snprintf(name, sizeof(name), "peak-%016llx.json", static_cast<unsigned long long>(hash));
  std::filesystem::path dir;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg != '\0') {
    dir = xdg;
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    dir = std::filesystem::path(home) / ".cache";
  } else {
    dir = std::filesystem::temp_directory_path();
  }
  return (dir / "attn" / name).string();
}

std::optional<MachinePeak> LoadPeak(const std::string& path) {
  // A missing, unreadable, non-regular (e.g. a FIFO: io::ReadWholeFile refuses it without
  // blocking), oversized or malformed cache is no cache: the roofs are measured again.
  try {
    return PeakFromJson(nlohmann::json::parse(io::ReadWholeFile(path, "peak cache", 1 << 20)));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

void StorePeak(const std::string& path, const MachinePeak& peak) {
  std::error_code ignored;
  const std::filesystem::path target(path);
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ignored);
  // Atomic replacement (io/files.h): a concurrent reader sees the old file or the new one.
  io::AtomicWriteFile(path, PeakToJson(peak).dump(2) + "\n");
}

MachinePeak PeakFor(const std::vector<int>& thread_counts, const PeakOptions& options) {
  const std::string path = PeakCachePath();
  MachinePeak peak = LoadPeak(path).value_or(MachinePeak{});
  std::vector<int> missing;
  for (int threads : std::set<int>(thread_counts.begin(), thread_counts.end())) {
    if (peak.ForThreads(threads) == nullptr) missing.push_back(threads);
  }
  if (missing.empty()) return peak;
  PeakOptions measure = options;
  measure.thread_counts = missing;
  if (!peak.points.empty()) measure.dram_buffer_bytes = peak.dram_buffer_bytes;
  const MachinePeak fresh = MergePeaks(peak, MeasurePeak(measure));
  try {
    StorePeak(path, fresh);
  } catch (const Error& error) {
    std::fprintf(stderr, "attn bench: warning: peak not cached: %s\n", error.what());
  }
  return fresh;
}

}  // namespace attn::bench
