"""The import graph of the project: command-line scripts import library modules only, and the library has no
import cycle, counting the imports inside functions as well as those at module level."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('training', 'torch_utils', 'dnnlib', 'metrics', 'benchmarks', 'tools')
SCRIPTS = sorted(name[:-3] for name in os.listdir(REPO) if name.endswith('.py'))


def _modules() -> dict:
    """{dotted module name: file path} of the scripts at the top and every module of the packages."""
    modules = {name: os.path.join(REPO, f'{name}.py') for name in SCRIPTS}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for file in files:
                if file.endswith('.py'):
                    name = os.path.relpath(os.path.join(folder, file[:-3]), REPO).replace(os.sep, '.')
                    modules[name.removesuffix('.__init__')] = os.path.join(folder, file)
    return modules


def _imports(source: str, known: set, anywhere: bool = True) -> set:
    """The project modules that `source` imports (from x import y counts x.y when it is a module); `anywhere`
    counts the imports inside functions and classes too, else only the module's top-level statements."""
    tree = ast.parse(source)
    imported = set()
    for node in ast.walk(tree) if anywhere else tree.body:
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            imported.update(f'{node.module}.{alias.name}' for alias in node.names)
    return imported & known


def _cycles(graph: dict) -> list:
    """The loops that a depth-first walk of `graph` ({module: modules it imports}) closes, each as [a, ..., a]."""
    state, path, cycles = {}, [], []

    def visit(name):
        state[name] = 'open'
        path.append(name)
        for other in sorted(graph[name]):
            if state.get(other) == 'open':
                cycles.append(path[path.index(other) :] + [other])
            elif other not in state:
                visit(other)
        path.pop()
        state[name] = 'done'

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


@pytest.fixture(scope='module')
def graph() -> dict:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        with open(path) as file:
            graph[name] = _imports(file.read(), set(modules)) - {name}
    return graph


def test_graph_sees_the_scripts_and_their_library_imports(graph):
    assert {'train', 'gen_samples', 'calc_metrics'} <= set(SCRIPTS)
    assert 'training.cli' in graph['gen_samples'] and 'training.checkpoints.run_files' in graph['training.cli']


def test_imports_inside_functions_are_counted_and_close_cycles():
    known = {'training', 'training.a', 'training.b'}
    source = 'import os\n\n\ndef f():\n    from training import b\n'
    assert _imports(source, known) == {'training', 'training.b'}
    assert _imports(source, known, anywhere=False) == set()
    assert _cycles({'training.a': {'training.b'}, 'training.b': {'training.a'}}) == [
        ['training.a', 'training.b', 'training.a']
    ]
    assert _cycles({'training.a': {'training.b'}, 'training.b': set()}) == []


def test_no_script_imports_another_script(graph):
    offending = {script: sorted(graph[script] & set(SCRIPTS)) for script in SCRIPTS if graph[script] & set(SCRIPTS)}
    library = {
        name: sorted(imports & set(SCRIPTS))
        for name, imports in graph.items()
        if name not in SCRIPTS and imports & set(SCRIPTS)
    }
    assert offending == {} and library == {}


def test_imports_have_no_cycle(graph):
    assert _cycles(graph) == []


def test_training_is_split_by_concern():
    """training/ keeps the loop's own modules at its top; networks, rendering, body, data, checkpoints and the
    tools' engines are sub-packages."""
    folder = os.path.join(REPO, 'training')
    top = sorted(name for name in os.listdir(folder) if name.endswith('.py'))
    packages = {name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name, '__init__.py'))}
    assert len(top) <= 10, top
    assert packages == {'networks', 'volumetric_rendering', 'body', 'data', 'checkpoints', 'engines'}
