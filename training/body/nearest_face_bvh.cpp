// Nearest triangle of a mesh for many query points, on the CPU.
//
// A binary bounding-volume hierarchy of axis-aligned boxes is built from the triangle corners
// (binned surface-area-heuristic splits of the face centroids, up to L faces per leaf) and
// collapsed into an L-wide tree in float32: every inner node holds the boxes of up to L
// children (rounded outwards), every leaf a pack of up to L triangles, so that one SIMD
// operation tests L boxes or L triangles (GCC vector extensions). L = NEAREST_FACE_LANES:
// 4 (SSE2, any x86-64) or 8 (built with AVX2 and FMA). Each query
// walks the tree nearest box first and prunes every box that is not closer than the best
// triangle so far. Triangle distances use Ericson's closest-point region test (Real-Time
// Collision Detection 5.1.5; the float64 one is nearest_face_math.h's, shared with the tree
// kernel). The search runs in float32, so among faces within float32
// rounding of the minimum (~1e-7 in squared distance) it may return any; ties of faces at
// exactly the same distance (a shared vertex or edge) likewise. The chosen face's squared
// distance is then computed in float64.
//
// Sample points along one camera ray come in runs of consecutive points whose nearest faces
// are the same or neighbours, so each query first tests the pack of the previous point's face:
// its distance bounds the search from the start. Queries are shared out over torch's threads
// (at::parallel_for) in contiguous blocks of kBlock points, each thread taking the next free
// block, which keeps those runs together and balances dear regions (inside the head) against
// cheap ones.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include <immintrin.h>

#include "nearest_face_math.h"

