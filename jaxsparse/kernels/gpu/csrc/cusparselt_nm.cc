// 2:4-sparse GEMM on NVIDIA GPUs through cuSPARSELt, as two XLA FFI handlers (CUDA platform).
//
// The layer is y (N, cout) = x (N, K) @ W (K, cout) with W 2:4-sparse along K (every group of
// 4 consecutive rows of a column keeps at most 2); x and y are row-major. The weight is
// compressed once, so which operand cuSPARSELt sees as structured, and in which order, is
// free: the `layout` attribute picks one of four plans (the same in both handlers):
//   "a_col": D = A @ B column-major, A = W^T (cout x K, col-major: W's own memory) structured,
//            B = x^T (K x N, col-major), D = y^T (cout x N, col-major);
//   "a_row": as a_col with A = W^T row-major (the memory of the (cout, K) array W^T);
//   "b_row": D = A @ B row-major, A = x (N x K), B = W (K x cout, row-major) structured,
//            D = y (N x cout);
//   "b_col": as b_row with B = W column-major (the memory of W^T).
// No activation is transposed or copied in any of them; for a_row and b_col the caller hands
// compress W^T (cout, K) instead of W. 2:4 runs along K, the reduction, in every plan.
//
//   JaxsparseCusparseltCompress: W (K, cout), or W^T (cout, K) -> opaque compressed blob (u8)
//   JaxsparseCusparseltMatmul:   x (N, K), blob                -> y (N, cout)
//
// The blob depends only on (cout, K, dtype, layout), not on the batch, so it is made once (at
// pack time on a GPU, see jaxsparse/kernels/gpu/cusparselt.py) and reused by every call. Plans
// (descriptors, the algorithm -- `alg_id`, or chosen by cusparseLtMatmulSearch on first use
// when alg_id is -1 -- and the workspace size) are cached per (device, layout, alg_id, cout, K,
// N, dtype) for the life of the process; JaxsparseCusparseltPlans lists them with the
// algorithm id and split-K each one runs. The workspace comes from XLA's scratch allocator and
// every call runs on XLA's stream.
#include <cuda_runtime_api.h>
#include <cusparseLt.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tuple>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace jaxsparse {

constexpr uint32_t kAlignment = 16;
// XLA's scratch allocator refuses alignments above its own (64 B); cuSPARSELt needs 16 B.
constexpr size_t kScratchAlignment = 64;

std::string StatusText(cusparseStatus_t s) {
  return std::string(cusparseLtGetErrorName(s)) + ": " + cusparseLtGetErrorString(s);
}

