// Trilinear sampling of a tri-grid on the CPU in one pass per point (trigrid.py's gather sampler),
// and its gradients in one more.
//
// The grid is in trigrid.py's `gather_layout`: rows of C features, row
// (((b*H + y)*W + x)*P + p)*D + z. For every point of every plane volume the kernels find the
// lower corner and the trilinear weights along each axis exactly as `_axis_neighbours` does
// (grid_sample with align_corners=False and zero padding), and accumulate the 8 weighted corner
// rows (forward), or scatter the output gradient into the corner rows and take its dot products
// with them for the gradient of the point (backward). The PyTorch path materialises the [N, 8]
// corner indices and weights and then gathers (embedding_bag) and scatters (index_add_) with
// them, one pass over memory per corner and per axis; here nothing per corner is stored.
//
// Built on first use by torch_utils/custom_ops.py; compiled without floating-point contraction
// so that the sampling positions round as the PyTorch path's elementwise ops do.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// The neighbours of a point along one axis: the lower neighbour's index, and the weights of the
// lower and upper neighbour together with their derivatives w.r.t. the normalized coordinate
// (both zero for a neighbour outside [0, size)). A non-finite coordinate gives lower = 0, NaN
// weights and zero slopes, as the PyTorch path's elementwise ops do.
template <typename scalar_t>
struct AxisTerms {
    int64_t lower;
    scalar_t weight[2];
    scalar_t slope[2];
};

template <typename scalar_t>
inline AxisTerms<scalar_t> axis_terms(scalar_t coordinate, int64_t size) {
    AxisTerms<scalar_t> terms;
    const scalar_t position = ((coordinate + 1) * static_cast<scalar_t>(size) - 1) / 2;
    if (!std::isfinite(position)) {
        terms.lower = 0;
        terms.weight[0] = terms.weight[1] = std::numeric_limits<scalar_t>::quiet_NaN();
        terms.slope[0] = terms.slope[1] = scalar_t(0);
        return terms;
    }
    // Beyond -2 / size+1 both neighbours are outside; the clamp keeps the index arithmetic small.
    const scalar_t lower_position = std::min(std::max(std::floor(position), scalar_t(-2)),
                                             static_cast<scalar_t>(size + 1));
    terms.lower = static_cast<int64_t>(lower_position);
    const bool lower_inside = terms.lower >= 0 && terms.lower <= size - 1;
    const bool upper_inside = terms.lower + 1 >= 0 && terms.lower + 1 <= size - 1;
    const scalar_t half_size = static_cast<scalar_t>(size) / 2;
    terms.weight[0] = lower_inside ? (lower_position + 1 - position) : scalar_t(0);
    terms.weight[1] = upper_inside ? (position - lower_position) : scalar_t(0);
    terms.slope[0] = lower_inside ? -half_size : scalar_t(0);
    terms.slope[1] = upper_inside ? half_size : scalar_t(0);
    return terms;
}

// A located point: its neighbours along each axis and the row of its lower corner.
template <typename scalar_t>
struct PointCorners {
    AxisTerms<scalar_t> x, y, z;
    int64_t base;
};

// The row layout of the grid: the corners of a point and their rows, corner = 4*z + 2*y + x.
struct GridSteps {
    int64_t height, width, planes, depth, points;
    int64_t x_step, y_step, volume_rows, last_row;
    int64_t offsets[8];
    GridSteps(int64_t batch, int64_t height, int64_t width, int64_t planes, int64_t depth, int64_t points)
        : height(height), width(width), planes(planes), depth(depth), points(points), x_step(planes * depth),
          y_step(width * planes * depth), volume_rows(height * width * planes * depth),
          last_row(batch * height * width * planes * depth - 1),
          offsets{0, x_step, y_step, y_step + x_step, 1, 1 + x_step, 1 + y_step, 1 + y_step + x_step} {}

