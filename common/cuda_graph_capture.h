// Capturing work into an at::cuda::CUDAGraph without leaving a stream in
// capture mode when recording or capture_end fails. Header-only; included
// only by CUDA builds' translation units (kvwire_model_cuda,
// kvwire_fuser_cuda).
#ifndef KVWIRE_COMMON_CUDA_GRAPH_CAPTURE_H_
#define KVWIRE_COMMON_CUDA_GRAPH_CAPTURE_H_

#include <ATen/cuda/CUDAGraph.h>
#include <cuda_runtime_api.h>

#include <utility>

#include "absl/status/status.h"
#include "common/torch_guard.h"

namespace kvwire {

// Captures what `record` (returning absl::Status) launches on `stream`, the
// current stream, into `graph`, in thread-local capture mode so other
// threads may use the GPU meanwhile. Returns the first error, of recording
// or of capture_end; on error no stream is left capturing and CUDA's last
// error is cleared, so the eager path stays usable.
// (The pool's type is whatever graph_pool_handle() returns in this LibTorch.)
template <typename Record>
absl::Status CaptureCudaGraph(at::cuda::CUDAGraph& graph,
                              decltype(at::cuda::graph_pool_handle()) pool,
                              cudaStream_t stream, Record&& record) {
  graph.capture_begin(pool, cudaStreamCaptureModeThreadLocal);
  absl::Status st = std::forward<Record>(record)();
  const absl::Status ended = Guarded("capture_end", [&]() -> absl::Status {
    graph.capture_end();
    return absl::OkStatus();
  });
  if (st.ok()) st = ended;
  if (!st.ok()) {
    cudaStreamCaptureStatus status;
    if (cudaStreamIsCapturing(stream, &status) == cudaSuccess &&
        status != cudaStreamCaptureStatusNone) {
      cudaGraph_t dangling = nullptr;
      cudaStreamEndCapture(stream, &dangling);
      if (dangling != nullptr) cudaGraphDestroy(dangling);
    }
    (void)cudaGetLastError();
  }
  return st;
}

}  // namespace kvwire

#endif  // KVWIRE_COMMON_CUDA_GRAPH_CAPTURE_H_
