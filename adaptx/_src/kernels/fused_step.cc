// One-pass optimizer steps for adaptx on CPU, called from JAX through XLA's FFI.
//
// XLA's CPU backend compiles an optimizer step into one loop per written array
// (params, each moment), re-reading the gradient and the fresh moments between
// them: 40 bytes per float32 Adam parameter instead of the 28 that must move.
// This kernel reads each parameter, gradient and moment once and writes each
// once, in place (the outputs alias the inputs). The arithmetic repeats, op for
// op, what XLA computes for adaptx's blocks (see adaptx/kernels/__init__.py),
// so its results match the jnp path to the last bit on float32 and bfloat16.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include <immintrin.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Optimizer : int32_t { kAdam = 0, kAdagrad = 1, kRmsprop = 2 };

// Slots of the hyperparameter vector, filled by adaptx/kernels/__init__.py.
// kAfter is never read: it carries a value (the train step's loss) the call must wait for.
enum Slot { kNegLr, kB1, kB1c, kB2, kB2c, kEps, kEpsRoot, kInvBc1, kInvBc2, kDecay, kHasDecay, kAfter, kSlots };

inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline uint16_t F32ToBf16(float f) {  // round to nearest even, as XLA converts
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t rounded = bits + 0x7FFF + ((bits >> 16) & 1);
  const uint32_t quiet_nan = bits | 0x400000;
  return static_cast<uint16_t>(((f != f) ? quiet_nan : rounded) >> 16);  // a select, so loops vectorize
}

// Storage of a param/gradient leaf: float32, or bfloat16 rounded after every op
// (XLA computes bfloat16 arithmetic in float32 and rounds each result).
struct F32 {
  using T = float;
  static float Load(T x) { return x; }
  static T Store(float x) { return x; }
  static float Round(float x) { return x; }
};
struct BF16 {
  using T = uint16_t;
  static float Load(T x) { return Bf16ToF32(x); }
  static T Store(float x) { return F32ToBf16(x); }
  static float Round(float x) { return Bf16ToF32(F32ToBf16(x)); }
};

inline float SafeSqrt(float x) { return x > 0.0f ? std::sqrt(x) : 0.0f; }

// One leaf's buffers. XLA hands the kernel each param and moment twice, as an
// operand and as the result that must alias it; the step reads and writes the
// result in place, after copying the operand over when XLA did not alias them.
struct Leaf {
  void* p; const void* g; float* m; float* v;  // v: Adam's second moment, else null
  const void* p_in; const float* m_in; const float* v_in;
  size_t width;  // bytes per param element
  bool bf16;
};

void CopyIfDistinct(void* to, const void* from, int64_t begin, int64_t end, size_t width) {
  if (to != from && from != nullptr)
    std::memcpy(static_cast<char*>(to) + begin * width, static_cast<const char*>(from) + begin * width,
                (end - begin) * width);
}

// The hyperparameter vector, copied into a local so the compiler knows that
// writing a moment cannot change it.
struct Hyper {
  float h[kSlots];
  float operator[](int i) const { return h[i]; }
};

// u in the moment dtype (float32) for one element, updating the moments.
template <int32_t kOpt>
inline float Direction(const Hyper& h, float g, float& m, float& v) {
  if constexpr (kOpt == kAdam) {
    m = h[kB1] * m + h[kB1c] * g;
    v = h[kB2] * v + h[kB2c] * (g * g);
    float m_hat = m * h[kInvBc1];
    float v_hat = v * h[kInvBc2];
    return m_hat / (SafeSqrt(v_hat + h[kEpsRoot]) + h[kEps]);
  } else if constexpr (kOpt == kAdagrad) {
    m = m + g * g;
    return g / (SafeSqrt(m) + h[kEps]);
  } else {
    m = h[kB2] * m + h[kB2c] * (g * g);
    return g / (SafeSqrt(m) + h[kEps]);
  }
}

// kDecoupled is a template parameter, not a branch: the vectorizer gives up on
// loops with control flow (the bfloat16 loop ran 10x slower with the branch).
template <int32_t kOpt, typename S, bool kDecoupled>
__attribute__((target_clones("avx512f", "avx2", "default")))
void Run(const Hyper h, const Leaf& leaf, int64_t begin, int64_t end) {
  using T = typename S::T;
  // Distinct buffers: restrict lets the compiler vectorize without alias checks.
  T* __restrict p = static_cast<T*>(leaf.p);
  const T* __restrict g_in = static_cast<const T*>(leaf.g);
  float* __restrict m_io = leaf.m;
  float* __restrict v_io = leaf.v;
  // Hyperparameters that multiply a leaf are cast to its dtype first, as jnp does.
  const float neg_lr = S::Round(h[kNegLr]), decay = S::Round(h[kDecay]);
  for (int64_t i = begin; i < end; ++i) {
    float g = S::Load(g_in[i]);
    float x = S::Load(p[i]);
    float m = m_io[i];
    float v = kOpt == kAdam ? v_io[i] : 0.0f;
    float u = S::Round(Direction<kOpt>(h, g, m, v));
    if (kDecoupled) u = S::Round(u + S::Round(decay * x));  // AdamW: u + λθ
    u = S::Round(neg_lr * u);
    p[i] = S::Store(x + u);
    m_io[i] = m;
    if (kOpt == kAdam) v_io[i] = v;
  }
}

struct Chunk { int32_t leaf; int64_t begin, end; };

