// Shared pieces of the jaxsparse CPU kernels: the convolution geometry, the output-pixel
// walk, CPU feature detection and a parallel-for on XLA's intra-op thread pool.
//
// Every kernel computes y = conv(x, W) with x NHWC (B, H, W, C), W in the GEMM view
// (kh*kw*C, N) whose row index is (i*kw + j)*C + c, and y NHWC (B, OH, OW, N). A dense layer
// is the 1x1 case with H = W = 1.
#ifndef JAXSPARSE_CPU_CONV_H_
#define JAXSPARSE_CPU_CONV_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace jaxsparse {

struct Conv {
  int64_t B, H, W, C, OH, OW, N;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;

  int64_t pixels() const { return B * OH * OW; }
  int64_t K() const { return kh * kw * C; }
};

// The attributes every sparse conv handler takes: the convolution window, and whether the
// epilogue ends with a ReLU (0 or 1).
struct ConvWindowAttrs {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, relu;
};

}  // namespace jaxsparse

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(jaxsparse::ConvWindowAttrs,
                                      StructMember<int64_t>("kh"), StructMember<int64_t>("kw"),
                                      StructMember<int64_t>("sh"), StructMember<int64_t>("sw"),
                                      StructMember<int64_t>("ph"), StructMember<int64_t>("pw"),
                                      StructMember<int64_t>("dh"), StructMember<int64_t>("dw"),
                                      StructMember<int64_t>("relu"));

namespace jaxsparse {

// The FFI signature shared by the sparse conv handlers: (thread pool; x NHWC f32, values f32,
// rows s32, bias f32 (N,) or empty, residual f32 shaped like y or empty) -> y NHWC f32, with
// the window and the ReLU flag as attributes.
inline auto SparseConvBinding() {
  return xla::ffi::Ffi::Bind()
      .Ctx<xla::ffi::ThreadPool>()
      .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
      .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
      .Arg<xla::ffi::Buffer<xla::ffi::S32>>()
      .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
      .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
      .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
      .Attrs<ConvWindowAttrs>();
}

// What the kernels apply to each output value before storing it, in this order:
// y = relu?(conv(x, W) + bias[n] + residual[p, n]). Null pointers are left out.
struct Epilogue {
  const float* bias;      // (N,) or nullptr.
  const float* residual;  // (pixels, N), y's layout, or nullptr.
  bool relu;

  bool any() const { return bias != nullptr || residual != nullptr || relu; }
};

// The bytes of activations a call reads and writes: x, y and the residual (f32).
inline int64_t ActivationBytes(const Conv& g, const Epilogue& e) {
  const int64_t out = g.pixels() * g.N;
  return 4 * (g.B * g.H * g.W * g.C + out * (e.residual != nullptr ? 2 : 1));
}

// The epilogue of a call from its optional buffers (empty = absent); "" when they fit y.
inline std::string MakeEpilogue(const xla::ffi::Buffer<xla::ffi::F32>& bias,
                                const xla::ffi::Buffer<xla::ffi::F32>& residual,
                                const Conv& g, int64_t relu, Epilogue* e) {
  const int64_t nb = bias.element_count(), nr = residual.element_count();
  if (nb != 0 && nb != g.N) return "bias must have N=" + std::to_string(g.N) + " entries or none";
  if (nr != 0 && nr != g.pixels() * g.N) return "residual must be shaped like y, or empty";
  if (relu != 0 && relu != 1) return "relu must be 0 or 1";
  *e = Epilogue{nb ? bias.typed_data() : nullptr, nr ? residual.typed_data() : nullptr,
                relu == 1};
  return "";
}

// Applies the epilogue to the stored output pixels [p0, p0 + npx) of y, channels [n0, n1):
// for kernels that store first (the rows are still in cache).
inline void EpilogueRows(const Conv& g, const Epilogue& e, int64_t p0, int64_t npx, int64_t n0,
                         int64_t n1, float* y) {
  for (int64_t p = p0; p < p0 + npx; ++p) {
    float* row = y + p * g.N;
    const float* res = e.residual == nullptr ? nullptr : e.residual + p * g.N;
    for (int64_t n = n0; n < n1; ++n) {
      float v = row[n];
      if (e.bias != nullptr) v += e.bias[n];
      if (res != nullptr) v += res[n];
      row[n] = e.relu && v < 0.0f ? 0.0f : v;
    }
  }
}

// Builds and checks the geometry from the buffers and the window; "" when it is valid.
inline std::string MakeConv(const xla::ffi::Span<const int64_t>& xd,
                            const xla::ffi::Span<const int64_t>& yd, const ConvWindowAttrs& a,
                            Conv* g) {
  if (xd.size() != 4 || yd.size() != 4) return "x and y must be rank 4 (NHWC)";
  *g = Conv{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], yd[3],
            a.kh, a.kw, a.sh, a.sw, a.ph, a.pw, a.dh, a.dw};
  if (yd[0] != xd[0]) return "batch of x and y differ";
  if (a.kh < 1 || a.kw < 1 || a.sh < 1 || a.sw < 1 || a.dh < 1 || a.dw < 1)
    return "kernel size, strides and dilation must be >= 1";
  return "";
}

