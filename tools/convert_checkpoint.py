"""Convert a published 3DPortraitGAN checkpoint into this project's weights file.

    python tools/convert_checkpoint.py 3DPortraitGAN512-64.pkl 3DPortraitGAN512-64.pt [--smpl PATH]

Reads the published network pickle without running anything from it (training.checkpoints.safe_pickle),
rebuilds its generators and discriminators as this project's networks (training.checkpoints.authors)
and writes them with training.checkpoints.formats.save_weights: a file that loads with
`torch.load(weights_only=True)` through `formats.load_weights`, or wherever a snapshot is
accepted. The pose-prediction settings in the .json beside IN (same stem) are copied beside OUT,
where the tools look for them (training.checkpoints.run_files.pose_predict_kwargs_for).

The generators deform an SMPL body read from the user's SMPL_NEUTRAL.pkl: --smpl PATH, by
default body_models/smpl/SMPL_NEUTRAL.pkl. The weights file records that choice, so loading it
needs the same file.
"""

import argparse
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from training.checkpoints import conversion, formats  # noqa: E402


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('input', metavar='IN.pkl', help='a published 3DPortraitGAN checkpoint')
    parser.add_argument('output', metavar='OUT.pt', help='the weights file to write')
    parser.add_argument(
        '--smpl', metavar='PATH', default=None, help='SMPL_NEUTRAL.pkl  [default: body_models/smpl/SMPL_NEUTRAL.pkl]'
    )
    args = parser.parse_args(argv)
    if not args.output.endswith('.pt'):
        print(f'convert_checkpoint: {args.output}: name the weights file .pt', file=sys.stderr)
        return 2
    try:
        out_path, json_path = conversion.convert_checkpoint(args.input, args.output, args.smpl)
    except (formats.CheckpointError, OSError) as error:
        print(f'convert_checkpoint: {error}', file=sys.stderr)
        return 1
    print(out_path)
    if json_path is None:
        print(
            f'convert_checkpoint: no pose-prediction settings beside {args.input}; pose prediction on real '
            f'images will need them passed explicitly',
            file=sys.stderr,
        )
    else:
        print(json_path)
    return 0


if __name__ == '__main__':
    sys.exit(main())
