// SPDX-License-Identifier: Apache-2.0
// attn.attention and attn.mla_attention: the kernel interface (attn/kernels.h) on [B, S, H, D]
// arrays. Queries are passed to the kernel in place when each batch row is a row-major float32
// [Sq, H, D] block; keys and values in place when their last axis is contiguous and their
// dtype is float32, float16 or bfloat16 (any batch, token and head strides: KVView is strided).
// Anything else is copied once into that layout. The GIL is released while kernels run.
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "arrays.h"
#include "attn/error.h"
#include "attn/kernels.h"
#include "bindings.h"

namespace attn::python {
namespace {

// True when every batch row of a rank-4 view is a row-major block.
bool RowsRowMajor(const ArrayView& view) {
  int64_t expected = 1;
  for (size_t axis = view.shape.size(); axis-- > 1;) {
    if (view.shape[axis] != 1 && view.strides[axis] != expected) return false;
    expected *= view.shape[axis];
  }
  return true;
}

ArrayView QueriesLayout(const ArrayView& q) {
  if (q.element == Element::kF32 && RowsRowMajor(q)) return q;
  return ToLayout(q, Element::kF32);
}

// Keys/values as a KVView can address them: last axis contiguous, no negative strides.
ArrayView KvLayout(const ArrayView& view, Element element) {
  bool usable = view.element == element && (view.shape.back() <= 1 || view.strides.back() == 1);
  for (int64_t stride : view.strides) usable = usable && stride >= 0;
  return usable ? view : ToLayout(view, element);
}

Element KvElement(const ArrayView& k, const ArrayView& v) {
  const bool storable =
      k.element == Element::kF32 || k.element == Element::kF16 || k.element == Element::kBF16;
  return storable && k.element == v.element ? k.element : Element::kF32;
}

// The softmax scale: given, or 1/sqrt(D). A given scale must be a finite positive number: NaN or
// Inf poisons every output, 0 silently turns attention into a plain mean, and a negative scale
// inverts which keys attend.
float ScaleOr(const py::object& scale, int64_t dim) {
  if (scale.is_none()) return static_cast<float>(1.0 / std::sqrt(static_cast<double>(dim)));
  // A failed cast (a str, a complex, an int beyond double) would surface as RuntimeError.
  double value = 0.0;
  try {
    value = scale.cast<double>();
  } catch (const py::cast_error&) {
    throw py::type_error("scale must be a real number, got " + py::repr(scale).cast<std::string>());
  }
  Check(std::isfinite(value) && value > 0.0 && std::isfinite(static_cast<float>(value)),
        ErrorKind::kInvalidArgument,
        "scale must be a finite positive number, got " + py::repr(scale).cast<std::string>());
  return static_cast<float>(value);
}

// With check_finite, the output is checked like the inputs: the first NaN/Inf is an error naming
// its [b, s, h, d] position (finite inputs can still overflow, e.g. huge values in fp32 sums).
void CheckFiniteOutput(const float* out, const Shape& shape) {
  const int64_t count = NumElements(shape);
  for (int64_t i = 0; i < count; ++i) {
    if (std::isfinite(out[i])) continue;
    std::string index;
    int64_t rest = i;
    for (size_t axis = shape.size(); axis-- > 0;) {
      index = std::to_string(rest % shape[axis]) + (index.empty() ? "" : ", ") + index;
      rest /= shape[axis];
    }
    throw Error(ErrorKind::kInvalidArgument, "attention output: non-finite value (" +
                                                 std::to_string(out[i]) + ") at [" + index +
                                                 "] of shape " + ShapeToString(shape));
  }
}

// Checks and runs out[b] = attention(q[b], k[b], v[b]) for every b. q [B, Sq, H, D],
// k [B, T, G, D], v [B, T, G, Dv] already validated for rank and dtype class.
// `sources`: the caller's k/v arrays, scanned to name a NaN/Inf when the kernel reports one.
// `alibi_slopes`, `sinks`: [H] float32 or null; `chunk`: Visibility::chunk; `query_offset`: the
// slot of query 0 (Visibility::first_query_slot), -1 for T - Sq (bottom-right aligned);
// `softcap`: AttentionProblem::softcap.
struct KernelOptions {
  const float* alibi_slopes = nullptr;
  int64_t chunk = 0;
  int64_t query_offset = -1;
  float softcap = 0.0f;
  const float* sinks = nullptr;
};

py::object RunAttention(const ArrayView& q_in, const ArrayView& k_in, const ArrayView& v_in,
                        std::initializer_list<const ArrayView*> sources, bool causal, float scale,
                        int64_t window, py::handle attention_mask, py::handle out_arg,
                        bool check_finite, const KernelOptions& options = {}) {
  const int64_t chunk = options.chunk;
  const int64_t batch = q_in.shape[0];
  const int64_t queries = q_in.shape[1];
  const int64_t heads = q_in.shape[2];
  const int64_t dim = q_in.shape[3];
  const int64_t length = k_in.shape[1];
  const int64_t kv_heads = k_in.shape[2];
  const int64_t value_dim = v_in.shape[3];
  Check(k_in.shape[0] == batch && v_in.shape[0] == batch, ErrorKind::kInvalidArgument,
        k_in.what + ", " + v_in.what + ": batch size must equal q's (" + std::to_string(batch) +
            "), got " + ShapeToString(k_in.shape) + " and " + ShapeToString(v_in.shape));
  Check(k_in.shape[3] == dim, ErrorKind::kInvalidArgument,
        k_in.what + ": head dim " + std::to_string(k_in.shape[3]) + " differs from q's " +
            std::to_string(dim));
  Check(v_in.shape[1] == length && v_in.shape[2] == kv_heads, ErrorKind::kInvalidArgument,
        v_in.what + ": expected shape [" + std::to_string(batch) + ", " + std::to_string(length) +
            ", " + std::to_string(kv_heads) + ", Dv] to match " + k_in.what + ", got " +
            ShapeToString(v_in.shape));
  Check(heads > 0 && dim > 0 && value_dim > 0, ErrorKind::kInvalidArgument,
        "heads and head dims must be positive, got q " + ShapeToString(q_in.shape) + ", v " +
            ShapeToString(v_in.shape));
  Check(kv_heads > 0 && heads % kv_heads == 0, ErrorKind::kInvalidArgument,
        "q heads (" + std::to_string(heads) + ") must be a multiple of kv heads (" +
            std::to_string(kv_heads) + ")");
  Check(window >= 0, ErrorKind::kInvalidArgument,
        "window must be >= 0, got " + std::to_string(window));
  Check(causal || window == 0, ErrorKind::kInvalidArgument,
        "window requires causal=True (a window is counted back from each query's slot)");
  Check(chunk >= 0, ErrorKind::kInvalidArgument,
        "chunk must be >= 0, got " + std::to_string(chunk));
  Check(causal || chunk == 0, ErrorKind::kInvalidArgument,
        "chunk requires causal=True (chunks are counted in query slots)");
  Check(options.query_offset >= -1, ErrorKind::kInvalidArgument,
        "query_offset must be >= 0 (the slot of query 0), or -1 for T - Sq (bottom-right "
        "aligned), got " +
            std::to_string(options.query_offset));
  Check(!causal || options.query_offset >= 0 || queries <= length, ErrorKind::kInvalidArgument,
        "causal: the " + std::to_string(queries) + " queries are the last ones of the " +
            std::to_string(length) + " keys (bottom-right aligned), so Sq <= T is needed");
  const int64_t first_slot = options.query_offset >= 0 ? options.query_offset : length - queries;
  Check(!causal || first_slot + queries <= length, ErrorKind::kInvalidArgument,
        "causal: query_offset " + std::to_string(first_slot) + " puts the " +
            std::to_string(queries) + " queries at slots [" + std::to_string(first_slot) + ", " +
            std::to_string(first_slot + queries) + "), past the " + std::to_string(length) +
            " keys; query_offset + Sq <= T is needed");
  Check(std::isfinite(options.softcap) && options.softcap >= 0.0f, ErrorKind::kInvalidArgument,
        "softcap must be a finite number >= 0 (0: none), got " + std::to_string(options.softcap));

  ArrayView keep_holder;
  std::span<const uint8_t> keep;
  if (!attention_mask.is_none()) {
    ArrayView mask = ViewArray(attention_mask, "attention_mask");
    Check(mask.shape == Shape{batch, length}, ErrorKind::kInvalidArgument,
          "attention_mask: expected shape " + ShapeToString({batch, length}) + " ([B, T]), got " +
              ShapeToString(mask.shape));
    keep = AsKeepFlags(mask, keep_holder);
  }

  const ArrayView q = QueriesLayout(q_in);
  const Element kv_element = KvElement(k_in, v_in);
  const ArrayView k = KvLayout(k_in, kv_element);
  const ArrayView v = KvLayout(v_in, kv_element);

  const Shape out_shape{batch, queries, heads, value_dim};
  std::optional<ArrayView> out_view;
  Tensor owned;
  float* out = nullptr;
  if (!out_arg.is_none()) {
    out_view = ViewArray(out_arg, "out");
    Check(out_view->element == Element::kF32 && out_view->IsRowMajor() &&
              out_view->shape == out_shape && out_view->writable,
          ErrorKind::kInvalidArgument,
          "out: expected a writable C-contiguous float32 array of shape " +
              ShapeToString(out_shape) + ", got " + ElementName(out_view->element) + " " +
              ShapeToString(out_view->shape) + (out_view->writable ? "" : " (read-only)") +
              (out_view->IsRowMajor() ? "" : " (not contiguous)"));
    out = reinterpret_cast<float*>(out_view->data);
  } else {
    owned = Tensor(out_shape);
    out = owned.data();
  }

  const DType dtype = StorageDType(kv_element);
  const int64_t element_size = static_cast<int64_t>(ElementSize(kv_element));
  const float* q_data = reinterpret_cast<const float*>(q.data);
  std::vector<AttentionProblem> problems(static_cast<size_t>(batch));
  std::atomic<bool> non_finite_scores{false};
  for (int64_t b = 0; b < batch; ++b) {
    AttentionProblem& problem = problems[static_cast<size_t>(b)];
    problem.kv.dtype = dtype;
    problem.kv.keys = k.data + b * k.strides[0] * element_size;
    problem.kv.values = v.data + b * v.strides[0] * element_size;
    problem.kv.kv_heads = kv_heads;
    problem.kv.key_dim = dim;
    problem.kv.value_dim = value_dim;
    problem.kv.key_token_stride = k.strides[1];
    problem.kv.key_head_stride = k.strides[2];
    problem.kv.value_token_stride = v.strides[1];
    problem.kv.value_head_stride = v.strides[2];
    problem.kv.length = length;
    problem.kv.keep = keep.empty() ? nullptr : keep.data() + b * length;
    problem.scale = scale;
    problem.queries = QueryRows{q_data + b * q.strides[0], queries, heads, dim};
    // Causal: query s at slot first_slot + s (by default T - Sq + s, bottom-right aligned).
    // Not causal: every key (the slot only enters ALiBi, as a per-row constant).
    problem.visibility = causal ? Visibility{first_slot, window, true, chunk}
                                : Visibility{std::max<int64_t>(first_slot, 0), 0, false};
    problem.alibi_slopes = options.alibi_slopes;
    problem.sinks = options.sinks;
    problem.softcap = options.softcap;
    problem.out = out + b * queries * heads * value_dim;
    problem.non_finite_scores = check_finite ? &non_finite_scores : nullptr;
    ValidateAttentionProblem(problem);
  }
  {
    // One call for the whole batch: the kernel spreads all sequences over its threads.
    ComputeScope release;
    DefaultBackend().attend_batch(problems.data(), batch);
  }
  if (check_finite) {
    // K/V are vouched for by the kernel (a NaN/Inf key gives a NaN/Inf score, a NaN/Inf value a
    // NaN/Inf output) instead of a second pass over a possibly huge cache; only when it saw
    // something are they scanned, to name the first bad element.
    const bool output_finite = AllFiniteFloats(out, NumElements(out_shape));
    if (non_finite_scores.load() || !output_finite) {
      for (const ArrayView* source : sources) CheckFiniteView(*source);
    }
    if (!output_finite) CheckFiniteOutput(out, out_shape);
  }
  if (out_view) return py::reinterpret_borrow<py::object>(out_arg);
  return WrapTensor(std::move(owned), q_in.from_torch);
}

// One finite float per query head (ALiBi slopes, attention sinks), as a float32 view (in place
// when it is one already).
ArrayView PerHeadFloats(py::handle arg, const char* what, const char* noun, int64_t heads) {
  ArrayView view = ViewArray(arg, what);
  CheckRank(view, 1, "[H]");
  Check(view.shape[0] == heads, ErrorKind::kInvalidArgument,
        std::string(what) + ": expected one " + noun + " per query head (" + std::to_string(heads) +
            "), got shape " + ShapeToString(view.shape));
  CheckFiniteView(view);
  return RowMajor(view, Element::kF32);
}

// softcap as a float: a real number (TypeError otherwise), range-checked by RunAttention.
float SoftcapValue(const py::object& softcap) {
  try {
    return static_cast<float>(softcap.cast<double>());
  } catch (const py::cast_error&) {
    throw py::type_error("softcap must be a real number, got " +
                         py::repr(softcap).cast<std::string>());
  }
}

py::object Attention(py::handle q_arg, py::handle k_arg, py::handle v_arg, bool causal,
                     const py::object& scale, py::handle attention_mask, int64_t window,
                     py::handle out, bool check_finite, py::handle alibi_slopes, int64_t chunk,
                     int64_t query_offset, const py::object& softcap, py::handle sinks) {
  const ArrayView q = ViewArray(q_arg, "q");
  const ArrayView k = ViewArray(k_arg, "k");
  const ArrayView v = ViewArray(v_arg, "v");
  CheckRank(q, 4, "[B, Sq, H, D]");
  CheckRank(k, 4, "[B, T, G, D]");
  CheckRank(v, 4, "[B, T, G, Dv]");
  // With check_finite, q is scanned here; k and v, which can be a whole cache, are vouched for
  // by the kernel as it reads them (RunAttention).
  if (check_finite) {
    CheckFiniteView(q);
  } else {
    CheckFloating(q);
  }
  CheckFloating(k);
  CheckFloating(v);
  // ALiBi slopes, sinks: one finite float per query head, read as float32.
  KernelOptions options;
  ArrayView slopes;
  if (!alibi_slopes.is_none()) {
    slopes = PerHeadFloats(alibi_slopes, "alibi_slopes", "slope", q.shape[2]);
    options.alibi_slopes = reinterpret_cast<const float*>(slopes.data);
  }
  ArrayView sink_view;
  if (!sinks.is_none()) {
    sink_view = PerHeadFloats(sinks, "sinks", "sink logit", q.shape[2]);
    options.sinks = reinterpret_cast<const float*>(sink_view.data);
  }
  options.chunk = chunk;
  options.query_offset = query_offset;
  options.softcap = SoftcapValue(softcap);
  return RunAttention(q, k, v, {&k, &v}, causal, ScaleOr(scale, q.shape[3]), window, attention_mask,
                      out, check_finite, options);
}

py::object MlaAttention(py::handle q_arg, py::handle kv_arg, int64_t value_dim, bool causal,
                        const py::object& scale, py::handle attention_mask, py::handle out,
                        bool check_finite, int64_t query_offset) {
  const ArrayView q = ViewArray(q_arg, "q");
  const ArrayView kv_in = ViewArray(kv_arg, "kv");
  CheckRank(q, 4, "[B, Sq, H, D]");
  CheckRank(kv_in, 3, "[B, T, D] (latent rows: kv_lora_rank values, then the rotated rope part)");
  if (check_finite) {
    CheckFiniteView(q);
  } else {
    CheckFloating(q);
  }
  CheckFloating(kv_in);
  Check(value_dim > 0 && value_dim <= kv_in.shape[2], ErrorKind::kInvalidArgument,
        "value_dim must lie in [1, " + std::to_string(kv_in.shape[2]) +
            "] (the kv row width), got " + std::to_string(value_dim));
  // One copy at most, shared by keys and values (a value row is the start of its key row).
  const ArrayView kv = KvLayout(kv_in, KvElement(kv_in, kv_in));
  ArrayView keys = kv;
  keys.what = "kv";
  keys.shape.insert(keys.shape.begin() + 2, 1);  // one shared kv head
  keys.strides.insert(keys.strides.begin() + 2, 0);
  ArrayView values = keys;
  values.shape[3] = value_dim;
  KernelOptions options;
  options.query_offset = query_offset;
  return RunAttention(q, keys, values, {&kv_in}, causal, ScaleOr(scale, q.shape[3]), 0,
                      attention_mask, out, check_finite, options);
}

// ---------------------------------------------------------------------------------------------
// attn._attn._sdpa_mask_visibility: the analysis behind attn.scaled_dot_product_attention's
// attn_mask (python/attn/ops.py). Finds key padding keep[b, t], a causal offset o (query s at
// slot o + s sees keys t <= o + s) and a window W (also t > o + s - W) whose visibility equals
// the mask exactly, in two passes over it; torch's boolean reductions are ~10x slower.

// The mask as allowed-flags (1 attend, 0 masked) with strides: bool masks as they lie, float
// masks (0 attend, -inf masked, nothing else) converted once. `problem` is set for a float
// value other than 0 and -inf.
struct AllowedFlags {
  ArrayView view;  // kBool or kU8 [Bm, Hm, Sm, Tm]
  ArrayView float_copy;
  std::vector<uint8_t> converted;
  std::string problem;
};

AllowedFlags ToAllowedFlags(const ArrayView& mask) {
  AllowedFlags flags;
  if (mask.element == Element::kBool || mask.element == Element::kU8) {
    flags.view = mask;
    return flags;
  }
  Check(
      IsFloating(mask.element), ErrorKind::kInvalidArgument,
      "attn_mask: expected bool or float elements, got " + std::string(ElementName(mask.element)));
  flags.float_copy = RowMajor(mask, Element::kF32);
  const auto* values = reinterpret_cast<const float*>(flags.float_copy.data);
  const int64_t count = mask.size();
  flags.converted.resize(static_cast<size_t>(count));
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  // A branch-free first pass (it vectorises); a bad value is located afterwards.
  uint8_t* converted = flags.converted.data();
  uint8_t valid = 1;
  for (int64_t i = 0; i < count; ++i) {
    const float value = values[i];
    const uint8_t zero = value == 0.0f;
    converted[i] = zero;
    valid &= zero | static_cast<uint8_t>(value == minus_infinity);
  }
  const bool all_valid = valid != 0;
  for (int64_t i = 0; !all_valid && i < count; ++i) {
    const float value = values[i];
    if (value == 0.0f || value == minus_infinity) continue;
    std::string index;
    int64_t rest = i;
    for (size_t axis = mask.shape.size(); axis-- > 0;) {
      index = std::to_string(rest % mask.shape[axis]) + (index.empty() ? "" : ", ") + index;
      rest /= mask.shape[axis];
    }
    flags.problem = "float masks may hold only 0 (attend) and -inf (masked); found " +
                    py::repr(py::float_(value)).cast<std::string>() + " at [" + index +
                    "] (an additive bias such as ALiBi or relative positions, or a large "
                    "negative number in place of -inf, is not supported: pass a bool mask)";
    break;
  }
  flags.view = flags.float_copy;
  flags.view.element = Element::kU8;
  flags.view.data = reinterpret_cast<std::byte*>(flags.converted.data());
  return flags;
}

py::tuple SdpaMaskVisibility(py::handle mask_arg, int64_t length) {
  const ArrayView mask = ViewArray(mask_arg, "attn_mask");
  CheckRank(mask, 4, "[B, H, Sq, T] (broadcast extents 1)");
  Check(length >= 0 && (mask.shape[3] == length || mask.shape[3] == 1), ErrorKind::kInvalidArgument,
        "attn_mask: last extent must be T = " + std::to_string(length) + " or 1, got " +
            ShapeToString(mask.shape));
  const auto not_expressible = [](const std::string& why) {
    return py::make_tuple(py::none(), false, 0, 0, py::none(), why);
  };
  AllowedFlags flags = ToAllowedFlags(mask);
  if (!flags.problem.empty()) return not_expressible(flags.problem);
  const ArrayView& a = flags.view;
  const int64_t batches = a.shape[0], heads = a.shape[1], rows = a.shape[2];
  const int64_t key_stride = a.shape[3] == 1 ? 0 : a.strides[3];
  const auto row = [&](int64_t b, int64_t h, int64_t s) {
    return reinterpret_cast<const uint8_t*>(a.data) + b * a.strides[0] + h * a.strides[1] +
           s * a.strides[2];
  };
  const auto at = [&](const uint8_t* r, int64_t t) { return r[t * key_stride] != 0; };
  // Rows equal for every head (a bool is 0 or 1, so bytes compare).
  for (int64_t b = 0; b < batches; ++b) {
    for (int64_t h = 1; h < heads; ++h) {
      for (int64_t s = 0; s < rows; ++s) {
        const uint8_t* r0 = row(b, 0, s);
        const uint8_t* rh = row(b, h, s);
        bool same = key_stride == 1 ? std::memcmp(r0, rh, static_cast<size_t>(length)) == 0 : true;
        for (int64_t t = 0; key_stride != 1 && same && t < length; ++t) {
          same = at(r0, t) == at(rh, t);
        }
        if (!same) {
          return not_expressible("it differs between heads (batch " + std::to_string(b) +
                                 ", query " + std::to_string(s) + ": head " + std::to_string(h) +
                                 " differs from head 0; attn's masks are the same for every "
                                 "head)");
        }
      }
    }
  }
  // Pass 1: keep[b, t] = some query sees key t; each row's first and last visible key.
  py::array_t<uint8_t> keep_array({batches, length});
  uint8_t* keep = keep_array.mutable_data();
  std::fill(keep, keep + batches * length, uint8_t{0});
  std::vector<int64_t> lo(static_cast<size_t>(batches * rows), length);
  std::vector<int64_t> hi(static_cast<size_t>(batches * rows), -1);
  for (int64_t b = 0; b < batches; ++b) {
    uint8_t* keep_b = keep + b * length;
    for (int64_t s = 0; s < rows; ++s) {
      const uint8_t* r = row(b, 0, s);
      int64_t first = length, last = -1;
      if (key_stride == 1) {
        for (int64_t t = 0; t < length; ++t) keep_b[t] |= r[t];
        for (int64_t t = 0; t < length; ++t) {
          if (r[t] != 0) {
            first = t;
            break;
          }
        }
        for (int64_t t = length; t-- > first;) {
          if (r[t] != 0) {
            last = t;
            break;
          }
        }
      } else if (length > 0 && r[0] != 0) {  // one value for every key
        std::fill(keep_b, keep_b + length, uint8_t{1});
        first = 0;
        last = length - 1;
      }
      lo[static_cast<size_t>(b * rows + s)] = first;
      hi[static_cast<size_t>(b * rows + s)] = last;
    }
  }
  bool all_kept = true;
  for (int64_t i = 0; i < batches * length; ++i) all_kept = all_kept && keep[i] != 0;
  py::object keep_out = all_kept ? py::object(py::none()) : py::object(keep_array);
  if (rows == 1) {  // exact as it is
    return py::make_tuple(keep_out, false, 0, 0, py::none(), py::none());
  }
  // The candidate, from the rows that see some key. Causal when a row stops before the last
  // key its batch keeps; a window when a row starts after the first kept key. Rows that see
  // nothing are left out: their output is zero whatever the pattern (zero_rows).
  bool causal = false, windowed = false, any_visible = false;
  int64_t offset = std::numeric_limits<int64_t>::min();
  for (int64_t b = 0; b < batches; ++b) {
    int64_t first_kept = length, last_kept = -1;
    for (int64_t t = 0; t < length; ++t) {
      if (keep[b * length + t] != 0) {
        first_kept = std::min(first_kept, t);
        last_kept = t;
      }
    }
    for (int64_t s = 0; s < rows; ++s) {
      const int64_t first = lo[static_cast<size_t>(b * rows + s)];
      const int64_t last = hi[static_cast<size_t>(b * rows + s)];
      if (last < 0) continue;  // a row that sees nothing gets zeros whatever the pattern
      any_visible = true;
      causal = causal || last < last_kept;
      windowed = windowed || first > first_kept;
      offset = std::max(offset, last - s);
    }
  }
  if (!any_visible) {  // all padding
    return py::make_tuple(keep_out, false, 0, 0, py::none(), py::none());
  }
  int64_t window = 0;
  causal = causal || windowed;
  if (!causal) offset = 0;
  if (windowed) {
    for (int64_t b = 0; b < batches; ++b) {
      for (int64_t s = 0; s < rows; ++s) {
        if (hi[static_cast<size_t>(b * rows + s)] < 0) continue;
        window = std::max(window, offset + s - lo[static_cast<size_t>(b * rows + s)] + 1);
      }
    }
  }
  // Pass 2: the visibility the candidate implies must equal the mask on every row that sees
  // a key; rows that see none, where the candidate shows them some, are zero_rows.
  py::array_t<uint8_t> zero_array({batches, rows});
  uint8_t* zero_rows = zero_array.mutable_data();
  std::fill(zero_rows, zero_rows + batches * rows, uint8_t{0});
  bool any_zero_row = false;
  for (int64_t b = 0; b < batches; ++b) {
    const uint8_t* keep_b = keep + b * length;
    for (int64_t s = 0; s < rows; ++s) {
      const uint8_t* r = row(b, 0, s);
      const int64_t p = offset + s;
      // Keys [begin, end) lie in the causal band; the mask must equal keep there, 0 elsewhere.
      const int64_t end = causal ? std::clamp<int64_t>(p + 1, 0, length) : length;
      const int64_t begin = window > 0 ? std::clamp<int64_t>(p - window + 1, 0, end) : int64_t{0};
      if (hi[static_cast<size_t>(b * rows + s)] < 0) {
        const bool shown = std::any_of(keep_b + begin, keep_b + end, [](uint8_t f) { return f; });
        zero_rows[b * rows + s] = shown;
        any_zero_row = any_zero_row || shown;
        continue;
      }
      if (key_stride == 1) {  // the common case, at memory speed
        uint8_t outside = 0;
        for (int64_t t = 0; t < begin; ++t) outside |= r[t];
        for (int64_t t = end; t < length; ++t) outside |= r[t];
        if (outside == 0 &&
            std::memcmp(r + begin, keep_b + begin, static_cast<size_t>(end - begin)) == 0) {
          continue;
        }
      }
      int64_t bad = -1;
      for (int64_t t = 0; t < length && bad < 0; ++t) {
        const bool expected = t >= begin && t < end && keep_b[t] != 0;
        if (at(r, t) != expected) bad = t;
      }
      if (bad >= 0) {
        const std::string closest =
            causal ? "key padding + causal with query 0 at slot " + std::to_string(offset) +
                         (window > 0 ? " and a window of " + std::to_string(window) : "")
                   : std::string("key padding alone");
        return not_expressible("the closest such pattern (" + closest + ") differs at [batch " +
                               std::to_string(b) + ", query " + std::to_string(s) + ", key " +
                               std::to_string(bad) + "], where the mask says " +
                               (at(r, bad) ? "attend" : "masked"));
      }
    }
  }
  if (causal && window > 0 && offset + rows > length) {
    return not_expressible(
        "a sliding window (" + std::to_string(window) +
        ") with query slots past the last key (query " + std::to_string(rows - 1) + " at slot " +
        std::to_string(offset + rows - 1) + " >= T = " + std::to_string(length) + ")");
  }
  return py::make_tuple(keep_out, causal, offset, window,
                        any_zero_row ? py::object(zero_array) : py::object(py::none()), py::none());
}

}  // namespace

void BindKernels(py::module_& module) {
  module.def(
      "attention", &Attention, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("causal") = true,
      py::arg("scale") = py::none(), py::arg("attention_mask") = py::none(), py::arg("window") = 0,
      py::arg("out") = py::none(), py::arg("check_finite") = true,
      py::arg("alibi_slopes") = py::none(), py::arg("chunk") = 0, py::arg("query_offset") = -1,
      py::arg("softcap") = 0.0, py::arg("sinks") = py::none(), R"doc(
Scaled dot-product attention of the GQA family (MHA: G = H, GQA, MQA: G = 1), computed by the
same kernel the layers use:

    out[b, s, h] = sum_t softmax_t(cap(scale * q[b, s, h] . k[b, t, h // (H/G)])
                                   + m[h] * (t - p)) v[b, t, h // (H/G)]

over the keys t that query s sees, p = query_offset + s its slot (T - Sq + s by default), m the
ALiBi slopes (0 without) and cap the soft-capping (the identity without). With sinks, each
row's softmax denominator gains exp(sinks[h]).

q: [B, Sq, H, D] float (float32 is read in place; other float dtypes are converted).
k: [B, T, G, D], v: [B, T, G, Dv] float32, float16 or bfloat16 (read in place, any strides with
    a contiguous last axis), or float64 (converted).
causal: query s is key slot p = T - Sq + s and sees keys t <= p (bottom-right aligned, as in
    decode; equal to torch's is_causal when Sq == T). False: every query sees every key.
query_offset: the slot of query 0, so query s is slot p = query_offset + s (0: top-left aligned,
    torch's is_causal); -1 (default): T - Sq, bottom-right aligned. With causal=True
    query_offset + Sq <= T is needed.
scale: a finite positive number (ValueError otherwise); default 1 / sqrt(D).
attention_mask: [B, T] of 1 (keep) / 0 (padding key), any integer, bool or float dtype.
window: > 0 keeps only keys t > p - window, i.e. the window keys p - window < t <= p (Mistral's
    sliding window; needs causal=True).
chunk: > 0 keeps only keys in the query's own block of `chunk` slots, t // chunk == slot // chunk
    (Llama 4's attention_chunk_size; needs causal=True). Keys outside it are never read.
alibi_slopes: [H] finite floats m[h] (ALiBi, BLOOM/Falcon/MPT), already in logit units: each
    score gains m[h] * (t - slot), t and slot counted in key slots. With padding only at the
    ends of a sequence this equals BLOOM's positions from the cumulative attention mask (a
    per-row constant apart, which softmax ignores).
softcap: > 0 caps each scaled score to softcap * tanh(score / softcap) before masking and
    softmax (Gemma 2's attn_logit_softcapping); 0 (default): none.
sinks: [H] finite floats (GPT-OSS attention sinks), logits already in logit units (not scaled)
    that join each row's softmax denominator without a value:
    p_t = exp(s_t) / (exp(sinks[h]) + sum_u exp(s_u)).
out: optional writable C-contiguous float32 [B, Sq, H, Dv] array or tensor to write into; it is
    returned.
check_finite: raise ValueError on NaN/Inf in q, in the keys and values the kernel reads, or in
    the output, naming the first bad position (default). q is scanned up front; k and v are
    vouched for by the kernel as it reads them (a NaN/Inf key gives a NaN/Inf score, a NaN/Inf
    value a NaN/Inf output), so a large cache is not read twice; only then are they scanned to
    name the element. Keys no query can reach (past the causal diagonal, outside the window)
    are not examined. With False, non-finite inputs give unspecified outputs.

Copies: q is read in place when float32 with each batch row contiguous; k and v when float32,
float16 or bfloat16 (both the same) with a contiguous last axis and non-negative strides, any
batch/token/head strides (torch's [B, T, G, D], a transposed [B, G, T, D] view, a slice of a
larger cache). Otherwise (float64, mixed dtypes, a strided last axis) they are copied once.

A query with no visible key gets a zero output row. Returns float32 [B, Sq, H, Dv]: NumPy, or a
torch tensor when q is one.)doc");
  module.def("mla_attention", &MlaAttention, py::arg("q"), py::arg("kv"), py::arg("value_dim"),
             py::arg("causal") = true, py::arg("scale") = py::none(),
             py::arg("attention_mask") = py::none(), py::arg("out") = py::none(),
             py::arg("check_finite") = true, py::arg("query_offset") = -1, R"doc(
Absorbed multi-head latent attention (DeepSeek MLA, MQA over the latent cache): every query
head attends to one shared row per token, whose first `value_dim` entries are its value:

    out[b, s, h] = sum_t softmax_t(scale * q[b, s, h] . kv[b, t]) kv[b, t, :value_dim]

q: [B, Sq, H, D] float, the absorbed queries (q_nope W_UK | q_pe), D = kv_lora_rank + rope dim.
kv: [B, T, D] float32, float16 or bfloat16 latent rows (c_kv | rotated k_pe), read in place.
value_dim: kv_lora_rank.
scale: default 1 / sqrt(D); DeepSeek's is (qk_nope + qk_rope)^-0.5 * mscale^2, pass it.
causal, attention_mask, out, check_finite, query_offset: as in attention().

Returns float32 [B, Sq, H, value_dim] (the latent output, before W_UV).)doc");
  module.def("_sdpa_mask_visibility", &SdpaMaskVisibility, py::arg("mask"), py::arg("length"),
             R"doc(
For attn.scaled_dot_product_attention (attn/ops.py): mask [Bm, Hm, Sm, Tm] (bool, or float
0 / -inf; extents 1 broadcast, Tm is T or 1) -> (keep, causal, offset, window, zero_rows,
problem): keep a uint8 [Bm, T] array of kept keys (None: all), and query s at slot
offset + s seeing keys t <= slot (causal) and t > slot - window (window > 0), whose
visibility equals the mask exactly on every row that sees a key; zero_rows a uint8 [Bm, Sm]
array of the rows that see no key in the mask but some in that pattern (their output must be
set to zero; None: no such row); or problem, a str saying why no such pattern exists.)doc");
}

}  // namespace attn::python
