"""Named configurations in `configs/`: every value a preset sets is written in its JSON file."""

import json
import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def list_presets() -> list[str]:
    """Names of the presets shipped in `configs/`, sorted."""
    return sorted(name[: -len('.json')] for name in os.listdir(CONFIG_DIR) if name.endswith('.json'))


def load_preset(name_or_path: str) -> dict:
    """Read a preset by name (`full-head`) or by path to a JSON file."""
    path = name_or_path if name_or_path.endswith('.json') else os.path.join(CONFIG_DIR, f'{name_or_path}.json')
    if not os.path.isfile(path):
        raise ValueError(
            f'unknown preset {name_or_path!r}: expected one of {", ".join(list_presets())} or a path to a .json file'
        )
    with open(path, encoding='utf-8') as f:
        try:
            preset = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f'{path}: not valid JSON ({err})') from None
    if not isinstance(preset, dict) or not isinstance(preset.get('generator'), dict):
        raise ValueError(f'{path}: a preset must be a JSON object with a "generator" section')
    # Every generator argument is named (a preset writes down every value it sets); none is unknown.
    import inspect

    from training.networks.triplane import TriPlaneGenerator

    arguments = [name for name in inspect.signature(TriPlaneGenerator.__init__).parameters if name != 'self']
    missing = [name for name in arguments if name not in preset['generator']]
    unknown = sorted(set(preset['generator']) - set(arguments))
    if missing or unknown:
        problems = ([f'lacks {", ".join(missing)}'] if missing else []) + (
            [f'has unknown {", ".join(unknown)}'] if unknown else []
        )
        raise ValueError(
            f'{path}: the "generator" section {"; ".join(problems)}; name every generator argument, as '
            f'configs/cpu-small.json does'
        )
    return preset
