// 2:4-sparse GEMM on NVIDIA GPUs through cuSPARSELt, as two XLA FFI handlers (CUDA platform).
//
// The layer is y (N, cout) = x (N, K) @ W (K, cout) with W 2:4-sparse along K (every group of
// 4 consecutive rows of a column keeps at most 2). All buffers are row-major; in cuSPARSELt's
// column-major terms this is D = A @ B with
//   A = W^T  (cout x K, column-major, ld = cout)  -- the structured (sparse) operand,
//   B = x^T  (K x N,    column-major, ld = K),
//   D = y^T  (cout x N, column-major, ld = cout),
// so no operand is transposed or copied. 2:4 along K of A is exactly the pattern of W.
//
//   JaxsparseCusparseltCompress: W dense (K, cout) -> opaque compressed blob (u8, padded size)
//   JaxsparseCusparseltMatmul:   x (N, K), blob   -> y (N, cout)
//
// The blob depends only on (cout, K, dtype), not on the batch, so it is made once (at pack
// time on a GPU, see jaxsparse/kernels/gpu/cusparselt.py) and reused by every call. Plans (descriptors,
// algorithm chosen by cusparseLtMatmulSearch on first use, workspace size) are cached per
// (device, cout, K, N, dtype) for the life of the process; the workspace comes from XLA's
// scratch allocator and every call runs on XLA's stream.
#include <cuda_runtime_api.h>
#include <cusparseLt.h>

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
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

// The structured descriptor of A = W^T (cout x K, column-major).
ffi::Error SparseDescriptor(cusparseLtHandle_t* h, int64_t cout, int64_t k, cudaDataType t,
                            cusparseLtMatDescriptor_t* d) {
  JS_CHECK(cusparseLtStructuredDescriptorInit(h, d, cout, k, cout, kAlignment, t,
                                              CUSPARSE_ORDER_COL,
                                              CUSPARSELT_SPARSITY_50_PERCENT));
  return ffi::Error::Success();
}

// A matmul plan for one shape, with its descriptors (which the plan refers to).
struct Plan {
  cusparseLtMatDescriptor_t a, b, d;
  cusparseLtMatmulDescriptor_t matmul;
  cusparseLtMatmulAlgSelection_t alg;
  cusparseLtMatmulPlan_t plan;
  size_t workspace = 0;
  bool searched = false;
  std::mutex mu;  // Serialises the first-call algorithm search.
};

using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, int>;

ffi::Error PlanFor(cusparseLtHandle_t* h, const PlanKey& key, cudaDataType t, Plan** out) {
  static Cache<PlanKey, Plan> plans;
  return plans.Get(key, [&](Plan* p) -> ffi::Error {
    const auto [device, cout, k, n, dtype] = key;
    (void)device;
    (void)dtype;
    if (auto e = SparseDescriptor(h, cout, k, t, &p->a); e.failure()) return e;
    JS_CHECK(cusparseLtDenseDescriptorInit(h, &p->b, k, n, k, kAlignment, t,
                                           CUSPARSE_ORDER_COL));
    JS_CHECK(cusparseLtDenseDescriptorInit(h, &p->d, cout, n, cout, kAlignment, t,
                                           CUSPARSE_ORDER_COL));
    JS_CHECK(cusparseLtMatmulDescriptorInit(h, &p->matmul, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                            CUSPARSE_OPERATION_NON_TRANSPOSE, &p->a, &p->b,
                                            &p->d, &p->d, CUSPARSE_COMPUTE_32F));
    JS_CHECK(cusparseLtMatmulAlgSelectionInit(h, &p->alg, &p->matmul,
                                              CUSPARSELT_MATMUL_ALG_DEFAULT));
    JS_CHECK(cusparseLtMatmulPlanInit(h, &p->plan, &p->matmul, &p->alg));
    JS_CHECK(cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace));
    return ffi::Error::Success();
  }, out);
}

