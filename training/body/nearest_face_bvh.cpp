// Exact nearest triangle of a mesh for many query points, on the CPU.
//
// A bounding-volume hierarchy of axis-aligned boxes is built from the triangle corners (binned
// surface-area-heuristic splits of the face centroids, up to `leaf_size` faces per leaf); each
// query walks it nearest box first and prunes every box that is not closer than the best
// triangle so far, and a triangle whose plane is already too far is skipped. The search is
// exact: the returned face has the minimum squared distance, computed in double precision with
// Ericson's closest-point region test (Real-Time Collision Detection 5.1.5, in his order of
// regions: vertex a, vertex b, edge ab, vertex c, edge ac, edge bc, interior). Among faces at
// exactly the same distance any may be returned.
//
// Sample points along one camera ray come in runs of consecutive points whose nearest faces
// are the same or neighbours, so each query starts with the previous point's face as its
// first candidate: its distance bounds the search from the start. Queries are shared out over
// torch's threads (at::parallel_for) in contiguous ranges, which keeps those runs together.
//
// Layout of a built tree (all CPU tensors):
//   bounds    [M, 6] float64:  min xyz, max xyz of node m
//   links     [M, 2] int64:    leaf: (first slot, face count); inner: (left child, 0), right = left + 1
//   triangles [F, 16] float64: per slot a, b - a, c - a, |b-a|^2, (b-a).(c-a), |c-a|^2, unit normal, 0
//   order     [F] int64:       face id of each slot

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

namespace {

// Below kMedianDepth the surface-area heuristic splits; deeper nodes take median cuts, so the
// depth stays below kMedianDepth + log2(F) + 1 and a traversal stack of kMaxDepth never overflows.
constexpr int kMedianDepth = 48;
constexpr int kMaxDepth = 128;
constexpr int kTriangleStride = 16;
constexpr int kBins = 16;

inline double half_area(const double* lo, const double* hi) {
  const double x = hi[0] - lo[0], y = hi[1] - lo[1], z = hi[2] - lo[2];
  return x * y + y * z + z * x;
}

struct Builder {
  const double* corners;  // [F, 3, 3]
  int64_t leaf_size;
  std::vector<int64_t> order;
  std::vector<double> centroids;  // [F, 3]
  std::vector<double> bounds;     // 6 per node
  std::vector<int64_t> links;     // 2 per node

  int64_t add_node() {
    bounds.resize(bounds.size() + 6);
    links.resize(links.size() + 2);
    return static_cast<int64_t>(links.size() / 2) - 1;
  }

