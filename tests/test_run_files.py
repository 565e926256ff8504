"""The one resolver of --network and --resume: run directories, training outdirs and snapshot files."""

import os

import pytest

from training.checkpoints.formats import CheckpointError
from training.checkpoints.run_files import (
    find_resume_state,
    latest_network_snapshot,
    pose_predict_kwargs_for,
    resolve_network,
    snapshot_paths,
    stage_start_snapshot,
)


def touch(path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, 'wb').close()
    return str(path)


def test_snapshot_paths_name_the_files_of_one_kimg(tmp_path):
    paths = snapshot_paths(str(tmp_path), 12_999)
    assert {key: os.path.basename(path) for key, path in paths.items()} == dict(
        pkl='network-snapshot-000012.pkl',
        pt='network-snapshot-000012.pt',
        json='pose_predict_kwargs-000012.json',
        resume='resume-state-000012.pt',
    )
    assert pose_predict_kwargs_for(paths['pt']) == paths['json'] == pose_predict_kwargs_for(paths['pkl'])


def test_newest_snapshot_by_kimg_and_weights_file_first(tmp_path):
    run = tmp_path / 'run'
    touch(run / 'network-snapshot-000002.pkl')
    touch(run / 'network-snapshot-000010.pkl')
    touch(run / 'network-snapshot-000004.pt')
    touch(run / 'network-snapshot-000010.pt')
    touch(run / 'network-snapshot-latest.pkl')  # not a snapshot name: ignored
    assert latest_network_snapshot(str(run)) == str(run / 'network-snapshot-000010.pt')
    os.remove(run / 'network-snapshot-000010.pt')
    assert latest_network_snapshot(str(run)) == str(run / 'network-snapshot-000010.pkl')


def test_network_resolves_files_run_directories_and_outdirs(tmp_path):
    outdir = tmp_path / 'runs [a]'  # glob characters in the path are taken literally
    older = touch(outdir / '00000-cpu-small' / 'network-snapshot-000008.pt')
    newer = touch(outdir / '00001-cpu-small' / 'network-snapshot-000004.pt')
    os.makedirs(outdir / '00002-cpu-small')  # the newest run has no snapshot yet
    assert resolve_network(older) == older
    assert resolve_network('https://example.org/x.pkl') == 'https://example.org/x.pkl'
    assert resolve_network(str(outdir / '00000-cpu-small')) == older
    assert resolve_network(str(outdir)) == newer
    with pytest.raises(CheckpointError, match='no network-snapshot'):
        resolve_network(str(outdir / '00002-cpu-small'))


def test_resume_finds_the_state_of_a_run_or_of_a_snapshot(tmp_path):
    run = tmp_path / 'run'
    snapshot = touch(run / 'network-snapshot-000006.pt')
    state = touch(run / 'resume-state-000006.pt')
    assert find_resume_state(str(run)) == state
    assert find_resume_state(snapshot) == state
    assert find_resume_state(state) == state
    old = touch(run / 'network-snapshot-000002.pkl')
    with pytest.raises(CheckpointError, match='--resume_kimg'):
        find_resume_state(old)
    with pytest.raises(CheckpointError, match='no resume-state'):
        find_resume_state(str(tmp_path))


def test_a_new_stage_starts_from_a_snapshot_not_a_resume_state(tmp_path):
    run = tmp_path / 'run'
    snapshot = touch(run / 'network-snapshot-000006.pkl')
    state = touch(run / 'resume-state-000006.pt')
    assert stage_start_snapshot(str(run)) == snapshot == stage_start_snapshot(snapshot)
    with pytest.raises(CheckpointError, match='not from a resume state'):
        stage_start_snapshot(state)
    with pytest.raises(CheckpointError, match='holds no network-snapshot'):
        stage_start_snapshot(str(tmp_path))


def test_export_snapshot_keeps_g_exact_and_stores_d_in_half_precision(tmp_path):
    import json

    import torch

    from tests.tiny_run import write_tiny_snapshot
    from training.checkpoints import formats
    from training.checkpoints.run_files import export_snapshot

    run_dir, _ = write_tiny_snapshot(str(tmp_path))
    source = os.path.join(run_dir, 'network-snapshot-000000.pt')
    full = formats.load_any(source)
    out, out_json = export_snapshot(source, str(tmp_path / 'shipped' / 'model.pt'), {'D_ema': torch.float16})
    assert out_json == str(tmp_path / 'shipped' / 'model.json')
    with open(out_json) as f, open(os.path.join(run_dir, 'pose_predict_kwargs-000000.json')) as g:
        assert json.load(f) == json.load(g)

    stored = torch.load(out, weights_only=True)['modules']
    assert set(stored) == {'G_ema', 'D_ema'}
    D_parameters = {name for name, _ in full['D_ema'].named_parameters()}
    for name, tensor in stored['D_ema']['state_dict'].items():
        assert tensor.dtype == (torch.float16 if name in D_parameters else full['D_ema'].state_dict()[name].dtype), name
    assert all(t.dtype != torch.float16 for t in stored['G_ema']['state_dict'].values())

    exported = formats.load_any(out)
    assert {'training_set_kwargs', 'neural_rendering_resolution', 'cur_nimg'} <= set(exported)
    assert exported['training_set_kwargs'] == full['training_set_kwargs']
    for key in ('G_ema', 'D_ema'):
        reference = full[key].state_dict()
        for name, tensor in exported[key].state_dict().items():
            expected = reference[name].half().float() if key == 'D_ema' and name in D_parameters else reference[name]
            assert tensor.dtype == reference[name].dtype and torch.equal(tensor, expected), f'{key}.{name}'
    # The same generator: identical renders.
    G, G_out = full['G_ema'], exported['G_ema']
    z = torch.randn([2, G.z_dim], generator=torch.Generator().manual_seed(0))
    c = torch.zeros([2, 25])
    c[:, :16] = torch.eye(4).flatten()
    c[:, 16:] = torch.tensor([4.0, 0, 0.5, 0, 4.0, 0.5, 0, 0, 1])
    images = [net(z, c, net.get_pose_params(z, c), apply_def=True, deterministic=True)['image'] for net in (G, G_out)]
    assert torch.equal(*images)


def test_export_snapshot_errors(tmp_path):
    from tests.tiny_run import write_tiny_snapshot
    from training.checkpoints.run_files import export_snapshot

    run_dir, _ = write_tiny_snapshot(str(tmp_path))
    source = os.path.join(run_dir, 'network-snapshot-000000.pt')
    with pytest.raises(CheckpointError, match=r'model\.pkl: name the weights file \.pt'):
        export_snapshot(source, str(tmp_path / 'model.pkl'))
    with pytest.raises(CheckpointError, match='missing.pt'):
        export_snapshot(str(tmp_path / 'missing.pt'), str(tmp_path / 'model.pt'))
