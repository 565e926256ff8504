// Alpha compositing along rays on the CPU, one pass per ray (ray_marcher.py's fused path), and
// its gradient in one more.
//
// The samples of a ray may come from two sets (the coarse and the fine samples of a render): a
// per-ray order lists, for every position along the ray in depth order, the sample's index in
// the concatenation of the two sets. The kernels read the samples in that order where they lie,
// so the sorted, concatenated colours are never written (nor their gradient scattered back).
// Per interval k between sorted samples k and k+1 (ray_marcher.py's `march`):
//   alpha_k = 1 - exp(-softplus((d_k + d_{k+1}) / 2 - 1) * (z_{k+1} - z_k))
//   T_k = prod_{j<k} (1 - alpha_j + 1e-10),  w_k = alpha_k T_k
//   features = sum_k w_k (c_k + c_{k+1}) / 2,  acc = sum_k w_k,
//   depth = clamp(sum_k w_k (z_k + z_{k+1}) / 2 / acc, z_min, z_max)  (z_max where acc = 0)
// The backward takes d/d alpha_k = G_k T_k - (sum_{m>k} G_m w_m) / (1 - alpha_k + 1e-10) with
// G_k = dL/dw_k, the form of cumprod's gradient for non-zero factors (they are >= 1e-10).
// Depths take no gradient. Built on first use by torch_utils/custom_ops.py.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// softplus with beta 1 and threshold 20, and its derivative, as torch.nn.functional.softplus.
template <typename scalar_t>
inline scalar_t softplus(scalar_t x) {
    return x > scalar_t(20) ? x : std::log1p(std::exp(x));
}

template <typename scalar_t>
inline scalar_t softplus_slope(scalar_t x) {
    if (x > scalar_t(20)) {
        return scalar_t(1);
    }
    const scalar_t z = std::exp(x);
    return z / (z + 1);
}

// The samples of one ray in depth order: colour rows and raw densities where they lie.
template <typename scalar_t>
struct RaySamples {
    std::vector<const scalar_t*> colors;
    std::vector<scalar_t> densities;
    std::vector<int64_t> sources;  // index into the concatenation of the two sets

    void gather(int64_t ray, const scalar_t* colors_a, const scalar_t* densities_a, int64_t count_a,
                const scalar_t* colors_b, const scalar_t* densities_b, int64_t count_b, const int64_t* order,
                int64_t channels) {
        const int64_t count = count_a + count_b;
        colors.resize(count);
        densities.resize(count);
        sources.resize(count);
        for (int64_t s = 0; s < count; ++s) {
            const int64_t source = order != nullptr ? order[ray * count + s] : s;
            sources[s] = source;
            if (source < count_a) {
                colors[s] = colors_a + (ray * count_a + source) * channels;
                densities[s] = densities_a[ray * count_a + source];
            } else {
                colors[s] = colors_b + (ray * count_b + source - count_a) * channels;
                densities[s] = densities_b[ray * count_b + source - count_a];
            }
        }
    }
};

// Per-interval terms of one ray: alpha, transmittance before it, weight, exp(-sigma * delta) and
// the softplus slope at the mid density.
template <typename scalar_t>
struct Intervals {
    std::vector<scalar_t> alpha, transmittance, weight, decay, slope;

    void compute(const RaySamples<scalar_t>& samples, const scalar_t* depths, bool with_slopes) {
        const int64_t count = static_cast<int64_t>(samples.densities.size()) - 1;
        alpha.resize(count);
        transmittance.resize(count);
        weight.resize(count);
        decay.resize(count);
        slope.resize(with_slopes ? count : 0);
        scalar_t survival = 1;
        for (int64_t k = 0; k < count; ++k) {
            const scalar_t mid_density = (samples.densities[k] + samples.densities[k + 1]) / 2 - 1;
            decay[k] = std::exp(-softplus(mid_density) * (depths[k + 1] - depths[k]));
            alpha[k] = 1 - decay[k];
            transmittance[k] = survival;
            weight[k] = alpha[k] * survival;
            if (with_slopes) {
                slope[k] = softplus_slope(mid_density);
            }
            survival *= 1 - alpha[k] + scalar_t(1e-10);
        }
    }
};

