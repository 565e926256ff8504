"""Tests for torch_utils/persistence.py."""

import copy
import importlib
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from torch_utils import persistence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A persistent network with a nested persistent block and plain torch layers; it imports a module
# of this repository, which must still resolve when the network is rebuilt from its pickle.
HELPER_SOURCE = textwrap.dedent("""
    import torch
    from torch_utils import misc
    from torch_utils import persistence

    @persistence.persistent_class
    class Block(torch.nn.Module):
        def __init__(self, channels, gain=1.0):
            super().__init__()
            self.linear = torch.nn.Linear(channels, channels)
            self.gain = gain

        def forward(self, x):
            return torch.tanh(self.linear(x)) * self.gain

    @persistence.persistent_class
    class Net(torch.nn.Module):
        def __init__(self, in_channels, out_channels, block_kwargs={}, num_blocks=2):
            super().__init__()
            self.num_blocks = num_blocks
            self.blocks = torch.nn.ModuleList([Block(in_channels, **block_kwargs) for _ in range(num_blocks)])
            self.out = torch.nn.Linear(in_channels, out_channels)
            self.register_buffer('offset', torch.linspace(-1, 1, out_channels))
            block_kwargs.clear()  # a constructor that consumes its arguments must not change init_kwargs

        def forward(self, x):
            misc.assert_shape(x, [None, self.blocks[0].linear.in_features])
            for block in self.blocks:
                x = x + block(x)
            return self.out(x) + self.offset

    class PlainBlock(Block):
        pass
""")

CHANGED_SOURCE = HELPER_SOURCE.replace('torch.tanh', 'torch.sigmoid').replace('+ self.offset', '- self.offset')

# A persistent class inside a package, using a relative import of a sibling module.
PACKAGE_NETS_SOURCE = textwrap.dedent("""
    import torch
    from torch_utils import persistence
    from .constants import SCALE

    @persistence.persistent_class
    class Scaler(torch.nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(channels))

        def forward(self, x):
            return x * self.weight * SCALE
""")

LOADER_SCRIPT = textwrap.dedent("""
    import pickle, sys, torch
    net_path, scaler_path, input_path, output_path = sys.argv[1:5]
    with open(net_path, 'rb') as file:
        net = pickle.load(file)
    with open(scaler_path, 'rb') as file:
        scaler = pickle.load(file)
    x = torch.load(input_path)
    again = pickle.loads(pickle.dumps(net))
    torch.save(dict(net=net(x), again=again(x), scaler=scaler(x), init_kwargs=dict(net.init_kwargs),
                    init_args=net.init_args, module=type(net).__module__), output_path)
""")


def _import_from(directory, module_name):
    sys.path.insert(0, str(directory))
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(str(directory))


@pytest.fixture
def helper_module(tmp_path):
    """A freshly written and imported helper module defining `Net`; unique name per test."""
    module_name = f'persistence_helper_{os.getpid()}_{abs(hash(str(tmp_path)))}'
    path = tmp_path / f'{module_name}.py'
    path.write_text(HELPER_SOURCE)
    module = _import_from(tmp_path, module_name)
    yield module, path
    sys.modules.pop(module_name, None)


def test_init_arguments_are_recorded_as_deep_copies(helper_module):
    module, _ = helper_module
    block_kwargs = dict(gain=0.5)
    net = module.Net(3, 2, block_kwargs=block_kwargs, num_blocks=1)
    assert block_kwargs == {}
    assert net.init_args == (3, 2)
    assert net.init_kwargs == dict(block_kwargs=dict(gain=0.5), num_blocks=1)
    assert net.init_kwargs.num_blocks == 1
    net.init_kwargs['num_blocks'] = 7
    assert net.init_kwargs.num_blocks == 1
    assert net.blocks[0].init_args == (3,) and net.blocks[0].init_kwargs == dict(gain=0.5)


def test_is_persistent_and_qualified_name(helper_module):
    module, _ = helper_module
    net = module.Net(3, 2)
    assert persistence.is_persistent(module.Net) and persistence.is_persistent(net)
    assert not persistence.is_persistent(torch.nn.Linear(2, 2))
    assert persistence.qualified_class_name(net) == f'{module.__name__}.Net'
    with pytest.raises(TypeError, match='not decorated'):
        persistence.qualified_class_name(torch.nn.Linear(2, 2))


def test_pickle_round_trip_in_process_keeps_classes(helper_module):
    module, _ = helper_module
    torch.manual_seed(0)
    net = module.Net(4, 3)
    x = torch.randn(5, 4)
    loaded = pickle.loads(pickle.dumps(net))
    assert type(loaded) is module.Net and type(loaded.blocks[0]) is module.Block
    assert torch.equal(loaded(x), net(x))
    duplicate = copy.deepcopy(net)
    assert type(duplicate) is module.Net
    assert torch.equal(duplicate(x), net(x))
    assert duplicate.out.weight.data_ptr() != net.out.weight.data_ptr()


