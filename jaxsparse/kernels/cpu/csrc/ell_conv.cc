// Unstructured-sparse convolution / dense layer on CPU, vectorised over output pixels.
//
// Weight: ELL by output channel over the GEMM view (K = kh*kw*C, N): values[n, m] and their
// row index rows[n, m] (-1: padding, skipped); this is blocked-ELL with 1x1 blocks.
//
// For each tile of TP output pixels the kernel builds the tile's transposed input panel
// (K, TP) in a per-thread buffer (the implicit im2col of TP pixels only, 8x8 AVX transposes),
// then for every output channel accumulates value * panel[row] over its stored weights (TP
// pixels in AVX-512 or AVX2 registers, two independent accumulator sets to hide FMA latency;
// scalar code on other CPUs), and transposes the (N, TP) result back into the NHWC output,
// applying the optional epilogue (bias, residual, ReLU) in registers on the way and storing
// with non-temporal stores where y allows (conv.h: CanStream). This is the sparse-times-dense
// scheme of mobile sparse-inference engines, with the layout change done in cache.
#include <immintrin.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "conv.h"

namespace ffi = xla::ffi;

namespace jaxsparse {
namespace {

constexpr int64_t TP = 32;  // Pixels per tile: 4 AVX registers.

// A growable 64-byte aligned float buffer (panel rows are whole cache lines).
class AlignedBuffer {
 public:
  ~AlignedBuffer() { std::free(data_); }
  float* Get(int64_t n) {
    if (n > size_) {
      std::free(data_);
      size_ = n;
      data_ = static_cast<float*>(std::aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64));
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  int64_t size_ = 0;
};

struct EllWeight {
  const float* values;  // (N, maxk)
  const int32_t* rows;  // (N, maxk)
  int64_t maxk;
  int64_t K;            // Valid rows are [0, K); others (padding -1) are skipped.
  const int64_t* lead;  // (N,) count of leading valid entries of each channel (fast path).
};

// Entries [0, lead) of a channel are all valid (packing puts padding last), so the unrolled
// loops need no checks there; entries after them are checked one by one.
std::vector<int64_t> LeadingValid(const int32_t* rows, int64_t n, int64_t maxk, int64_t k) {
  std::vector<int64_t> lead(n, 0);
  for (int64_t c = 0; c < n; ++c) {
    int64_t m = 0;
    while (m < maxk && rows[c * maxk + m] >= 0 && rows[c * maxk + m] < k) ++m;
    lead[c] = m;
  }
  return lead;
}

inline bool Valid(const EllWeight& w, int32_t r) { return r >= 0 && r < w.K; }

// panel[k * TP + p] = x at GEMM row k for pixel p of the tile (zero in padding / past P).
void BuildPanelScalar(const Conv& g, const Pixel* px, const float* zeros, float* panel) {
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      float* dst = panel + (i * g.kw + j) * g.C * TP;
      for (int64_t p = 0; p < TP; ++p) {
        const float* src = TapRow(g, px[p], i, j, 0, zeros);
        for (int64_t c = 0; c < g.C; ++c) dst[c * TP + p] = src[c];  // zeros has C floats.
      }
    }
}

void ChannelsScalar(const Conv& g, const EllWeight& w, const float* panel, float* out) {
  for (int64_t n = 0; n < g.N; ++n) {
    float acc[TP] = {};
    for (int64_t m = 0; m < w.maxk; ++m) {
      const int32_t r = w.rows[n * w.maxk + m];
      if (!Valid(w, r)) continue;
      const float v = w.values[n * w.maxk + m];
      for (int64_t p = 0; p < TP; ++p) acc[p] += v * panel[r * TP + p];
    }
    std::memcpy(out + n * TP, acc, sizeof acc);
  }
}

void StoreScalar(const Conv& g, const float* out, int64_t p0, int64_t npx, float* y) {
  for (int64_t p = 0; p < npx; ++p)
    for (int64_t n = 0; n < g.N; ++n) y[(p0 + p) * g.N + n] = out[n * TP + p];
}

#if defined(__x86_64__)
// Transposes the 8x8 block of columns [c, c + 8) of the rows src_rows[0..7]: out[q] holds
// column c + q of the 8 rows.
__attribute__((target("avx2,fma"))) inline void Transpose8x8(const float* const* src_rows,
                                                             int64_t c, __m256* out) {
  __m256 r[8], t[8];
  for (int q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(src_rows[q] + c);
  for (int q = 0; q < 4; ++q) {
    t[2 * q] = _mm256_unpacklo_ps(r[2 * q], r[2 * q + 1]);
    t[2 * q + 1] = _mm256_unpackhi_ps(r[2 * q], r[2 * q + 1]);
  }
  for (int q = 0; q < 2; ++q)
    for (int h = 0; h < 2; ++h) {
      r[4 * q + 2 * h] = _mm256_shuffle_ps(t[4 * q + h], t[4 * q + 2 + h], 0x44);
      r[4 * q + 2 * h + 1] = _mm256_shuffle_ps(t[4 * q + h], t[4 * q + 2 + h], 0xEE);
    }
  // r[0..3] hold channels {0,1,4,5 | 2,3,6,7} of pixels 0-3 per 128-bit lane; combine halves.
  for (int q = 0; q < 4; ++q) {
    out[q] = _mm256_permute2f128_ps(r[q], r[4 + q], 0x20);
    out[q + 4] = _mm256_permute2f128_ps(r[q], r[4 + q], 0x31);
  }
}

__attribute__((target("avx2,fma"))) void BuildPanelAvx2(const Conv& g, const Pixel* px,
                                                        const float* zeros, float* panel) {
  const int64_t c8 = g.C - g.C % 8;
  for (int64_t i = 0; i < g.kh; ++i)
    for (int64_t j = 0; j < g.kw; ++j) {
      float* dst = panel + (i * g.kw + j) * g.C * TP;
      for (int64_t pg = 0; pg < TP; pg += 8) {
        const float* src[8];
        bool any = false;
        for (int q = 0; q < 8; ++q) {
          src[q] = TapRow(g, px[pg + q], i, j, 0, zeros);
          any |= src[q] != zeros;
        }
        if (!any) {
          for (int64_t c = 0; c < g.C; ++c)
            _mm256_storeu_ps(dst + c * TP + pg, _mm256_setzero_ps());
          continue;
        }
        for (int64_t c = 0; c < c8; c += 8) {
          __m256 col[8];
          Transpose8x8(src, c, col);
          for (int q = 0; q < 8; ++q) _mm256_storeu_ps(dst + (c + q) * TP + pg, col[q]);
        }
        for (int64_t c = c8; c < g.C; ++c)
          for (int q = 0; q < 8; ++q) dst[c * TP + pg + q] = src[q][c];
      }
    }
}

__attribute__((target("avx2,fma"))) void ChannelsAvx2(const Conv& g, const EllWeight& w,
                                                      const float* panel, float* out) {
  for (int64_t n = 0; n < g.N; ++n) {
    const int32_t* rows = w.rows + n * w.maxk;
    const float* vals = w.values + n * w.maxk;
    __m256 a[4], b[4];
    for (int v = 0; v < 4; ++v) a[v] = b[v] = _mm256_setzero_ps();
    int64_t m = 0;
    for (; m + 1 < w.lead[n]; m += 2) {
      const float* pa = panel + rows[m] * TP;
      const float* pb = panel + rows[m + 1] * TP;
      const __m256 va = _mm256_broadcast_ss(vals + m), vb = _mm256_broadcast_ss(vals + m + 1);
      for (int v = 0; v < 4; ++v) {
        a[v] = _mm256_fmadd_ps(va, _mm256_loadu_ps(pa + 8 * v), a[v]);
        b[v] = _mm256_fmadd_ps(vb, _mm256_loadu_ps(pb + 8 * v), b[v]);
      }
    }
    for (; m < w.maxk; ++m) {
      if (!Valid(w, rows[m])) continue;
      const float* pa = panel + rows[m] * TP;
      const __m256 va = _mm256_broadcast_ss(vals + m);
      for (int v = 0; v < 4; ++v) a[v] = _mm256_fmadd_ps(va, _mm256_loadu_ps(pa + 8 * v), a[v]);
    }
    for (int v = 0; v < 4; ++v) _mm256_storeu_ps(out + n * TP + 8 * v, _mm256_add_ps(a[v], b[v]));
  }
}

__attribute__((target("avx512f"))) void ChannelsAvx512(const Conv& g, const EllWeight& w,
                                                       const float* panel, float* out) {
  static_assert(TP == 32, "two 16-float registers per panel row");
  for (int64_t n = 0; n < g.N; ++n) {
    const int32_t* rows = w.rows + n * w.maxk;
    const float* vals = w.values + n * w.maxk;
    // Four independent accumulator pairs: FMA latency and L2 latency overlap.
    __m512 acc[4][2];
    for (auto& a : acc) a[0] = a[1] = _mm512_setzero_ps();
    int64_t m = 0;
    for (; m + 3 < w.lead[n]; m += 4) {
      for (int u = 0; u < 4; ++u) {
        const float* pr = panel + rows[m + u] * TP;
        const __m512 v = _mm512_set1_ps(vals[m + u]);
        acc[u][0] = _mm512_fmadd_ps(v, _mm512_load_ps(pr), acc[u][0]);
        acc[u][1] = _mm512_fmadd_ps(v, _mm512_load_ps(pr + 16), acc[u][1]);
      }
    }
    for (; m < w.maxk; ++m) {
      if (!Valid(w, rows[m])) continue;
      const float* pr = panel + rows[m] * TP;
      const __m512 v = _mm512_set1_ps(vals[m]);
      acc[0][0] = _mm512_fmadd_ps(v, _mm512_load_ps(pr), acc[0][0]);
      acc[0][1] = _mm512_fmadd_ps(v, _mm512_load_ps(pr + 16), acc[0][1]);
    }
    for (int h = 0; h < 2; ++h)
      _mm512_storeu_ps(out + n * TP + 16 * h,
                       _mm512_add_ps(_mm512_add_ps(acc[0][h], acc[1][h]),
                                     _mm512_add_ps(acc[2][h], acc[3][h])));
  }
}

// Writes the tile's result out (N, TP) into the NHWC rows of pixels [p0, p0 + npx) of y with
// the epilogue applied in registers: 8 channels x 8 pixels blocks transpose into y rows of
// stride N. Both halves of a 64-byte line of a row are written one after the other, so
// `stream` (non-temporal stores, CanStream) writes whole lines.
__attribute__((target("avx2,fma"))) void StoreAvx2(const Conv& g, const float* out,
                                                   const Epilogue& e, bool stream, int64_t p0,
                                                   int64_t npx, float* y) {
  if (npx < TP || g.N % 8) {
    StoreScalar(g, out, p0, npx, y);
    if (e.any()) EpilogueRows(g, e, p0, npx, 0, g.N, y);
    return;
  }
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t pg = 0; pg < TP; pg += 8)
    for (int64_t n = 0; n < g.N; n += 8) {
      const float* src[8];
      for (int q = 0; q < 8; ++q) src[q] = out + (n + q) * TP;
      __m256 row[8];  // row[q]: channels [n, n + 8) of pixel p0 + pg + q.
      Transpose8x8(src, pg, row);
      const __m256 b = e.bias == nullptr ? zero : _mm256_loadu_ps(e.bias + n);
      for (int q = 0; q < 8; ++q) {
        const int64_t at = (p0 + pg + q) * g.N + n;
        __m256 v = row[q];
        if (e.bias != nullptr) v = _mm256_add_ps(v, b);
        if (e.residual != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(e.residual + at));
        if (e.relu) v = _mm256_max_ps(zero, v);  // A NaN stays NaN.
        if (stream)
          _mm256_stream_ps(y + at, v);
        else
          _mm256_storeu_ps(y + at, v);
      }
    }
}
#endif

void Run(ffi::ThreadPool& pool, const Conv& g, const EllWeight& w, const Epilogue& e,
         const float* x, float* y) {
  const int64_t P = g.pixels(), tiles = (P + TP - 1) / TP;
  const std::vector<float> zeros(g.C, 0.0f);
  const bool avx2 = HasAvx2Fma(), avx512 = avx2 && HasAvx512();
  const bool stream = avx2 && CanStream(y, g.N, ActivationBytes(g, e));
  ParallelFor(pool, tiles, [&](int64_t t) {
    thread_local AlignedBuffer panel_buf, out_buf;
    float* const panel_ptr = panel_buf.Get(g.K() * TP);
    float* const out_ptr = out_buf.Get(g.N * TP);
    const int64_t p0 = t * TP, npx = std::min<int64_t>(TP, P - p0);
    Pixel px[TP];
    TilePixels(g, x, p0, TP, npx, zeros.data(), px);
#if defined(__x86_64__)
    if (avx2) {
      BuildPanelAvx2(g, px, zeros.data(), panel_ptr);
      if (avx512)
        ChannelsAvx512(g, w, panel_ptr, out_ptr);
      else
        ChannelsAvx2(g, w, panel_ptr, out_ptr);
      StoreAvx2(g, out_ptr, e, stream, p0, npx, y);
      if (stream) _mm_sfence();  // The tile's stores are visible before it counts as done.
      return;
    }
#endif
    BuildPanelScalar(g, px, zeros.data(), panel_ptr);
    ChannelsScalar(g, w, panel_ptr, out_ptr);
    StoreScalar(g, out_ptr, p0, npx, y);
    if (e.any()) EpilogueRows(g, e, p0, npx, 0, g.N, y);
  });
}

ffi::Error EllSparseConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                         ffi::Buffer<ffi::F32> values, ffi::Buffer<ffi::S32> rows,
                         ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> residual,
                         ffi::ResultBuffer<ffi::F32> y, ConvWindowAttrs window) {
  Conv g;
  const std::string bad = MakeConv(x.dimensions(), y->dimensions(), window, &g);
  if (!bad.empty()) return ffi::Error::InvalidArgument("jaxsparse_ell_sparse_conv: " + bad);
  const auto vd = values.dimensions();
  const std::string bad_weight = CheckWeight(vd, rows.dimensions());
  if (!bad_weight.empty() || vd[2] != 1 || vd[3] != 1 || vd[0] != g.N)
    return ffi::Error::InvalidArgument(
        "jaxsparse_ell_sparse_conv: values must be (N, maxk, 1, 1) with N output channels "
        "and rows (N, maxk)");
  Epilogue e;
  const std::string bad_epilogue = MakeEpilogue(bias, residual, g, window.relu, &e);
  if (!bad_epilogue.empty())
    return ffi::Error::InvalidArgument("jaxsparse_ell_sparse_conv: " + bad_epilogue);
  const std::vector<int64_t> lead = LeadingValid(rows.typed_data(), g.N, vd[1], g.K());
  const EllWeight w{values.typed_data(), rows.typed_data(), vd[1], g.K(), lead.data()};
  Run(pool, g, w, e, x.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

}  // namespace
}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseEllSparseConvF32, jaxsparse::EllSparseConv,
                              jaxsparse::SparseConvBinding());