// Work shared by the calling thread and XLA's intra-op pool. The caller takes
// chunks too, so the step finishes even when no pool thread is free; helpers
// that start late find nothing left and return.
struct Work {
  Hyper h;
  int32_t opt;
  std::vector<Leaf> leaves;
  std::vector<Chunk> chunks;
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};

  template <int32_t kOpt, bool kDecoupled>
  void RunLeaf(const Leaf& leaf, int64_t begin, int64_t end) {
    leaf.bf16 ? Run<kOpt, BF16, kDecoupled>(h, leaf, begin, end) : Run<kOpt, F32, kDecoupled>(h, leaf, begin, end);
  }

  void Dispatch(const Leaf& leaf, int64_t begin, int64_t end) {
    if (opt == kAdagrad) return RunLeaf<kAdagrad, false>(leaf, begin, end);
    if (opt == kRmsprop) return RunLeaf<kRmsprop, false>(leaf, begin, end);
    h[kHasDecay] != 0.0f ? RunLeaf<kAdam, true>(leaf, begin, end) : RunLeaf<kAdam, false>(leaf, begin, end);
  }

  void Drain() {
    for (size_t i; (i = next.fetch_add(1)) < chunks.size();) {
      const Chunk& c = chunks[i];
      const Leaf& leaf = leaves[c.leaf];
      CopyIfDistinct(leaf.p, leaf.p_in, c.begin, c.end, leaf.width);
      CopyIfDistinct(leaf.m, leaf.m_in, c.begin, c.end, sizeof(float));
      CopyIfDistinct(leaf.v, leaf.v_in, c.begin, c.end, sizeof(float));
      Dispatch(leaf, c.begin, c.end);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

constexpr int64_t kChunk = 1 << 15;

// Drains ``work``'s chunks on the calling thread and up to the pool's threads, returning when all are
// done. A small call runs on the calling thread alone (see PARALLEL_MIN in __init__.py).
template <typename Work>
void DrainOnPool(ffi::ThreadPool& pool, const std::shared_ptr<Work>& work, int64_t total, int64_t parallel_min) {
  const int64_t helpers = total < parallel_min ? 0
      : std::min<int64_t>(pool.num_threads(), static_cast<int64_t>(work->chunks.size()) - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < work->chunks.size()) std::this_thread::yield();
}

// Operands after the hyperparameters, for k leaves and M moments (M = 2 for Adam):
//   per-leaf layout (flat = false): (p, g, m1..mM) per leaf -> (p, m1..mM) per leaf
//   flat layout (flat = true):      (p, g) per leaf, then M flat moment buffers
//                                    -> p per leaf, then the M buffers;
//                                    leaf i's moments start at offsets[i] in them.
ffi::Error FusedStep(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                     ffi::RemainingRets rets, int32_t optimizer, int64_t parallel_min, bool flat,
                     ffi::Span<const int64_t> offsets) {
  if (hyper.element_count() != kSlots) return ffi::Error::InvalidArgument("adaptx: wrong hyperparameter vector");
  if (optimizer != kAdam && optimizer != kAdagrad && optimizer != kRmsprop)
    return ffi::Error::InvalidArgument("adaptx: unknown optimizer");
  const size_t moments = optimizer == kAdam ? 2 : 1;
  const size_t k = offsets.size();
  const size_t in_per_leaf = flat ? 2 : 2 + moments, out_per_leaf = flat ? 1 : 1 + moments;
  const size_t shared = flat ? moments : 0;
  if (args.size() != k * in_per_leaf + shared || rets.size() != k * out_per_leaf + shared)
    return ffi::Error::InvalidArgument("adaptx: operands do not form whole leaves");
  auto work = std::make_shared<Work>();
  std::memcpy(work->h.h, hyper.typed_data(), sizeof(work->h.h));
  work->opt = optimizer;
  // Moment j of leaf i: operand and result buffer, and where the leaf starts in them.
  auto moment = [&](size_t i, size_t j, const float** in, float** out) {
    const size_t arg = flat ? k * in_per_leaf + j : i * in_per_leaf + 2 + j;
    const size_t ret = flat ? k * out_per_leaf + j : i * out_per_leaf + 1 + j;
    *in = static_cast<const float*>(args.get<ffi::AnyBuffer>(arg).value().untyped_data()) + offsets[i];
    *out = static_cast<float*>(rets.get<ffi::AnyBuffer>(ret).value()->untyped_data()) + offsets[i];
  };
  // Every size and dtype is checked before any element is touched: Python checks them too,
  // but a mismatch here would read or write past a buffer.
  for (size_t i = 0; i < k; ++i) {
    auto p = args.get<ffi::AnyBuffer>(i * in_per_leaf).value();
    auto g = args.get<ffi::AnyBuffer>(i * in_per_leaf + 1).value();
    auto p_out = rets.get<ffi::AnyBuffer>(i * out_per_leaf).value();
    const auto type = p.element_type();
    if (type != ffi::DataType::F32 && type != ffi::DataType::BF16)
      return ffi::Error::InvalidArgument("adaptx: params must be float32 or bfloat16");
    if (g.element_type() != type || p_out->element_type() != type)
      return ffi::Error::InvalidArgument("adaptx: gradients and results must have the params' dtype");
    const size_t n = p.element_count();
    if (g.element_count() != n || p_out->element_count() != n)
      return ffi::Error::InvalidArgument("adaptx: gradients and results must have the params' size");
    for (size_t j = 0; j < moments; ++j) {
      auto in = args.get<ffi::AnyBuffer>(flat ? k * in_per_leaf + j : i * in_per_leaf + 2 + j).value();
      auto out = rets.get<ffi::AnyBuffer>(flat ? k * out_per_leaf + j : i * out_per_leaf + 1 + j).value();
      if (in.element_type() != ffi::DataType::F32 || out->element_type() != ffi::DataType::F32)
        return ffi::Error::InvalidArgument("adaptx: moments must be float32");
      if (in.element_count() != out->element_count())
        return ffi::Error::InvalidArgument("adaptx: a moment and its result differ in size");
      const int64_t start = flat ? offsets[i] : 0;
      if (start < 0 || static_cast<size_t>(start) > in.element_count() || in.element_count() - start < n ||
          (!flat && in.element_count() != n))
        return ffi::Error::InvalidArgument("adaptx: a moment buffer does not hold its leaf");
    }
  }
  int64_t total = 0;
  for (size_t i = 0; i < k; ++i) {
    auto p = args.get<ffi::AnyBuffer>(i * in_per_leaf).value();
    auto g = args.get<ffi::AnyBuffer>(i * in_per_leaf + 1).value();
    auto p_out = rets.get<ffi::AnyBuffer>(i * out_per_leaf).value();
    const bool bf16 = p.element_type() == ffi::DataType::BF16;
    Leaf leaf{p_out->untyped_data(), g.untyped_data(), nullptr, nullptr, p.untyped_data(), nullptr, nullptr,
              bf16 ? sizeof(uint16_t) : sizeof(float), bf16};
    moment(i, 0, &leaf.m_in, &leaf.m);
    if (moments == 2) moment(i, 1, &leaf.v_in, &leaf.v);
    work->leaves.push_back(leaf);
    const int64_t n = static_cast<int64_t>(p.element_count());
    total += n;
    for (int64_t b = 0; b < n; b += kChunk)
      work->chunks.push_back({static_cast<int32_t>(i), b, std::min(n, b + kChunk)});
  }
  DrainOnPool(pool, work, total, parallel_min);
  return ffi::Error::Success();
}


// ---------------------------------------------------------------------------------------------
// Adam with quantized moments (adaptx.Quantized, adaptx/_src/quantize.py): per block of B
// elements, dequantize m and v (code value × block absmax), step exactly as Run does, then
// requantize: the block's new absmax s, and for each element the code index nearest m/s,
// found from the same lookup tables the jnp path uses (quantize.tables), so the codes and
// scales match the jnp path's bit for bit. One pass per block: the moments move as 1 byte
// (or half a byte) per element each way instead of XLA's several float32 passes.
//
// Two handlers share it. The one-pass step (adaptx.update_and_apply) updates the param in
// place; Adam's direction (scale_by_adam's update on CPU, the path every client runs) writes
// u = m̂ / (√v̂ + ε) for XLA to scale and add. A leaf is one or more rows, each blocked on its
// own: the shards of a sharded leaf (QuantizedArray.grid), or the whole leaf.

// One moment's format and tables, as quantize.tables builds them (widened to int32 once per
// call, so that the loops below can use vector gathers). The key tables are small (a cell is
// 2⁻⁷ of a binade: about 3000 cells, 24 kB), so their lookups hit L1.
// What the loops read of a format's key tables, built once per distinct set of tables (CheckCode).
struct KeyTables {
  std::vector<uint8_t> given;     // the five tables' bytes and the format's attributes, as checked
  std::vector<int32_t> start;     // per float32 key cell: magnitude midpoints below the cell
  std::vector<float> cut;         // per key cell: midpoints[start], the one midpoint it may hold
};

struct Code {
  int32_t bits;
  const float* values;            // 2^bits code values, sorted
  std::shared_ptr<const KeyTables> keys;
  uint32_t first; float floor;
  bool is_signed;
  // The sorted code puts magnitude rank r at zero + r (x >= 0) and zero − r, or 0 for the
  // absmax 1 that a signed code lacks as −1 (x < 0): checked against the tables in CheckCode,
  // and arithmetic here, where a third table lookup would cost a third load per element.
  int32_t zero;                   // the index of 0 (also the padding elements of the last block)
};

// A float32's bits >> kKeyShift: its exponent and top 7 mantissa bits, the cells of the key tables
// (quantize._KEY_SHIFT; CheckCode rejects tables built for another shift by their size).
constexpr int kKeyShift = 16;

struct QuantizedMoment {
  const uint8_t* codes_in; uint8_t* codes;
  const float* scales_in; float* scales;
};

// One row: n elements in ceil(n / B) blocks. ``out`` is the param (stepped in place, copied
// from ``p_in`` first when XLA did not alias them) or the direction (written).
struct QuantizedRow {
  void* out; const void* g; const void* p_in;
  QuantizedMoment m, v;
  int64_t n;
};

// One block's codes <-> one int32 index per element (4 bits: two a byte, the even element low).
template <int kBits>
inline void Unpack(const uint8_t* __restrict row, int64_t block_size, int32_t* __restrict index) {
  if constexpr (kBits == 8) {
    for (int64_t j = 0; j < block_size; ++j) index[j] = row[j];
  } else {
    for (int64_t j = 0; j < block_size / 2; ++j) {
      index[2 * j] = row[j] & 0xF;
      index[2 * j + 1] = row[j] >> 4;
    }
  }
}

template <int kBits>
inline void Pack(const int32_t* __restrict index, int64_t block_size, uint8_t* __restrict row) {
  if constexpr (kBits == 8) {
    for (int64_t j = 0; j < block_size; ++j) row[j] = static_cast<uint8_t>(index[j]);
  } else {
    for (int64_t j = 0; j < block_size / 2; ++j)
      row[j] = static_cast<uint8_t>(index[2 * j] | (index[2 * j + 1] << 4));
  }
}

// Requantize one block of new moment values x[0..count) (count <= B; the rest is padding):
// quantize.quantize and quantize._nearest, op for op.
template <int kBits>
inline void Requantize(const Code& code, const float* __restrict x, int64_t count, int64_t block_size,
                       int32_t* __restrict index, uint8_t* row, float* scale) {
  // The absmax as the largest |x|'s bits: for non-negative floats the integer order is the
  // float order, and an integer maximum vectorizes where a float one (NaN rules) does not.
  uint32_t largest = 0;
  for (int64_t j = 0; j < count; ++j) {
    uint32_t bits;
    std::memcpy(&bits, x + j, 4);
    largest = std::max(largest, bits & 0x7FFFFFFFu);
  }
  float absmax;
  std::memcpy(&absmax, &largest, 4);
  const float inverse = 1.0f / (absmax > 0.0f ? absmax : 1.0f);
  const int32_t* __restrict start = code.keys->start.data();
  const float* __restrict cut = code.keys->cut.data();
  const int32_t zero = code.zero;
  const bool is_signed = code.is_signed;
  const float floor = code.floor;
  const int32_t first = static_cast<int32_t>(code.first), last = static_cast<int32_t>(code.keys->start.size() - 1);
  for (int64_t j = 0; j < count; ++j) {
    const float normal = x[j] * inverse;
    const float a = std::min(std::max(std::fabs(normal), floor), 1.0f);
    uint32_t key;
    std::memcpy(&key, &a, 4);
    // A NaN's key lies past the table: it takes the last cell, as jnp's clamped gather does.
    const int32_t cell = std::min(static_cast<int32_t>(key >> kKeyShift) - first, last);
    const int32_t r = start[cell] + (a > cut[cell] ? 1 : 0);  // both lookups at one index
    const int32_t below = zero - r;
    index[j] = (is_signed && normal < 0.0f) ? (below > 0 ? below : 0) : zero + r;
  }
  for (int64_t j = count; j < block_size; ++j) index[j] = code.zero;
  Pack<kBits>(index, block_size, row);
  *scale = absmax;
}

// Per-thread scratch for one block.
struct Scratch {
  std::vector<int32_t> m_index, v_index;
  std::vector<float> m_new, v_new;
  explicit Scratch(int64_t b) : m_index(b), v_index(b), m_new(b), v_new(b) {}
};

template <typename S, bool kApply, bool kDecoupled, int kMBits, int kVBits>
__attribute__((target_clones("avx512f", "avx2", "default")))
void RunQuantized(const Hyper h, const QuantizedRow& row, const Code& mc, const Code& vc, int64_t block_size,
                  int64_t first_block, int64_t last_block, Scratch& scratch) {
  using T = typename S::T;
  T* __restrict out = static_cast<T*>(row.out);
  const T* __restrict g_in = static_cast<const T*>(row.g);
  const float neg_lr = S::Round(h[kNegLr]), decay = S::Round(h[kDecay]);
  const int64_t m_row = block_size * kMBits / 8, v_row = block_size * kVBits / 8;
  int32_t* __restrict mi = scratch.m_index.data();
  int32_t* __restrict vi = scratch.v_index.data();
  float* __restrict m_new = scratch.m_new.data();
  float* __restrict v_new = scratch.v_new.data();
  const float* __restrict m_values = mc.values;
  const float* __restrict v_values = vc.values;
  for (int64_t b = first_block; b < last_block; ++b) {
    const int64_t begin = b * block_size, count = std::min(row.n - begin, block_size);
    uint8_t* m_codes = row.m.codes + b * m_row;
    uint8_t* v_codes = row.v.codes + b * v_row;
    const float m_scale = row.m.scales[b], v_scale = row.v.scales[b];
    Unpack<kMBits>(m_codes, block_size, mi);
    Unpack<kVBits>(v_codes, block_size, vi);
    T* __restrict ob = out + begin;
    const T* __restrict gb = g_in + begin;
    // Dequantize, then Run's step on the float32 moments: two loops, each of which vectorizes
    // (the gathers kept the one loop scalar).
    for (int64_t j = 0; j < count; ++j) {
      m_new[j] = m_values[mi[j]] * m_scale;
      v_new[j] = v_values[vi[j]] * v_scale;
    }
    for (int64_t j = 0; j < count; ++j) {
      float g = S::Load(gb[j]);
      float m = m_new[j];
      float v = v_new[j];
      if constexpr (kApply) {
        float x = S::Load(ob[j]);
        float u = S::Round(Direction<kAdam>(h, g, m, v));
        if (kDecoupled) u = S::Round(u + S::Round(decay * x));
        u = S::Round(neg_lr * u);
        ob[j] = S::Store(x + u);
      } else {  // scale_by_adam's output, cast to the gradient's dtype
        ob[j] = S::Store(Direction<kAdam>(h, g, m, v));
      }
      m_new[j] = m;
      v_new[j] = v;
    }
    Requantize<kMBits>(mc, m_new, count, block_size, mi, m_codes, row.m.scales + b);
    Requantize<kVBits>(vc, v_new, count, block_size, vi, v_codes, row.v.scales + b);
  }
}

// ---------------------------------------------------------------------------------------------
// The same block step in AVX-512, where the CPU has it: the scalar loops above spend most of
// their time in per-element table lookups (this machine's vector gathers are slower still), so
// here every table a lookup reads sits in registers and is read with permutes, and the nearest
// code is found without the key tables: an approximate rank r from the code's runs of evenly
// spaced values, then the two midpoints around r. Same operations, same rounding, same codes.

#define ADAPTX_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

bool HasAvx512() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
}

// The nearest code of a magnitude a ∈ [floor, 1] is its rank j = #{midpoints < a}. The
// magnitudes fall into runs of evenly spaced values (a decade of the dynamic code, the whole
// linear code); run g, entered at a > threshold[g] (the exact midpoint below its first value),
// holds ranks base[g] … base[g] + last[g], and there s = (a − lo)·inverse width puts a in cell
// c = trunc(s): r = base + clamp(c, 0, last). Where s is more than kDoubt from a whole number, r
// is j; elsewhere (a in 1/500 of the cases, near the edge of a cell) j = r + (above[r] < a) −
// (below[r] ≥ a), above[r] = midpoint r and below[r] = midpoint r − 1, read from registers.
// BuildRanks proves both claims for the tables it is given, or the portable loops run instead.
constexpr float kDoubt = 1.0f / 1024;

struct Ranks {
  bool usable = false;
  int32_t runs = 0;
  alignas(64) float threshold[16], lo[16], inverse[16];
  alignas(64) int32_t base[16], last[16];
  alignas(64) float values[256], above[256], below[256];
  alignas(64) uint8_t planes[4][256];  // byte p of each code value (little-endian), for Values64
  // The run of a is #{thresholds < a}, found from a's binade (float exponent − first_exponent):
  // run_at[binade] thresholds lie below the binade and at most one, split_at[binade], inside it.
  alignas(64) int32_t run_at[32];
  alignas(64) float split_at[32];
  int32_t first_exponent;
  int32_t zero, nan_rank;  // the rank a NaN takes: the key tables' last cell, as jnp's clamped gather
  float floor;
  bool is_signed;
};

// s and run g for one magnitude, op for op as the vector loop computes them.
float Scaled(const Ranks& k, float a, int32_t* run) {
  uint32_t bits;
  std::memcpy(&bits, &a, 4);
  const int32_t binade = static_cast<int32_t>(bits >> 23) - k.first_exponent;
  const int32_t g = k.run_at[binade] + (a > k.split_at[binade] ? 1 : 0);
  *run = g;
  return (a - k.lo[g]) * k.inverse[g];
}

int32_t Truncated(float s) { return s >= 2147483648.0f || s < -2147483648.0f ? INT32_MIN : static_cast<int32_t>(s); }

int32_t ApproximateRank(const Ranks& k, float a) {
  int32_t g;
  const int32_t c = Truncated(Scaled(k, a, &g));
  return k.base[g] + std::min(std::max(c, 0), k.last[g]);
}

bool Doubtful(const Ranks& k, float a) {
  int32_t g;
  const float s = Scaled(k, a, &g);
  const float fraction = s - static_cast<float>(Truncated(s));
  return fraction < kDoubt || fraction > 1.0f - kDoubt;
}

int32_t ExactRank(const float* midpoints, int64_t n_magnitudes, float a) {
  return static_cast<int32_t>(std::lower_bound(midpoints, midpoints + n_magnitudes, a) - midpoints);
}

// The first float in [low, high] (non-negative) where the monotone ``test`` holds, or high⁺.
template <typename Test>
float FirstWhere(float low, float high, Test test) {
  uint32_t lo, hi;
  std::memcpy(&lo, &low, 4);
  std::memcpy(&hi, &high, 4);
  ++hi;
  while (lo < hi) {
    const uint32_t mid = lo + (hi - lo) / 2;
    float a;
    std::memcpy(&a, &mid, 4);
    if (test(a)) hi = mid; else lo = mid + 1;
  }
  float a;
  std::memcpy(&a, &lo, 4);
  return a;
}

bool BuildRanksUncached(const Code& code, const float* midpoints, int64_t n_magnitudes, Ranks* k) {
  if (n_magnitudes > 256 || n_magnitudes < 2) return false;
  const float* magnitude = code.values + code.zero;  // CheckCode: rank r is code index zero + r
  // Runs: maximal stretches of equal gaps (equal up to the float32 rounding of the values).
  std::vector<int32_t> starts = {0};
  for (int64_t r = 1; r + 1 < n_magnitudes; ++r) {
    const double before = double(magnitude[r]) - magnitude[r - 1], after = double(magnitude[r + 1]) - magnitude[r];
    if (std::fabs(after - before) > 1e-3 * std::max(after, before) && r != starts.back()) starts.push_back(r + 1);
  }
  if (starts.size() > 16) return false;
  k->runs = static_cast<int32_t>(starts.size());
  for (int32_t g = 0; g < k->runs; ++g) {
    const int32_t first = starts[g], end = g + 1 < k->runs ? starts[g + 1] : static_cast<int32_t>(n_magnitudes);
    k->threshold[g] = g == 0 ? -INFINITY : midpoints[first - 1];
    k->base[g] = first;
    k->last[g] = end - 1 - first;
    if (end - first > 1) {
      const double width = (double(magnitude[end - 1]) - magnitude[first]) / (end - 1 - first);
      k->lo[g] = static_cast<float>(magnitude[first] - width / 2);
      k->inverse[g] = static_cast<float>(1.0 / width);
    } else {  // one value, taken on (threshold, next threshold]: s runs over [1/4, 3/4] there, never doubtful
      const double low = g == 0 ? code.floor : midpoints[first - 1], high = end < n_magnitudes ? midpoints[end - 1] : 1.0;
      const double span = std::max(high - low, 1e-30);
      k->lo[g] = static_cast<float>(low - span / 2);
      k->inverse[g] = static_cast<float>(1.0 / (2 * span));
    }
  }
  for (int32_t g = k->runs; g < 16; ++g) {
    k->threshold[g] = INFINITY; k->lo[g] = 0; k->inverse[g] = 0; k->base[g] = 0; k->last[g] = 0;
  }
  for (int i = 0; i < 256; ++i) {
    k->values[i] = i < (1 << code.bits) ? code.values[i] : 0.0f;
    k->above[i] = i < n_magnitudes ? midpoints[i] : INFINITY;
    k->below[i] = i == 0 ? -INFINITY : i - 1 < n_magnitudes ? midpoints[i - 1] : INFINITY;
  }
  for (int i = 0; i < 256; ++i) {  // the values' bytes, for Values64
    uint32_t bits;
    std::memcpy(&bits, &k->values[i], 4);
    for (int p = 0; p < 4; ++p) k->planes[p][i] = static_cast<uint8_t>(bits >> (8 * p));
  }
  k->zero = code.zero;
  k->nan_rank = code.keys->start.back();  // + (NaN > cut): false
  k->floor = code.floor;
  k->is_signed = code.is_signed;
  // The proof. r is monotone in a: thresholds ascend and runs meet rank to rank.
  for (int32_t g = 1; g < k->runs; ++g)
    if (!(k->threshold[g] > k->threshold[g - 1]) || k->base[g] != k->base[g - 1] + k->last[g - 1] + 1) return false;
  // The binade tables give #{thresholds < a} exactly when no binade holds two thresholds.
  uint32_t floor_bits;
  std::memcpy(&floor_bits, &code.floor, 4);
  k->first_exponent = static_cast<int32_t>(floor_bits >> 23);
  if (127 - k->first_exponent >= 32) return false;  // [floor, 1] spans more binades than a table holds
  for (int32_t b = 0; b < 32; ++b) {
    const float bottom = std::ldexp(1.0f, k->first_exponent + b - 127), top = 2 * bottom;
    int32_t below = 0, inside = 0;
    k->split_at[b] = INFINITY;
    for (int32_t i = 1; i < k->runs; ++i) {
      if (k->threshold[i] < bottom) ++below;
      else if (k->threshold[i] < top) ++inside, k->split_at[b] = k->threshold[i];
    }
    if (inside > 1) return false;
    k->run_at[b] = below;
  }
  // |r − j| ≤ 1 everywhere: on each interval where j is constant, (midpoint j−1, midpoint j] within
  // [floor, 1], it holds at both ends, so (r being monotone) in between.
  for (int64_t j = 0; j < n_magnitudes; ++j) {
    const float low = std::max(j == 0 ? code.floor : std::nextafter(midpoints[j - 1], INFINITY), code.floor);
    const float high = std::min(j + 1 < n_magnitudes ? midpoints[j] : 1.0f, 1.0f);
    if (low > high) continue;
    for (float a : {low, high})
      if (std::abs(ApproximateRank(*k, a) - static_cast<int32_t>(j)) > 1) return false;
  }
  // r = j wherever s is not doubtful: in each cell c of each run, the floats whose s lies in
  // [c + kDoubt, c + 1 − kDoubt] form one interval (s is monotone); j and r agree at both ends,
  // so (j being monotone too) on all of it.
  for (int32_t g = 0; g < k->runs; ++g) {
    const float low = std::max(g == 0 ? code.floor : std::nextafter(k->threshold[g], INFINITY), code.floor);
    const float high = std::min(g + 1 < k->runs ? k->threshold[g + 1] : 1.0f, 1.0f);
    if (low > high) continue;
    int32_t run;
    const int32_t cells = Truncated(Scaled(*k, high, &run)) + 1;
    if (cells > 4096) return false;
    for (int32_t c = 0; c < cells; ++c) {
      const float from = FirstWhere(low, high, [&](float a) { int32_t r; return Scaled(*k, a, &r) >= c + kDoubt; });
      const float past = FirstWhere(low, high, [&](float a) { int32_t r; return Scaled(*k, a, &r) > c + 1 - kDoubt; });
      if (!(from < past) || from > high) continue;
      const float to = std::nextafter(past, 0.0f);
      for (float a : {from, to})
        if (Doubtful(*k, a) || ApproximateRank(*k, a) != ExactRank(midpoints, n_magnitudes, a)) return false;
      if (ExactRank(midpoints, n_magnitudes, from) != ExactRank(midpoints, n_magnitudes, to)) return false;
    }
  }
  return true;
}

// BuildRanksUncached costs some 10⁴ scalar evaluations; the codes are few and fixed, so the
// proven tables are kept by content (the code values, midpoints and floor they came from).
void BuildRanks(const Code& code, const float* midpoints, int64_t n_magnitudes, Ranks* k) {
  struct Entry { std::vector<float> values, midpoints; float floor; int32_t start_back; Ranks ranks; bool usable; };
  static std::mutex lock;
  static std::vector<Entry> cache;
  const size_t n_values = size_t{1} << code.bits;
  auto equal = [](const std::vector<float>& kept, const float* given, size_t n) {
    return kept.size() == n && std::memcmp(kept.data(), given, n * sizeof(float)) == 0;
  };
  {
    std::lock_guard<std::mutex> guard(lock);
    for (const Entry& e : cache)
      if (equal(e.values, code.values, n_values) && equal(e.midpoints, midpoints, n_magnitudes) &&
          e.floor == code.floor && e.start_back == code.keys->start.back() && e.ranks.zero == code.zero &&
          e.ranks.is_signed == code.is_signed) {
        *k = e.ranks;
        k->usable = e.usable;
        return;
      }
  }
  std::vector<float> values(code.values, code.values + n_values), mids(midpoints, midpoints + n_magnitudes);
  const bool usable = BuildRanksUncached(code, midpoints, n_magnitudes, k);
  k->usable = usable;
  k->zero = code.zero;
  k->is_signed = code.is_signed;
  std::lock_guard<std::mutex> guard(lock);
  if (cache.size() < 64) cache.push_back({values, mids, code.floor, code.keys->start.back(), *k, usable});
}

// table[index] for 16 indices in [0, 256): eight two-register permutes, then three blends.
ADAPTX_AVX512 __attribute__((always_inline)) inline __m512 Lookup256(const float* table, __m512i index) {
  __m512 part[8];
  for (int i = 0; i < 8; ++i)
    part[i] = _mm512_permutex2var_ps(_mm512_load_ps(table + 32 * i), index, _mm512_load_ps(table + 32 * i + 16));
  const __mmask16 b5 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(32));
  const __mmask16 b6 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(64));
  const __mmask16 b7 = _mm512_test_epi32_mask(index, _mm512_set1_epi32(128));
  for (int i = 0; i < 4; ++i) part[i] = _mm512_mask_blend_ps(b5, part[2 * i], part[2 * i + 1]);
  for (int i = 0; i < 2; ++i) part[i] = _mm512_mask_blend_ps(b6, part[2 * i], part[2 * i + 1]);
  return _mm512_mask_blend_ps(b7, part[0], part[1]);
}

