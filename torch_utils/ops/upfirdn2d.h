// upfirdn2d: the per-output-sample math shared by the CUDA kernel (upfirdn2d.cu) and a host
// build in the tests, and the interface between upfirdn2d.cpp and upfirdn2d.cu.
// Free of ATen includes so that the math also compiles as plain C++.

#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define UPFIRDN2D_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define UPFIRDN2D_HOST_DEVICE inline
#endif

// Largest filter (fh * fw taps) that the kernel keeps in shared memory; upfirdn2d.py mirrors it.
constexpr int64_t kUpFirDn2dMaxTaps = 4096;

struct UpFirDn2dParams {
    int64_t batch, channels;
    int64_t in_h, in_w;
    int64_t out_h, out_w;
    int64_t in_stride_n, in_stride_c, in_stride_y, in_stride_x;  // in elements; any layout
    int64_t up_x, up_y, down_x, down_y;
    int64_t pad_x0, pad_y0;       // the end paddings only decide out_w / out_h
    int64_t filter_h, filter_w;   // filter taps row-major [filter_h, filter_w]
    bool flip_filter;             // false: true convolution with the filter; true: correlation
    bool channels_last_output;    // output memory is [N, out_h, out_w, C] instead of [N, C, out_h, out_w]
    double gain;
};

namespace at { class Tensor; }

// x [N, C, in_h, in_w] (any strides), f [filter_h, filter_w] contiguous, in the kernel's
// accumulation type (float64 for float64 x, float32 otherwise); y preallocated dense in the
// layout that params.channels_last_output names.
void launch_upfirdn2d(const UpFirDn2dParams& params, const at::Tensor& x, const at::Tensor& f, at::Tensor& y);

namespace upfirdn2d_math {

// Logical coordinates of the output sample stored at dense offset `index`.
struct OutputCoords {
    int64_t n, c, y, x;
};

UPFIRDN2D_HOST_DEVICE OutputCoords output_coords(const UpFirDn2dParams& p, int64_t index) {
    OutputCoords o;
    if (p.channels_last_output) {
        o.c = index % p.channels;
        index /= p.channels;
        o.x = index % p.out_w;
        index /= p.out_w;
        o.y = index % p.out_h;
        o.n = index / p.out_h;
    } else {
        o.x = index % p.out_w;
        index /= p.out_w;
        o.y = index % p.out_h;
        index /= p.out_h;
        o.c = index % p.channels;
        o.n = index / p.channels;
    }
    return o;
}

// Smallest tap t >= 0 for which start + t lands on an original (not zero-inserted) sample.
UPFIRDN2D_HOST_DEVICE int64_t first_live_tap(int64_t start, int64_t up) {
    return ((-start) % up + up) % up;
}

// One output sample. On the upsampled, padded grid the output (oy, ox) covers the window that
// starts at (oy * down_y - pad_y0, ox * down_x - pad_x0) (in unpadded upsampled coordinates);
// only every up-th position in it holds an input sample, the rest are inserted zeros and are
// skipped. Window tap t meets filter tap (size - 1 - t) for a true convolution, t when flipped.
template <typename acc_t, typename scalar_t, typename filter_t>
UPFIRDN2D_HOST_DEVICE acc_t output_sample(const UpFirDn2dParams& p, const scalar_t* x, const filter_t* filter,
                                          const OutputCoords& o) {
    const scalar_t* plane = x + o.n * p.in_stride_n + o.c * p.in_stride_c;
    const int64_t start_y = o.y * p.down_y - p.pad_y0;
    const int64_t start_x = o.x * p.down_x - p.pad_x0;
    acc_t sum = acc_t(0);
    for (int64_t ty = first_live_tap(start_y, p.up_y); ty < p.filter_h; ty += p.up_y) {
        const int64_t iy = (start_y + ty) / p.up_y;  // exact: start_y + ty is a multiple of up_y
        if (iy < 0 || iy >= p.in_h) {
            continue;
        }
        const filter_t* filter_row = filter + (p.flip_filter ? ty : p.filter_h - 1 - ty) * p.filter_w;
        const scalar_t* input_row = plane + iy * p.in_stride_y;
        for (int64_t tx = first_live_tap(start_x, p.up_x); tx < p.filter_w; tx += p.up_x) {
            const int64_t ix = (start_x + tx) / p.up_x;
            if (ix < 0 || ix >= p.in_w) {
                continue;
            }
            const int64_t fx = p.flip_filter ? tx : p.filter_w - 1 - tx;
            sum += static_cast<acc_t>(filter_row[fx]) * static_cast<acc_t>(input_row[ix * p.in_stride_x]);
        }
    }
    return sum * static_cast<acc_t>(p.gain);
}

}  // namespace upfirdn2d_math
