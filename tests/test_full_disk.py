"""A full disk while a tool writes its outputs (training/checkpoints/atomic_files.py): one line naming the file and
the cause, and nothing partial left (no truncated output, no temporary file). The disk fills up in the low-level
write of the file being written: a file object whose write() stores a little and then raises ENOSPC."""

import builtins
import errno
import io
import os
import time
import zipfile

import pytest
from click.testing import CliRunner

import extract_shapes
import gen_samples
import gen_videos
import invert
from tests.tiny_run import write_tiny_snapshot


class FullDiskFile(io.FileIO):
    """A file on a disk with room for `room` more bytes: a write past them stores what fits and raises ENOSPC."""

    room = 100

    def write(self, data) -> int:
        data = memoryview(data).cast('B')
        if len(data) > self.room:
            super().write(data[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return super().write(data)


def full_disk_open(name: str, real_open=open):
    """An `open` that fills the disk while the output called `name` is written (under its temporary name)."""

    def fake_open(path, mode='r', *args, **kwargs):
        base = os.path.basename(str(path))
        if 'w' in mode and (base == name or base.startswith(f'.{name}.')):
            raw = FullDiskFile(path, 'w')
            return raw if 'b' in mode else io.TextIOWrapper(raw)
        return real_open(path, mode, *args, **kwargs)

    return fake_open


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp('tiny')
    run_dir = write_tiny_snapshot(str(root))[0]
    with zipfile.ZipFile(root / 'data.zip') as images, zipfile.ZipFile(root / 'seg.zip') as masks:
        first = sorted(name for name in images.namelist() if name.endswith('.png'))[0]
        (root / 'photo.png').write_bytes(images.read(first))
        (root / 'photo_mask.png').write_bytes(masks.read(first))
    return dict(run=run_dir, photo=str(root / 'photo.png'), photo_mask=str(root / 'photo_mask.png'))


# tool -> (its main, arguments, the output that fills the disk, how it is written: Python's open, or ffmpeg)
CASES = {
    'gen_samples --shapes: the volume': (
        gen_samples.main,
        ['--network', '{run}', '--seeds', '0', '--sample-mult', '1', '--shapes', '--shape-res', '8'],
        'seed0000.mrc',
        'open',
    ),
    'gen_samples: an image': (gen_samples.main, ['--network', '{run}', '--seeds', '0'], 'seed0000_raw.png', 'open'),
    'extract_shapes: the mesh': (
        extract_shapes.main,
        ['--network', '{run}', '--seeds', '0', '--shape-res', '16', '--level', '-500', '--format', 'glb'],
        'seed0000.glb',
        'open',
    ),
    'gen_videos: the video': (
        gen_videos.main,
        ['--network', '{run}', '--seeds', '0', '--w-frames', '2', '--sample-mult', '1'],
        'seeds0_orbit_image.mp4',
        'ffmpeg',
    ),
    'invert: the losses (JSON)': (
        invert.main,
        ['--network', '{run}', '--image', '{photo}', '--mask', '{photo_mask}', '--camera', 'front', '--w-steps', '1']
        + ['--no-video', '--no-mesh'],
        'losses.json',
        'open',
    ),
}


@pytest.mark.parametrize('case', CASES)
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing_partial(tiny, tmp_path, monkeypatch, case):
    main, args, name, writer = CASES[case]
    if writer == 'ffmpeg':
        import imageio_ffmpeg

        real_write_frames = imageio_ffmpeg.write_frames

        def write_frames(path, *args, **kwargs):
            # ffmpeg writes in its own process: the disk fills up under it after the first bytes.
            assert os.path.basename(path).startswith(f'.{name}.')
            encoder = real_write_frames(path, *args, **kwargs)
            yield next(encoder)
            with open(path, 'ab') as file:
                file.write(b'\0' * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(imageio_ffmpeg, 'write_frames', write_frames)
    else:
        monkeypatch.setattr(builtins, 'open', full_disk_open(name))
    outdir = tmp_path / 'out'
    args = [arg.format(**tiny) for arg in args] + ['--outdir', str(outdir), '--device', 'cpu']
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and 'Traceback' not in result.output, result.output
    written = [os.path.join(folder, file) for folder, _, files in os.walk(outdir) for file in files]
    (path,) = [os.path.join(outdir, name)] if case != 'invert: the losses (JSON)' else [outdir / 'photo' / name]
    assert result.output.strip().splitlines()[-1] == f'Error: cannot write {path}: No space left on device'
    assert not os.path.exists(path)
    assert not [file for file in written if file.endswith('.tmp')], written


def test_a_full_disk_under_torch_save_is_a_write_error(tmp_path, monkeypatch):
    """torch.save reports the failed write of its file object as a RuntimeError: still one line, nothing left."""
    import torch

    from training.checkpoints.atomic_files import WriteError, atomic_write

    path = tmp_path / 'resume-state-000004.pt'  # written as training writes its snapshots and resume states
    monkeypatch.setattr(builtins, 'open', full_disk_open(path.name))
    with pytest.raises(WriteError) as raised:
        atomic_write(str(path), lambda file: torch.save({'weight': torch.zeros(100000)}, file))
    assert str(raised.value) == f'cannot write {path}: No space left on device'
    assert os.listdir(tmp_path) == []


def test_a_log_line_torn_by_a_kill_stays_apart_and_the_readers_skip_it(tmp_path):
    """A killed writer can leave a log's last line without its end (a real kill: the child writes half a line and
    is killed). The next append ends it first, so the new line is whole; the reader returns the whole lines."""
    import json
    import signal
    import subprocess
    import sys

    from training.checkpoints.atomic_files import append_line, read_lines_of_json

    log = tmp_path / 'stats.jsonl'
    append_line(str(log), json.dumps({'tick': 0}))
    child = subprocess.Popen(
        [
            sys.executable,
            '-c',
            f'import os, time; f = open({str(log)!r}, "ab", buffering=0); '
            'f.write(b\'{"tick": 1, "Loss\'); time.sleep(60)',
        ],
    )
    try:
        for _ in range(200):  # until the half line is on disk
            if log.stat().st_size > len('{"tick": 0}\n'):
                break
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    append_line(str(log), json.dumps({'tick': 2}))
    assert log.read_text().splitlines() == ['{"tick": 0}', '{"tick": 1, "Loss', '{"tick": 2}']
    assert read_lines_of_json(str(log)) == [{'tick': 0}, {'tick': 2}]


def test_a_full_disk_while_appending_a_log_line_is_a_write_error(tmp_path, monkeypatch):
    from training.checkpoints.atomic_files import WriteError, append_line

    def no_room(descriptor, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, 'write', no_room)
    with pytest.raises(WriteError) as raised:
        append_line(str(tmp_path / 'metric-fid.jsonl'), '{}')
    assert str(raised.value) == f'cannot write {tmp_path / "metric-fid.jsonl"}: No space left on device'