namespace {

// SIMD lanes: children per inner node and triangles per leaf of the searched tree.
#ifndef NEAREST_FACE_LANES
#define NEAREST_FACE_LANES 4
#endif
constexpr int kLanes = NEAREST_FACE_LANES;

// Below kMedianDepth the surface-area heuristic splits; deeper nodes take median cuts, so the
// depth of the tree stays below kMedianDepth + log2(F) + 1 (< 112 levels).
constexpr int kMedianDepth = 48;
// The float32 search keeps faces up to this much (m) beyond max_distance; float64 then decides.
constexpr double kRadiusMargin = 1e-4;
// Triangles this flat (squared sine of the angle at a) are measured as their three edges: in
// float64 (nearest_face::kFlatSine2, exact) and in the float32 search (kFlatSine2, wider for
// float32's rounding).
constexpr double kFlatSine2 = 1e-6;
constexpr int kBins = 16;
// Points per block of work handed to a thread.
constexpr int64_t kBlock = 2048;

inline double half_area(const double* lo, const double* hi) {
  const double x = hi[0] - lo[0], y = hi[1] - lo[1], z = hi[2] - lo[2];
  return x * y + y * z + z * x;
}

struct Builder {
  const double* corners;  // [F, 3, 3]
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
    if (count <= kLanes) {
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

using nearest_face::dot3;

// ---------------------------------------------------------------------------------------------
// The searched form: a kLanes-wide tree in float32 with SIMD box and triangle tests.

typedef float vfloat __attribute__((vector_size(4 * kLanes)));
typedef int32_t vint __attribute__((vector_size(4 * kLanes)));
constexpr int kMaxStack = 1024;  // > 112 levels x (kLanes - 1) + 1 entries: a pop pushes at most kLanes
// Per leaf pack, kPackFields vectors of kLanes lanes (one triangle per lane):
//   a (3), b - a (3), c - a (3), |b-a|^2, (b-a).(c-a), |c-a|^2, 1/|b-a|^2, 1/|c-a|^2, 1/|c-b|^2,
//   kind (0 unused lane, 1 triangle, 2 flat triangle: the squared sine of its angle at a <= kFlatSine2)
constexpr int kPackFields = 16;

inline vfloat load(const float* data) {
  vfloat value;
  __builtin_memcpy(&value, data, sizeof(value));
  return value;
}

inline vfloat splat(float value) { return value - vfloat{}; }

inline vfloat vmax(vfloat a, vfloat b) { return a > b ? a : b; }

inline vfloat vmin(vfloat a, vfloat b) { return a < b ? a : b; }

// Bit k set where lane k of a comparison result is true.
inline unsigned lane_mask(vint comparison) {
#if NEAREST_FACE_LANES == 8
  return static_cast<unsigned>(_mm256_movemask_ps(reinterpret_cast<__m256>(comparison)));
#else
  return static_cast<unsigned>(_mm_movemask_ps(reinterpret_cast<__m128>(comparison)));
#endif
}

// The smallest lane of a vector.
inline float lane_min(vfloat value) {
#if NEAREST_FACE_LANES == 8
  value = vmin(value, __builtin_shuffle(value, vint{4, 5, 6, 7, 0, 1, 2, 3}));
  value = vmin(value, __builtin_shuffle(value, vint{2, 3, 0, 1, 6, 7, 4, 5}));
  value = vmin(value, __builtin_shuffle(value, vint{1, 0, 3, 2, 5, 4, 7, 6}));
#else
  value = vmin(value, __builtin_shuffle(value, vint{2, 3, 0, 1}));
  value = vmin(value, __builtin_shuffle(value, vint{1, 0, 3, 2}));
#endif
  return value[0];
}

inline vfloat nonzero(vfloat value) { return value != 0 ? value : splat(1.0f); }

inline float round_down(double value) {
  const float rounded = static_cast<float>(value);
  return static_cast<double>(rounded) > value ? std::nextafter(rounded, -std::numeric_limits<float>::infinity()) : rounded;
}

inline float round_up(double value) {
  const float rounded = static_cast<float>(value);
  return static_cast<double>(rounded) < value ? std::nextafter(rounded, std::numeric_limits<float>::infinity()) : rounded;
}

struct WideBuilder {
  const Builder& binary;
  std::vector<float> bounds;       // per wide node: lo x, lo y, lo z, hi x, hi y, hi z, each kLanes lanes
  std::vector<int32_t> children;   // per wide node, kLanes lanes: >= 0 wide node, < 0 leaf pack -1 - index
  std::vector<float> packs;        // kPackFields * 4 per pack
  std::vector<int64_t> pack_faces;  // kLanes per pack, -1 for unused lanes

  bool is_leaf(int64_t node) const { return binary.links[node * 2 + 1] > 0; }

  double area(int64_t node) const { return half_area(&binary.bounds[node * 6], &binary.bounds[node * 6 + 3]); }

  int32_t add_pack(int64_t node) {
    const int64_t first = binary.links[node * 2], count = binary.links[node * 2 + 1];
    const int32_t pack = static_cast<int32_t>(pack_faces.size() / kLanes);
    packs.resize(packs.size() + kPackFields * kLanes, 0.0f);
    pack_faces.resize(pack_faces.size() + kLanes, -1);
    float* fields = &packs[static_cast<size_t>(pack) * kPackFields * kLanes];
    for (int64_t lane = 0; lane < count; ++lane) {
      const int64_t face = binary.order[first + lane];
      const double* c = binary.corners + face * 9;
      const double ab[3] = {c[3] - c[0], c[4] - c[1], c[5] - c[2]};
      const double ac[3] = {c[6] - c[0], c[7] - c[1], c[8] - c[2]};
      const double aa = dot3(ab, ab), ab_ac = dot3(ab, ac), cc = dot3(ac, ac);
      const double bb = aa - 2 * ab_ac + cc;
      // A (nearly) flat triangle is searched as its three edges: in float32 its interior
      // region's coordinates would be rounding noise.
      const double cross_squared = aa * cc - ab_ac * ab_ac;
      const double kind = cross_squared > kFlatSine2 * aa * cc ? 1 : 2;
      const double values[kPackFields] = {c[0], c[1], c[2], ab[0], ab[1], ab[2], ac[0], ac[1], ac[2], aa, ab_ac, cc,
                                          aa != 0 ? 1 / aa : 1, cc != 0 ? 1 / cc : 1, bb != 0 ? 1 / bb : 1, kind};
      for (int field = 0; field < kPackFields; ++field) fields[field * kLanes + lane] = static_cast<float>(values[field]);
      pack_faces[pack * kLanes + lane] = face;
    }
    return pack;
  }

  // The wide node holding up to kLanes descendants of binary node `node` (inner nodes are opened,
  // largest box first, until there are kLanes children or only leaves).
  int32_t build(int64_t node) {
    std::vector<int64_t> kids;
    if (is_leaf(node)) {
      kids.push_back(node);
    } else {
      kids = {binary.links[node * 2], binary.links[node * 2] + 1};
    }
    while (kids.size() < kLanes) {
      int best = -1;
      for (int k = 0; k < static_cast<int>(kids.size()); ++k) {
        if (!is_leaf(kids[k]) && (best < 0 || area(kids[k]) > area(kids[best]))) best = k;
      }
      if (best < 0) break;
      const int64_t left = binary.links[kids[best] * 2];
      kids[best] = left;
      kids.push_back(left + 1);
    }
    const int32_t wide = static_cast<int32_t>(children.size() / kLanes);
    bounds.resize(bounds.size() + 6 * kLanes);
    children.resize(children.size() + kLanes, 0);
    for (int lane = 0; lane < kLanes; ++lane) {
      const bool used = lane < static_cast<int>(kids.size());
      for (int axis = 0; axis < 3; ++axis) {
        // Boxes are rounded outwards, so a float box still holds its triangles; unused lanes are empty.
        bounds[wide * 6 * kLanes + axis * kLanes + lane] =
            used ? round_down(binary.bounds[kids[lane] * 6 + axis]) : std::numeric_limits<float>::infinity();
        bounds[wide * 6 * kLanes + (3 + axis) * kLanes + lane] =
            used ? round_up(binary.bounds[kids[lane] * 6 + 3 + axis]) : -std::numeric_limits<float>::infinity();
      }
    }
    for (int lane = 0; lane < static_cast<int>(kids.size()); ++lane) {
      const int32_t child = is_leaf(kids[lane]) ? -1 - add_pack(kids[lane]) : build(kids[lane]);
      children[wide * kLanes + lane] = child;
    }
    return wide;
  }
};

// Squared distances from p to the kLanes triangles of a pack; infinity in unused lanes. Ericson's
// regions are applied as overrides from the lowest priority (interior) to the highest (vertex
// a), which selects the region of his sequence of early returns.
inline vfloat pack_squared_distance(const float* pack, vfloat px, vfloat py, vfloat pz) {
  const vfloat zero = splat(0.0f), one = splat(1.0f);
  const vfloat apx = px - load(pack), apy = py - load(pack + 1 * kLanes), apz = pz - load(pack + 2 * kLanes);
  const vfloat abx = load(pack + 3 * kLanes), aby = load(pack + 4 * kLanes), abz = load(pack + 5 * kLanes);
  const vfloat acx = load(pack + 6 * kLanes), acy = load(pack + 7 * kLanes), acz = load(pack + 8 * kLanes);
  const vfloat aa = load(pack + 9 * kLanes), ab_ac = load(pack + 10 * kLanes), cc = load(pack + 11 * kLanes);
  const vfloat d1 = abx * apx + aby * apy + abz * apz;
  const vfloat d2 = acx * apx + acy * apy + acz * apz;
  const vfloat d3 = d1 - aa, d4 = d2 - ab_ac, d5 = d1 - ab_ac, d6 = d2 - cc;
  // Zero barycentric numerators make a flat triangle fall into a vertex or edge region (or, at
  // rounding gaps between those, the interior with v = w = 0, i.e. vertex a: never too near).
  const vfloat kind = load(pack + 15 * kLanes);
  const vint flat = kind > 1.5f;
  const vfloat vc = flat ? zero : d1 * d4 - d3 * d2;
  const vfloat vb = flat ? zero : d5 * d2 - d1 * d6;
  const vfloat va = flat ? zero : d3 * d6 - d5 * d4;
  const vfloat inv_area = one / nonzero(va + vb + vc);
  vfloat v = vb * inv_area, w = vc * inv_area;
  const vint in_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0);
  const vfloat t_bc = (d4 - d3) * load(pack + 14 * kLanes);
  v = in_bc ? one - t_bc : v;
  w = in_bc ? t_bc : w;
  const vint in_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0);
  v = in_ac ? zero : v;
  w = in_ac ? d2 * load(pack + 13 * kLanes) : w;
  const vint in_c = (d6 >= 0) & (d5 <= d6);
  v = in_c ? zero : v;
  w = in_c ? one : w;
  const vint in_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0);
  v = in_ab ? d1 * load(pack + 12 * kLanes) : v;
  w = in_ab ? zero : w;
  const vint in_b = (d3 >= 0) & (d4 <= d3);
  v = in_b ? one : v;
  w = in_b ? zero : w;
  const vint in_a = (d1 <= 0) & (d2 <= 0);
  v = in_a ? zero : v;
  w = in_a ? zero : w;
  const vfloat ox = apx - v * abx - w * acx, oy = apy - v * aby - w * acy, oz = apz - v * abz - w * acz;
  const vfloat distance = ox * ox + oy * oy + oz * oz;
  return kind != 0 ? distance : splat(std::numeric_limits<float>::infinity());
}