template <typename scalar_t>
void march_rays(const scalar_t* colors_a, const scalar_t* densities_a, int64_t count_a, const scalar_t* colors_b,
                const scalar_t* densities_b, int64_t count_b, const scalar_t* depths, const int64_t* order,
                scalar_t depth_min, scalar_t depth_max, int64_t rays, int64_t channels, scalar_t* features,
                scalar_t* depth, scalar_t* weights, scalar_t* acc) {
    const int64_t count = count_a + count_b;
    at::parallel_for(0, rays, 64, [&](int64_t begin, int64_t end) {
        RaySamples<scalar_t> samples;
        Intervals<scalar_t> intervals;
        for (int64_t ray = begin; ray < end; ++ray) {
            samples.gather(ray, colors_a, densities_a, count_a, colors_b, densities_b, count_b, order, channels);
            const scalar_t* z = depths + ray * count;
            intervals.compute(samples, z, false);
            scalar_t* out = features + ray * channels;
            std::fill(out, out + channels, scalar_t(0));
            scalar_t opacity = 0, weighted_depth = 0;
            for (int64_t k = 0; k + 1 < count; ++k) {
                const scalar_t w = intervals.weight[k];
                weights[ray * (count - 1) + k] = w;
                const scalar_t* __restrict near = samples.colors[k];
                const scalar_t* __restrict far = samples.colors[k + 1];
                for (int64_t c = 0; c < channels; ++c) {
                    out[c] += w * ((near[c] + far[c]) / 2);
                }
                opacity += w;
                weighted_depth += w * ((z[k] + z[k + 1]) / 2);
            }
            acc[ray] = opacity;
            const scalar_t raw = opacity > 0 ? weighted_depth / opacity : std::numeric_limits<scalar_t>::infinity();
            depth[ray] = std::min(std::max(raw, depth_min), depth_max);
        }
    });
}