  // Fills node `node` with the faces order[first, first + count).
  void build(int64_t node, int64_t first, int64_t count, int depth) {
    double lo[3], hi[3], centroid_lo[3], centroid_hi[3];
    for (int axis = 0; axis < 3; ++axis) {
      lo[axis] = centroid_lo[axis] = std::numeric_limits<double>::infinity();
      hi[axis] = centroid_hi[axis] = -std::numeric_limits<double>::infinity();
    }
    for (int64_t slot = first; slot < first + count; ++slot) {
      const int64_t face = order[slot];
      for (int corner = 0; corner < 3; ++corner) {
        for (int axis = 0; axis < 3; ++axis) {
          const double value = corners[face * 9 + corner * 3 + axis];
          lo[axis] = std::min(lo[axis], value);
          hi[axis] = std::max(hi[axis], value);
        }
      }
      for (int axis = 0; axis < 3; ++axis) {
        centroid_lo[axis] = std::min(centroid_lo[axis], centroids[face * 3 + axis]);
        centroid_hi[axis] = std::max(centroid_hi[axis], centroids[face * 3 + axis]);
      }
    }
    for (int axis = 0; axis < 3; ++axis) {
      bounds[node * 6 + axis] = lo[axis];
      bounds[node * 6 + 3 + axis] = hi[axis];
    }
    if (count <= leaf_size) {
      links[node * 2] = first;
      links[node * 2 + 1] = count;
      return;
    }
    // Binned surface-area heuristic: the cut between centroid bins that minimises
    // area(left) * count(left) + area(right) * count(right); a median cut if all centroids coincide.
    int split_axis = -1;
    int split_bin = 0;
    double best_cost = std::numeric_limits<double>::infinity();
    for (int axis = 0; axis < 3; ++axis) {
      const double extent = centroid_hi[axis] - centroid_lo[axis];
      if (!(extent > 0)) continue;
      int64_t bin_count[kBins] = {};
      double bin_lo[kBins][3], bin_hi[kBins][3];
      for (int bin = 0; bin < kBins; ++bin) {
        for (int k = 0; k < 3; ++k) {
          bin_lo[bin][k] = std::numeric_limits<double>::infinity();
          bin_hi[bin][k] = -std::numeric_limits<double>::infinity();
        }
      }
      for (int64_t slot = first; slot < first + count; ++slot) {
        const int64_t face = order[slot];
        const int bin = std::min(kBins - 1, static_cast<int>((centroids[face * 3 + axis] - centroid_lo[axis]) / extent * kBins));
        ++bin_count[bin];
        for (int corner = 0; corner < 3; ++corner) {
          for (int k = 0; k < 3; ++k) {
            const double value = corners[face * 9 + corner * 3 + k];
            bin_lo[bin][k] = std::min(bin_lo[bin][k], value);
            bin_hi[bin][k] = std::max(bin_hi[bin][k], value);
          }
        }
      }
      // Sweep from the right for the suffix costs, then from the left.
      double suffix_cost[kBins];
      double lo[3], hi[3];
      int64_t running = 0;
      for (int k = 0; k < 3; ++k) lo[k] = std::numeric_limits<double>::infinity(), hi[k] = -lo[k];
      for (int bin = kBins - 1; bin > 0; --bin) {
        running += bin_count[bin];
        for (int k = 0; k < 3; ++k) lo[k] = std::min(lo[k], bin_lo[bin][k]), hi[k] = std::max(hi[k], bin_hi[bin][k]);
        suffix_cost[bin] = running > 0 ? half_area(lo, hi) * running : 0;
      }
      running = 0;
      for (int k = 0; k < 3; ++k) lo[k] = std::numeric_limits<double>::infinity(), hi[k] = -lo[k];
      for (int bin = 0; bin < kBins - 1; ++bin) {
        running += bin_count[bin];
        for (int k = 0; k < 3; ++k) lo[k] = std::min(lo[k], bin_lo[bin][k]), hi[k] = std::max(hi[k], bin_hi[bin][k]);
        if (running == 0 || running == count) continue;
        const double cost = half_area(lo, hi) * running + suffix_cost[bin + 1];
        if (cost < best_cost) {
          best_cost = cost, split_axis = axis, split_bin = bin;
        }
      }
    }
    int64_t half = count / 2;
    if (depth >= kMedianDepth || split_axis < 0) {
      // Median cut on the longest centroid axis (also bounds the depth of the tree).
      int axis = 0;
      for (int k = 1; k < 3; ++k) {
        if (centroid_hi[k] - centroid_lo[k] > centroid_hi[axis] - centroid_lo[axis]) axis = k;
      }
      std::nth_element(order.begin() + first, order.begin() + first + half, order.begin() + first + count,
                       [&](int64_t left, int64_t right) { return centroids[left * 3 + axis] < centroids[right * 3 + axis]; });
    } else {
      const double scale = kBins / (centroid_hi[split_axis] - centroid_lo[split_axis]);
      const auto middle = std::partition(order.begin() + first, order.begin() + first + count, [&](int64_t face) {
        const int bin = std::min(kBins - 1, static_cast<int>((centroids[face * 3 + split_axis] - centroid_lo[split_axis]) * scale));
        return bin <= split_bin;
      });
      half = middle - (order.begin() + first);
    }
    const int64_t left = add_node();
    add_node();
    links[node * 2] = left;
    links[node * 2 + 1] = 0;
    build(left, first, half, depth + 1);
    build(left + 1, first + half, count - half, depth + 1);
  }
};

inline double dot3(const double* u, const double* v) { return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]; }

inline double nonzero(double value) { return value != 0.0 ? value : 1.0; }

// Squared distance from p to the triangle stored at t (see the layout above), or infinity when
// the distance to the triangle's plane already rules out beating `best`.
inline double triangle_squared_distance(const double* t, const double* p, double best) {
  const double* a = t;
  const double* ab = t + 3;
  const double* ac = t + 6;
  const double aa = t[9], ab_ac = t[10], cc = t[11];
  const double ap[3] = {p[0] - a[0], p[1] - a[1], p[2] - a[2]};
  const double height = dot3(t + 12, ap);
  if (height * height >= best) return std::numeric_limits<double>::infinity();
  const double d1 = dot3(ab, ap);
  const double d2 = dot3(ac, ap);
  const double d3 = d1 - aa;
  const double d4 = d2 - ab_ac;
  const double d5 = d1 - ab_ac;
  const double d6 = d2 - cc;
  const double vc = d1 * d4 - d3 * d2;
  const double vb = d5 * d2 - d1 * d6;
  const double va = d3 * d6 - d5 * d4;
  double v, w;
  if (d1 <= 0 && d2 <= 0) {
    v = 0, w = 0;
  } else if (d3 >= 0 && d4 <= d3) {
    v = 1, w = 0;
  } else if (vc <= 0 && d1 >= 0 && d3 <= 0) {
    v = d1 / nonzero(aa), w = 0;
  } else if (d6 >= 0 && d5 <= d6) {
    v = 0, w = 1;
  } else if (vb <= 0 && d2 >= 0 && d6 <= 0) {
    v = 0, w = d2 / nonzero(cc);
  } else if (va <= 0 && d4 - d3 >= 0 && d5 - d6 >= 0) {
    w = (d4 - d3) / nonzero(aa - 2 * ab_ac + cc);
    v = 1 - w;
  } else {
    const double area = nonzero(va + vb + vc);
    v = vb / area, w = vc / area;
  }
  const double offset[3] = {ap[0] - v * ab[0] - w * ac[0], ap[1] - v * ab[1] - w * ac[1],
                            ap[2] - v * ab[2] - w * ac[2]};
  return dot3(offset, offset);
}