#define JS_CHECK(expr)                                                        \
  do {                                                                        \
    cusparseStatus_t s_ = (expr);                                             \
    if (s_ != CUSPARSE_STATUS_SUCCESS)                                        \
      return ffi::Error::Internal(std::string(#expr) + " failed: " + StatusText(s_)); \
  } while (0)

// Element type of a 16-bit floating buffer, or false for any other.
bool CudaType(ffi::DataType t, cudaDataType* out) {
  if (t == ffi::DataType::BF16) {
    *out = CUDA_R_16BF;
    return true;
  }
  if (t == ffi::DataType::F16) {
    *out = CUDA_R_16F;
    return true;
  }
  return false;
}

// A temporary device buffer for one call: from XLA's scratch allocator, or, where that refuses
// (older XLA builds), from the stream-ordered CUDA allocator, freed on the stream afterwards.
class TempBuffer {
 public:
  TempBuffer(ffi::ScratchAllocator& scratch, cudaStream_t stream)
      : scratch_(scratch), stream_(stream) {}
  ~TempBuffer() {
    if (owned_ != nullptr) cudaFreeAsync(owned_, stream_);
  }
  // The buffer of at least `bytes` (nullptr for 0), or nullptr with ok() false.
  void* Get(size_t bytes) {
    if (bytes == 0) return nullptr;
    auto mem = scratch_.Allocate(bytes, kScratchAlignment);
    if (mem.has_value()) return *mem;
    if (owned_ != nullptr) cudaFreeAsync(owned_, stream_);
    owned_ = nullptr;
    if (cudaMallocAsync(&owned_, bytes, stream_) != cudaSuccess) {
      owned_ = nullptr;
      ok_ = false;
    }
    return owned_;
  }
  bool ok() const { return ok_; }

 private:
  ffi::ScratchAllocator& scratch_;
  cudaStream_t stream_;
  void* owned_ = nullptr;
  bool ok_ = true;
};

// Objects built once per key and kept for the process (cuSPARSELt handles and plans).
template <typename K, typename V>
class Cache {
 public:
  // The object of `key`, built by `init(V*)` on first use; a failed `init` keeps nothing,
  // so the next call tries again.
  template <typename Init>
  ffi::Error Get(const K& key, Init init, V** out) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = items_[key];
    if (!slot) {
      auto fresh = std::make_unique<V>();
      if (ffi::Error e = init(fresh.get()); e.failure()) return e;
      slot = std::move(fresh);
    }
    *out = slot.get();
    return ffi::Error::Success();
  }

  // Calls `fn(key, value)` for every object built so far, under the lock.
  template <typename Fn>
  void ForEach(Fn fn) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [key, value] : items_)
      if (value) fn(key, *value);
  }

 private:
  std::mutex mu_;
  std::map<K, std::unique_ptr<V>> items_;
};

// One cuSPARSELt handle per device, created on first use and kept for the process.
ffi::Error HandleFor(int device, cusparseLtHandle_t** out) {
  static Cache<int, cusparseLtHandle_t> handles;
  return handles.Get(device, [](cusparseLtHandle_t* h) -> ffi::Error {
    JS_CHECK(cusparseLtInit(h));
    return ffi::Error::Success();
  }, out);
}

ffi::Error CurrentDevice(int* device) {
  cudaError_t e = cudaGetDevice(device);
  if (e != cudaSuccess)
    return ffi::Error::Internal(std::string("cudaGetDevice failed: ") + cudaGetErrorString(e));
  return ffi::Error::Success();
}

// Which operand is structured and in which order (see the top of this file).
enum class Layout : int { kACol = 0, kARow = 1, kBRow = 2, kBCol = 3 };
constexpr const char* kLayoutNames[] = {"a_col", "a_row", "b_row", "b_col"};

ffi::Error ParseLayout(std::string_view name, Layout* out) {
  for (int i = 0; i < 4; ++i) {
    if (name == kLayoutNames[i]) {
      *out = static_cast<Layout>(i);
      return ffi::Error::Success();
    }
  }
  return ffi::Error::InvalidArgument("cuSPARSELt 2:4: layout \"" + std::string(name) +
                                     "\" is not one of a_col, a_row, b_row, b_col");
}

bool SparseIsA(Layout l) { return l == Layout::kACol || l == Layout::kARow; }

// The structured descriptor of W in `layout`.
ffi::Error SparseDescriptor(cusparseLtHandle_t* h, Layout layout, int64_t cout, int64_t k,
                            cudaDataType t, cusparseLtMatDescriptor_t* d) {
  int64_t rows = cout, cols = k, ld = cout;
  cusparseOrder_t order = CUSPARSE_ORDER_COL;
  switch (layout) {
    case Layout::kACol: break;
    case Layout::kARow: ld = k; order = CUSPARSE_ORDER_ROW; break;
    case Layout::kBRow: rows = k; cols = cout; ld = cout; order = CUSPARSE_ORDER_ROW; break;
    case Layout::kBCol: rows = k; cols = cout; ld = k; break;
  }
  JS_CHECK(cusparseLtStructuredDescriptorInit(h, d, rows, cols, ld, kAlignment, t, order,
                                              CUSPARSELT_SPARSITY_50_PERCENT));
  return ffi::Error::Success();
}