ffi::Error Compress(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer w,
                    ffi::Result<ffi::AnyBuffer> blob) {
  cudaDataType t;
  if (!CudaType(w.element_type(), &t))
    return ffi::Error::InvalidArgument("cuSPARSELt 2:4: weight dtype must be bf16 or f16");
  auto dims = w.dimensions();
  if (dims.size() != 2) return ffi::Error::InvalidArgument("cuSPARSELt 2:4: W must be 2-D");
  const int64_t k = dims[0], cout = dims[1];
  int device;
  if (auto e = CurrentDevice(&device); e.failure()) return e;
  cusparseLtHandle_t* h;
  if (auto e = HandleFor(device, &h); e.failure()) return e;
  cusparseLtMatDescriptor_t a;
  if (auto e = SparseDescriptor(h, cout, k, t, &a); e.failure()) return e;
  size_t size = 0, buffer_size = 0;
  JS_CHECK(cusparseLtSpMMACompressedSize2(h, &a, &size, &buffer_size));
  if (size > blob->size_bytes()) {
    cusparseLtMatDescriptorDestroy(&a);
    return ffi::Error::Internal("cuSPARSELt 2:4: compressed size " + std::to_string(size) +
                                " B exceeds the " + std::to_string(blob->size_bytes()) +
                                " B blob jaxsparse reserved for (K=" + std::to_string(k) +
                                ", cout=" + std::to_string(cout) + ")");
  }
  TempBuffer temp(scratch, stream);
  void* buffer = temp.Get(buffer_size);
  if (!temp.ok()) {
    cusparseLtMatDescriptorDestroy(&a);
    return ffi::Error::Internal("cuSPARSELt 2:4: no device memory for the compress buffer");
  }
  cusparseStatus_t s = cusparseLtSpMMACompress2(h, &a, /*isSparseA=*/1,
                                                CUSPARSE_OPERATION_NON_TRANSPOSE,
                                                w.untyped_data(), blob->untyped_data(), buffer,
                                                stream);
  cusparseLtMatDescriptorDestroy(&a);
  if (s != CUSPARSE_STATUS_SUCCESS)
    return ffi::Error::Internal("cusparseLtSpMMACompress2 failed: " + StatusText(s));
  return ffi::Error::Success();
}

ffi::Error Matmul(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer x,
                  ffi::AnyBuffer blob, ffi::Result<ffi::AnyBuffer> y) {
  cudaDataType t;
  if (!CudaType(x.element_type(), &t) || y->element_type() != x.element_type())
    return ffi::Error::InvalidArgument("cuSPARSELt 2:4: x and y must both be bf16 or f16");
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
  PlanKey key{device, cout, k, n, static_cast<int>(t)};
  if (auto e = PlanFor(h, key, t, &p); e.failure()) return e;
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
    JS_CHECK(cusparseLtMatmulSearch(h, &p->plan, &alpha, blob.untyped_data(), x.untyped_data(),
                                    &beta, y->untyped_data(), y->untyped_data(), workspace,
                                    &stream, 1));
    JS_CHECK(cusparseLtMatmulGetWorkspace(h, &p->plan, &p->workspace));
    p->searched = true;
    if (auto e = alloc(p->workspace); e.failure()) return e;
  }
  JS_CHECK(cusparseLtMatmul(h, &p->plan, &alpha, blob.untyped_data(), x.untyped_data(), &beta,
                            y->untyped_data(), y->untyped_data(), workspace, &stream, 1));
  return ffi::Error::Success();
}

}  // namespace jaxsparse

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseCusparseltCompress, jaxsparse::Compress,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<xla::ffi::ScratchAllocator>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Ret<xla::ffi::AnyBuffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxsparseCusparseltMatmul, jaxsparse::Matmul,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::PlatformStream<cudaStream_t>>()
                                  .Ctx<xla::ffi::ScratchAllocator>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Arg<xla::ffi::AnyBuffer>()
                                  .Ret<xla::ffi::AnyBuffer>());

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