    // First row of the volume (b, p) of point n (points are [B, P, M]).
    int64_t volume_start(int64_t n) const {
        const int64_t volume = n / points;
        return (volume / planes) * volume_rows + (volume % planes) * depth;
    }
    // Point n of coordinates [B*P*M, 3]: its axis terms and lower corner's row.
    template <typename scalar_t>
    PointCorners<scalar_t> locate(const scalar_t* coordinates, int64_t n) const {
        const scalar_t* point = coordinates + 3 * n;
        PointCorners<scalar_t> corners{axis_terms(point[0], width), axis_terms(point[1], height),
                                       axis_terms(point[2], depth), 0};
        corners.base = volume_start(n) + corners.y.lower * y_step + corners.x.lower * x_step + corners.z.lower;
        return corners;
    }
    // A corner outside the volume has weight zero, so its row only has to exist.
    int64_t row(int64_t base, int corner) const {
        return std::min(std::max(base + offsets[corner], int64_t(0)), last_row);
    }
};

template <typename scalar_t>
inline void prefetch_row(const scalar_t* row, int64_t row_bytes) {
    const char* address = reinterpret_cast<const char*>(row);
    for (int64_t byte = 0; byte < row_bytes; byte += 64) {
        __builtin_prefetch(address + byte);
    }
}

// Points per batch of the two-phase loops below: first every corner row of the batch is located
// and prefetched, then the rows are summed, so that the memory reads of many points overlap
// instead of waiting one point at a time (the rows are scattered over the whole grid).
constexpr int64_t kBatch = 16;

template <typename scalar_t>
void gather_points(const scalar_t* __restrict rows, const scalar_t* __restrict coordinates,
                   scalar_t* __restrict features, int64_t batch, int64_t height, int64_t width, int64_t planes,
                   int64_t depth, int64_t points, int64_t channels) {
    const GridSteps steps(batch, height, width, planes, depth, points);
    const int64_t row_bytes = channels * static_cast<int64_t>(sizeof(scalar_t));
    at::parallel_for(0, batch * planes * points, 1024, [&](int64_t begin, int64_t end) {
        int64_t batch_rows[kBatch][8];
        scalar_t batch_weights[kBatch][8];
        for (int64_t first = begin; first < end; first += kBatch) {
            const int64_t count = std::min(kBatch, end - first);
            for (int64_t k = 0; k < count; ++k) {
                const auto p = steps.locate(coordinates, first + k);
                for (int corner = 0; corner < 8; ++corner) {
                    const scalar_t weight =
                        p.z.weight[corner >> 2] * p.y.weight[(corner >> 1) & 1] * p.x.weight[corner & 1];
                    batch_rows[k][corner] = steps.row(p.base, corner);
                    batch_weights[k][corner] = weight;
                    if (weight != scalar_t(0)) {
                        prefetch_row(rows + batch_rows[k][corner] * channels, row_bytes);
                    }
                }
            }
            for (int64_t k = 0; k < count; ++k) {
                scalar_t* __restrict out = features + (first + k) * channels;
                std::fill(out, out + channels, scalar_t(0));
                for (int corner = 0; corner < 8; ++corner) {
                    const scalar_t weight = batch_weights[k][corner];
                    if (weight == scalar_t(0)) {
                        continue;
                    }
                    const scalar_t* __restrict values = rows + batch_rows[k][corner] * channels;
                    for (int64_t c = 0; c < channels; ++c) {
                        out[c] += weight * values[c];
                    }
                }
            }
        }
    });
}

