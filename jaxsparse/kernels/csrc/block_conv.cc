// Block-sparse convolution / dense layer on CPU as an implicit GEMM (no im2col).
//
// Weight: blocked-ELL over the GEMM view (K = kh*kw*C, N): for each block column j (bw output
// channels) `maxk` stored blocks values[j, m] of shape (bh, bw) and their row-block index
// rows[j, m] (-1: padding, skipped). A block's bh rows are one tap (i, j) and channels
// [c0, c0 + bh) (C % bh == 0), so it reads a contiguous run of one input pixel: the kernel
// gathers the kept row blocks straight from the NHWC input, window by window.
//
// Micro-kernel: MR output pixels x (8 or 16 * NV) output channels held in registers; per kept
// weight row it loads NV weight vectors and broadcasts one input value per pixel. AVX-512,
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

struct BlockWeight {
  const float* values;  // (cb, maxk, bh, bw)
  const int32_t* rows;  // (cb, maxk)
  int64_t cb, maxk, bh, bw;
};

// Input row pointers of MR pixels for the kept block `r` (bh channels of one tap).
template <int MR>
inline void BlockRows(const Conv& g, const Pixel* px, int64_t r, int64_t bh,
                      const float* zeros, const float** out) {
  const int64_t k0 = r * bh, tap = k0 / g.C, c0 = k0 - tap * g.C;
  const int64_t i = tap / g.kw, j = tap - i * g.kw;
  for (int p = 0; p < MR; ++p) out[p] = TapRow(g, px[p], i, j, c0, zeros);
}

template <int MR, int NV>
void TileScalar(const Conv& g, const BlockWeight& w, const Pixel* px, int64_t npx,
                int64_t col, int64_t off, const float* zeros, float* y, int64_t p0) {
  constexpr int NR = 8 * NV;
  float acc[MR][NR] = {};
  const float* xr[MR];
  for (int64_t m = 0; m < w.maxk; ++m) {
    const int64_t r = w.rows[col * w.maxk + m];
    if (r < 0) continue;
    BlockRows<MR>(g, px, r, w.bh, zeros, xr);
    const float* wb = w.values + (col * w.maxk + m) * w.bh * w.bw + off;
    for (int64_t kk = 0; kk < w.bh; ++kk) {
      const float* wr = wb + kk * w.bw;
      for (int p = 0; p < MR; ++p) {
        const float a = xr[p][kk];
        for (int v = 0; v < NR; ++v) acc[p][v] += a * wr[v];
      }
    }
  }
  for (int64_t p = 0; p < npx; ++p)
    std::memcpy(y + (p0 + p) * g.N + col * w.bw + off, acc[p], sizeof(float) * NR);
}