// Squared distance from p to the box [min xyz, max xyz].
inline double box_squared_distance(const double* box, const double* p) {
  double total = 0;
  for (int axis = 0; axis < 3; ++axis) {
    const double gap = std::max(std::max(box[axis] - p[axis], p[axis] - box[3 + axis]), 0.0);
    total += gap * gap;
  }
  return total;
}

struct Tree {
  const double* bounds;
  const int64_t* links;
  const double* triangles;
  const int64_t* order;
};

// Nearest face of points [begin, end) with squared distance below `limit`; -1 and inf where none.
template <typename scalar_t>
void query_range(const Tree& tree, const scalar_t* points, int64_t begin, int64_t end, double limit,
                 int64_t* face_out, double* distance_out) {
  int64_t stack_node[kMaxDepth];
  double stack_distance[kMaxDepth];
  int64_t hint = -1;
  for (int64_t i = begin; i < end; ++i) {
    const double p[3] = {static_cast<double>(points[i * 3]), static_cast<double>(points[i * 3 + 1]),
                         static_cast<double>(points[i * 3 + 2])};
    double best = limit;
    int64_t best_slot = -1;
    if (hint >= 0) {
      const double distance = triangle_squared_distance(tree.triangles + hint * kTriangleStride, p, best);
      if (distance < best) best = distance, best_slot = hint;
    }
    int depth = 0;
    const double root_distance = box_squared_distance(tree.bounds, p);
    if (root_distance < best) stack_node[depth] = 0, stack_distance[depth++] = root_distance;
    while (depth > 0) {
      --depth;
      if (stack_distance[depth] >= best) continue;
      const int64_t node = stack_node[depth];
      const int64_t first = tree.links[node * 2];
      const int64_t count = tree.links[node * 2 + 1];
      if (count > 0) {
        for (int64_t slot = first; slot < first + count; ++slot) {
          const double distance = triangle_squared_distance(tree.triangles + slot * kTriangleStride, p, best);
          if (distance < best) best = distance, best_slot = slot;
        }
        continue;
      }
      const double left_distance = box_squared_distance(tree.bounds + first * 6, p);
      const double right_distance = box_squared_distance(tree.bounds + (first + 1) * 6, p);
      // Push the farther child first, so that the nearer one is searched first.
      const bool left_first = left_distance <= right_distance;
      const int64_t near_node = left_first ? first : first + 1;
      const int64_t far_node = left_first ? first + 1 : first;
      const double near_distance = left_first ? left_distance : right_distance;
      const double far_distance = left_first ? right_distance : left_distance;
      if (far_distance < best) stack_node[depth] = far_node, stack_distance[depth++] = far_distance;
      if (near_distance < best) stack_node[depth] = near_node, stack_distance[depth++] = near_distance;
    }
    if (best_slot >= 0) {
      face_out[i] = tree.order[best_slot];
      distance_out[i] = best;
      hint = best_slot;
    } else {
      face_out[i] = -1;
      distance_out[i] = std::numeric_limits<double>::infinity();
    }
  }
}

}  // namespace

