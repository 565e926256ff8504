// The tree kernel on CUDA devices: one thread per query point walks the linear box tree
// (nearest_face_math.h, the same code as the host build in nearest_face_kernel.cpp).
//
// Plain CUDA without torch headers, so that nvcc alone can compile it:
//   nvcc -std=c++17 -arch=sm_90 -c training/body/nearest_face_kernel.cu -o /tmp/kernel.o

#include <cuda_runtime.h>

#include "nearest_face_math.h"

namespace {

constexpr int kThreads = 128;

// points [n, 3] -> face [n] (int64, -1 for none), squared distance [n] (float64, inf for none)
template <typename T>
__global__ void nearest_face_kernel(nearest_face::BoxTree<T> tree, const double* corners64, const T* points,
                                    int64_t num_points, double limit_squared, T search_limit, int64_t* face,
                                    double* distance) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= num_points) return;
  const T p[3] = {points[i * 3], points[i * 3 + 1], points[i * 3 + 2]};
  nearest_face::query_point(tree, corners64, p, limit_squared, search_limit, face + i, distance + i);
}

}  // namespace

template <typename T>
cudaError_t nearest_face_query_cuda(const nearest_face::BoxTree<T>& tree, const double* corners64, const T* points,
                                    int64_t num_points, double limit_squared, T search_limit, int64_t* face,
                                    double* distance, cudaStream_t stream) {
  if (num_points == 0) return cudaSuccess;
  const int64_t blocks = (num_points + kThreads - 1) / kThreads;
  nearest_face_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      tree, corners64, points, num_points, limit_squared, search_limit, face, distance);
  return cudaGetLastError();
}

template cudaError_t nearest_face_query_cuda<float>(const nearest_face::BoxTree<float>&, const double*, const float*,
                                                    int64_t, double, float, int64_t*, double*, cudaStream_t);
template cudaError_t nearest_face_query_cuda<double>(const nearest_face::BoxTree<double>&, const double*,
                                                     const double*, int64_t, double, double, int64_t*, double*,
                                                     cudaStream_t);