template <int kBits>
ADAPTX_AVX512 inline __m512 Lookup(const float* table, __m512i index) {
  if constexpr (kBits == 4) return _mm512_permutexvar_ps(index, _mm512_load_ps(table));
  else return Lookup256(table, index);
}

inline __mmask16 Lanes(int64_t left) { return left >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << left) - 1); }

bool HasVbmi() {
  static const bool has = HasAvx512() && __builtin_cpu_supports("avx512vbmi");
  return has;
}

// vpermb order that makes Values64's byte unpacking come out in element order: unpacking puts the
// byte at position 16L + 4q + i (lane L) into float q·16 + 4L + i, so that byte must be code 16q + 4L + i.
struct ByteOrder {
  alignas(64) uint8_t at[64];
  ByteOrder() {
    for (int L = 0; L < 4; ++L)
      for (int q = 0; q < 4; ++q)
        for (int i = 0; i < 4; ++i) at[16 * L + 4 * q + i] = static_cast<uint8_t>(16 * q + 4 * L + i);
  }
};
const ByteOrder kByteOrder;

// values[codes[j]] for one block of 8-bit codes, j < count, 64 at a time: per byte of the float,
// two 128-entry byte permutes (vpermi2b) and a blend on the code's top bit, then the four bytes
// interleaved into floats. Sixteen table lookups per instruction where Lookup256 does one.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi")))
void Values64(const Ranks& k, const uint8_t* __restrict codes, int64_t count, float* __restrict out) {
  const __m512i order = _mm512_load_si512(kByteOrder.at);
  for (int64_t j = 0; j < count; j += 64) {
    const int64_t left = count - j;
    const __mmask64 lanes = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
    const __m512i c = _mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(lanes, codes + j));
    const __mmask64 high = _mm512_movepi8_mask(c);
    __m512i b[4];
    for (int p = 0; p < 4; ++p) {
      const uint8_t* plane = k.planes[p];
      const __m512i low = _mm512_permutex2var_epi8(_mm512_load_si512(plane), c, _mm512_load_si512(plane + 64));
      const __m512i top = _mm512_permutex2var_epi8(_mm512_load_si512(plane + 128), c, _mm512_load_si512(plane + 192));
      b[p] = _mm512_mask_blend_epi8(high, low, top);
    }
    const __m512i lo01 = _mm512_unpacklo_epi8(b[0], b[1]), hi01 = _mm512_unpackhi_epi8(b[0], b[1]);
    const __m512i lo23 = _mm512_unpacklo_epi8(b[2], b[3]), hi23 = _mm512_unpackhi_epi8(b[2], b[3]);
    const __m512i quarter[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                                _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
    for (int q = 0; q < 4 && 16 * q < left; ++q)
      _mm512_mask_storeu_epi32(out + j + 16 * q, Lanes(left - 16 * q), quarter[q]);
  }
}