template <typename scalar_t>
void march_rays_backward(const scalar_t* colors_a, const scalar_t* densities_a, int64_t count_a,
                         const scalar_t* colors_b, const scalar_t* densities_b, int64_t count_b,
                         const scalar_t* depths, const int64_t* order, scalar_t depth_min, scalar_t depth_max,
                         int64_t rays, int64_t channels, const scalar_t* grad_features, const scalar_t* grad_depth,
                         const scalar_t* grad_acc, scalar_t* grad_colors_a, scalar_t* grad_densities_a,
                         scalar_t* grad_colors_b, scalar_t* grad_densities_b) {
    const int64_t count = count_a + count_b;
    at::parallel_for(0, rays, 64, [&](int64_t begin, int64_t end) {
        RaySamples<scalar_t> samples;
        Intervals<scalar_t> intervals;
        std::vector<scalar_t> grad_weight(count), grad_mid_density(count);
        for (int64_t ray = begin; ray < end; ++ray) {
            samples.gather(ray, colors_a, densities_a, count_a, colors_b, densities_b, count_b, order, channels);
            const scalar_t* z = depths + ray * count;
            intervals.compute(samples, z, true);
            const scalar_t* __restrict g = grad_features + ray * channels;

            // The depth: weighted mean depth over acc, clamped (its gradient passes inside [min, max]).
            scalar_t opacity = 0, weighted_depth = 0;
            for (int64_t k = 0; k + 1 < count; ++k) {
                opacity += intervals.weight[k];
                weighted_depth += intervals.weight[k] * ((z[k] + z[k + 1]) / 2);
            }
            scalar_t grad_weighted_depth = 0, grad_opacity = grad_acc[ray];
            if (opacity > 0) {
                const scalar_t raw = weighted_depth / opacity;
                if (raw >= depth_min && raw <= depth_max) {
                    grad_weighted_depth = grad_depth[ray] / opacity;
                    grad_opacity -= grad_depth[ray] * weighted_depth / (opacity * opacity);
                }
            }
            for (int64_t k = 0; k + 1 < count; ++k) {
                const scalar_t* __restrict near = samples.colors[k];
                const scalar_t* __restrict far = samples.colors[k + 1];
                scalar_t dot = 0;
                for (int64_t c = 0; c < channels; ++c) {
                    dot += g[c] * ((near[c] + far[c]) / 2);
                }
                grad_weight[k] = dot + grad_opacity + grad_weighted_depth * ((z[k] + z[k + 1]) / 2);
            }
            scalar_t later = 0;  // sum over m > k of grad_weight[m] * weight[m]
            for (int64_t k = count - 2; k >= 0; --k) {
                const scalar_t grad_alpha = grad_weight[k] * intervals.transmittance[k]
                                            - later / (1 - intervals.alpha[k] + scalar_t(1e-10));
                later += grad_weight[k] * intervals.weight[k];
                grad_mid_density[k] =
                    grad_alpha * (z[k + 1] - z[k]) * intervals.decay[k] * intervals.slope[k];
            }
            for (int64_t s = 0; s < count; ++s) {
                const scalar_t before = s > 0 ? intervals.weight[s - 1] : scalar_t(0);
                const scalar_t after = s + 1 < count ? intervals.weight[s] : scalar_t(0);
                const scalar_t grad_before = s > 0 ? grad_mid_density[s - 1] : scalar_t(0);
                const scalar_t grad_after = s + 1 < count ? grad_mid_density[s] : scalar_t(0);
                const int64_t source = samples.sources[s];
                scalar_t* __restrict target;
                scalar_t* density_target;
                if (source < count_a) {
                    target = grad_colors_a + (ray * count_a + source) * channels;
                    density_target = grad_densities_a + ray * count_a + source;
                } else {
                    target = grad_colors_b + (ray * count_b + source - count_a) * channels;
                    density_target = grad_densities_b + ray * count_b + source - count_a;
                }
                const scalar_t share = (before + after) / 2;
                for (int64_t c = 0; c < channels; ++c) {
                    target[c] = g[c] * share;
                }
                *density_target = (grad_before + grad_after) / 2;
            }
        }
    });
}

void check_inputs(const torch::Tensor& colors_a, const torch::Tensor& densities_a, const torch::Tensor& colors_b,
                  const torch::Tensor& densities_b, const torch::Tensor& depths, const torch::Tensor& order) {
    TORCH_CHECK(colors_a.dim() == 4 && colors_b.dim() == 4 && densities_a.dim() == 4 && densities_b.dim() == 4
                    && depths.dim() == 4,
                "ray_marcher: colors, densities and depths must be [B, R, S, C], [B, R, S, 1], [B, R, S, 1]");
    const auto dtype = colors_a.scalar_type();
    for (const auto* t : {&colors_a, &densities_a, &colors_b, &densities_b, &depths}) {
        TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype && t->is_contiguous(),
                    "ray_marcher: contiguous CPU tensors of one floating dtype");
    }
    const int64_t count = colors_a.size(2) + colors_b.size(2);
    TORCH_CHECK(depths.size(2) == count && count >= 2, "ray_marcher: depths must hold both sets' samples (>= 2)");
    TORCH_CHECK(order.numel() == 0 || (order.scalar_type() == torch::kInt64 && order.is_contiguous()
                                       && order.numel() == depths.numel()),
                "ray_marcher: order must be [B, R, S] int64 or empty");
}