// A matmul plan for one shape, with its descriptors (which the plan refers to).
struct Plan {
  cusparseLtMatDescriptor_t sparse, dense, d;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  bool searched = false;  // True once the algorithm is final (searched, or given).
  std::mutex mu;  // Serialises the first-call algorithm search.
};

// (device, layout, alg_id, cout, K, N, dtype).
using PlanKey = std::tuple<int, int, int, int64_t, int64_t, int64_t, int>;

Cache<PlanKey, Plan>& Plans() {
  static Cache<PlanKey, Plan> plans;
  return plans;
}

ffi::Error PlanFor(cusparseLtHandle_t* h, const PlanKey& key, cudaDataType t, Plan** out) {
  return Plans().Get(key, [&](Plan* p) -> ffi::Error {
    const auto [device, layout_id, alg_id, cout, k, n, dtype] = key;
    (void)device;
    (void)dtype;
    const Layout layout = static_cast<Layout>(layout_id);
    if (auto e = SparseDescriptor(h, layout, cout, k, t, &p->sparse); e.failure()) return e;
    const bool sparse_a = SparseIsA(layout);
    if (sparse_a) {  // Column-major: B = x^T (K x N), D = y^T (cout x N).
      JS_CHECK(cusparseLtDenseDescriptorInit(h, &p->dense, k, n, k, kAlignment, t,
                                             CUSPARSE_ORDER_COL));
      JS_CHECK(cusparseLtDenseDescriptorInit(h, &p->d, cout, n, cout, kAlignment, t,
                                             CUSPARSE_ORDER_COL));
    } else {  // Row-major: A = x (N x K), D = y (N x cout).
      JS_CHECK(cusparseLtDenseDescriptorInit(h, &p->dense, n, k, k, kAlignment, t,
                                             CUSPARSE_ORDER_ROW));
      JS_CHECK(cusparseLtDenseDescriptorInit(h, &p->d, n, cout, cout, kAlignment, t,
                                             CUSPARSE_ORDER_ROW));
    }
    JS_CHECK(cusparseLtMatmulDescriptorInit(
        h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
        sparse_a ? &p->sparse : &p->dense, sparse_a ? &p->dense : &p->sparse, &p->d, &p->d,
        CUSPARSE_COMPUTE_32F));
    JS_CHECK(cusparseLtMatmulAlgSelectionInit(h, &p->alg, &p->matmul,
                                              CUSPARSELT_MATMUL_ALG_DEFAULT));
    if (alg_id >= 0) {
      int max_id = 0;
      JS_CHECK(cusparseLtMatmulAlgGetAttribute(h, &p->alg, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID,
                                               &max_id, sizeof(max_id)));
      if (alg_id > max_id)
        return ffi::Error::InvalidArgument(
            "cuSPARSELt 2:4: alg_id " + std::to_string(alg_id) + " is above this shape's " +
            "largest algorithm id " + std::to_string(max_id));
      JS_CHECK(cusparseLtMatmulAlgSetAttribute(h, &p->alg, CUSPARSELT_MATMUL_ALG_CONFIG_ID,
                                               &alg_id, sizeof(alg_id)));
      p->searched = true;
    }
    JS_CHECK(cusparseLtMatmulPlanInit(h, &p->plan, &p->matmul, &p->alg));
    JS_CHECK(cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace));
    return ffi::Error::Success();
  }, out);
}