// A float32 or bfloat16 vector of 16 elements (masked), and the roundings S makes.
template <typename S> ADAPTX_AVX512 inline __m512 Load16(const typename S::T* p, __mmask16 m) {
  if constexpr (std::is_same_v<S, F32>) return _mm512_maskz_loadu_ps(m, p);
  else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}
ADAPTX_AVX512 inline __m512i ToBf16Bits(__m512 x) {  // F32ToBf16, in the low 16 bits of each lane
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd);
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_srli_epi32(_mm512_mask_or_epi32(rounded, nan, bits, _mm512_set1_epi32(0x400000)), 16);
}
template <typename S> ADAPTX_AVX512 inline __m512 Round16(__m512 x) {
  if constexpr (std::is_same_v<S, F32>) return x;
  else return _mm512_castsi512_ps(_mm512_slli_epi32(ToBf16Bits(x), 16));
}
template <typename S> ADAPTX_AVX512 inline void Store16(typename S::T* p, __mmask16 m, __m512 x) {
  if constexpr (std::is_same_v<S, F32>) _mm512_mask_storeu_ps(p, m, x);
  else _mm512_mask_cvtepi32_storeu_epi16(p, m, ToBf16Bits(x));
}


// Requantize's nearest-code loop (the absmax already known), for the elements x[0..count): each
// code index into ``index``, or for 8-bit codes straight into the block's bytes ``codes``.
template <int kBits>
ADAPTX_AVX512 void Nearest512(const Ranks& k, const float* __restrict x, int64_t count, float absmax,
                              int32_t* __restrict index, uint8_t* __restrict codes) {
  const __m512 inverse = _mm512_set1_ps(1.0f / (absmax > 0.0f ? absmax : 1.0f));
  const __m512 floor = _mm512_set1_ps(k.floor), one = _mm512_set1_ps(1.0f);
  const __m512i zero = _mm512_set1_epi32(k.zero), ones = _mm512_set1_epi32(1);
  const __m512 lo = _mm512_load_ps(k.lo), inv = _mm512_load_ps(k.inverse);
  const __m512i base = _mm512_load_si512(k.base), last = _mm512_load_si512(k.last);
  const __m512 doubt = _mm512_set1_ps(kDoubt), sure = _mm512_set1_ps(1.0f - kDoubt);
  const __m512i first_exponent = _mm512_set1_epi32(k.first_exponent);
  const __m512i run_at[2] = {_mm512_load_si512(k.run_at), _mm512_load_si512(k.run_at + 16)};
  const __m512 split_at[2] = {_mm512_load_ps(k.split_at), _mm512_load_ps(k.split_at + 16)};
  // Locals, not k's fields: the byte stores below may alias k, which would reload those every time.
  const bool is_signed = k.is_signed;
  const __m512i nan_rank = _mm512_set1_epi32(k.nan_rank);
  // Two vectors an iteration: their dependency chains overlap, and one branch serves both.
  auto approximate = [&](int64_t j, __mmask16 m, __m512& a, __m512& normal, __mmask16& nan, __mmask16& doubtful) ADAPTX_AVX512 {
    normal = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + j), inverse);
    nan = _mm512_cmp_ps_mask(normal, normal, _CMP_UNORD_Q);
    a = _mm512_min_ps(_mm512_max_ps(_mm512_abs_ps(normal), floor), one);
    const __m512i binade = _mm512_sub_epi32(_mm512_srli_epi32(_mm512_castps_si512(a), 23), first_exponent);
    __m512i g = _mm512_permutex2var_epi32(run_at[0], binade, run_at[1]);
    const __mmask16 split = _mm512_cmp_ps_mask(a, _mm512_permutex2var_ps(split_at[0], binade, split_at[1]), _CMP_GT_OQ);
    g = _mm512_mask_add_epi32(g, split, g, ones);
    const __m512 scaled = _mm512_mul_ps(_mm512_sub_ps(a, _mm512_permutexvar_ps(g, lo)), _mm512_permutexvar_ps(g, inv));
    const __m512i cell = _mm512_cvttps_epi32(scaled);
    const __m512i c = _mm512_min_epi32(_mm512_max_epi32(cell, _mm512_setzero_si512()), _mm512_permutexvar_epi32(g, last));
    const __m512 fraction = _mm512_sub_ps(scaled, _mm512_cvtepi32_ps(cell));
    doubtful = _mm512_mask_cmp_ps_mask(m, fraction, doubt, _CMP_LT_OQ) | _mm512_mask_cmp_ps_mask(m, fraction, sure, _CMP_GT_OQ);
    return _mm512_add_epi32(_mm512_permutexvar_epi32(g, base), c);
  };
  auto correct = [&](__m512i r, __m512 a) ADAPTX_AVX512 {  // near a cell's edge: the midpoints around r decide
    const __mmask16 up = _mm512_cmp_ps_mask(Lookup<kBits>(k.above, r), a, _CMP_LT_OQ);
    const __mmask16 down = _mm512_cmp_ps_mask(Lookup<kBits>(k.below, r), a, _CMP_GE_OQ);
    const __m512i raised = _mm512_mask_add_epi32(r, up, r, ones);
    return _mm512_mask_sub_epi32(raised, down, raised, ones);
  };
  auto finish = [&](int64_t j, __mmask16 m, __m512i r, __m512 normal, __mmask16 nan) ADAPTX_AVX512 {
    r = _mm512_mask_mov_epi32(r, nan, nan_rank);
    __m512i out = _mm512_add_epi32(zero, r);
    if (is_signed) {
      const __mmask16 negative = _mm512_cmp_ps_mask(normal, _mm512_setzero_ps(), _CMP_LT_OQ);
      out = _mm512_mask_mov_epi32(out, negative, _mm512_max_epi32(_mm512_sub_epi32(zero, r), _mm512_setzero_si512()));
    }
    if constexpr (kBits == 8) _mm512_mask_cvtepi32_storeu_epi8(codes + j, m, out);
    else _mm512_mask_storeu_epi32(index + j, m, out);
  };
  auto pair = [&](int64_t j, __mmask16 m0, __mmask16 m1) ADAPTX_AVX512 {
    __m512 a0, a1, n0, n1;
    __mmask16 nan0, nan1, doubt0, doubt1;
    __m512i r0 = approximate(j, m0, a0, n0, nan0, doubt0);
    __m512i r1 = approximate(j + 16, m1, a1, n1, nan1, doubt1);
    if (!_kortestz_mask16_u8(doubt0, doubt1)) {
      r0 = correct(r0, a0);
      r1 = correct(r1, a1);
    }
    finish(j, m0, r0, n0, nan0);
    if (m1) finish(j + 16, m1, r1, n1, nan1);
  };
  int64_t j = 0;
  for (; j + 32 <= count; j += 32) pair(j, 0xFFFF, 0xFFFF);  // whole vectors: constant masks fold away
  if (j < count) pair(j, Lanes(count - j), j + 16 < count ? Lanes(count - j - 16) : 0);
}

