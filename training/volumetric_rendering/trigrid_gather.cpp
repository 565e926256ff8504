// Trilinear sampling of a tri-grid on the CPU in one pass per point (trigrid.py's gather sampler).
//
// The grid is in trigrid.py's `gather_layout`: rows of C features, row
// (((b*H + y)*W + x)*P + p)*D + z. For every point of every plane volume the kernel finds the
// lower corner and the trilinear weights along each axis exactly as `_axis_neighbours` does
// (grid_sample with align_corners=False and zero padding), and accumulates the 8 weighted corner
// rows. The PyTorch path materialises the [N, 8] corner indices and weights and then gathers
// them with embedding_bag; fusing the two saves those passes over memory, and the indices and
// weights are written only when the backward needs them.
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

// Lower neighbour along one axis and the weights of the lower and upper neighbour (zero for a
// neighbour outside [0, size)). A non-finite coordinate gives NaN weights, as in PyTorch.
template <typename scalar_t>
inline void axis_neighbours(scalar_t coordinate, int64_t size, int64_t& lower, scalar_t weights[2]) {
    const scalar_t position = ((coordinate + 1) * static_cast<scalar_t>(size) - 1) / 2;
    if (!std::isfinite(position)) {
        lower = 0;
        weights[0] = weights[1] = std::numeric_limits<scalar_t>::quiet_NaN();
        return;
    }
    // Beyond -2 / size+1 both neighbours are outside; the clamp keeps the index arithmetic small.
    const scalar_t lower_position = std::min(std::max(std::floor(position), scalar_t(-2)),
                                             static_cast<scalar_t>(size + 1));
    lower = static_cast<int64_t>(lower_position);
    weights[0] = (lower >= 0 && lower <= size - 1) ? (lower_position + 1 - position) : scalar_t(0);
    weights[1] = (lower + 1 >= 0 && lower + 1 <= size - 1) ? (position - lower_position) : scalar_t(0);
}

// Points per batch of the two-phase loop below: first every corner row of the batch is located
// and prefetched, then the rows are summed, so that the memory reads of many points overlap
// instead of waiting one point at a time (the rows are scattered over the whole grid).
constexpr int64_t kBatch = 16;

template <typename scalar_t>
void gather_points(const scalar_t* __restrict rows, const scalar_t* __restrict coordinates,
                   scalar_t* __restrict features, int64_t* __restrict corner_indices,
                   scalar_t* __restrict corner_weights, int64_t batch, int64_t height, int64_t width,
                   int64_t planes, int64_t depth, int64_t points, int64_t channels) {
    const int64_t x_step = planes * depth, y_step = width * x_step;
    const int64_t last_row = batch * height * y_step - 1;
    const int64_t offsets[8] = {0, x_step, y_step, y_step + x_step, 1, 1 + x_step, 1 + y_step, 1 + y_step + x_step};
    const int64_t row_bytes = channels * static_cast<int64_t>(sizeof(scalar_t));
    at::parallel_for(0, batch * planes * points, 1024, [&](int64_t begin, int64_t end) {
        int64_t batch_rows[kBatch][8];
        scalar_t batch_weights[kBatch][8];
        for (int64_t first = begin; first < end; first += kBatch) {
            const int64_t count = std::min(kBatch, end - first);
            for (int64_t k = 0; k < count; ++k) {
                const int64_t n = first + k;
                const int64_t volume = n / points;
                const scalar_t* point = coordinates + 3 * n;
                int64_t x_lower, y_lower, z_lower;
                scalar_t x_weight[2], y_weight[2], z_weight[2];
                axis_neighbours(point[0], width, x_lower, x_weight);
                axis_neighbours(point[1], height, y_lower, y_weight);
                axis_neighbours(point[2], depth, z_lower, z_weight);
                const int64_t base = (volume / planes) * height * y_step + (volume % planes) * depth
                                     + y_lower * y_step + x_lower * x_step + z_lower;
                for (int corner = 0; corner < 8; ++corner) {  // corner = 4*z + 2*y + x
                    const int64_t row = std::min(std::max(base + offsets[corner], int64_t(0)), last_row);
                    const scalar_t weight = z_weight[corner >> 2] * y_weight[(corner >> 1) & 1] * x_weight[corner & 1];
                    batch_rows[k][corner] = row;
                    batch_weights[k][corner] = weight;
                    if (weight != scalar_t(0)) {
                        const char* address = reinterpret_cast<const char*>(rows + row * channels);
                        for (int64_t byte = 0; byte < row_bytes; byte += 64) {
                            __builtin_prefetch(address + byte);
                        }
                    }
                }
                if (corner_indices != nullptr) {
                    std::copy(batch_rows[k], batch_rows[k] + 8, corner_indices + 8 * n);
                    std::copy(batch_weights[k], batch_weights[k] + 8, corner_weights + 8 * n);
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

// rows [B*H*W*P*D, C], coordinates [B, P, M, 3] (same floating dtype, contiguous)
// -> features [B*P*M, C], and when keep_corners the corner rows [B*P*M, 8] (int64) and weights
// [B*P*M, 8] that the backward needs (else empty tensors).
std::vector<torch::Tensor> gather(torch::Tensor rows, torch::Tensor coordinates, int64_t height, int64_t width,
                                  int64_t depth, bool keep_corners) {
    TORCH_CHECK(rows.device().is_cpu() && coordinates.device().is_cpu(), "trigrid_gather: CPU tensors only");
    TORCH_CHECK(rows.dim() == 2 && coordinates.dim() == 4 && coordinates.size(3) == 3,
                "trigrid_gather: rows must be [R, C] and coordinates [B, P, M, 3]");
    TORCH_CHECK(rows.scalar_type() == coordinates.scalar_type(), "trigrid_gather: rows and coordinates differ in dtype");
    const int64_t batch = coordinates.size(0), planes = coordinates.size(1), points = coordinates.size(2);
    TORCH_CHECK(rows.size(0) == batch * height * width * planes * depth,
                "trigrid_gather: the rows do not match the grid size");
    rows = rows.contiguous();
    coordinates = coordinates.contiguous();
    const int64_t count = batch * planes * points, channels = rows.size(1);
    auto features = torch::empty({count, channels}, rows.options());
    auto corner_indices = torch::empty({keep_corners ? count : 0, 8}, rows.options().dtype(torch::kInt64));
    auto corner_weights = torch::empty({keep_corners ? count : 0, 8}, rows.options());
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "trigrid_gather", [&] {
        gather_points<scalar_t>(rows.data_ptr<scalar_t>(), coordinates.data_ptr<scalar_t>(),
                                features.data_ptr<scalar_t>(),
                                keep_corners ? corner_indices.data_ptr<int64_t>() : nullptr,
                                keep_corners ? corner_weights.data_ptr<scalar_t>() : nullptr,
                                batch, height, width, planes, depth, points, channels);
    });
    return {features, corner_indices, corner_weights};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("gather", &gather, "Trilinear tri-grid gather (see trigrid_gather.cpp)");
}