// The backward of gather_points in one pass per point. For every corner of a point with
// trilinear weight w and derivatives (dx, dy, dz) of w w.r.t. the point's (u, v, w):
//   grad_rows[corner] += w * grad_features[point]
//   grad_coordinates[point] += (dx, dy, dz) * <grad_features[point], rows[corner]>
// The volumes are shared out among the threads: a point only touches rows of its own volume
// (corners outside it have weight zero and are skipped), so no two threads write one row.
// A non-finite point gets NaN coordinate gradients and adds NaN to its volume's first row.
template <typename scalar_t>
void gather_points_backward(const scalar_t* __restrict rows, const scalar_t* __restrict coordinates,
                            const scalar_t* __restrict grad_features, scalar_t* __restrict grad_rows,
                            scalar_t* __restrict grad_coordinates, int64_t batch, int64_t height, int64_t width,
                            int64_t planes, int64_t depth, int64_t points, int64_t channels) {
    const GridSteps steps(batch, height, width, planes, depth, points);
    const int64_t row_bytes = channels * static_cast<int64_t>(sizeof(scalar_t));
    at::parallel_for(0, batch * planes, 1, [&](int64_t volume_begin, int64_t volume_end) {
        int64_t batch_rows[kBatch][8];
        scalar_t batch_factors[kBatch][8][4];  // weight, d/du, d/dv, d/dw
        for (int64_t first = volume_begin * points; first < volume_end * points; first += kBatch) {
            const int64_t count = std::min(kBatch, volume_end * points - first);
            for (int64_t k = 0; k < count; ++k) {
                const auto p = steps.locate(coordinates, first + k);
                for (int corner = 0; corner < 8; ++corner) {
                    const int ix = corner & 1, iy = (corner >> 1) & 1, iz = corner >> 2;
                    scalar_t* factors = batch_factors[k][corner];
                    factors[0] = p.z.weight[iz] * p.y.weight[iy] * p.x.weight[ix];
                    factors[1] = p.z.weight[iz] * p.y.weight[iy] * p.x.slope[ix];
                    factors[2] = p.z.weight[iz] * p.y.slope[iy] * p.x.weight[ix];
                    factors[3] = p.z.slope[iz] * p.y.weight[iy] * p.x.weight[ix];
                    batch_rows[k][corner] = steps.row(p.base, corner);
                    if (factors[0] != scalar_t(0) || factors[1] != scalar_t(0) || factors[2] != scalar_t(0)
                        || factors[3] != scalar_t(0)) {
                        prefetch_row(rows + batch_rows[k][corner] * channels, row_bytes);
                        if (grad_rows != nullptr) {
                            prefetch_row(grad_rows + batch_rows[k][corner] * channels, row_bytes);
                        }
                    }
                }
            }
            for (int64_t k = 0; k < count; ++k) {
                const int64_t n = first + k;
                const scalar_t* __restrict grad = grad_features + n * channels;
                const scalar_t weight_000 = batch_factors[k][0][0];
                if (std::isnan(weight_000)) {  // non-finite point
                    if (grad_rows != nullptr) {
                        scalar_t* __restrict target = grad_rows + steps.volume_start(n) * channels;
                        for (int64_t c = 0; c < channels; ++c) {
                            target[c] += weight_000 * grad[c];
                        }
                    }
                    if (grad_coordinates != nullptr) {
                        std::fill(grad_coordinates + 3 * n, grad_coordinates + 3 * n + 3, weight_000);
                    }
                    continue;
                }
                scalar_t grad_u = 0, grad_v = 0, grad_w = 0;
                for (int corner = 0; corner < 8; ++corner) {
                    const scalar_t* factors = batch_factors[k][corner];
                    const int64_t row = batch_rows[k][corner];
                    if (grad_rows != nullptr && factors[0] != scalar_t(0)) {
                        scalar_t* __restrict target = grad_rows + row * channels;
                        for (int64_t c = 0; c < channels; ++c) {
                            target[c] += factors[0] * grad[c];
                        }
                    }
                    if (grad_coordinates != nullptr
                        && (factors[1] != scalar_t(0) || factors[2] != scalar_t(0) || factors[3] != scalar_t(0))) {
                        const scalar_t* __restrict values = rows + row * channels;
                        scalar_t dot = 0;
                        for (int64_t c = 0; c < channels; ++c) {
                            dot += grad[c] * values[c];
                        }
                        grad_u += factors[1] * dot;
                        grad_v += factors[2] * dot;
                        grad_w += factors[3] * dot;
                    }
                }
                if (grad_coordinates != nullptr) {
                    grad_coordinates[3 * n] = grad_u;
                    grad_coordinates[3 * n + 1] = grad_v;
                    grad_coordinates[3 * n + 2] = grad_w;
                }
            }
        }
    });
}

