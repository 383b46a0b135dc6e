// SPDX-License-Identifier: Apache-2.0
#include "bench/kernel_case.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "attn/error.h"

namespace attn::bench {
namespace {

// DeepSeek-V2/V3 absorbed attention: rows of kv_lora_rank 512 + rope 64, values the first 512.
constexpr int64_t kMlaKeyDim = 576;
constexpr int64_t kMlaValueDim = 512;

// splitmix64: fast, deterministic, good enough to fill hundreds of megabytes of test data in a
// fraction of a second (RandomUniform would first build an fp32 Tensor of the whole cache).
class Random {
 public:
  explicit Random(uint64_t seed) : state_(seed) {}
  // Uniform in [-1, 1).
  float Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }

 private:
  uint64_t state_;
};

// `count` random values in `dtype`, as raw bytes.
std::vector<std::byte> RandomStorage(int64_t count, DType dtype, Random& random) {
  std::vector<std::byte> bytes(static_cast<size_t>(count) * DTypeSize(dtype));
  for (int64_t i = 0; i < count; ++i) {
    const float value = random.Next();
    std::byte* at = bytes.data() + static_cast<size_t>(i) * DTypeSize(dtype);
    if (dtype == DType::kF32) {
      std::memcpy(at, &value, sizeof(value));
    } else {
      const uint16_t bits = dtype == DType::kBF16 ? F32ToBF16(value) : F32ToF16(value);
      std::memcpy(at, &bits, sizeof(bits));
    }
  }
  return bytes;
}

void Require(bool ok, const std::string& message) {
  Check(ok, ErrorKind::kInvalidArgument, message);
}

}  // namespace

Variant VariantFromString(const std::string& name) {
  if (name == "gqa") return Variant::kGqa;
  if (name == "mla") return Variant::kMla;
  throw Error(ErrorKind::kInvalidArgument, "--variant must be gqa or mla, got '" + name + "'");
}

const char* VariantName(Variant variant) { return variant == Variant::kGqa ? "gqa" : "mla"; }

KernelShape NormalizeKernelShape(KernelShape s) {
  if (s.variant == Variant::kMla) {
    Require(s.kv_heads == 0 || s.kv_heads == 1,
            "--kv-heads must be 1 for --variant mla (one shared latent row per token)");
    s.kv_heads = 1;
    if (s.head_dim == 0) s.head_dim = kMlaKeyDim;
    if (s.value_dim == 0) s.value_dim = kMlaValueDim;
    Require(s.value_dim <= s.head_dim,
            "--v-head-dim (" + std::to_string(s.value_dim) + ") must not exceed --head-dim (" +
                std::to_string(s.head_dim) + ") for mla: values are the leading part of each row");
  } else {
    if (s.kv_heads == 0) s.kv_heads = s.heads;
    if (s.head_dim == 0) s.head_dim = 128;
    if (s.value_dim == 0) s.value_dim = s.head_dim;
  }
  Require(s.heads > 0, "--heads must be positive");
  Require(s.kv_heads > 0 && s.heads % s.kv_heads == 0,
          "--heads (" + std::to_string(s.heads) + ") must be a positive multiple of --kv-heads (" +
              std::to_string(s.kv_heads) + ")");
  Require(s.head_dim > 0 && s.value_dim > 0, "--head-dim and --v-head-dim must be positive");
  Require(s.q_len > 0 && s.kv_len > 0, "--q-len and --kv-len must be positive");
  Require(s.q_len <= s.kv_len, "--q-len (" + std::to_string(s.q_len) +
                                   ") must not exceed --kv-len (" + std::to_string(s.kv_len) +
                                   "): the queries are the last S of the T tokens");
  Require(s.dtype == DType::kF32 || s.dtype == DType::kF16 || s.dtype == DType::kBF16,
          "--dtype must be f32, f16 or bf16");
  return s;
}

int64_t VisiblePairs(const KernelShape& s) {
  const int64_t all = s.q_len * s.kv_len;
  // Query s sees T−S+s+1 keys; summed over s that is S·T minus the triangle S(S−1)/2 of
  // keys that lie in the future of earlier queries.
  return s.causal ? all - s.q_len * (s.q_len - 1) / 2 : all;
}