// Squared distances from p to the kLanes child boxes of a wide node (infinity for unused lanes).
inline vfloat box_squared_distance(const float* box, vfloat px, vfloat py, vfloat pz) {
  const vfloat zero = splat(0.0f);
  const vfloat gx = vmax(vmax(load(box) - px, px - load(box + 3 * kLanes)), zero);
  const vfloat gy = vmax(vmax(load(box + 1 * kLanes) - py, py - load(box + 4 * kLanes)), zero);
  const vfloat gz = vmax(vmax(load(box + 2 * kLanes) - pz, pz - load(box + 5 * kLanes)), zero);
  return gx * gx + gy * gy + gz * gz;
}

struct Tree {
  const float* bounds;
  const int32_t* children;
  const float* packs;
  const int64_t* pack_faces;
};

// Nearest face of points [begin, end) by the float32 search, -1 where none is within `limit`.
template <typename scalar_t>
void query_range(const Tree& tree, const scalar_t* points, int64_t begin, int64_t end, float limit,
                 int64_t* face_out) {
  int32_t stack_entry[kMaxStack];
  float stack_distance[kMaxStack];
  int64_t hint = -1;  // pack of the previous point's face
  for (int64_t i = begin; i < end; ++i) {
    const vfloat px = splat(static_cast<float>(points[i * 3]));
    const vfloat py = splat(static_cast<float>(points[i * 3 + 1]));
    const vfloat pz = splat(static_cast<float>(points[i * 3 + 2]));
    float best = limit;
    int64_t best_slot = -1;
    auto test_pack = [&](int64_t pack) {
      const vfloat distance = pack_squared_distance(tree.packs + pack * kPackFields * kLanes, px, py, pz);
      const float nearest = lane_min(distance);
      if (nearest < best) {
        best = nearest;
        best_slot = pack * kLanes + __builtin_ctz(lane_mask(distance == nearest));
      }
    };
    if (hint >= 0) test_pack(hint);
    int depth = 0;
    stack_entry[depth] = 0, stack_distance[depth++] = 0.0f;
    while (depth > 0) {
      --depth;
      if (stack_distance[depth] >= best) continue;
      const int32_t entry = stack_entry[depth];
      if (entry < 0) {
        test_pack(-1 - entry);
        continue;
      }
      const vfloat distance = box_squared_distance(tree.bounds + entry * 6 * kLanes, px, py, pz);
      // The open children, sorted farthest first, so that the nearest is popped first.
      int32_t open_entry[kLanes];
      float open_distance[kLanes];
      int open = 0;
      for (unsigned mask = lane_mask(distance < best); mask != 0; mask &= mask - 1) {
        const int lane = __builtin_ctz(mask);
        int slot = open++;
        while (slot > 0 && open_distance[slot - 1] < distance[lane]) {
          open_entry[slot] = open_entry[slot - 1], open_distance[slot] = open_distance[slot - 1];
          --slot;
        }
        open_entry[slot] = tree.children[entry * kLanes + lane], open_distance[slot] = distance[lane];
      }
      for (int k = 0; k < open; ++k) stack_entry[depth] = open_entry[k], stack_distance[depth++] = open_distance[k];
    }
    face_out[i] = best_slot >= 0 ? tree.pack_faces[best_slot] : -1;
    if (best_slot >= 0) hint = best_slot / kLanes;
  }
}

}  // namespace

