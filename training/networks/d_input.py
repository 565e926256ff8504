"""What the discriminator sees: real batches and fakes turned into D's three inputs (docs/method.md §7.1, §7.5, §9.6).

`discriminator_input` is the one place that builds D's input, for the loss (reals and fakes), pose
prediction on real photos, the metrics' pose error and the snapshot grid. `resize_image` and
`blur_image` are its two image operations, also used on their own to bring photos to a resolution.
"""

import torch
import torch.nn.functional as F

from torch_utils.ops import upfirdn2d
from training import schedules

FILTER_MODES = ('antialiased', 'none')  # resizing of real images: bilinear with / without antialiasing


def resize_image(x: torch.Tensor, resolution: int, filter_mode: str = 'antialiased') -> torch.Tensor:
    """Bilinear resize to `resolution`, antialiased when shrinking under 'antialiased'.

    x [B, C, H, W] -> [B, C, resolution, resolution]; x itself when it already has that size.
    """
    if filter_mode not in FILTER_MODES:
        raise ValueError(f'filter_mode {filter_mode!r}: expected one of {", ".join(FILTER_MODES)}')
    if x.shape[-2:] == (resolution, resolution):
        return x
    return F.interpolate(
        x, size=(resolution, resolution), mode='bilinear', align_corners=False, antialias=filter_mode == 'antialiased'
    )


def blur_image(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable blur with `schedules.blur_kernel(sigma)`, zero padded, same size (docs/method.md §7.5).

    x [B, C, H, W] -> [B, C, H, W]; x itself when the kernel has a single tap (sigma < 1/3).
    """
    f = schedules.blur_kernel(sigma, device=x.device)
    if f.numel() == 1:
        return x
    return upfirdn2d.filter2d(x, f)


def discriminator_input(
    images: dict,
    blur_sigma: float,
    resolution: int | None = None,
    filter_mode: str = 'antialiased',
    blur_raw: bool = True,
) -> dict:
    """D's input {'image' [B, 3, S, S], 'image_raw' [B, 3, r, r], 'image_mask' [B, 1, r, r]} for a real batch or a fake.

    images: a real batch {'image' [B, 3, S, S] in [-1, 1], 'mask' [B, 1, S, S] in [0, 1]}, or a
      generator output {'image', 'image_raw', 'image_mask', ...} (other keys are ignored).
    blur_sigma: the blur schedule's sigma (0: none); the full image is blurred with it, reals and fakes alike.
    resolution, filter_mode: reals only: the rendering resolution r their raw image and mask are
      resized to, and how (one of FILTER_MODES). D always sees the mask at r, like a fake's alpha.
    blur_raw: reals only: blur the raw image too. D sees a fake's raw image as rendered, which is
      itself low-resolution; the real raw image is blurred so that it does not give reals away.
    """
    if 'image_raw' in images:
        image_raw, image_mask = images['image_raw'], images['image_mask']
    elif 'mask' in images:
        if resolution is None:
            raise ValueError('discriminator_input: a real batch needs the rendering resolution')
        image_raw = resize_image(images['image'], resolution, filter_mode)
        if blur_raw and blur_sigma > 0:
            image_raw = blur_image(image_raw, blur_sigma)
        image_mask = resize_image(images['mask'], resolution, filter_mode)
    else:
        raise ValueError(
            f'discriminator_input: keys {sorted(images)}: expected a real batch '
            f"('image', 'mask') or a generator output ('image', 'image_raw', 'image_mask')"
        )
    image = blur_image(images['image'], blur_sigma) if blur_sigma > 0 else images['image']
    return {'image': image, 'image_raw': image_raw, 'image_mask': image_mask}
