// Block-sparse convolution / dense layer on CPU as an implicit GEMM (no im2col).
//
// Weight: blocked-ELL over the GEMM view (K = kh*kw*C, N): for each block column j (bw output
// channels) `maxk` stored blocks values[j, m] of shape (bh, bw) and their row-block index
// rows[j, m] (-1: padding, skipped). A block's bh rows are one tap (i, j) and channels
// [c0, c0 + bh) (C % bh == 0), or, for few input channels (an RGB stem), whole taps
// (i, j) .. (i, j + bh/C - 1) of one kernel row (bh % C == 0, kw*C % bh == 0, no dilation):
// either way a contiguous run of the NHWC input, so the kernel reads the kept row blocks
// straight from it, window by window (a run partly in the padding is gathered first).
//
// Micro-kernel: MR output pixels x (8 or 16 * NV) output channels held in registers; per kept
// weight row it loads NV weight vectors and broadcasts one input value per pixel. The optional
// epilogue (a per-channel bias, a residual shaped like y, a ReLU) is applied in registers
// before the store, so a folded BatchNorm, residual add and ReLU cost no pass over memory; the
// SIMD paths store with non-temporal stores where y allows (conv.h: CanStream). AVX-512,
// AVX2+FMA or scalar code, chosen at run time (CPUID). Work items (a group of pixels x a range
// of block columns) are spread over XLA's intra-op thread pool.
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "conv.h"

namespace ffi = xla::ffi;

