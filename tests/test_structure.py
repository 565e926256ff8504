"""The import graph of the project: command-line scripts import library modules only, and the library has no
import cycle (module-level imports; an import inside a function runs late and is allowed to close a loop)."""

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


def _module_level_imports(path: str, known: set) -> set:
    """The project modules that the file imports at module level (from x import y counts x.y when it is a module)."""
    with open(path) as file:
        tree = ast.parse(file.read())
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module)
            imported.update(f'{node.module}.{alias.name}' for alias in node.names)
    return imported & known


@pytest.fixture(scope='module')
def graph() -> dict:
    modules = _modules()
    return {name: _module_level_imports(path, set(modules)) - {name} for name, path in modules.items()}


def test_graph_sees_the_scripts_and_their_library_imports(graph):
    assert {'train', 'gen_samples', 'calc_metrics'} <= set(SCRIPTS)
    assert 'training.cli' in graph['gen_samples'] and 'training.run_files' in graph['training.cli']


def test_no_script_imports_another_script(graph):
    offending = {script: sorted(graph[script] & set(SCRIPTS)) for script in SCRIPTS if graph[script] & set(SCRIPTS)}
    library = {
        name: sorted(imports & set(SCRIPTS))
        for name, imports in graph.items()
        if name not in SCRIPTS and imports & set(SCRIPTS)
    }
    assert offending == {} and library == {}


def test_module_level_imports_have_no_cycle(graph):
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
    assert cycles == []