def test_pickle_loads_in_fresh_process_after_code_changed(helper_module, tmp_path):
    module, helper_path = helper_module
    package_dir = tmp_path / 'packages'
    package_name = f'persistence_pkg_{abs(hash(str(tmp_path)))}'
    (package_dir / package_name).mkdir(parents=True)
    (package_dir / package_name / '__init__.py').write_text('')
    (package_dir / package_name / 'constants.py').write_text('SCALE = 3.0\n')
    (package_dir / package_name / 'nets.py').write_text(PACKAGE_NETS_SOURCE)
    nets = _import_from(package_dir, f'{package_name}.nets')

    torch.manual_seed(1)
    net = module.Net(4, 3, block_kwargs=dict(gain=2.0), num_blocks=3)
    scaler = nets.Scaler(4)
    x = torch.randn(6, 4)
    expected_net, expected_scaler = net(x).detach(), scaler(x).detach()
    paths = {name: str(tmp_path / name) for name in ('net.pkl', 'scaler.pkl', 'input.pt', 'output.pt')}
    with open(paths['net.pkl'], 'wb') as file:
        pickle.dump(net, file)
    with open(paths['scaler.pkl'], 'wb') as file:
        pickle.dump(scaler, file)
    torch.save(x, paths['input.pt'])

    # The helper file disappears and the package's module changes; the pickles must not care.
    helper_path.unlink()
    (package_dir / package_name / 'nets.py').write_text(PACKAGE_NETS_SOURCE.replace('* SCALE', '* SCALE * 100'))
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO_ROOT, str(package_dir)]))
    completed = subprocess.run(
        [
            sys.executable,
            '-c',
            LOADER_SCRIPT,
            paths['net.pkl'],
            paths['scaler.pkl'],
            paths['input.pt'],
            paths['output.pt'],
        ],
        cwd=str(tmp_path),
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    result = torch.load(paths['output.pt'])
    assert torch.equal(result['net'], expected_net)
    assert torch.equal(result['again'], expected_net)
    assert torch.equal(result['scaler'], expected_scaler)
    assert result['init_kwargs'] == dict(block_kwargs=dict(gain=2.0), num_blocks=3)
    assert result['init_args'] == (4, 3)
    assert result['module'].startswith('_persistent_')


def test_changed_source_builds_private_module_in_process(helper_module, monkeypatch):
    module, _ = helper_module
    torch.manual_seed(2)
    net = module.Net(4, 2)
    x = torch.randn(3, 4)
    data = pickle.dumps(net)

    def use_changed_source(meta):
        meta['module_source'] = CHANGED_SOURCE
        return meta

    monkeypatch.setattr(persistence, '_import_hooks', [])
    persistence.import_hook(use_changed_source)
    changed = pickle.loads(data)
    assert type(changed) is not module.Net
    assert type(changed).__module__.startswith('_persistent_')
    assert persistence.qualified_class_name(changed) == f'{module.__name__}.Net'
    with torch.no_grad():
        blocks_out = x
        for block in net.blocks:
            blocks_out = blocks_out + torch.sigmoid(block.linear(blocks_out)) * block.gain
        expected = net.out(blocks_out) - net.offset
    assert torch.allclose(changed(x), expected)
    # Pickling the rebuilt object again embeds the source it was built from.
    assert torch.equal(pickle.loads(pickle.dumps(changed))(x), changed(x))


def test_undecorated_subclass_pickles_by_reference(helper_module):
    module, _ = helper_module
    block = module.PlainBlock(2)
    data = pickle.dumps(block)
    assert b'torch.tanh' not in data
    loaded = pickle.loads(data)
    assert type(loaded) is module.PlainBlock
    assert torch.equal(loaded.linear.weight, block.linear.weight)
    assert persistence.is_persistent(module.Block) and not persistence.is_persistent(module.PlainBlock)
    assert b'torch.tanh' in pickle.dumps(module.Block(2))


def test_decorator_rejects_local_classes():
    with pytest.raises(TypeError, match='inside a function'):

        @persistence.persistent_class
        class Local(torch.nn.Module):
            pass


class _ReleaseLayoutPickle:
    """Pickles as the public StyleGAN2-ADA / EG3D code writes a persistent object."""

    def __init__(self, source, class_name, state):
        self.meta = dict(type='class', version=4, module_src=source, class_name=class_name, state=state)

    def __reduce__(self):
        return persistence._reconstruct_persistent_obj, (self.meta,)


def test_loads_pickles_in_the_public_release_layout(helper_module):
    module, _ = helper_module
    torch.manual_seed(3)
    net = module.Net(4, 2, num_blocks=1)
    x = torch.randn(3, 4)
    data = pickle.dumps(_ReleaseLayoutPickle(CHANGED_SOURCE, 'Net', dict(net.__dict__)))
    loaded = pickle.loads(data)
    assert type(loaded).__module__.startswith('_persistent_embedded_module_')
    assert persistence.qualified_class_name(loaded) == 'embedded_module.Net'
    assert loaded.init_args == (4, 2) and loaded.init_kwargs == dict(num_blocks=1)
    with torch.no_grad():
        # Only the outer network comes from the changed source; its block still pickles in this repo's layout.
        hidden = x + torch.tanh(net.blocks[0].linear(x)) * net.blocks[0].gain
        expected = net.out(hidden) - net.offset
    assert torch.allclose(loaded(x), expected)