// After Nearest512: the padding elements' code (the index of 0), and 4-bit indices packed.
template <int kBits>
inline void FinishBlock(int32_t zero, int64_t count, int64_t block_size, int32_t* __restrict index, uint8_t* codes) {
  if constexpr (kBits == 8) {
    if (count < block_size) std::memset(codes + count, zero, block_size - count);
  } else {
    for (int64_t j = count; j < block_size; ++j) index[j] = zero;
    Pack<kBits>(index, block_size, codes);
  }
}

// The code values (unscaled) of one block's first ``count`` elements, into ``out``.
template <int kBits>
ADAPTX_AVX512 inline void BlockValues(const Ranks& k, const uint8_t* codes, int64_t block_size, int64_t count,
                                      bool vbmi, int32_t* __restrict index, float* __restrict out) {
  if (kBits == 8 && vbmi) return Values64(k, codes, count, out);
  Unpack<kBits>(codes, block_size, index);
  for (int64_t j = 0; j < count; j += 16) {
    const __mmask16 lanes = Lanes(count - j);
    _mm512_mask_storeu_ps(out + j, lanes, Lookup<kBits>(k.values, _mm512_maskz_loadu_epi32(lanes, index + j)));
  }
}

template <typename S, bool kApply, bool kDecoupled, int kMBits, int kVBits>
ADAPTX_AVX512 void RunQuantized512(const Hyper h, const QuantizedRow& row, const Ranks& mk, const Ranks& vk,
                                   int64_t block_size, int64_t first_block, int64_t last_block, bool vbmi,
                                   Scratch& scratch) {
  using T = typename S::T;
  T* __restrict out = static_cast<T*>(row.out);
  const T* __restrict g_in = static_cast<const T*>(row.g);
  const int64_t m_row = block_size * kMBits / 8, v_row = block_size * kVBits / 8;
  int32_t* __restrict mi = scratch.m_index.data();
  int32_t* __restrict vi = scratch.v_index.data();
  float* __restrict m_new = scratch.m_new.data();
  float* __restrict v_new = scratch.v_new.data();
  const __m512 b1 = _mm512_set1_ps(h[kB1]), b1c = _mm512_set1_ps(h[kB1c]), b2 = _mm512_set1_ps(h[kB2]);
  const __m512 b2c = _mm512_set1_ps(h[kB2c]), eps = _mm512_set1_ps(h[kEps]), eps_root = _mm512_set1_ps(h[kEpsRoot]);
  const __m512 inv1 = _mm512_set1_ps(h[kInvBc1]), inv2 = _mm512_set1_ps(h[kInvBc2]);
  const __m512 neg_lr = _mm512_set1_ps(S::Round(h[kNegLr])), decay = _mm512_set1_ps(S::Round(h[kDecay]));
  const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  for (int64_t b = first_block; b < last_block; ++b) {
    const int64_t begin = b * block_size, count = std::min(row.n - begin, block_size);
    uint8_t* m_codes = row.m.codes + b * m_row;
    uint8_t* v_codes = row.v.codes + b * v_row;
    const __m512 m_scale = _mm512_set1_ps(row.m.scales[b]), v_scale = _mm512_set1_ps(row.v.scales[b]);
    BlockValues<kMBits>(mk, m_codes, block_size, count, vbmi, mi, m_new);
    BlockValues<kVBits>(vk, v_codes, block_size, count, vbmi, vi, v_new);
    T* __restrict ob = out + begin;
    const T* __restrict gb = g_in + begin;
    __m512i m_max = _mm512_setzero_si512(), v_max = _mm512_setzero_si512();
    for (int64_t j = 0; j < count; j += 16) {  // Direction<kAdam> and Run's step, op for op
      const __mmask16 lanes = Lanes(count - j);
      __m512 m = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, m_new + j), m_scale);
      __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, v_new + j), v_scale);
      const __m512 g = Load16<S>(gb + j, lanes);
      m = _mm512_add_ps(_mm512_mul_ps(b1, m), _mm512_mul_ps(b1c, g));
      v = _mm512_add_ps(_mm512_mul_ps(b2, v), _mm512_mul_ps(b2c, _mm512_mul_ps(g, g)));
      const __m512 v_hat = _mm512_add_ps(_mm512_mul_ps(v, inv2), eps_root);
      const __m512 root = _mm512_maskz_sqrt_ps(_mm512_cmp_ps_mask(v_hat, _mm512_setzero_ps(), _CMP_GT_OQ), v_hat);
      const __m512 u = _mm512_div_ps(_mm512_mul_ps(m, inv1), _mm512_add_ps(root, eps));
      if constexpr (kApply) {
        const __m512 x = Load16<S>(ob + j, lanes);
        __m512 step = Round16<S>(u);
        if (kDecoupled) step = Round16<S>(_mm512_add_ps(step, Round16<S>(_mm512_mul_ps(decay, x))));
        step = Round16<S>(_mm512_mul_ps(neg_lr, step));
        Store16<S>(ob + j, lanes, _mm512_add_ps(x, step));
      } else {
        Store16<S>(ob + j, lanes, u);
      }
      _mm512_mask_storeu_ps(m_new + j, lanes, m);
      _mm512_mask_storeu_ps(v_new + j, lanes, v);
      m_max = _mm512_mask_max_epu32(m_max, lanes, m_max, _mm512_and_si512(_mm512_castps_si512(m), magnitude));
      v_max = _mm512_mask_max_epu32(v_max, lanes, v_max, _mm512_and_si512(_mm512_castps_si512(v), magnitude));
    }
    const uint32_t m_bits = _mm512_reduce_max_epu32(m_max), v_bits = _mm512_reduce_max_epu32(v_max);
    float m_absmax, v_absmax;
    std::memcpy(&m_absmax, &m_bits, 4);
    std::memcpy(&v_absmax, &v_bits, 4);
    Nearest512<kMBits>(mk, m_new, count, m_absmax, mi, m_codes);
    Nearest512<kVBits>(vk, v_new, count, v_absmax, vi, v_codes);
    FinishBlock<kMBits>(mk.zero, count, block_size, mi, m_codes);
    FinishBlock<kVBits>(vk.zero, count, block_size, vi, v_codes);
    row.m.scales[b] = m_absmax;
    row.v.scales[b] = v_absmax;
  }
}

