"""Pictures of raw-photo alignment on a real photo, made by running the tools on it.

    python tools/alignment_images.py --network pretrained/cpu-fast-64.pt --outdir docs/images [--w-steps 40]

writes alignment-astronaut.png (scikit-image's astronaut, a public-domain NASA portrait: the photo with the crop
box and the estimated camera, the aligned crop and its mask, from `dataset_tool.py align`) and
alignment-inversion.png (`invert.py --image` on the raw photo: the aligned input, the generator's render from
the estimated camera, then an orbit of the result every 45 degrees).
"""

import json
import os
import subprocess
import sys
import tempfile

import click
import PIL.Image
import PIL.ImageDraw
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from training.checkpoints.latent_file import load_latent  # noqa: E402
from training.cli import load_generator  # noqa: E402
from training.data.camera_utils import orbit_trajectory  # noqa: E402
from training.data.images import to_uint8  # noqa: E402
from training.engines.inversion import render  # noqa: E402

ROW = 256  # height of every picture in the figures


def _fit(image: PIL.Image.Image) -> PIL.Image.Image:
    return image.resize((round(image.width * ROW / image.height), ROW), PIL.Image.Resampling.LANCZOS)


def _row(images: list) -> PIL.Image.Image:
    images = [_fit(image) for image in images]
    canvas = PIL.Image.new('RGB', (sum(i.width for i in images) + 4 * (len(images) - 1), ROW), 'white')
    x = 0
    for image in images:
        canvas.paste(image, (x, 0))
        x += image.width + 4
    return canvas


@click.command()
@click.option('--network', required=True, help='Snapshot for the inversion')
@click.option('--outdir', required=True, type=click.Path(file_okay=False))
@click.option('--w-steps', type=click.IntRange(min=1), default=40, show_default=True)
def main(network: str, outdir: str, w_steps: int):
    import skimage.data

    os.makedirs(outdir, exist_ok=True)
    work = tempfile.mkdtemp()
    photo_path = os.path.join(work, 'astronaut.jpg')
    PIL.Image.fromarray(skimage.data.astronaut()).save(photo_path, quality=95)
    python = sys.executable
    aligned = os.path.join(work, 'aligned')
    subprocess.run(
        [python, 'dataset_tool.py', 'align', '--source', photo_path, '--dest', aligned, '--no-progress'],
        check=True,
        cwd=REPO,
    )
    with open(os.path.join(aligned, 'result.json')) as file:
        entry = json.load(file)['astronaut.png']
    photo = PIL.Image.open(photo_path).convert('RGB')
    draw = PIL.ImageDraw.Draw(photo)
    draw.rectangle(entry['crop_box'], outline=(255, 255, 0), width=3)
    draw.text(
        (entry['crop_box'][0] + 6, max(4, entry['crop_box'][1] + 6)),
        f'yaw {entry["yaw_degrees"]:.0f} deg, pitch {entry["pitch_degrees"]:.0f}\n{entry["camera_method"]}',
        fill=(255, 255, 0),
    )
    crop = PIL.Image.open(os.path.join(aligned, 'aligned_images', 'astronaut.png')).convert('RGB')
    mask = PIL.Image.open(os.path.join(aligned, 'mask', 'astronaut.png')).convert('RGB')
    _row([photo, crop, mask]).save(os.path.join(outdir, 'alignment-astronaut.png'))

    inverted = os.path.join(work, 'inverted')
    subprocess.run(
        [python, 'invert.py', '--network', network, '--image', photo_path, '--w-steps', str(w_steps)]
        + ['--pose', '0,0,0,0,0,0', '--no-video', '--no-mesh', '--device', 'cpu', '--outdir', inverted],
        check=True,
        cwd=REPO,
    )
    G = load_generator(network, None, 0, torch.device('cpu'))
    latent = load_latent(os.path.join(inverted, 'astronaut', 'latent.npz'), G, torch.device('cpu'))
    reconstruction = PIL.Image.open(os.path.join(inverted, 'astronaut', 'reconstruction.png'))
    frames = []
    with torch.no_grad():
        for camera in orbit_trajectory(8).split(1):
            frames.append(PIL.Image.fromarray(to_uint8(render(G, latent['ws'], camera, latent['pose'])['image'])[0]))
    _row([reconstruction, *frames]).save(os.path.join(outdir, 'alignment-inversion.png'))
    print(f'wrote {outdir}/alignment-astronaut.png and alignment-inversion.png; aligned camera: {entry}')


if __name__ == '__main__':
    main()
