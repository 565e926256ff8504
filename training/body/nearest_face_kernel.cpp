// The tree kernel's entry point: the nearest face of every query point by a walk of the linear
// box tree (nearest_face_math.h), one point per thread. Built in two forms (nearest_face.py):
// - for CUDA devices with NEAREST_FACE_WITH_CUDA and nearest_face_kernel.cu, which launches the
//   walk as a CUDA kernel on the current stream (CPU tensors still take the host loop below);
// - for the host alone, where the same walk runs in a loop over torch's threads. This form
//   checks the kernel's code on machines without a GPU.
// Neither reads tensor values on the host, so a query on a CUDA device does not synchronize.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <vector>

#include "nearest_face_math.h"

#ifdef NEAREST_FACE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

template <typename T>
cudaError_t nearest_face_query_cuda(const nearest_face::BoxTree<T>& tree, const double* corners64, const T* points,
                                    int64_t num_points, double limit_squared, T search_limit, int64_t* face,
                                    double* distance, cudaStream_t stream);
#endif

namespace {

void check(const torch::Tensor& tensor, const char* name, int64_t columns, const torch::Tensor& points) {
  TORCH_CHECK(tensor.dim() == 2 && tensor.size(1) == columns, "nearest_face_kernel.query: ", name, " must be [*, ",
              columns, "], got ", tensor.sizes());
  TORCH_CHECK(tensor.device() == points.device(), "nearest_face_kernel.query: ", name, " is on ", tensor.device(),
              ", the points on ", points.device());
}

}  // namespace

// boxes [nodes, 6], children [nodes, branching] int32, leaf_faces [leaves, leaf_size] int64,
// corners [faces, 9] (the dtype of points), corners64 [faces, 9] float64, points [N, 3] float32
// or float64 -> (face [N] int64, -1 where none; squared distance [N] float64, inf where none).
// max_distance < 0: no limit; otherwise only faces closer than max_distance count, as decided by
// the float64 distance of the face that the search (in the points' dtype) chose.
std::vector<torch::Tensor> query(torch::Tensor boxes, torch::Tensor children, torch::Tensor leaf_faces,
                                 torch::Tensor corners, torch::Tensor corners64, torch::Tensor points,
                                 int64_t num_roots, double max_distance) {
  TORCH_CHECK(points.dim() == 2 && points.size(1) == 3 && points.is_floating_point(),
              "nearest_face_kernel.query: points must be floating-point [N, 3], got ", points.sizes());
  TORCH_CHECK(points.scalar_type() == torch::kFloat32 || points.scalar_type() == torch::kFloat64,
              "nearest_face_kernel.query: points must be float32 or float64");
  check(boxes, "boxes", 6, points);
  check(children, "children", children.size(1), points);
  check(leaf_faces, "leaf_faces", leaf_faces.size(1), points);
  check(corners, "corners", 9, points);
  check(corners64, "corners64", 9, points);
  TORCH_CHECK(boxes.scalar_type() == points.scalar_type() && corners.scalar_type() == points.scalar_type() &&
                  corners64.scalar_type() == torch::kFloat64 && children.scalar_type() == torch::kInt32 &&
                  leaf_faces.scalar_type() == torch::kInt64,
              "nearest_face_kernel.query: the tree tensors must come from _LinearBoxTree.flat in the points' dtype");
  const int64_t branching = children.size(1);
  TORCH_CHECK(branching >= 1 && branching <= nearest_face::kMaxBranching && num_roots >= 1 &&
                  num_roots <= boxes.size(0) && leaf_faces.size(0) <= boxes.size(0),
              "nearest_face_kernel.query: inconsistent tree (branching ", branching, ", roots ", num_roots, ")");
  boxes = boxes.contiguous(), children = children.contiguous(), leaf_faces = leaf_faces.contiguous();
  corners = corners.contiguous(), corners64 = corners64.contiguous(), points = points.contiguous();
  const int64_t num_points = points.size(0);
  auto face = torch::empty({num_points}, points.options().dtype(torch::kInt64));
  auto distance = torch::empty({num_points}, points.options().dtype(torch::kFloat64));
  const double limit_squared = max_distance < 0 ? -1.0 : max_distance * max_distance;
  // The search keeps every face up to a little beyond max_distance; float64 then decides.
  const double search_radius = max_distance < 0 ? -1.0 : max_distance * (1 + 1e-5) + 1e-6;

  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "nearest_face_kernel.query", [&] {
    const nearest_face::BoxTree<scalar_t> tree{boxes.data_ptr<scalar_t>(),
                                               children.data_ptr<int32_t>(),
                                               leaf_faces.data_ptr<int64_t>(),
                                               corners.data_ptr<scalar_t>(),
                                               boxes.size(0),
                                               leaf_faces.size(0),
                                               static_cast<int>(num_roots),
                                               static_cast<int>(branching),
                                               static_cast<int>(leaf_faces.size(1))};
    const scalar_t search_limit = search_radius < 0 ? std::numeric_limits<scalar_t>::max()
                                                    : static_cast<scalar_t>(search_radius * search_radius);
    const double* corner_data = corners64.data_ptr<double>();
    const scalar_t* point_data = points.data_ptr<scalar_t>();
    int64_t* face_data = face.data_ptr<int64_t>();
    double* distance_data = distance.data_ptr<double>();
    if (points.is_cuda()) {
#ifdef NEAREST_FACE_WITH_CUDA
      const c10::cuda::CUDAGuard guard(points.device());
      const cudaError_t status =
          nearest_face_query_cuda<scalar_t>(tree, corner_data, point_data, num_points, limit_squared, search_limit,
                                            face_data, distance_data, c10::cuda::getCurrentCUDAStream());
      TORCH_CHECK(status == cudaSuccess, "nearest_face_kernel: CUDA launch failed: ", cudaGetErrorString(status));
#else
      TORCH_CHECK(false, "nearest_face_kernel: this build has no CUDA kernel");
#endif
      return;
    }
    TORCH_CHECK(points.device().is_cpu(), "nearest_face_kernel.query: points on ", points.device(),
                " (CPU or CUDA expected)");
    at::parallel_for(0, num_points, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        nearest_face::query_point(tree, corner_data, point_data + i * 3, limit_squared, search_limit, face_data + i,
                                  distance_data + i);
      }
    });
  });
  return {face, distance};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("query", &query, "Nearest face and its float64 squared distance for points [N, 3] by the linear box tree");
}