// One output pixel's source: the image and the top-left input coordinate of its window.
struct Pixel {
  const float* image;
  int64_t ih0, iw0;
};

inline Pixel PixelAt(const Conv& g, const float* x, int64_t p) {
  const int64_t per_image = g.OH * g.OW;
  const int64_t b = p / per_image, r = p % per_image;
  return Pixel{x + b * g.H * g.W * g.C, (r / g.OW) * g.sh - g.ph, (r % g.OW) * g.sw - g.pw};
}

// The pixels p0 .. p0+n-1 of a tile; those at or past `valid` (beyond the last output pixel)
// read only `zeros` and are computed but never stored.
inline void TilePixels(const Conv& g, const float* x, int64_t p0, int64_t n, int64_t valid,
                       const float* zeros, Pixel* px) {
  for (int64_t p = 0; p < n; ++p)
    px[p] = p < valid ? PixelAt(g, x, p0 + p) : Pixel{zeros, -(1 << 30), -(1 << 30)};
}

// Checks a blocked-ELL weight's buffers: values (cb, maxk, bh, bw), rows (cb, maxk); "" if OK.
inline std::string CheckWeight(const xla::ffi::Span<const int64_t>& vd,
                               const xla::ffi::Span<const int64_t>& rd) {
  if (vd.size() != 4 || rd.size() != 2 || rd[0] != vd[0] || rd[1] != vd[1])
    return "values must be (cb, maxk, bh, bw) and rows (cb, maxk)";
  return "";
}

// Address of x[b, ih, iw, c0] for tap (i, j) of a pixel, or `zeros` in the padding.
inline const float* TapRow(const Conv& g, const Pixel& px, int64_t i, int64_t j, int64_t c0,
                           const float* zeros) {
  const int64_t ih = px.ih0 + i * g.dh, iw = px.iw0 + j * g.dw;
  if (ih < 0 || ih >= g.H || iw < 0 || iw >= g.W) return zeros;
  return px.image + (ih * g.W + iw) * g.C + c0;
}

// Instruction sets the kernels have code for, best last.
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The best instruction set this CPU supports (CPUID), capped by the environment variable
// JAXSPARSE_CPU_ISA ("scalar", "avx2" or "avx512") so tests can run every code path.
inline Isa BestIsa() {
  static const Isa isa = [] {
    Isa best = Isa::kScalar;
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
#endif
    const char* cap = std::getenv("JAXSPARSE_CPU_ISA");
    const std::string c = cap == nullptr ? "" : cap;
    const Isa limit = c == "scalar" ? Isa::kScalar : c == "avx2" ? Isa::kAvx2 : Isa::kAvx512;
    return std::min(best, limit);
  }();
  return isa;
}

