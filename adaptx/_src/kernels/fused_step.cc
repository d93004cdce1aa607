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
#include <thread>
#include <vector>

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
  // A small call runs on the calling thread alone (see PARALLEL_MIN in __init__.py).
  const int64_t helpers = total < parallel_min ? 0
      : std::min<int64_t>(pool.num_threads(), static_cast<int64_t>(work->chunks.size()) - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < work->chunks.size()) std::this_thread::yield();
  return ffi::Error::Success();
}


// ---------------------------------------------------------------------------------------------
// Adam with quantized moments (adaptx.Quantized, adaptx/_src/quantize.py): per block of B
// elements, dequantize m and v (code value × block absmax), step exactly as Run does, then
// requantize: the block's new absmax s, and for each element the code index nearest m/s,
// found from the same lookup tables the jnp path uses (quantize._tables), so the codes and
// scales match the jnp path's bit for bit. One pass per block: the moments move as 1 byte
// (or half a byte) per element each way instead of XLA's several float32 passes.

// One moment's format and tables, as quantize.tables builds them (widened to int32 once per
// call, so that the loops below can use vector gathers).
struct Code {
  int32_t bits;
  const float* values;            // 2^bits code values, sorted
  std::vector<int32_t> start;     // per float32 key cell: magnitude midpoints below the cell
  std::vector<float> cut;         // per key cell: midpoints[start], the one midpoint it may hold
  uint32_t first; float floor;
  bool is_signed;
  // The sorted code puts magnitude rank r at zero + r (x >= 0) and zero − r, or 0 for the
  // absmax 1 that a signed code lacks as −1 (x < 0): checked against the tables in CheckCode,
  // and arithmetic here, where a third table lookup would cost a third emulated gather.
  int32_t zero;                   // the index of 0 (also the padding elements of the last block)
};

struct QuantizedMoment {
  const uint8_t* codes_in; uint8_t* codes;
  const float* scales_in; float* scales;
};