void check_inputs(const torch::Tensor& rows, const torch::Tensor& coordinates, int64_t height, int64_t width,
                  int64_t depth) {
    TORCH_CHECK(rows.device().is_cpu() && coordinates.device().is_cpu(), "trigrid_gather: CPU tensors only");
    TORCH_CHECK(rows.dim() == 2 && coordinates.dim() == 4 && coordinates.size(3) == 3,
                "trigrid_gather: rows must be [R, C] and coordinates [B, P, M, 3]");
    TORCH_CHECK(rows.scalar_type() == coordinates.scalar_type(), "trigrid_gather: rows and coordinates differ in dtype");
    TORCH_CHECK(rows.size(0) == coordinates.size(0) * height * width * coordinates.size(1) * depth,
                "trigrid_gather: the rows do not match the grid size");
}

// rows [B*H*W*P*D, C], coordinates [B, P, M, 3] (same floating dtype) -> features [B*P*M, C]
torch::Tensor gather(torch::Tensor rows, torch::Tensor coordinates, int64_t height, int64_t width, int64_t depth) {
    check_inputs(rows, coordinates, height, width, depth);
    rows = rows.contiguous();
    coordinates = coordinates.contiguous();
    const int64_t batch = coordinates.size(0), planes = coordinates.size(1), points = coordinates.size(2);
    auto features = torch::empty({batch * planes * points, rows.size(1)}, rows.options());
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "trigrid_gather", [&] {
        gather_points<scalar_t>(rows.data_ptr<scalar_t>(), coordinates.data_ptr<scalar_t>(),
                                features.data_ptr<scalar_t>(), batch, height, width, planes, depth, points,
                                rows.size(1));
    });
    return features;
}

// rows, coordinates as for gather, grad_features [B*P*M, C] -> the gradients w.r.t. the rows
// [B*H*W*P*D, C] and the coordinates [B, P, M, 3]; each is an empty tensor when not wanted.
std::vector<torch::Tensor> gather_backward(torch::Tensor rows, torch::Tensor coordinates, torch::Tensor grad_features,
                                           int64_t height, int64_t width, int64_t depth, bool want_rows,
                                           bool want_coordinates) {
    check_inputs(rows, coordinates, height, width, depth);
    const int64_t batch = coordinates.size(0), planes = coordinates.size(1), points = coordinates.size(2);
    TORCH_CHECK(grad_features.scalar_type() == rows.scalar_type() && grad_features.dim() == 2
                    && grad_features.size(0) == batch * planes * points && grad_features.size(1) == rows.size(1),
                "trigrid_gather: grad_features must be [B*P*M, C] in the rows' dtype");
    rows = rows.contiguous();
    coordinates = coordinates.contiguous();
    grad_features = grad_features.contiguous();
    auto grad_rows = want_rows ? torch::zeros_like(rows) : torch::empty({0}, rows.options());
    auto grad_coordinates = want_coordinates ? torch::empty_like(coordinates) : torch::empty({0}, rows.options());
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "trigrid_gather_backward", [&] {
        gather_points_backward<scalar_t>(rows.data_ptr<scalar_t>(), coordinates.data_ptr<scalar_t>(),
                                         grad_features.data_ptr<scalar_t>(),
                                         want_rows ? grad_rows.data_ptr<scalar_t>() : nullptr,
                                         want_coordinates ? grad_coordinates.data_ptr<scalar_t>() : nullptr, batch,
                                         height, width, planes, depth, points, rows.size(1));
    });
    return {grad_rows, grad_coordinates};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("gather", &gather, "Trilinear tri-grid gather (see trigrid_gather.cpp)");
    m.def("gather_backward", &gather_backward, "Gradients of the tri-grid gather (see trigrid_gather.cpp)");
}