namespace jaxsparse {
namespace {

constexpr int64_t kTilesPerItem = 8;

// Where a stored block reads its input: the window offset of its tap (i * dh, j * dw) and its
// first channel c0. Computed once per call, so the micro-kernel does no division per block.
struct BlockTap {
  int64_t di, dj, c0;
  bool valid;  // False for padding (-1) or an out-of-range row: the block is skipped.
};

struct BlockWeight {
  const float* values;  // (cb, maxk, bh, bw)
  const BlockTap* taps;  // (cb, maxk)
  int64_t cb, maxk, bh, bw;
  int64_t span;  // Taps one block covers: bh / C when bh > C (an RGB stem), else 1.
};

// Whether blocks bh rows high can be read as runs of the input: bh divides C, or bh spans
// whole taps of one kernel row (bh % C == 0, kw * C % bh == 0) and the taps are adjacent.
inline bool BlocksAreRuns(const Conv& g, int64_t bh) {
  return g.C % bh == 0 || (bh % g.C == 0 && (g.kw * g.C) % bh == 0 && g.dw == 1);
}

// The taps of the stored blocks `rows` (cb * maxk row-block indices) of a weight with
// kblocks row blocks of bh rows.
std::vector<BlockTap> BlockTaps(const Conv& g, const int32_t* rows, int64_t n, int64_t bh,
                                int64_t kblocks) {
  std::vector<BlockTap> taps(n);
  for (int64_t b = 0; b < n; ++b) {
    const int64_t r = rows[b];
    if (r < 0 || r >= kblocks) {
      taps[b] = BlockTap{0, 0, 0, false};
      continue;
    }
    const int64_t k0 = r * bh, tap = k0 / g.C, i = tap / g.kw;
    taps[b] = BlockTap{i * g.dh, (tap - i * g.kw) * g.dw, k0 - tap * g.C, true};
  }
  return taps;
}

// Input row pointers of MR pixels for a stored block (its run of bh input values), or
// `zeros` where its window falls in the padding. A block spanning several taps whose run is
// partly in the padding is gathered into the pixel's bh floats of `scratch`.
template <int MR>
inline void BlockRows(const Conv& g, const BlockWeight& w, const Pixel* px, const BlockTap& t,
                      const float* zeros, float* scratch, const float** out) {
  for (int p = 0; p < MR; ++p) {
    const int64_t ih = px[p].ih0 + t.di, iw = px[p].iw0 + t.dj;
    if (ih < 0 || ih >= g.H || iw + w.span <= 0 || iw >= g.W) {
      out[p] = zeros;
    } else if (iw >= 0 && iw + w.span <= g.W) {
      out[p] = px[p].image + (ih * g.W + iw) * g.C + t.c0;
    } else {
      float* dst = scratch + p * w.bh;
      for (int64_t s = 0; s < w.span; ++s) {
        const int64_t at = iw + s;
        if (at >= 0 && at < g.W)
          std::memcpy(dst + s * g.C, px[p].image + (ih * g.W + at) * g.C, g.C * sizeof(float));
        else
          std::memset(dst + s * g.C, 0, g.C * sizeof(float));
      }
      out[p] = dst;
    }
  }
}

// The micro-kernel (block_tile.inc) for each instruction set.
namespace scalar {
struct Vec {
  using T = float;
  static constexpr int kLanes = 1;
  static T Zero() { return 0.0f; }
  static T Load(const float* p) { return *p; }
  static T Set1(float x) { return x; }
  static T Fma(T a, T b, T c) { return a * b + c; }
  static T Add(T a, T b) { return a + b; }
  static T Relu(T a) { return a < 0.0f ? 0.0f : a; }
  static void Store(float* p, T v) { *p = v; }
  static void Stream(float* p, T v) { *p = v; }  // Never chosen: scalar plans store.
};
#include "block_tile.inc"
}  // namespace scalar

#if defined(__x86_64__)
// The vector type of one instruction set: REG registers of LANES floats, intrinsics MM_*.
#define JAXSPARSE_SIMD_VEC(REG, LANES, MM)                                  \
  struct Vec {                                                              \
    using T = REG;                                                          \
    static constexpr int kLanes = LANES;                                    \
    static T Zero() { return MM##_setzero_ps(); }                           \
    static T Load(const float* p) { return MM##_loadu_ps(p); }              \
    static T Set1(float x) { return MM##_set1_ps(x); }                      \
    static T Fma(T a, T b, T c) { return MM##_fmadd_ps(a, b, c); }          \
    static T Add(T a, T b) { return MM##_add_ps(a, b); }                    \
    /* max(0, a): a NaN stays NaN (the second operand is returned). */      \
    static T Relu(T a) { return MM##_max_ps(MM##_setzero_ps(), a); }        \
    static void Store(float* p, T v) { MM##_storeu_ps(p, v); }              \
    /* A non-temporal store: p aligned to the vector, no read for ownership. */ \
    static void Stream(float* p, T v) { MM##_stream_ps(p, v); }             \
  };

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
JAXSPARSE_SIMD_VEC(__m256, 8, _mm256)
#include "block_tile.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f")
namespace avx512 {
JAXSPARSE_SIMD_VEC(__m512, 16, _mm512)
#include "block_tile.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

// Column slices of `width` channels run by one micro-kernel call, and the call itself.
using TileFn = void (*)(const Conv&, const BlockWeight&, const Pixel*, int64_t, int64_t,
                        int64_t, const float*, float*, const Epilogue&, float*, int64_t);

struct Plan {
  TileFn tile;
  int mr;         // Pixels per micro-kernel call.
  int64_t width;  // Output channels per micro-kernel call.
  bool stream;    // Non-temporal stores of the result (fenced at the end of each item).
};

template <bool kStream>
Plan PlanFor(int64_t bw) {
#if defined(__x86_64__)
  if (HasAvx512()) {
    if (bw % 32 == 0) return {avx512::Tile<12, 2, kStream>, 12, 32, kStream};
    if (bw % 16 == 0) return {avx512::Tile<14, 1, kStream>, 14, 16, kStream};
  }
  if (HasAvx2Fma()) {
    if (bw % 16 == 0) return {avx2::Tile<6, 2, kStream>, 6, 16, kStream};
    return {avx2::Tile<12, 1, kStream>, 12, 8, kStream};
  }
#endif
  if (bw % 16 == 0) return {scalar::Tile<6, 16, false>, 6, 16, false};
  return {scalar::Tile<12, 8, false>, 12, 8, false};
}

Plan ChoosePlan(int64_t bw, bool stream) {
  return stream ? PlanFor<true>(bw) : PlanFor<false>(bw);
}

constexpr int kMaxMR = 14;

// One work item: a group of pixels (kTilesPerItem micro-tiles) x a range of block columns.
// Finishing whole output rows in one item keeps the input rows in L1 and writes y in lines.
void RunItem(const Conv& g, const BlockWeight& w, const Plan& plan, const float* x,
             const float* zeros, const Epilogue& e, int64_t group, int64_t col0, int64_t col1,
             float* y) {
  const int64_t P = g.pixels();
  const int64_t first = group * kTilesPerItem * plan.mr;
  thread_local std::vector<float> scratch;  // Gathered runs of blocks spanning taps.
  if (w.span > 1) scratch.resize(kMaxMR * w.bh);
  for (int64_t t = 0; t < kTilesPerItem; ++t) {
    const int64_t p0 = first + t * plan.mr;
    if (p0 >= P) break;
    const int64_t npx = std::min<int64_t>(plan.mr, P - p0);
    Pixel px[kMaxMR];
    TilePixels(g, x, p0, plan.mr, npx, zeros, px);
    for (int64_t col = col0; col < col1; ++col)
      for (int64_t off = 0; off < w.bw; off += plan.width)
        plan.tile(g, w, px, npx, col, off, zeros, scratch.data(), e, y, p0);
  }
#if defined(__x86_64__)
  if (plan.stream) _mm_sfence();  // The item's stores are visible before it counts as done.
#endif
}

void Run(ffi::ThreadPool& pool, const Conv& g, const BlockWeight& w, const Epilogue& e,
         const float* x, float* y) {
  const std::vector<float> zeros(w.bh, 0.0f);
  const bool stream = CanStream(y, g.N, ActivationBytes(g, e));
  const Plan plan = ChoosePlan(w.bw, stream);
  const int64_t groups = (g.pixels() + kTilesPerItem * plan.mr - 1) / (kTilesPerItem * plan.mr);
  // Few pixel groups (small images, batch 1): split the columns too, so every thread works.
  const int64_t want = 8 * std::max<int64_t>(pool.num_threads(), 1);
  const int64_t splits = std::min<int64_t>(w.cb, std::max<int64_t>(1, want / groups));
  ParallelFor(pool, groups * splits, [&](int64_t item) {
    const int64_t group = item / splits, part = item % splits;
    RunItem(g, w, plan, x, zeros.data(), e, group, w.cb * part / splits,
            w.cb * (part + 1) / splits, y);
  });
}

ffi::Error BlockSparseConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> rows,
                           ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> residual,
                           ffi::ResultBuffer<ffi::F32> y, ConvWindowAttrs window) {
  Conv g;
  const std::string bad = MakeConv(x.dimensions(), y->dimensions(), window, &g);
  if (!bad.empty()) return ffi::Error::InvalidArgument("jaxsparse_block_sparse_conv: " + bad);
  const auto vd = values.dimensions();
  const std::string bad_weight = CheckWeight(vd, rows.dimensions());
  if (!bad_weight.empty())
    return ffi::Error::InvalidArgument("jaxsparse_block_sparse_conv: " + bad_weight);
  const int64_t cb = vd[0], maxk = vd[1], bh = vd[2], bw = vd[3];
  if (bh < 1 || bw < 8 || bw % 8 || !BlocksAreRuns(g, bh) || cb * bw != g.N)
    return ffi::Error::InvalidArgument(
        "jaxsparse_block_sparse_conv: needs bw % 8 == 0, cb * bw == N and C % bh == 0 (or "
        "bh % C == 0, kw * C % bh == 0 and no dilation); got bh=" + std::to_string(bh) +
        " bw=" + std::to_string(bw) + " C=" + std::to_string(g.C) + " kw=" +
        std::to_string(g.kw) + " N=" + std::to_string(g.N));
  Epilogue e;
  const std::string bad_epilogue = MakeEpilogue(bias, residual, g, window.relu, &e);
  if (!bad_epilogue.empty())
    return ffi::Error::InvalidArgument("jaxsparse_block_sparse_conv: " + bad_epilogue);
  const std::vector<BlockTap> taps =
      BlockTaps(g, rows.typed_data(), cb * maxk, bh, g.K() / bh);
  const BlockWeight w{values.typed_data(), taps.data(), cb, maxk, bh, bw,
                      bh > g.C ? bh / g.C : 1};
  Run(pool, g, w, e, x.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseBlockSparseConvF32, jaxsparse::BlockSparseConv,
                              jaxsparse::SparseConvBinding());