struct QuantizedLeaf {
  void* p; const void* g; const void* p_in;
  QuantizedMoment m, v;
  int64_t n;
  bool bf16;
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
  const int32_t* __restrict start = code.start.data();
  const float* __restrict cut = code.cut.data();
  const int32_t zero = code.zero;
  const bool is_signed = code.is_signed;
  const float floor = code.floor;
  const int32_t first = static_cast<int32_t>(code.first);
  for (int64_t j = 0; j < count; ++j) {
    const float normal = x[j] * inverse;
    const float a = std::min(std::max(std::fabs(normal), floor), 1.0f);
    uint32_t key;
    std::memcpy(&key, &a, 4);
    const int32_t cell = static_cast<int32_t>(key >> 13) - first;
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

template <typename S, bool kDecoupled, int kMBits, int kVBits>
__attribute__((target_clones("avx512f", "avx2", "default")))
void RunQuantized(const Hyper h, const QuantizedLeaf& leaf, const Code& mc, const Code& vc, int64_t block_size,
                  int64_t first_block, int64_t last_block, Scratch& scratch) {
  using T = typename S::T;
  T* __restrict p = static_cast<T*>(leaf.p);
  const T* __restrict g_in = static_cast<const T*>(leaf.g);
  const float neg_lr = S::Round(h[kNegLr]), decay = S::Round(h[kDecay]);
  const int64_t m_row = block_size * kMBits / 8, v_row = block_size * kVBits / 8;
  int32_t* __restrict mi = scratch.m_index.data();
  int32_t* __restrict vi = scratch.v_index.data();
  float* __restrict m_new = scratch.m_new.data();
  float* __restrict v_new = scratch.v_new.data();
  const float* __restrict m_values = mc.values;
  const float* __restrict v_values = vc.values;
  for (int64_t b = first_block; b < last_block; ++b) {
    const int64_t begin = b * block_size, count = std::min(leaf.n - begin, block_size);
    uint8_t* m_codes = leaf.m.codes + b * m_row;
    uint8_t* v_codes = leaf.v.codes + b * v_row;
    const float m_scale = leaf.m.scales[b], v_scale = leaf.v.scales[b];
    Unpack<kMBits>(m_codes, block_size, mi);
    Unpack<kVBits>(v_codes, block_size, vi);
    T* __restrict pb = p + begin;
    const T* __restrict gb = g_in + begin;
    // Dequantize, then Run's step on the float32 moments: two loops, each of which vectorizes
    // (the gathers kept the one loop scalar).
    for (int64_t j = 0; j < count; ++j) {
      m_new[j] = m_values[mi[j]] * m_scale;
      v_new[j] = v_values[vi[j]] * v_scale;
    }
    for (int64_t j = 0; j < count; ++j) {
      float g = S::Load(gb[j]);
      float x = S::Load(pb[j]);
      float m = m_new[j];
      float v = v_new[j];
      float u = S::Round(Direction<kAdam>(h, g, m, v));
      if (kDecoupled) u = S::Round(u + S::Round(decay * x));
      u = S::Round(neg_lr * u);
      pb[j] = S::Store(x + u);
      m_new[j] = m;
      v_new[j] = v;
    }
    Requantize<kMBits>(mc, m_new, count, block_size, mi, m_codes, leaf.m.scales + b);
    Requantize<kVBits>(vc, v_new, count, block_size, vi, v_codes, leaf.v.scales + b);
  }
}

struct QuantizedWork {
  Hyper h;
  QuantizedLeaf leaf;
  Code mc, vc;
  int64_t block_size, blocks_per_chunk, chunks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  template <typename S, bool kDecoupled>
  void RunBits(int64_t first, int64_t last, Scratch& scratch) {
    const int key = (mc.bits == 8 ? 2 : 0) + (vc.bits == 8 ? 1 : 0);
    switch (key) {
      case 3: return RunQuantized<S, kDecoupled, 8, 8>(h, leaf, mc, vc, block_size, first, last, scratch);
      case 2: return RunQuantized<S, kDecoupled, 8, 4>(h, leaf, mc, vc, block_size, first, last, scratch);
      case 1: return RunQuantized<S, kDecoupled, 4, 8>(h, leaf, mc, vc, block_size, first, last, scratch);
      default: return RunQuantized<S, kDecoupled, 4, 4>(h, leaf, mc, vc, block_size, first, last, scratch);
    }
  }

  void Drain() {
    Scratch scratch(block_size);
    const size_t width = leaf.bf16 ? sizeof(uint16_t) : sizeof(float);
    const int64_t blocks = (leaf.n + block_size - 1) / block_size;
    const bool decoupled = h[kHasDecay] != 0.0f;
    for (int64_t c; (c = next.fetch_add(1)) < chunks;) {
      const int64_t first = c * blocks_per_chunk, last = std::min(blocks, first + blocks_per_chunk);
      const int64_t begin = first * block_size, end = std::min(leaf.n, last * block_size);
      CopyIfDistinct(leaf.p, leaf.p_in, begin, end, width);
      for (const QuantizedMoment* q : {&leaf.m, &leaf.v}) {
        const int64_t row = block_size * (q == &leaf.m ? mc.bits : vc.bits) / 8;
        CopyIfDistinct(q->codes, q->codes_in, first * row, last * row, 1);
        CopyIfDistinct(q->scales, q->scales_in, first, last, sizeof(float));
      }
      if (leaf.bf16) {
        decoupled ? RunBits<BF16, true>(first, last, scratch) : RunBits<BF16, false>(first, last, scratch);
      } else {
        decoupled ? RunBits<F32, true>(first, last, scratch) : RunBits<F32, false>(first, last, scratch);
      }
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
  if (!(floor > 0.0f) || key_first != (floor_bits >> 13) ||
      static_cast<int64_t>(start.element_count()) != (one_bits >> 13) - key_first + 1)
    return ffi::Error::InvalidArgument("adaptx: the code's key table does not cover [floor, 1]");
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
  const int32_t zero = is_signed ? (1 << (bits - 1)) - 1 : 0;
  for (size_t i = 0; i < n_magnitudes; ++i) {
    const int32_t r = static_cast<int32_t>(i);
    if (pos[i] != zero + r || (is_signed && neg[i] != std::max(zero - r, 0)))
      return ffi::Error::InvalidArgument("adaptx: the code's index tables are not a sorted code's");
  }
  code->bits = bits;
  code->values = static_cast<const float*>(values.untyped_data());
  code->start.assign(s, s + start.element_count());
  code->cut.resize(start.element_count());
  for (size_t i = 0; i < start.element_count(); ++i) code->cut[i] = mids[s[i]];
  code->first = static_cast<uint32_t>(key_first);
  code->floor = floor;
  code->is_signed = is_signed;
  code->zero = zero;
  return ffi::Error::Success();
}

// Operands: hyper, p, g, m codes, m scales, v codes, v scales, then m's five tables and v's five.
// Results (aliasing operands 1, 3, 4, 5, 6): p, m codes, m scales, v codes, v scales.
ffi::Error QuantizedStep(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> hyper, ffi::RemainingArgs args,
                         ffi::RemainingRets rets, int64_t block_size, int32_t m_bits, int32_t v_bits,
                         bool m_signed, bool v_signed, int64_t m_first, int64_t v_first, float m_floor,
                         float v_floor, int64_t parallel_min) {
  if (hyper.element_count() != kSlots) return ffi::Error::InvalidArgument("adaptx: wrong hyperparameter vector");
  if (args.size() != 16 || rets.size() != 5)
    return ffi::Error::InvalidArgument("adaptx: a quantized step takes one leaf and its tables");
  if (block_size < 2 || block_size % 2) return ffi::Error::InvalidArgument("adaptx: block_size must be even");
  auto work = std::make_shared<QuantizedWork>();
  std::memcpy(work->h.h, hyper.typed_data(), sizeof(work->h.h));
  if (auto e = CheckCode(args, 6, m_bits, m_signed, m_first, m_floor, &work->mc); e.failure()) return e;
  if (auto e = CheckCode(args, 11, v_bits, v_signed, v_first, v_floor, &work->vc); e.failure()) return e;
  auto p = args.get<ffi::AnyBuffer>(0).value();
  auto g = args.get<ffi::AnyBuffer>(1).value();
  auto p_out = rets.get<ffi::AnyBuffer>(0).value();
  const auto type = p.element_type();
  if (type != ffi::DataType::F32 && type != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("adaptx: params must be float32 or bfloat16");
  if (g.element_type() != type || p_out->element_type() != type)
    return ffi::Error::InvalidArgument("adaptx: gradients and results must have the params' dtype");
  const int64_t n = static_cast<int64_t>(p.element_count());
  if (static_cast<int64_t>(g.element_count()) != n || static_cast<int64_t>(p_out->element_count()) != n)
    return ffi::Error::InvalidArgument("adaptx: gradients and results must have the params' size");
  const int64_t blocks = (n + block_size - 1) / block_size;
  QuantizedMoment* moments[2] = {&work->leaf.m, &work->leaf.v};
  const int32_t bits[2] = {m_bits, v_bits};
  for (int k = 0; k < 2; ++k) {
    auto codes = args.get<ffi::AnyBuffer>(2 + 2 * k).value();
    auto scales = args.get<ffi::AnyBuffer>(3 + 2 * k).value();
    auto codes_out = rets.get<ffi::AnyBuffer>(1 + 2 * k).value();
    auto scales_out = rets.get<ffi::AnyBuffer>(2 + 2 * k).value();
    if (codes.element_type() != ffi::DataType::U8 || codes_out->element_type() != ffi::DataType::U8 ||
        scales.element_type() != ffi::DataType::F32 || scales_out->element_type() != ffi::DataType::F32)
      return ffi::Error::InvalidArgument("adaptx: quantized moments are uint8 codes and float32 scales");
    const int64_t code_bytes = blocks * block_size * bits[k] / 8;
    if (static_cast<int64_t>(codes.element_count()) != code_bytes ||
        static_cast<int64_t>(codes_out->element_count()) != code_bytes ||
        static_cast<int64_t>(scales.element_count()) != blocks ||
        static_cast<int64_t>(scales_out->element_count()) != blocks)
      return ffi::Error::InvalidArgument("adaptx: a quantized moment does not hold its leaf's blocks");
    *moments[k] = QuantizedMoment{static_cast<const uint8_t*>(codes.untyped_data()),
                                  static_cast<uint8_t*>(codes_out->untyped_data()),
                                  static_cast<const float*>(scales.untyped_data()),
                                  static_cast<float*>(scales_out->untyped_data())};
  }
  work->leaf.p = p_out->untyped_data();
  work->leaf.g = g.untyped_data();
  work->leaf.p_in = p.untyped_data();
  work->leaf.n = n;
  work->leaf.bf16 = type == ffi::DataType::BF16;
  work->block_size = block_size;
  work->blocks_per_chunk = std::max<int64_t>(1, kChunk / block_size);
  work->chunks = (blocks + work->blocks_per_chunk - 1) / work->blocks_per_chunk;
  const int64_t helpers = n < parallel_min ? 0 : std::min<int64_t>(pool.num_threads(), work->chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(AdaptxQuantizedStep, QuantizedStep,
                              ffi::Ffi::Bind()
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
                                  .Attr<int64_t>("parallel_min"));
