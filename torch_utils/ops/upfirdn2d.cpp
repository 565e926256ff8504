// Python binding of the upfirdn2d kernel, with the input checks that the kernel relies on.

#include <torch/extension.h>

#include <c10/cuda/CUDAGuard.h>

#include "upfirdn2d.h"

namespace {

// x [N, C, H, W], f [fh, fw] -> y [N, C, (H * up_y + pad_y0 + pad_y1 - fh) / down_y + 1, (W * ...) / down_x + 1]
torch::Tensor upfirdn2d(torch::Tensor x, torch::Tensor f, int64_t up_x, int64_t up_y, int64_t down_x,
                        int64_t down_y, int64_t pad_x0, int64_t pad_x1, int64_t pad_y0, int64_t pad_y1,
                        bool flip_filter, double gain) {
    TORCH_CHECK(x.is_cuda(), "upfirdn2d: x must be a CUDA tensor, got one on ", x.device(), "; use impl='ref'");
    TORCH_CHECK(x.dim() == 4, "upfirdn2d: x must have shape [N, C, H, W], got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble || x.scalar_type() == at::kHalf ||
                x.scalar_type() == at::kBFloat16,
                "upfirdn2d: x must be float64, float32, float16 or bfloat16, got ", x.scalar_type());
    const auto filter_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    TORCH_CHECK(f.dim() == 2 && f.numel() > 0, "upfirdn2d: f must have shape [fh, fw], got ", f.sizes());
    TORCH_CHECK(f.device() == x.device(), "upfirdn2d: f is on ", f.device(), " but x on ", x.device(),
                "; move the filter to the input's device");
    TORCH_CHECK(f.scalar_type() == filter_dtype, "upfirdn2d: f must be ", filter_dtype, " for ", x.scalar_type(),
                " inputs, got ", f.scalar_type());
    TORCH_CHECK(f.numel() <= kUpFirDn2dMaxTaps, "upfirdn2d: the filter has ", f.numel(), " taps, more than the ",
                kUpFirDn2dMaxTaps, " that fit in shared memory; use impl='ref'");
    TORCH_CHECK(up_x >= 1 && up_y >= 1 && down_x >= 1 && down_y >= 1,
                "upfirdn2d: up and down factors must be >= 1, got up=(", up_x, ", ", up_y, "), down=(", down_x,
                ", ", down_y, ")");
    const int64_t padded_w = x.size(3) * up_x + pad_x0 + pad_x1;
    const int64_t padded_h = x.size(2) * up_y + pad_y0 + pad_y1;
    TORCH_CHECK(padded_w >= f.size(1) && padded_h >= f.size(0), "upfirdn2d: the upsampled, padded input (",
                padded_h, " x ", padded_w, ") is smaller than the filter (", f.size(0), " x ", f.size(1),
                "); increase the padding");

    const c10::cuda::OptionalCUDAGuard device_guard(x.device());
    UpFirDn2dParams params;
    params.batch = x.size(0);
    params.channels = x.size(1);
    params.in_h = x.size(2);
    params.in_w = x.size(3);
    params.out_h = (padded_h - f.size(0)) / down_y + 1;
    params.out_w = (padded_w - f.size(1)) / down_x + 1;
    params.in_stride_n = x.stride(0);
    params.in_stride_c = x.stride(1);
    params.in_stride_y = x.stride(2);
    params.in_stride_x = x.stride(3);
    params.up_x = up_x;
    params.up_y = up_y;
    params.down_x = down_x;
    params.down_y = down_y;
    params.pad_x0 = pad_x0;
    params.pad_y0 = pad_y0;
    params.filter_h = f.size(0);
    params.filter_w = f.size(1);
    params.flip_filter = flip_filter;
    params.gain = gain;
    const auto memory_format = x.suggest_memory_format();
    params.channels_last_output = memory_format == at::MemoryFormat::ChannelsLast;

    torch::Tensor y = torch::empty({params.batch, params.channels, params.out_h, params.out_w},
                                   x.options().memory_format(memory_format));
    if (y.numel() == 0) {
        return y;
    }
    launch_upfirdn2d(params, x, f.contiguous(), y);
    return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("upfirdn2d", &upfirdn2d,
          "Upsample by zero insertion, pad, FIR-filter, scale and downsample [N, C, H, W] CUDA tensors",
          py::arg("x"), py::arg("f"), py::arg("up_x"), py::arg("up_y"), py::arg("down_x"), py::arg("down_y"),
          py::arg("pad_x0"), py::arg("pad_x1"), py::arg("pad_y0"), py::arg("pad_y1"), py::arg("flip_filter"),
          py::arg("gain"));
}