// colors_* [B, R, S_*, C], densities_* [B, R, S_*, 1], depths [B, R, S, 1] (sorted; S = S_a + S_b),
// order [B, R, S] (index into the concatenated sets per sorted position; empty = as given)
// -> features [B, R, C], depth [B, R, 1], weights [B, R, S-1, 1], acc [B, R, 1]
std::vector<torch::Tensor> march(torch::Tensor colors_a, torch::Tensor densities_a, torch::Tensor colors_b,
                                 torch::Tensor densities_b, torch::Tensor depths, torch::Tensor order,
                                 double depth_min, double depth_max) {
    check_inputs(colors_a, densities_a, colors_b, densities_b, depths, order);
    const int64_t batch = depths.size(0), rays = depths.size(1), count = depths.size(2);
    const int64_t channels = colors_a.size(3);
    auto features = torch::empty({batch, rays, channels}, colors_a.options());
    auto depth = torch::empty({batch, rays, 1}, colors_a.options());
    auto weights = torch::empty({batch, rays, count - 1, 1}, colors_a.options());
    auto acc = torch::empty({batch, rays, 1}, colors_a.options());
    AT_DISPATCH_FLOATING_TYPES(colors_a.scalar_type(), "ray_marcher", [&] {
        march_rays<scalar_t>(colors_a.data_ptr<scalar_t>(), densities_a.data_ptr<scalar_t>(), colors_a.size(2),
                             colors_b.data_ptr<scalar_t>(), densities_b.data_ptr<scalar_t>(), colors_b.size(2),
                             depths.data_ptr<scalar_t>(), order.numel() ? order.data_ptr<int64_t>() : nullptr,
                             static_cast<scalar_t>(depth_min), static_cast<scalar_t>(depth_max), batch * rays,
                             channels, features.data_ptr<scalar_t>(), depth.data_ptr<scalar_t>(),
                             weights.data_ptr<scalar_t>(), acc.data_ptr<scalar_t>());
    });
    return {features, depth, weights, acc};
}

// The inputs of march and the gradients of features, depth and acc -> the gradients of
// colors_a, densities_a, colors_b, densities_b.
std::vector<torch::Tensor> march_backward(torch::Tensor colors_a, torch::Tensor densities_a, torch::Tensor colors_b,
                                          torch::Tensor densities_b, torch::Tensor depths, torch::Tensor order,
                                          double depth_min, double depth_max, torch::Tensor grad_features,
                                          torch::Tensor grad_depth, torch::Tensor grad_acc) {
    check_inputs(colors_a, densities_a, colors_b, densities_b, depths, order);
    const int64_t batch = depths.size(0), rays = depths.size(1);
    const int64_t channels = colors_a.size(3);
    grad_features = grad_features.contiguous();
    grad_depth = grad_depth.contiguous();
    grad_acc = grad_acc.contiguous();
    TORCH_CHECK(grad_features.numel() == batch * rays * channels && grad_depth.numel() == batch * rays
                    && grad_acc.numel() == batch * rays,
                "ray_marcher: gradients of features [B, R, C], depth and acc [B, R, 1]");
    auto grad_colors_a = torch::empty_like(colors_a), grad_densities_a = torch::empty_like(densities_a);
    auto grad_colors_b = torch::empty_like(colors_b), grad_densities_b = torch::empty_like(densities_b);
    AT_DISPATCH_FLOATING_TYPES(colors_a.scalar_type(), "ray_marcher_backward", [&] {
        march_rays_backward<scalar_t>(
            colors_a.data_ptr<scalar_t>(), densities_a.data_ptr<scalar_t>(), colors_a.size(2),
            colors_b.data_ptr<scalar_t>(), densities_b.data_ptr<scalar_t>(), colors_b.size(2),
            depths.data_ptr<scalar_t>(), order.numel() ? order.data_ptr<int64_t>() : nullptr,
            static_cast<scalar_t>(depth_min), static_cast<scalar_t>(depth_max), batch * rays, channels,
            grad_features.data_ptr<scalar_t>(), grad_depth.data_ptr<scalar_t>(), grad_acc.data_ptr<scalar_t>(),
            grad_colors_a.data_ptr<scalar_t>(), grad_densities_a.data_ptr<scalar_t>(),
            grad_colors_b.data_ptr<scalar_t>(), grad_densities_b.data_ptr<scalar_t>());
    });
    return {grad_colors_a, grad_densities_a, grad_colors_b, grad_densities_b};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("march", &march, "Alpha compositing of one or two sample sets along rays (see ray_marcher.cpp)");
    m.def("march_backward", &march_backward, "Gradients of march (see ray_marcher.cpp)");
}