struct QuantizedWork {
  Hyper h;
  std::vector<QuantizedRow> rows;
  Code mc, vc;
  bool bf16, apply;
  int64_t block_size;
  std::vector<Chunk> chunks;  // a row (Chunk::leaf) and a range of its blocks
  std::atomic<size_t> next{0};
  std::atomic<size_t> done{0};

  Ranks mk, vk;
  bool avx512;  // both codes' Ranks proven and the CPU has AVX-512
  bool vbmi;    // and AVX-512 VBMI, for Values64

  template <typename S, bool kApply, bool kDecoupled, int kMBits, int kVBits>
  void RunBlocks(const QuantizedRow& row, int64_t first, int64_t last, Scratch& scratch) {
    if (avx512) return RunQuantized512<S, kApply, kDecoupled, kMBits, kVBits>(h, row, mk, vk, block_size, first, last, vbmi, scratch);
    RunQuantized<S, kApply, kDecoupled, kMBits, kVBits>(h, row, mc, vc, block_size, first, last, scratch);
  }

  template <typename S, bool kApply, bool kDecoupled>
  void RunBits(const QuantizedRow& row, int64_t first, int64_t last, Scratch& scratch) {
    switch ((mc.bits == 8 ? 2 : 0) + (vc.bits == 8 ? 1 : 0)) {
      case 3: return RunBlocks<S, kApply, kDecoupled, 8, 8>(row, first, last, scratch);
      case 2: return RunBlocks<S, kApply, kDecoupled, 8, 4>(row, first, last, scratch);
      case 1: return RunBlocks<S, kApply, kDecoupled, 4, 8>(row, first, last, scratch);
      default: return RunBlocks<S, kApply, kDecoupled, 4, 4>(row, first, last, scratch);
    }
  }