#if defined(__x86_64__)
template <int MR, int NV>
__attribute__((target("avx2,fma"))) void TileAvx2(const Conv& g, const BlockWeight& w,
                                                  const Pixel* px, int64_t npx, int64_t col,
                                                  int64_t off, const float* zeros, float* y,
                                                  int64_t p0) {
  __m256 acc[MR][NV];
  for (int p = 0; p < MR; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm256_setzero_ps();
  const float* xr[MR];
  for (int64_t m = 0; m < w.maxk; ++m) {
    const int64_t r = w.rows[col * w.maxk + m];
    if (r < 0) continue;
    BlockRows<MR>(g, px, r, w.bh, zeros, xr);
    const float* wb = w.values + (col * w.maxk + m) * w.bh * w.bw + off;
    for (int64_t kk = 0; kk < w.bh; ++kk) {
      __m256 wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = _mm256_loadu_ps(wb + kk * w.bw + 8 * v);
      for (int p = 0; p < MR; ++p) {
        const __m256 a = _mm256_broadcast_ss(xr[p] + kk);
        for (int v = 0; v < NV; ++v) acc[p][v] = _mm256_fmadd_ps(a, wv[v], acc[p][v]);
      }
    }
  }
  for (int64_t p = 0; p < npx; ++p)
    for (int v = 0; v < NV; ++v)
      _mm256_storeu_ps(y + (p0 + p) * g.N + col * w.bw + off + 8 * v, acc[p][v]);
}

template <int MR, int NV>
__attribute__((target("avx512f"))) void TileAvx512(const Conv& g, const BlockWeight& w,
                                                   const Pixel* px, int64_t npx, int64_t col,
                                                   int64_t off, const float* zeros, float* y,
                                                   int64_t p0) {
  __m512 acc[MR][NV];
  for (int p = 0; p < MR; ++p)
    for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_setzero_ps();
  const float* xr[MR];
  for (int64_t m = 0; m < w.maxk; ++m) {
    const int64_t r = w.rows[col * w.maxk + m];
    if (r < 0) continue;
    BlockRows<MR>(g, px, r, w.bh, zeros, xr);
    const float* wb = w.values + (col * w.maxk + m) * w.bh * w.bw + off;
    for (int64_t kk = 0; kk < w.bh; ++kk) {
      __m512 wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_ps(wb + kk * w.bw + 16 * v);
      for (int p = 0; p < MR; ++p) {
        const __m512 a = _mm512_set1_ps(xr[p][kk]);
        for (int v = 0; v < NV; ++v) acc[p][v] = _mm512_fmadd_ps(a, wv[v], acc[p][v]);
      }
    }
  }
  for (int64_t p = 0; p < npx; ++p)
    for (int v = 0; v < NV; ++v)
      _mm512_storeu_ps(y + (p0 + p) * g.N + col * w.bw + off + 16 * v, acc[p][v]);
}
#endif

// Column slices of `width` channels run by one micro-kernel call, and the call itself.
using TileFn = void (*)(const Conv&, const BlockWeight&, const Pixel*, int64_t, int64_t,
                        int64_t, const float*, float*, int64_t);

struct Plan {
  TileFn tile;
  int mr;         // Pixels per micro-kernel call.
  int64_t width;  // Output channels per micro-kernel call.
};

Plan ChoosePlan(int64_t bw) {
#if defined(__x86_64__)
  if (HasAvx512()) {
    if (bw % 32 == 0) return {TileAvx512<12, 2>, 12, 32};
    if (bw % 16 == 0) return {TileAvx512<14, 1>, 14, 16};
  }
  if (HasAvx2Fma()) {
    if (bw % 16 == 0) return {TileAvx2<6, 2>, 6, 16};
    return {TileAvx2<12, 1>, 12, 8};
  }
#endif
  if (bw % 16 == 0) return {TileScalar<6, 2>, 6, 16};
  return {TileScalar<12, 1>, 12, 8};
}

constexpr int kMaxMR = 14;

// One work item: a group of pixels (kTilesPerItem micro-tiles) x a range of block columns.
// Finishing whole output rows in one item keeps the input rows in L1 and writes y in lines.
void RunItem(const Conv& g, const BlockWeight& w, const Plan& plan, const float* x,
             const float* zeros, int64_t group, int64_t col0, int64_t col1, float* y) {
  const int64_t P = g.pixels();
  const int64_t first = group * kTilesPerItem * plan.mr;
  for (int64_t t = 0; t < kTilesPerItem; ++t) {
    const int64_t p0 = first + t * plan.mr;
    if (p0 >= P) break;
    const int64_t npx = std::min<int64_t>(plan.mr, P - p0);
    Pixel px[kMaxMR];
    for (int64_t p = 0; p < plan.mr; ++p)
      px[p] = p < npx ? PixelAt(g, x, p0 + p) : Pixel{zeros, -(1 << 30), -(1 << 30)};
    for (int64_t col = col0; col < col1; ++col)
      for (int64_t off = 0; off < w.bw; off += plan.width)
        plan.tile(g, w, px, npx, col, off, zeros, y, p0);
  }
}

void Run(ffi::ThreadPool& pool, const Conv& g, const BlockWeight& w, const float* x, float* y) {
  const std::vector<float> zeros(w.bh, 0.0f);
  const Plan plan = ChoosePlan(w.bw);
  const int64_t groups = (g.pixels() + kTilesPerItem * plan.mr - 1) / (kTilesPerItem * plan.mr);
  // Few pixel groups (small images, batch 1): split the columns too, so every thread works.
  const int64_t want = 8 * std::max<int64_t>(pool.num_threads(), 1);
  const int64_t splits = std::min<int64_t>(w.cb, std::max<int64_t>(1, want / groups));
  ParallelFor(pool, groups * splits, [&](int64_t item) {
    const int64_t group = item / splits, part = item % splits;
    RunItem(g, w, plan, x, zeros.data(), group, w.cb * part / splits,
            w.cb * (part + 1) / splits, y);
  });
}

ffi::Error BlockSparseConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> rows,
                           ffi::ResultBuffer<ffi::F32> y, int64_t kh, int64_t kw, int64_t sh,
                           int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  Conv g;
  const std::string bad = MakeConv(x.dimensions(), y->dimensions(), kh, kw, sh, sw, ph, pw,
                                   dh, dw, &g);
  if (!bad.empty()) return ffi::Error::InvalidArgument("jaxsparse_block_sparse_conv: " + bad);
  const auto vd = values.dimensions();
  if (vd.size() != 4 || rows.dimensions().size() != 2)
    return ffi::Error::InvalidArgument("jaxsparse_block_sparse_conv: values must be "
                                       "(cb, maxk, bh, bw) and rows (cb, maxk)");
  const BlockWeight w{values.typed_data(), rows.typed_data(), vd[0], vd[1], vd[2], vd[3]};
  if (w.bw % 8 || g.C % w.bh || w.cb * w.bw != g.N)
    return ffi::Error::InvalidArgument(
        "jaxsparse_block_sparse_conv: needs bw % 8 == 0, C % bh == 0 and cb * bw == N; got "
        "bh=" + std::to_string(w.bh) + " bw=" + std::to_string(w.bw) + " C=" +
        std::to_string(g.C) + " N=" + std::to_string(g.N));
  Run(pool, g, w, x.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseBlockSparseConvF32, jaxsparse::BlockSparseConv,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Arg<xla::ffi::Buffer<xla::ffi::S32>>()
                                  .Ret<xla::ffi::Buffer<xla::ffi::F32>>()
                                  .Attr<int64_t>("kh")
                                  .Attr<int64_t>("kw")
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw")
                                  .Attr<int64_t>("dh")
                                  .Attr<int64_t>("dw"));
