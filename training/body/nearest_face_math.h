// Point-to-triangle and point-to-box distances, and the traversal of the linear box tree, for
// the host and for CUDA devices alike.
//
// Shared by the C++ hierarchy (nearest_face_bvh.cpp: its float64 distance of the chosen face)
// and by the tree kernel (nearest_face_kernel.cpp on the host, nearest_face_kernel.cu on CUDA
// devices), so that the three measure a triangle with the same code: Ericson's closest-point
// region test (Real-Time Collision Detection 5.1.5), and a triangle flat to rounding measured as
// its three edges.

#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define NEAREST_FACE_HD __host__ __device__ __forceinline__
#else
#define NEAREST_FACE_HD inline
#endif

namespace nearest_face {

// Triangles this flat (squared sine of the angle at a) are measured as their three edges.
constexpr double kFlatSine2 = 1e-12;

template <typename T>
NEAREST_FACE_HD T dot3(const T* u, const T* v) {
  return u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
}

template <typename T>
NEAREST_FACE_HD T nonzero(T value) {
  return value != T(0) ? value : T(1);
}

template <typename T>
NEAREST_FACE_HD T clamp01(T value) {
  return value < T(0) ? T(0) : (value > T(1) ? T(1) : value);
}

// Squared distance from p to the segment from a to b.
template <typename T>
NEAREST_FACE_HD T segment_squared_distance(const T* a, const T* b, const T* p) {
  const T ab[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
  const T ap[3] = {p[0] - a[0], p[1] - a[1], p[2] - a[2]};
  const T length_squared = dot3(ab, ab);
  const T t = length_squared > T(0) ? clamp01(dot3(ap, ab) / length_squared) : T(0);
  const T offset[3] = {ap[0] - t * ab[0], ap[1] - t * ab[1], ap[2] - t * ab[2]};
  return dot3(offset, offset);
}

// Squared distance from p [3] to the triangle with corners c = (a, b, c) [9], by Ericson's
// sequence of regions; a triangle flat to rounding (the squared sine of its angle at a at most
// kFlatSine2) is the union of its edges.
template <typename T>
NEAREST_FACE_HD T triangle_squared_distance(const T* c, const T* p) {
  const T ab[3] = {c[3] - c[0], c[4] - c[1], c[5] - c[2]};
  const T ac[3] = {c[6] - c[0], c[7] - c[1], c[8] - c[2]};
  const T ap[3] = {p[0] - c[0], p[1] - c[1], p[2] - c[2]};
  const T aa = dot3(ab, ab), ab_ac = dot3(ab, ac), cc = dot3(ac, ac);
  if (aa * cc - ab_ac * ab_ac <= T(kFlatSine2) * aa * cc) {
    const T e1 = segment_squared_distance(c, c + 3, p);
    const T e2 = segment_squared_distance(c, c + 6, p);
    const T e3 = segment_squared_distance(c + 3, c + 6, p);
    const T e12 = e1 < e2 ? e1 : e2;
    return e12 < e3 ? e12 : e3;
  }
  const T d1 = dot3(ab, ap);
  const T d2 = dot3(ac, ap);
  const T d3 = d1 - aa;
  const T d4 = d2 - ab_ac;
  const T d5 = d1 - ab_ac;
  const T d6 = d2 - cc;
  const T vc = d1 * d4 - d3 * d2;
  const T vb = d5 * d2 - d1 * d6;
  const T va = d3 * d6 - d5 * d4;
  T v, w;
  if (d1 <= T(0) && d2 <= T(0)) {
    v = T(0), w = T(0);
  } else if (d3 >= T(0) && d4 <= d3) {
    v = T(1), w = T(0);
  } else if (vc <= T(0) && d1 >= T(0) && d3 <= T(0)) {
    v = d1 / nonzero(aa), w = T(0);
  } else if (d6 >= T(0) && d5 <= d6) {
    v = T(0), w = T(1);
  } else if (vb <= T(0) && d2 >= T(0) && d6 <= T(0)) {
    v = T(0), w = d2 / nonzero(cc);
  } else if (va <= T(0) && d4 - d3 >= T(0) && d5 - d6 >= T(0)) {
    w = (d4 - d3) / nonzero(aa - T(2) * ab_ac + cc);
    v = T(1) - w;
  } else {
    const T area = nonzero(va + vb + vc);
    v = vb / area, w = vc / area;
  }
  const T offset[3] = {ap[0] - v * ab[0] - w * ac[0], ap[1] - v * ab[1] - w * ac[1], ap[2] - v * ab[2] - w * ac[2]};
  return dot3(offset, offset);
}

// Squared distance from p [3] to the axis-aligned box low [3], high [3] (0 inside).
template <typename T>
NEAREST_FACE_HD T box_squared_distance(const T* low, const T* high, const T* p) {
  T sum = T(0);
  for (int axis = 0; axis < 3; ++axis) {
    const T below = low[axis] - p[axis], above = p[axis] - high[axis];
    const T gap = below > above ? below : above;
    if (gap > T(0)) sum += gap * gap;
  }
  return sum;
}

// ---------------------------------------------------------------------------------------------
// The linear box tree (nearest_face.py, _LinearBoxTree.flat) as flat arrays:
//   boxes [nodes, 6] (low xyz, high xyz), the levels from the roots down to the leaves;
//   children [nodes, branching]: node indices of the next level, -1 none (unused in leaves);
//   the last `num_leaves` nodes are the leaves, leaf k holding leaf_faces [k, leaf_size] (-1 none);
//   corners [faces, 9].
// Nodes 0 .. num_roots - 1 are the roots.

constexpr int kMaxBranching = 8;
constexpr int kStackSize = 64;  // >= levels x (branching - 1) + roots, checked by the caller

template <typename T>
struct BoxTree {
  const T* boxes;
  const int32_t* children;
  const int64_t* leaf_faces;
  const T* corners;
  int64_t num_nodes;
  int64_t num_leaves;
  int num_roots;
  int branching;
  int leaf_size;
};

// Machine epsilon of float and double, usable in device code.
template <typename T>
NEAREST_FACE_HD T epsilon() {
  return sizeof(T) == 4 ? T(FLT_EPSILON) : T(DBL_EPSILON);
}

// Nearest face of point p [3] among those closer (squared) than `limit`, -1 if none: a depth-first
// walk, nearest box first, that skips every box farther than the best face so far (with the
// margins, so that rounding never drops the nearest face: a few units of rounding of squared
// distances at the scale of the mesh, plus a relative part for large distances, as the PyTorch
// walk of the same tree uses). On equal distances the lowest face index wins. The search runs in
// T; the caller measures the chosen face again.
template <typename T>
NEAREST_FACE_HD int64_t nearest_face_in_tree(const BoxTree<T>& tree, const T* p, T limit) {
  int32_t stack_node[kStackSize];
  T stack_distance[kStackSize];
  int depth = 0;
  T best = limit;
  int64_t best_face = -1;
  const int64_t first_leaf = tree.num_nodes - tree.num_leaves;
  T low[3], high[3];
  for (int axis = 0; axis < 3; ++axis) low[axis] = tree.boxes[axis], high[axis] = tree.boxes[3 + axis];
  for (int root = tree.num_roots - 1; root >= 0; --root) {
    stack_node[depth] = root;
    stack_distance[depth++] = box_squared_distance(tree.boxes + root * 6, tree.boxes + root * 6 + 3, p);
    for (int axis = 0; axis < 3; ++axis) {
      low[axis] = low[axis] < tree.boxes[root * 6 + axis] ? low[axis] : tree.boxes[root * 6 + axis];
      high[axis] = high[axis] > tree.boxes[root * 6 + 3 + axis] ? high[axis] : tree.boxes[root * 6 + 3 + axis];
    }
  }
  const T diagonal[3] = {high[0] - low[0], high[1] - low[1], high[2] - low[2]};
  const T scale = dot3(diagonal, diagonal);
  const T relative_margin = T(64) * epsilon<T>();
  const T absolute_margin = relative_margin * (scale > T(1) ? scale : T(1));
  while (depth > 0) {
    --depth;
    const int32_t node = stack_node[depth];
    if (stack_distance[depth] > best * (T(1) + relative_margin) + absolute_margin) continue;
    if (node >= first_leaf) {
      const int64_t* faces = tree.leaf_faces + (node - first_leaf) * tree.leaf_size;
      for (int slot = 0; slot < tree.leaf_size; ++slot) {
        const int64_t face = faces[slot];
        if (face < 0) continue;
        const T distance = triangle_squared_distance(tree.corners + face * 9, p);
        if (distance < best || (distance == best && best_face >= 0 && face < best_face)) {
          best = distance;
          best_face = face;
        }
      }
      continue;
    }
    // The children, pushed farthest first so that the nearest is popped first.
    int32_t open_node[kMaxBranching];
    T open_distance[kMaxBranching];
    int open = 0;
    for (int k = 0; k < tree.branching; ++k) {
      const int32_t child = tree.children[node * tree.branching + k];
      if (child < 0) continue;
      const T distance = box_squared_distance(tree.boxes + child * 6, tree.boxes + child * 6 + 3, p);
      if (distance > best * (T(1) + relative_margin) + absolute_margin) continue;
      int slot = open++;
      while (slot > 0 && open_distance[slot - 1] < distance) {
        open_node[slot] = open_node[slot - 1], open_distance[slot] = open_distance[slot - 1];
        --slot;
      }
      open_node[slot] = child, open_distance[slot] = distance;
    }
    for (int k = 0; k < open && depth < kStackSize; ++k) {
      stack_node[depth] = open_node[k], stack_distance[depth++] = open_distance[k];
    }
  }
  return best_face;
}

// The query of one point p [3]: its nearest face (-1 where none is closer than max_distance, or
// for a non-finite point) and that face's squared distance measured in float64 from corners64
// [faces, 9] (infinity for -1). The search keeps faces up to search_limit (squared, in T, a
// little beyond the limit); limit_squared < 0: no limit.
template <typename T>
NEAREST_FACE_HD void query_point(const BoxTree<T>& tree, const double* corners64, const T* p, double limit_squared,
                                 T search_limit, int64_t* face_out, double* distance_out) {
  const int64_t face = nearest_face_in_tree(tree, p, search_limit);
  double squared = HUGE_VAL;
  int64_t chosen = -1;
  if (face >= 0) {
    const double point[3] = {static_cast<double>(p[0]), static_cast<double>(p[1]), static_cast<double>(p[2])};
    squared = triangle_squared_distance(corners64 + face * 9, point);
    if (limit_squared < 0 || squared < limit_squared) {
      chosen = face;
    } else {
      squared = HUGE_VAL;
    }
  }
  *face_out = chosen;
  *distance_out = squared;
}

}  // namespace nearest_face