  template <typename S>
  void Dispatch(const QuantizedRow& row, int64_t first, int64_t last, Scratch& scratch) {
    if (!apply) return RunBits<S, false, false>(row, first, last, scratch);
    h[kHasDecay] != 0.0f ? RunBits<S, true, true>(row, first, last, scratch)
                         : RunBits<S, true, false>(row, first, last, scratch);
  }

  void Drain() {
    Scratch scratch(block_size);
    const size_t width = bf16 ? sizeof(uint16_t) : sizeof(float);
    for (size_t c; (c = next.fetch_add(1)) < chunks.size();) {
      const QuantizedRow& row = rows[chunks[c].leaf];
      const int64_t first = chunks[c].begin, last = chunks[c].end;
      if (apply) CopyIfDistinct(row.out, row.p_in, first * block_size, std::min(row.n, last * block_size), width);
      for (const QuantizedMoment* q : {&row.m, &row.v}) {
        const int64_t bytes = block_size * (q == &row.m ? mc.bits : vc.bits) / 8;
        CopyIfDistinct(q->codes, q->codes_in, first * bytes, last * bytes, 1);
        CopyIfDistinct(q->scales, q->scales_in, first, last, sizeof(float));
      }
      bf16 ? Dispatch<BF16>(row, first, last, scratch) : Dispatch<F32>(row, first, last, scratch);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Checks one moment's tables (operands first..first+4) and fills ``code``; an error names what is wrong.
// Every index the step will compute is proven in range here: key − first < n_start for magnitudes
// in [floor, 1], start[·] + (a > midpoint) < n_magnitudes, and the code indices < 2^bits.
ffi::Error CheckCode(ffi::RemainingArgs& args, size_t first, int32_t bits, bool is_signed, int64_t key_first,
                     float floor, Code* code) {
  if (bits != 8 && bits != 4) return ffi::Error::InvalidArgument("adaptx: quantized moments have 8 or 4 bits");
  auto values = args.get<ffi::AnyBuffer>(first).value();
  auto start = args.get<ffi::AnyBuffer>(first + 1).value();
  auto midpoints = args.get<ffi::AnyBuffer>(first + 2).value();
  auto positive = args.get<ffi::AnyBuffer>(first + 3).value();
  auto negative = args.get<ffi::AnyBuffer>(first + 4).value();
  if (values.element_type() != ffi::DataType::F32 || midpoints.element_type() != ffi::DataType::F32 ||
      start.element_type() != ffi::DataType::U8 || positive.element_type() != ffi::DataType::U8 ||
      negative.element_type() != ffi::DataType::U8)
    return ffi::Error::InvalidArgument("adaptx: code tables have the wrong dtypes");
  const size_t n_codes = size_t{1} << bits, n_magnitudes = midpoints.element_count();
  if (values.element_count() != n_codes || positive.element_count() != n_magnitudes ||
      negative.element_count() != n_magnitudes || n_magnitudes < 2)
    return ffi::Error::InvalidArgument("adaptx: code tables of the wrong sizes");
  uint32_t floor_bits, one_bits;
  const float one = 1.0f;
  std::memcpy(&floor_bits, &floor, 4);
  std::memcpy(&one_bits, &one, 4);
  if (!(floor > 0.0f) || key_first != (floor_bits >> kKeyShift) ||
      static_cast<int64_t>(start.element_count()) != (one_bits >> kKeyShift) - key_first + 1)
    return ffi::Error::InvalidArgument("adaptx: the code's key table does not cover [floor, 1]");
  const int32_t zero = is_signed ? (1 << (bits - 1)) - 1 : 0;
  code->bits = bits;
  code->values = static_cast<const float*>(values.untyped_data());
  code->first = static_cast<uint32_t>(key_first);
  code->floor = floor;
  code->is_signed = is_signed;
  code->zero = zero;
  // The checks below read every table entry, and a step is often a call per leaf with the same few
  // formats: tables equal, byte for byte, to ones that passed (with the same attributes) reuse them.
  const uint8_t header[] = {static_cast<uint8_t>(bits), static_cast<uint8_t>(is_signed)};
  const std::pair<const void*, size_t> given[] = {
      {header, sizeof(header)}, {&key_first, sizeof(key_first)}, {&floor, sizeof(floor)},
      {start.untyped_data(), start.size_bytes()}, {midpoints.untyped_data(), midpoints.size_bytes()},
      {positive.untyped_data(), positive.size_bytes()}, {negative.untyped_data(), negative.size_bytes()}};
  static std::mutex lock;
  static std::vector<std::shared_ptr<const KeyTables>> checked;
  auto same = [&](const KeyTables& k) {
    size_t at = 0;
    for (auto [data, bytes] : given) {
      if (at + bytes > k.given.size() || std::memcmp(k.given.data() + at, data, bytes) != 0) return false;
      at += bytes;
    }
    return at == k.given.size();
  };
  {
    std::lock_guard<std::mutex> guard(lock);
    for (const auto& k : checked)
      if (same(*k)) {
        code->keys = k;
        return ffi::Error::Success();
      }
  }
  const uint8_t* s = static_cast<const uint8_t*>(start.untyped_data());
  // j = start + (a > midpoints[start]) < n_magnitudes: every start is in range, and the last
  // midpoint is +inf, so no magnitude steps past it.
  const float* mids = static_cast<const float*>(midpoints.untyped_data());
  if (!(mids[n_magnitudes - 1] == INFINITY)) return ffi::Error::InvalidArgument("adaptx: the midpoints lack their +inf end");
  for (size_t i = 0; i < start.element_count(); ++i)
    if (s[i] >= n_magnitudes) return ffi::Error::InvalidArgument("adaptx: a key table entry is out of range");
  const uint8_t* pos = static_cast<const uint8_t*>(positive.untyped_data());
  const uint8_t* neg = static_cast<const uint8_t*>(negative.untyped_data());
  for (size_t i = 0; i < n_magnitudes; ++i)
    if (pos[i] >= n_codes || neg[i] >= n_codes || (!is_signed && pos[i] != neg[i]))
      return ffi::Error::InvalidArgument("adaptx: a code index is out of range (or signed in an unsigned code)");
  // the rank → index maps of quantize.tables, as the loop computes them
  for (size_t i = 0; i < n_magnitudes; ++i) {
    const int32_t r = static_cast<int32_t>(i);
    if (pos[i] != zero + r || (is_signed && neg[i] != std::max(zero - r, 0)))
      return ffi::Error::InvalidArgument("adaptx: the code's index tables are not a sorted code's");
  }
  auto keys = std::make_shared<KeyTables>();
  for (auto [data, bytes] : given)
    keys->given.insert(keys->given.end(), static_cast<const uint8_t*>(data), static_cast<const uint8_t*>(data) + bytes);
  keys->start.assign(s, s + start.element_count());
  keys->cut.resize(start.element_count());
  for (size_t i = 0; i < start.element_count(); ++i) keys->cut[i] = mids[s[i]];
  code->keys = keys;
  std::lock_guard<std::mutex> guard(lock);
  if (checked.size() < 64) checked.push_back(keys);  // a few formats in practice; a bound all the same
  return ffi::Error::Success();
}

// Operands, after the hyperparameter vector: [p,] g, m codes, m scales, v codes, v scales, then m's
// five tables and v's five (p only for the one-pass step). Results: the param (aliasing p) or the
// direction (aliasing g), then m codes, m scales, v codes, v scales (aliasing theirs). The
// gradient is ``rows`` rows of equal length (the shards of a sharded leaf, each blocked on its
// own; the one-pass step takes a whole unsharded leaf, one row).
template <bool kApply>  // the one-pass step (the param in place), or Adam's direction
ffi::Error QuantizedAdam(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                         ffi::RemainingRets rets, int64_t block_size, int32_t m_bits, int32_t v_bits,
                         bool m_signed, bool v_signed, int64_t m_first, int64_t v_first, float m_floor,
                         float v_floor, int64_t parallel_min, int32_t vector, int64_t rows) {
  const size_t lead = kApply ? 1 : 0;  // the param's operand
  if (hyper.element_count() != kSlots) return ffi::Error::InvalidArgument("adaptx: wrong hyperparameter vector");
  if (args.size() != lead + 15 || rets.size() != 5)
    return ffi::Error::InvalidArgument("adaptx: a quantized step takes one leaf and its tables");
  if (block_size < 2 || block_size % 2) return ffi::Error::InvalidArgument("adaptx: block_size must be even");
  auto work = std::make_shared<QuantizedWork>();
  std::memcpy(work->h.h, hyper.typed_data(), sizeof(work->h.h));
  if (auto e = CheckCode(args, lead + 5, m_bits, m_signed, m_first, m_floor, &work->mc); e.failure()) return e;
  if (auto e = CheckCode(args, lead + 10, v_bits, v_signed, v_first, v_floor, &work->vc); e.failure()) return e;
  for (auto [code, ranks, at] : {std::tuple{&work->mc, &work->mk, lead + 7}, std::tuple{&work->vc, &work->vk, lead + 12}}) {
    auto midpoints = args.get<ffi::AnyBuffer>(at).value();
    BuildRanks(*code, static_cast<const float*>(midpoints.untyped_data()),
               static_cast<int64_t>(midpoints.element_count()), ranks);
  }
  // vector: 0 the portable loops, 1 the AVX-512 ones where the CPU has them and the proof holds
  // (with VBMI where it has that too), 2 the same or an error, 3 the AVX-512 ones without VBMI or an
  // error (2 and 3 are the tests' way to know which loops ran).
  work->avx512 = vector != 0 && HasAvx512() && work->mk.usable && work->vk.usable;
  work->vbmi = work->avx512 && vector != 3 && HasVbmi();
  if (vector >= 2 && !work->avx512)
    return ffi::Error::InvalidArgument(HasAvx512() ? "adaptx: the code's ranks are not proven for the AVX-512 loops"
                                                   : "adaptx: this CPU lacks AVX-512");
  auto g = args.get<ffi::AnyBuffer>(lead).value();
  auto out = rets.get<ffi::AnyBuffer>(0).value();
  const auto type = g.element_type();
  if (type != ffi::DataType::F32 && type != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("adaptx: gradients must be float32 or bfloat16");
  const int64_t total = static_cast<int64_t>(g.element_count());
  if (out->element_type() != type || static_cast<int64_t>(out->element_count()) != total)
    return ffi::Error::InvalidArgument("adaptx: the result must have the gradient's dtype and size");
  const void* p_in = nullptr;
  if (kApply) {
    auto p = args.get<ffi::AnyBuffer>(0).value();
    if (p.element_type() != type || static_cast<int64_t>(p.element_count()) != total)
      return ffi::Error::InvalidArgument("adaptx: gradients must have the params' dtype and size");
    p_in = p.untyped_data();
  }
  if (rows < 1 || total % rows) return ffi::Error::InvalidArgument("adaptx: the gradient does not split into its rows");
  const int64_t n = total / rows;
  const int64_t blocks = (n + block_size - 1) / block_size;  // per row
  const int32_t bits[2] = {m_bits, v_bits};
  QuantizedMoment moments[2];
  for (int k = 0; k < 2; ++k) {
    auto codes = args.get<ffi::AnyBuffer>(lead + 1 + 2 * k).value();
    auto scales = args.get<ffi::AnyBuffer>(lead + 2 + 2 * k).value();
    auto codes_out = rets.get<ffi::AnyBuffer>(1 + 2 * k).value();
    auto scales_out = rets.get<ffi::AnyBuffer>(2 + 2 * k).value();
    if (codes.element_type() != ffi::DataType::U8 || codes_out->element_type() != ffi::DataType::U8 ||
        scales.element_type() != ffi::DataType::F32 || scales_out->element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument("adaptx: quantized moments are uint8 codes and float32 scales");
    const int64_t code_bytes = rows * blocks * block_size * bits[k] / 8;
    if (static_cast<int64_t>(codes.element_count()) != code_bytes ||
        static_cast<int64_t>(codes_out->element_count()) != code_bytes ||
        static_cast<int64_t>(scales.element_count()) != rows * blocks ||
        static_cast<int64_t>(scales_out->element_count()) != rows * blocks)
      return ffi::Error::InvalidArgument("adaptx: a quantized moment does not hold its leaf's blocks");
    moments[k] = QuantizedMoment{static_cast<const uint8_t*>(codes.untyped_data()),
                                 static_cast<uint8_t*>(codes_out->untyped_data()),
                                 static_cast<const float*>(scales.untyped_data()),
                                 static_cast<float*>(scales_out->untyped_data())};
  }
  work->bf16 = type == ffi::DataType::BF16;
  work->apply = kApply;
  work->block_size = block_size;
  const size_t width = work->bf16 ? sizeof(uint16_t) : sizeof(float);
  auto at = [](auto* base, int64_t offset) { return base == nullptr ? base : base + offset; };
  const int64_t blocks_per_chunk = std::max<int64_t>(1, kChunk / block_size);
  for (int64_t r = 0; r < rows; ++r) {
    QuantizedMoment m = moments[0], v = moments[1];
    const int64_t m_bytes = blocks * block_size * m_bits / 8, v_bytes = blocks * block_size * v_bits / 8;
    m = {at(m.codes_in, r * m_bytes), at(m.codes, r * m_bytes), at(m.scales_in, r * blocks), at(m.scales, r * blocks)};
    v = {at(v.codes_in, r * v_bytes), at(v.codes, r * v_bytes), at(v.scales_in, r * blocks), at(v.scales, r * blocks)};
    const int64_t offset = r * n * static_cast<int64_t>(width);
    work->rows.push_back({static_cast<char*>(out->untyped_data()) + offset,
                          static_cast<const char*>(g.untyped_data()) + offset,
                          kApply ? static_cast<const char*>(p_in) + offset : nullptr, m, v, n});
    for (int64_t b = 0; b < blocks; b += blocks_per_chunk)
      work->chunks.push_back({static_cast<int32_t>(r), b, std::min(blocks, b + blocks_per_chunk)});
  }
  DrainOnPool(pool, work, total, parallel_min);
  return ffi::Error::Success();
}


}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdaptxFusedStep, FusedStep,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<int32_t>("optimizer")
                                  .Attr<int64_t>("parallel_min")
                                  .Attr<bool>("flat")
                                  .Attr<ffi::Span<const int64_t>>("offsets"));

// The two quantized handlers read the same formats and attributes.
auto QuantizedBinding() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()
      .RemainingArgs()
      .RemainingRets()
      .Attr<int64_t>("block_size")
      .Attr<int32_t>("m_bits")
      .Attr<int32_t>("v_bits")
      .Attr<bool>("m_signed")
      .Attr<bool>("v_signed")
      .Attr<int64_t>("m_first")
      .Attr<int64_t>("v_first")
      .Attr<float>("m_floor")
      .Attr<float>("v_floor")
      .Attr<int64_t>("parallel_min")
      .Attr<int32_t>("vector")
      .Attr<int64_t>("rows");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdaptxQuantizedStep, QuantizedAdam<true>, QuantizedBinding());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdaptxQuantizedDirection, QuantizedAdam<false>, QuantizedBinding());
