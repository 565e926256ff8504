"""The check that every rendering tool makes before it writes or shows a render: the generator's output must be
finite and of a sane size. Latents or weights far out of range (ws of 1e30, a diverged snapshot) make it NaN,
inf or astronomically large, which a picture shows as flat black or white and a mesh as nothing.

gen_samples, gen_videos, extract_shapes, invert and the viewer render through `synthesis` and `extract_shape`
(training/engines/shapes.py), which call `require_finite`; the tools turn NonFiniteRenderError into one line.
"""

import numpy as np
import torch

from training.body.nearest_face import NonFinitePointsError

# Images are in [-1, 1] and a generator strays a little past that; densities (before softplus) are tens.
# A million times that arises only from values overflowing on the way: such a render is refused as well.
MAX_MAGNITUDE = 1e6
# The outputs of G.synthesis that become pictures.
RENDERED_OUTPUTS = ('image', 'image_raw', 'image_depth', 'image_mask')


class NonFiniteRenderError(ValueError):
    """The generator's output is not finite (or absurdly large); the message is one line that names it."""


def require_finite(name: str, values: torch.Tensor | np.ndarray, ws: torch.Tensor | None = None) -> None:
    """Raise NonFiniteRenderError when `values` (any shape) hold NaN, inf, or magnitudes above MAX_MAGNITUDE.

    name: what the values are, for the message ("image", "density volume"); ws [B, num_ws, w_dim]: the latents
    rendered, whose size the message gives.
    """
    values = torch.as_tensor(values)
    finite = torch.isfinite(values)
    largest = values[finite].abs().max().item() if finite.any() else 0.0
    if finite.all() and largest <= MAX_MAGNITUDE:
        return
    if not finite.all():
        problem = f'{1 - finite.float().mean().item():.0%} of it NaN or inf'
    else:
        problem = f'values up to {largest:.3g}, far outside any picture'
    raise NonFiniteRenderError(_message(name, problem, ws))


def _message(name: str, problem: str, ws: torch.Tensor | None) -> str:
    latent = ''
    if ws is not None:
        finite_ws = ws[torch.isfinite(ws)]
        largest = finite_ws.abs().max().item() if len(finite_ws) else float('nan')
        latent = f' (the largest |ws| is {largest:.3g})'
    return (
        f"the generator's {name} is not finite ({problem}): its latent{latent} or its weights are out of range, "
        f'and it would come out as an empty picture; nothing was written for it'
    )


def synthesis(G: torch.nn.Module, ws: torch.Tensor, c: torch.Tensor, **kwargs) -> dict:
    """G.synthesis(ws [B, num_ws, w_dim], c [B, 25], **kwargs) -> its dict, after require_finite on each
    rendered output (RENDERED_OUTPUTS) that it holds."""
    try:
        out = G.synthesis(ws, c, **kwargs)
    except NonFinitePointsError:
        # Non-finite coarse densities place the fine ray samples at NaN, which the deformation refuses before
        # any output exists.
        raise NonFiniteRenderError(_message('density', 'NaN or inf along the rays', ws)) from None
    for name in RENDERED_OUTPUTS:
        if out.get(name) is not None:
            require_finite(name, out[name], ws)
    return out