ffi::Error Compress(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer w,
                    ffi::Result<ffi::AnyBuffer> blob, std::string_view layout_name) {
  cudaDataType t;
  if (!CudaType(w.element_type(), &t))
    return ffi::Error::InvalidArgument("cuSPARSELt 2:4: weight dtype must be bf16 or f16");
  Layout layout;
  if (auto e = ParseLayout(layout_name, &layout); e.failure()) return e;
  auto dims = w.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("cuSPARSELt 2:4: W must be 2-D");
  // a_row and b_col take W^T (cout, K): the structured operand's memory in that order.
  const bool transposed = layout == Layout::kARow || layout == Layout::kBCol;
  const int64_t k = transposed ? dims[1] : dims[0], cout = transposed ? dims[0] : dims[1];
  int device;
  if (auto e = CurrentDevice(&device); e.failure()) return e;
  cusparseLtHandle_t* h;
  if (auto e = HandleFor(device, &h); e.failure()) return e;
  cusparseLtMatDescriptor_t a;
  if (auto e = SparseDescriptor(h, layout, cout, k, t, &a); e.failure()) return e;
  size_t size = 0, buffer_size = 0;
  JS_CHECK(cusparseLtSpMMACompressedSize2(h, &a, &size, &buffer_size));
  if (size > blob->size_bytes()) {
    cusparseLtMatDescriptorDestroy(&a);
    return ffi::Error::Internal("cuSPARSELt 2:4: compressed size " + std::to_string(size) +
                                " B exceeds the " + std::to_string(blob->size_bytes()) +
                                " B blob jaxsparse reserved for (K=" + std::to_string(k) +
                                ", cout=" + std::to_string(cout) + ", layout " +
                                std::string(layout_name) + ")");
  }
  TempBuffer temp(scratch, stream);
  void* buffer = temp.Get(buffer_size);
  if (!temp.ok()) {
    cusparseLtMatDescriptorDestroy(&a);
    return ffi::Error::Internal("cuSPARSELt 2:4: no device memory for the compress buffer");
  }
  cusparseStatus_t s = cusparseLtSpMMACompress2(h, &a, /*isSparseA=*/SparseIsA(layout) ? 1 : 0,
                                                CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                w.untyped_data(), blob->untyped_data(), buffer,
                                                stream);
  cusparseLtMatDescriptorDestroy(&a);
  if (s != CUSPARSE_STATUS_SUCCESS)
    return ffi::Error::Internal("cusparseLtSpMMACompress2 failed: " + StatusText(s));
  return ffi::Error::Success();
}

ffi::Error Matmul(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                  ffi::AnyBuffer blob, ffi::Result<ffi::AnyBuffer> y,
                  std::string_view layout_name, int32_t alg_id) {
  cudaDataType t;
  if (!CudaType(x.element_type(), &t) || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("cuSPARSELt 2:4: x and y must both be bf16 or f16");
  Layout layout;
  if (auto e = ParseLayout(layout_name, &layout); e.failure()) return e;
  auto xd = x.dimensions();
  auto yd = y->dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("cuSPARSELt 2:4: need x (N, K) and y (N, cout)");
  const int64_t n = xd[0], k = xd[1], cout = yd[1];
  int device;
  if (auto e = CurrentDevice(&device); e.failure()) return e;
  cusparseLtHandle_t* h;
  if (auto e = HandleFor(device, &h); e.failure()) return e;
  Plan* p;
  PlanKey key{device, static_cast<int>(layout), alg_id < 0 ? -1 : alg_id, cout, k, n,
              static_cast<int>(t)};
  if (auto e = PlanFor(h, key, t, &p); e.failure()) return e;
  // The structured operand is A in the a_* plans, B in the b_* plans.
  const void* a = SparseIsA(layout) ? blob.untyped_data() : x.untyped_data();
  const void* b = SparseIsA(layout) ? x.untyped_data() : blob.untyped_data();
  const float alpha = 1.0f, beta = 0.0f;
  std::lock_guard<std::mutex> lock(p->mu);
  void* workspace = nullptr;
  TempBuffer temp(scratch, stream);
  auto alloc = [&](size_t bytes) -> ffi::Error {
    workspace = temp.Get(bytes);
    if (!temp.ok()) return ffi::Error::Internal("cuSPARSELt 2:4: no device memory for workspace");
    return ffi::Error::Success();
  };
  if (auto e = alloc(p->workspace); e.failure()) return e;
  if (!p->searched) {
    // First call of this shape: time the candidate algorithms on the real operands and keep
    // the fastest in the plan (it writes y, which the call below writes again).
    JS_CHECK(cusparseLtMatmulSearch(h, &p->plan, &alpha, a, b, &beta, y->untyped_data(),
                                    y->untyped_data(), workspace, &stream, 1));
    JS_CHECK(cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace));
    p->searched = true;
    if (auto e = alloc(p->workspace); e.failure()) return e;
  }
  JS_CHECK(cusparseLtMatmul(h, &p->plan, &alpha, a, b, &beta, y->untyped_data(),
                            y->untyped_data(), workspace, &stream, 1));
  return ffi::Error::Success();
}

}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseCusparseltCompress, jaxsparse::Compress,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<xla::ffi::ScratchAllocator>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<std::string_view>("layout"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseCusparseltMatmul, jaxsparse::Matmul,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<xla::ffi::ScratchAllocator>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Ret<xla::ffi::AnyBuffer>()
                                  .Attr<std::string_view>("layout")
                                  .Attr<int32_t>("alg_id"));