// corners [F, 3, 3] -> (bounds [M, 6], links [M, 2], triangles [F, 16], order [F])
std::vector<torch::Tensor> build(torch::Tensor corners, int64_t leaf_size) {
  TORCH_CHECK(corners.device().is_cpu() && corners.dim() == 3 && corners.size(1) == 3 && corners.size(2) == 3,
              "nearest_face_bvh.build: corners must be a CPU tensor [F, 3, 3]");
  TORCH_CHECK(corners.size(0) > 0, "nearest_face_bvh.build: the mesh has no faces");
  TORCH_CHECK(leaf_size > 0, "nearest_face_bvh.build: leaf_size must be positive");
  corners = corners.to(torch::kFloat64).contiguous();
  const int64_t num_faces = corners.size(0);
  Builder builder;
  builder.corners = corners.data_ptr<double>();
  builder.leaf_size = leaf_size;
  builder.order.resize(num_faces);
  std::iota(builder.order.begin(), builder.order.end(), 0);
  builder.centroids.resize(num_faces * 3);
  for (int64_t face = 0; face < num_faces; ++face) {
    for (int axis = 0; axis < 3; ++axis) {
      const double* c = builder.corners + face * 9;
      builder.centroids[face * 3 + axis] = (c[axis] + c[3 + axis] + c[6 + axis]) / 3;
    }
  }
  builder.build(builder.add_node(), 0, num_faces, 0);

  const int64_t num_nodes = static_cast<int64_t>(builder.links.size() / 2);
  auto bounds = torch::empty({num_nodes, 6}, torch::kFloat64);
  auto links = torch::empty({num_nodes, 2}, torch::kInt64);
  auto triangles = torch::empty({num_faces, kTriangleStride}, torch::kFloat64);
  auto order = torch::empty({num_faces}, torch::kInt64);
  std::copy(builder.bounds.begin(), builder.bounds.end(), bounds.data_ptr<double>());
  std::copy(builder.links.begin(), builder.links.end(), links.data_ptr<int64_t>());
  std::copy(builder.order.begin(), builder.order.end(), order.data_ptr<int64_t>());
  double* t = triangles.data_ptr<double>();
  for (int64_t slot = 0; slot < num_faces; ++slot, t += kTriangleStride) {
    const double* c = builder.corners + builder.order[slot] * 9;
    for (int axis = 0; axis < 3; ++axis) {
      t[axis] = c[axis];
      t[3 + axis] = c[3 + axis] - c[axis];
      t[6 + axis] = c[6 + axis] - c[axis];
    }
    t[9] = dot3(t + 3, t + 3);
    t[10] = dot3(t + 3, t + 6);
    t[11] = dot3(t + 6, t + 6);
    const double normal[3] = {t[4] * t[8] - t[5] * t[7], t[5] * t[6] - t[3] * t[8], t[3] * t[7] - t[4] * t[6]};
    const double length = std::sqrt(dot3(normal, normal));
    for (int axis = 0; axis < 3; ++axis) t[12 + axis] = length > 0 ? normal[axis] / length : 0.0;
    t[15] = 0;
  }
  return {bounds, links, triangles, order};
}

// points [N, 3] (float32 or float64) -> (face [N] int64, -1 where none; squared distance [N] float64, inf where none)
// max_distance < 0: no limit; otherwise only faces closer than max_distance count.
std::vector<torch::Tensor> query(torch::Tensor bounds, torch::Tensor links, torch::Tensor triangles,
                                 torch::Tensor order, torch::Tensor points, double max_distance) {
  TORCH_CHECK(points.device().is_cpu() && points.dim() == 2 && points.size(1) == 3,
              "nearest_face_bvh.query: points must be a CPU tensor [N, 3]");
  TORCH_CHECK(bounds.scalar_type() == torch::kFloat64 && links.scalar_type() == torch::kInt64 &&
                  triangles.scalar_type() == torch::kFloat64 && order.scalar_type() == torch::kInt64,
              "nearest_face_bvh.query: the tree tensors must come from build()");
  bounds = bounds.contiguous(), links = links.contiguous(), triangles = triangles.contiguous();
  order = order.contiguous(), points = points.contiguous();
  const int64_t num_points = points.size(0);
  auto face = torch::empty({num_points}, torch::kInt64);
  auto distance = torch::empty({num_points}, torch::kFloat64);
  const Tree tree{bounds.data_ptr<double>(), links.data_ptr<int64_t>(), triangles.data_ptr<double>(),
                  order.data_ptr<int64_t>()};
  const double limit = max_distance < 0 ? std::numeric_limits<double>::infinity() : max_distance * max_distance;
  int64_t* face_out = face.data_ptr<int64_t>();
  double* distance_out = distance.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "nearest_face_bvh.query", [&] {
    const scalar_t* data = points.data_ptr<scalar_t>();
    at::parallel_for(0, num_points, 4096, [&](int64_t begin, int64_t end) {
      query_range<scalar_t>(tree, data, begin, end, limit, face_out, distance_out);
    });
  });
  return {face, distance};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build", &build, "Build the bounding-volume hierarchy of triangles given by their corners [F, 3, 3]");
  m.def("query", &query, "Exact nearest face and squared distance of points [N, 3]");
}
