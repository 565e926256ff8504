"""The one resolver of --network and --resume: run directories, training outdirs and snapshot files."""

import os

import pytest

from training.checkpoint import CheckpointError
from training.run_files import (
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