double KernelFlops(const KernelShape& s) {
  return 2.0 * static_cast<double>(s.heads) * static_cast<double>(s.head_dim + s.value_dim) *
         static_cast<double>(VisiblePairs(s));
}

double KernelKvBytes(const KernelShape& s) {
  const double per_token = s.variant == Variant::kMla
                               ? static_cast<double>(s.head_dim)
                               : static_cast<double>(s.kv_heads * (s.head_dim + s.value_dim));
  return per_token * static_cast<double>(s.kv_len) * static_cast<double>(DTypeSize(s.dtype));
}

RooflinePoint PlaceOnRoofline(double flops, double bytes, double seconds, double peak_gflops,
                              double peak_gbps) {
  RooflinePoint point;
  point.intensity = bytes > 0.0 ? flops / bytes : 0.0;
  const double memory_roof = point.intensity * peak_gbps;
  point.memory_bound = memory_roof < peak_gflops;
  point.roof_gflops = std::min(peak_gflops, memory_roof);
  const double achieved = seconds > 0.0 ? flops / seconds / 1e9 : 0.0;
  point.fraction = point.roof_gflops > 0.0 ? achieved / point.roof_gflops : 0.0;
  return point;
}

KernelCase::KernelCase(const KernelShape& shape, uint64_t seed)
    : shape_(NormalizeKernelShape(shape)) {
  const KernelShape& s = shape_;
  Random random(seed);
  const int64_t padding = !s.causal && s.q_len > 1 ? s.q_len - 1 : 0;
  const int64_t slots = s.kv_len + padding;

  queries_.resize(static_cast<size_t>(s.q_len * s.heads * s.head_dim));
  for (float& q : queries_) q = random.Next();
  out_.assign(static_cast<size_t>(s.q_len * s.heads * s.value_dim), 0.0f);

  KVView& kv = problem_.kv;
  kv.dtype = s.dtype;
  kv.kv_heads = s.kv_heads;
  kv.key_dim = s.head_dim;
  kv.value_dim = s.value_dim;
  kv.length = slots;
  if (s.variant == Variant::kMla) {
    // LatentKVCache::View(): one row per token, the value row is the head of the key row.
    keys_ = RandomStorage(slots * s.head_dim, s.dtype, random);
    kv.keys = kv.values = keys_.data();
    kv.key_head_stride = kv.value_head_stride = slots * s.head_dim;
    kv.key_token_stride = kv.value_token_stride = s.head_dim;
  } else {
    // KVCache::View(): head-major [G][T][d] so one kv head's rows stream contiguously.
    keys_ = RandomStorage(s.kv_heads * slots * s.head_dim, s.dtype, random);
    values_ = RandomStorage(s.kv_heads * slots * s.value_dim, s.dtype, random);
    kv.keys = keys_.data();
    kv.values = values_.data();
    kv.key_head_stride = slots * s.head_dim;
    kv.key_token_stride = s.head_dim;
    kv.value_head_stride = slots * s.value_dim;
    kv.value_token_stride = s.value_dim;
  }
  if (padding > 0) {
    keep_.assign(static_cast<size_t>(slots), 0);
    std::fill(keep_.begin(), keep_.begin() + s.kv_len, uint8_t{1});
    kv.keep = keep_.data();
  }

  problem_.queries = QueryRows{queries_.data(), s.q_len, s.heads, s.head_dim};
  // Non-causal: query s at slot T−1+s sees 0 … T−1+s, of which only the T real keys are kept.
  problem_.visibility.first_query_slot = s.causal ? s.kv_len - s.q_len : s.kv_len - 1;
  problem_.visibility.window = 0;
  problem_.scale = 1.0f / std::sqrt(static_cast<float>(s.head_dim));
  problem_.out = out_.data();
  ValidateAttentionProblem(problem_);
}

double Median(std::vector<double> samples) {
  if (samples.empty()) return 0.0;
  const size_t middle = samples.size() / 2;
  std::nth_element(samples.begin(), samples.begin() + static_cast<long>(middle), samples.end());
  const double upper = samples[middle];
  if (samples.size() % 2 == 1) return upper;
  const double lower =
      *std::max_element(samples.begin(), samples.begin() + static_cast<long>(middle));
  return 0.5 * (lower + upper);
}

}  // namespace attn::bench