// corners [F, 3, 3] -> (bounds [W, 6 L] float32, children [W, L] int32, packs [P, 16 L] float32,
// pack_faces [P, L] int64, corners [F, 9] float64), L = kLanes
std::vector<torch::Tensor> build(torch::Tensor corners) {
  TORCH_CHECK(corners.device().is_cpu() && corners.dim() == 3 && corners.size(1) == 3 && corners.size(2) == 3,
              "nearest_face_bvh.build: corners must be a CPU tensor [F, 3, 3]");
  TORCH_CHECK(corners.size(0) > 0, "nearest_face_bvh.build: the mesh has no faces");
  TORCH_CHECK(torch::isfinite(corners).all().item<bool>(),
              "nearest_face_bvh.build: the mesh has non-finite vertices (NaN or inf)");
  corners = corners.to(torch::kFloat64).contiguous();
  const int64_t num_faces = corners.size(0);
  Builder builder;
  builder.corners = corners.data_ptr<double>();
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
  WideBuilder wide{builder};
  wide.build(0);

  const int64_t num_wide = static_cast<int64_t>(wide.children.size() / kLanes);
  const int64_t num_packs = static_cast<int64_t>(wide.pack_faces.size() / kLanes);
  auto bounds = torch::empty({num_wide, 6 * kLanes}, torch::kFloat32);
  auto children = torch::empty({num_wide, kLanes}, torch::kInt32);
  auto packs = torch::empty({num_packs, kPackFields * kLanes}, torch::kFloat32);
  auto pack_faces = torch::empty({num_packs, kLanes}, torch::kInt64);
  std::copy(wide.bounds.begin(), wide.bounds.end(), bounds.data_ptr<float>());
  std::copy(wide.children.begin(), wide.children.end(), children.data_ptr<int32_t>());
  std::copy(wide.packs.begin(), wide.packs.end(), packs.data_ptr<float>());
  std::copy(wide.pack_faces.begin(), wide.pack_faces.end(), pack_faces.data_ptr<int64_t>());
  return {bounds, children, packs, pack_faces, corners.reshape({num_faces, 9})};
}