// The cuSPARSELt version (major*1000000 + minor*100 + patch) for `python -m jaxsparse.doctor`, or
// a negative cusparseStatus_t when no GPU is usable.
extern "C" int JaxsparseCusparseltVersion() {
  cusparseLtHandle_t h;
  cusparseStatus_t s = cusparseLtInit(&h);
  if (s != CUSPARSE_STATUS_SUCCESS) return -static_cast<int>(s) - 1;
  int version = 0;
  cusparseLtGetVersion(&h, &version);
  cusparseLtDestroy(&h);
  return version;
}

// Every plan made so far, one line each: "layout cout K N dtype alg_id max_alg_id split_k
// split_k_mode split_k_buffers workspace_bytes" (alg_id -1 while a plan has not run yet), for
// the GPU figures (jaxsparse.kernels.gpu.cusparselt.plans). Writes at most `cap` bytes of it,
// NUL-terminated, into `out` and returns the length of the whole text.
extern "C" int JaxsparseCusparseltPlans(char* out, int cap) {
  std::string text;
  jaxsparse::Plans().ForEach([&](const jaxsparse::PlanKey& key, jaxsparse::Plan& p) {
    const auto [device, layout, given, cout, k, n, dtype] = key;
    (void)device;
    (void)given;
    cusparseLtHandle_t* h = nullptr;
    int values[5] = {-1, -1, -1, -1, -1};  // alg id, max id, split-K, its mode, its buffers.
    std::lock_guard<std::mutex> lock(p.mu);
    if (p.searched && !jaxsparse::HandleFor(device, &h).failure()) {
      const cusparseLtMatmulAlgAttribute_t attrs[5] = {
          CUSPARSELT_MATMUL_ALG_CONFIG_ID, CUSPARSELT_MATMUL_ALG_CONFIG_MAX_ID,
          CUSPARSELT_MATMUL_SPLIT_K, CUSPARSELT_MATMUL_SPLIT_K_MODE,
          CUSPARSELT_MATMUL_SPLIT_K_BUFFERS};
      for (int i = 0; i < 5; ++i)
        cusparseLtMatmulAlgGetAttribute(h, &p.alg, attrs[i], &values[i], sizeof(int));
    }
    char line[256];
    std::snprintf(line, sizeof(line), "%s %lld %lld %lld %d %d %d %d %d %d %zu\n",
                  jaxsparse::kLayoutNames[layout], static_cast<long long>(cout),
                  static_cast<long long>(k), static_cast<long long>(n), dtype, values[0],
                  values[1], values[2], values[3], values[4], p.workspace);
    text += line;
  });
  if (cap > 0) {
    const size_t len = text.size() < static_cast<size_t>(cap - 1) ? text.size() : cap - 1;
    text.copy(out, len);
    out[len] = '\0';
  }
  return static_cast<int>(text.size());
}