inline bool HasAvx2Fma() { return BestIsa() >= Isa::kAvx2; }
inline bool HasAvx512() { return BestIsa() >= Isa::kAvx512; }

// The last-level (L3) cache's size in bytes as Linux reports it for cpu0 (what a VM's guest
// sees, unlike glibc's sysconf, which can report the host's), or 0 when it is not known.
inline int64_t L3CacheBytes() {
  static const int64_t bytes = [] {
    for (int i = 0; i < 8; ++i) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i);
      std::FILE* lf = std::fopen((dir + "/level").c_str(), "r");
      if (lf == nullptr) break;
      int level = 0;
      const bool got_level = std::fscanf(lf, "%d", &level) == 1;
      std::fclose(lf);
      if (!got_level || level != 3) continue;
      std::FILE* sf = std::fopen((dir + "/size").c_str(), "r");
      if (sf == nullptr) return int64_t{0};
      long long size = 0;
      char unit = 0;
      const int n = std::fscanf(sf, "%lld%c", &size, &unit);
      std::fclose(sf);
      if (n < 1) return int64_t{0};
      return static_cast<int64_t>(size) * (unit == 'K' ? 1024 : unit == 'M' ? 1 << 20 : 1);
    }
    return int64_t{0};
  }();
  return bytes;
}

// When the kernels store their results with non-temporal (streaming) stores, from the
// environment variable JAXSPARSE_CPU_STREAM: "0" never, "1" always, unset (or anything else)
// when the call's activations (input, output, residual) are larger than half of L3 (always if
// L3's size is not known; the same share compiler/microbatch.py keeps a micro-batch within).
// Such an output does not stay in cache for the next layer, so skipping the read for
// ownership of every line is faster; one that fits (a micro-batched model's activations) is
// read back from L3 by the next layer, where a streaming store would send it to memory.
enum class StreamMode { kNever, kAlways, kLargerThanHalfL3 };

inline StreamMode StreamStores() {
  static const StreamMode mode = [] {
    const char* v = std::getenv("JAXSPARSE_CPU_STREAM");
    const std::string s = v == nullptr ? "" : v;
    return s == "0" ? StreamMode::kNever : s == "1" ? StreamMode::kAlways
                                                    : StreamMode::kLargerThanHalfL3;
  }();
  return mode;
}

// Whether y (n floats per pixel row) takes vector-aligned streaming stores: 64-byte aligned
// rows, every vector at a multiple of 16 floats, and StreamStores() says so for a call that
// reads `activation_bytes` of x (and residual) and writes y.
inline bool CanStream(const float* y, int64_t n, int64_t activation_bytes) {
  const StreamMode mode = StreamStores();
  if (mode == StreamMode::kNever || reinterpret_cast<uintptr_t>(y) % 64 != 0 || n % 16 != 0)
    return false;
  const int64_t l3 = L3CacheBytes();
  return mode == StreamMode::kAlways || l3 == 0 || 2 * activation_bytes > l3;
}

// Runs fn(i) for i in [0, n) on the caller and the thread pool's workers (dynamic
// scheduling). Workers hold only shared state, so one that starts late finds no work and exits.
template <typename F>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, const F& fn) {
  const int64_t threads = std::max<int64_t>(pool.num_threads(), 1);
  const int64_t helpers = std::min<int64_t>(threads, n) - 1;
  if (helpers <= 0) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto st = std::make_shared<State>();
  const F* f = &fn;
  auto work = [st, n, f]() {
    for (int64_t i; (i = st->next.fetch_add(1)) < n;) {
      (*f)(i);
      if (st->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(st->mu);
        st->cv.notify_all();
      }
    }
  };
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  std::unique_lock<std::mutex> lock(st->mu);
  st->cv.wait(lock, [&] { return st->done.load() == n; });
}

}  // namespace jaxsparse

#endif  // JAXSPARSE_CPU_CONV_H_
