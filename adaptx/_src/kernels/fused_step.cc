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
