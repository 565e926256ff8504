"""training/engines/render_check.py: every rendering tool stops with one line, writing nothing, when the generator's
output is not finite or far outside any picture (latents of 1e30 make it so)."""

import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import extract_shapes
import gen_samples
import gen_videos
from tests.tiny_run import write_tiny_snapshot
from training.checkpoints import formats
from training.checkpoints.latent_file import save_latent
from training.data.camera_utils import frontal_camera
from training.engines import inversion
from training.engines.render_check import MAX_MAGNITUDE, NonFiniteRenderError, require_finite
from training.engines.viewer import Viewer, ViewState


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    """-> dict of the run directory, its G_ema, a latent file of G's mapped ws times 1e30 (finite, but overflowing
    the images) and a snapshot whose decoder holds a NaN (as a diverged run leaves it)."""
    root = tmp_path_factory.mktemp('tiny')
    run_dir = write_tiny_snapshot(str(root))[0]
    snapshot = formats.load_any(os.path.join(run_dir, 'network-snapshot-000000.pt'))
    G = snapshot['G_ema'].eval().requires_grad_(False)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(0)), frontal_camera(1))
    inputs = dict(run=run_dir, G=G, huge=str(root / 'huge.npz'), diverged=str(root / 'diverged.pt'))
    save_latent(inputs['huge'], ws * 1e30, None, None)
    with torch.no_grad():
        next(snapshot['G_ema'].decoder.parameters()).view(-1)[0] = float('nan')
    formats.save_weights(inputs['diverged'], {'G_ema': snapshot['G_ema']})
    return inputs


def test_require_finite_refuses_nan_inf_and_overflowed_values():
    require_finite('image', torch.tensor([-1.2, 0.0, 1.3]))
    require_finite('density volume', np.full([2, 2, 2], -MAX_MAGNITUDE, np.float32))
    for values, says in (
        (torch.tensor([0.0, float('nan'), 1.0, 1.0]), '25% of it NaN or inf'),
        (torch.tensor([float('inf')] * 4), '100% of it NaN or inf'),
        (torch.tensor([0.5, 4e29]), 'values up to 4e+29, far outside any picture'),
    ):
        with pytest.raises(NonFiniteRenderError, match=re.escape(says)) as raised:
            require_finite('image', values, ws=torch.full([1, 2, 3], 1e30))
        assert '\n' not in str(raised.value) and 'the largest |ws| is 1e+30' in str(raised.value)


TOOLS = {
    'gen_samples': (gen_samples.main, ['--network', '{run}', '--seeds', '0', '--trunc', '1e30', '--sample-mult', '1']),
    'gen_videos': (
        gen_videos.main,
        ['--network', '{run}', '--latent', '{huge}', '--w-frames', '2', '--sample-mult', '1'],
    ),
    'gen_samples --shapes': (gen_samples.main, ['--network', '{diverged}', '--seeds', '0', '--shapes']),
    'extract_shapes': (extract_shapes.main, ['--network', '{diverged}', '--seeds', '0', '--shape-res', '8']),
}


@pytest.mark.parametrize('tool', [*TOOLS, 'viewer', 'inversion'])
def test_a_render_that_is_not_finite_stops_every_tool_with_one_line_and_nothing_written(tiny, tmp_path, tool):
    if tool == 'viewer':
        with pytest.raises(NonFiniteRenderError, match="the generator's (image|density) is not finite"):
            Viewer(tiny['G']).render(ViewState(seed=0, truncation_psi=1e30))
        return
    if tool == 'inversion':
        ws = torch.from_numpy(np.load(tiny['huge'])['ws'])
        with pytest.raises(NonFiniteRenderError, match="the generator's (image|density) is not finite"):
            inversion.render(tiny['G'], ws, frontal_camera(1), torch.zeros(1, 6))
        return
    main, args = TOOLS[tool]
    outdir = tmp_path / 'out'
    args = [arg.format(**tiny) for arg in args] + ['--outdir', str(outdir), '--device', 'cpu']
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: the generator's ") and 'is not finite' in last, result.output
    assert 'the largest |ws| is ' in last
    assert os.listdir(outdir) == []  # no picture, video, volume or mesh; no temporary file either
