// Python binding of the bias_act kernel, with the input checks that the kernel relies on.

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>

#include "bias_act.h"

namespace {

// input [any], bias [input.size(dim)] or empty, ref [input.shape] or empty -> out [input.shape]
torch::Tensor bias_act(torch::Tensor input, torch::Tensor bias, torch::Tensor ref, int64_t kind, int64_t mode,
                       bool ref_is_output, int64_t dim, double alpha, double gain, double clamp) {
    TORCH_CHECK(input.is_cuda(), "bias_act: input must be a CUDA tensor, got one on ", input.device());
    TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble ||
                input.scalar_type() == at::kHalf || input.scalar_type() == at::kBFloat16,
                "bias_act: input must be float64, float32, float16 or bfloat16, got ", input.scalar_type());
    TORCH_CHECK(kind >= 0 && kind < kNumBiasActKinds, "bias_act: activation kind ", kind, " is out of range");
    TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act: mode must be 0 (forward), 1 or 2 (derivatives), got ", mode);
    TORCH_CHECK(input.dim() == 0 ? dim == 0 : (dim >= 0 && dim < input.dim()),
                "bias_act: dim ", dim, " is out of range for a ", input.dim(), "-d input");
    TORCH_CHECK(mode == 0 || bias_act_kind_uses_output(static_cast<int>(kind)) == ref_is_output,
                "bias_act: activation kind ", kind, " takes its derivatives from ",
                bias_act_kind_uses_output(static_cast<int>(kind)) ? "the output y" : "the input x");
    TORCH_CHECK(std::isfinite(clamp), "bias_act: clamp must be finite (use a negative value for no clamp)");

    const c10::cuda::OptionalCUDAGuard device_guard(input.device());
    // The kernel walks memory in storage order, which is valid for any dense layout (channels_last too).
    if (!input.is_non_overlapping_and_dense()) {
        input = input.contiguous();
    }
    const int64_t bias_size = bias.numel();
    if (bias_size > 0) {
        TORCH_CHECK(bias.dim() == 1 && input.dim() > 0 && bias_size == input.size(dim),
                    "bias_act: bias must have shape [input.size(dim)] = [", input.dim() > 0 ? input.size(dim) : 0,
                    "], got ", bias.sizes());
        TORCH_CHECK(bias.device() == input.device() && bias.scalar_type() == input.scalar_type(),
                    "bias_act: bias must have the input's device and dtype");
        bias = bias.contiguous();
    }
    if (mode > 0) {
        TORCH_CHECK(ref.defined() && ref.sizes() == input.sizes(),
                    "bias_act: derivative modes need a reference tensor of the input's shape ", input.sizes());
        TORCH_CHECK(ref.device() == input.device() && ref.scalar_type() == input.scalar_type(),
                    "bias_act: the reference tensor must have the input's device and dtype");
        if (ref.strides() != input.strides()) {
            ref = torch::empty_like(input).copy_(ref);
        }
    }

    torch::Tensor out = torch::empty_like(input);
    if (input.numel() == 0) {
        return out;
    }
    BiasActParams params;
    params.kind = static_cast<int>(kind);
    params.mode = static_cast<int>(mode);
    params.alpha = alpha;
    params.gain = gain;
    params.clamp = clamp;
    params.numel = input.numel();
    params.bias_size = bias_size;
    // A size-1 dimension may carry any stride; its bias index is 0 either way.
    params.bias_stride = input.dim() > 0 ? std::max<int64_t>(input.stride(dim), 1) : 1;
    launch_bias_act(params, input, bias_size > 0 ? bias : torch::Tensor(), mode > 0 ? ref : torch::Tensor(), out);
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act,
          "Fused bias, activation, gain and clamp on CUDA tensors, or its first/second derivative (mode 1/2)",
          py::arg("input"), py::arg("bias"), py::arg("ref"), py::arg("kind"), py::arg("mode"),
          py::arg("ref_is_output"), py::arg("dim"), py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
}