// points [N, 3] (float32 or float64) -> (face [N] int64, -1 where none; squared distance [N]
// float64, inf where none). max_distance < 0: no limit; otherwise only faces closer than
// max_distance count. The float32 search may pick, among faces within float32 rounding of the
// minimum, another than the float64 minimum; the distance of the chosen face is computed in
// float64 and decides the max_distance cut-off.
std::vector<torch::Tensor> query(torch::Tensor bounds, torch::Tensor children, torch::Tensor packs,
                                 torch::Tensor pack_faces, torch::Tensor corners, torch::Tensor points,
                                 double max_distance) {
  TORCH_CHECK(points.device().is_cpu() && points.dim() == 2 && points.size(1) == 3,
              "nearest_face_bvh.query: points must be a CPU tensor [N, 3]");
  TORCH_CHECK(points.is_floating_point() && torch::isfinite(points).all().item<bool>(),
              "nearest_face_bvh.query: the points must be finite floating-point values (NaN or inf found)");
  TORCH_CHECK(bounds.scalar_type() == torch::kFloat32 && children.scalar_type() == torch::kInt32 &&
                  packs.scalar_type() == torch::kFloat32 && pack_faces.scalar_type() == torch::kInt64 &&
                  corners.scalar_type() == torch::kFloat64,
              "nearest_face_bvh.query: the tree tensors must come from build()");
  bounds = bounds.contiguous(), children = children.contiguous(), packs = packs.contiguous();
  pack_faces = pack_faces.contiguous(), corners = corners.contiguous(), points = points.contiguous();
  const int64_t num_points = points.size(0);
  auto face = torch::empty({num_points}, torch::kInt64);
  auto distance = torch::empty({num_points}, torch::kFloat64);
  const Tree tree{bounds.data_ptr<float>(), children.data_ptr<int32_t>(), packs.data_ptr<float>(),
                  pack_faces.data_ptr<int64_t>()};
  const double infinity = std::numeric_limits<double>::infinity();
  const double limit = max_distance < 0 ? infinity : max_distance * max_distance;
  // The float32 search keeps every face up to a little beyond max_distance; float64 decides.
  const float search_limit = max_distance < 0 ? std::numeric_limits<float>::infinity()
                                              : round_up((max_distance + kRadiusMargin) * (max_distance + kRadiusMargin));
  int64_t* face_out = face.data_ptr<int64_t>();
  double* distance_out = distance.data_ptr<double>();
  const double* corner_data = corners.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "nearest_face_bvh.query", [&] {
    const scalar_t* data = points.data_ptr<scalar_t>();
    const int64_t num_blocks = (num_points + kBlock - 1) / kBlock;
    std::atomic<int64_t> next_block{0};
    auto query_block = [&](int64_t begin, int64_t end) {
      query_range<scalar_t>(tree, data, begin, end, search_limit, face_out);
      for (int64_t i = begin; i < end; ++i) {
        if (face_out[i] < 0) {
          distance_out[i] = infinity;
          continue;
        }
        const double p[3] = {static_cast<double>(data[i * 3]), static_cast<double>(data[i * 3 + 1]),
                             static_cast<double>(data[i * 3 + 2])};
        const double squared = nearest_face::triangle_squared_distance(corner_data + face_out[i] * 9, p);
        if (squared < limit) {
          distance_out[i] = squared;
        } else {
          face_out[i] = -1, distance_out[i] = infinity;
        }
      }
    };
    at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), num_blocks), 1, [&](int64_t, int64_t) {
      for (int64_t block = next_block++; block < num_blocks; block = next_block++) {
        query_block(block * kBlock, std::min(num_points, (block + 1) * kBlock));
      }
    });
  });
  return {face, distance};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("build", &build, "Build the bounding-volume hierarchy of triangles given by their corners [F, 3, 3]");
  m.def("query", &query, "Nearest face and its float64 squared distance for points [N, 3]");
}
