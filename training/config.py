"""The typed configuration of a training run: one object that `train.py` builds and the loop reads.

A run is described by a preset (`configs/*.json`: a "generator" section of TriPlaneGenerator
arguments and a "training" section of loop and loss settings) with command-line overrides on
top. `TrainingConfig.from_preset` merges the two and `validate` checks every value, so that a bad
option fails before any network is built. `to_json`/`from_json` write and read
`training_options.json`; the same JSON travels inside every resume state, so that a continued
run trains with exactly the options it was started with.
"""

import dataclasses
import inspect
import json
import os
import types
import typing
from typing import Any

from metrics.names import METRIC_POSE_SAMPLE_MODES, expected_metrics, is_valid_metric
from training.loss_options import POSE_PRIOR_MATCHES, REG_TYPES

DEVICES = ('auto', 'cpu', 'cuda')
# Settings that shape the networks; a continued run cannot change them, its weights would not fit.
ARCHITECTURE_FIELDS = ('generator', 'd_channel_base', 'd_channel_max')


class ConfigError(ValueError):
    """An option value that cannot be trained with; the message names the option and the fix."""


def default_workers() -> int:
    """DataLoader workers per training process by default: 3, but no more than the cores this process may
    use, less one for the training itself (PyTorch warns about more workers than cores)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
    return max(1, min(3, cores - 1))


@dataclasses.dataclass
class TrainingConfig:
    """Every setting of a training run. Field names follow the preset keys and the train.py options."""

    # Networks.
    cfg: str  # preset name, or path of the preset's JSON file
    generator: dict  # TriPlaneGenerator keyword arguments
    d_channel_base: int  # D channels at resolution r: min(d_channel_base / r, d_channel_max)
    d_channel_max: int
    d_num_fp16_res: int  # D blocks in fp16 (CUDA only); conv_clamp 256 when > 0
    mbstd_group: int  # minibatch-std group size of D
    freezed: int  # D trunk layers frozen, counted from the input
    disc_c_noise: float  # noise on D's conditioning camera, in units of its batch std

    # Data.
    data: str  # images zip or folder with dataset.json
    seg_data: str  # masks zip or folder
    mirror: bool  # add mirrored copies (image, mask, camera and pose)

    # Batch, optimizers, EMA.
    batch: int  # images per iteration over all processes
    batch_gpu: int  # images per forward pass (gradient accumulation chunk)
    gpus: int  # processes (one per GPU, or CPU processes with gloo)
    glr: float  # G Adam learning rate
    dlr: float  # D Adam learning rate
    d_reg_interval: int  # iterations between lazy R1 steps
    ema_kimg_per_32: float  # EMA half-life in kimg at batch 32 (scaled by batch / 32)
    ema_rampup: float | None  # half-life at most ema_rampup * cur_nimg; None: no rampup
    train_g_pose_branch: bool  # False: G's pose branch is frozen (stages 2 and 3)

    # Losses and their schedules (docs/method.md §7, §8).
    gamma: float  # R1 weight on the image and raw image
    gamma_seg: float  # R1 weight on the mask
    pose_loss_weight: float  # D pose regression on fakes
    input_pose_params_reg_loss_weight: float  # G pose prior weight ...
    input_pose_params_reg_loss_kimg: float  # ... held for this many kimg ...
    input_pose_params_reg_loss_decay_kimg: float  # ... then decayed to 0 over this many
    blur_init_sigma: float  # blur of D's images (pixels) at image 0 ...
    blur_fade_kimg: float  # ... faded out over this many kimg at batch 32 (scaled by batch / 32)
    density_noise_fade_kimg: float  # density noise std 1 faded to 0 (0: no noise)
    gpc_reg_prob: float  # final probability of swapping the (camera, pose) condition ...
    gpc_reg_fade_kimg: float  # ... reached from 1 after this many kimg (0: at once)
    bcg_reg_prob: float  # probability of the neighbour's background
    style_mixing_prob: float
    density_reg: float  # density smoothness weight (0: no Greg phase)
    density_reg_every: int  # iterations between Greg steps
    density_reg_p_dist: float  # std of the point perturbation of the density regularizer
    reg_type: str  # one of training.loss_options.REG_TYPES
    neural_rendering_resolution_initial: int
    neural_rendering_resolution_final: int | None  # None: no resolution fade
    neural_rendering_resolution_fade_kimg: float  # measured from the stage start (stage_start_kimg)

    # Metrics after each network snapshot.
    metrics: list  # metric names; [] for none
    metric_pose_sample_mode: str  # pose for the metrics' fakes: one of METRIC_POSE_SAMPLE_MODES

    # Length, logging and snapshots.
    kimg: float  # stop at this absolute image count (thousands)
    tick: float  # kimg between progress lines and statistics
    snap: int  # ticks between network snapshots (0: only at the end)
    image_snap: int  # ticks between image snapshots (0: only before training)
    snapshot_grid: list  # image snapshot [columns, rows]

    # Processes.
    seed: int = 0  # process r of N seeds numpy, torch and random with seed * N + r
    workers: int = dataclasses.field(default_factory=default_workers)  # DataLoader workers per training process
    device: str = 'auto'  # one of DEVICES; auto: CUDA when present
    cudnn_benchmark: bool = True
    allow_tf32: bool = False  # TF32 matmuls and convolutions on Ampere and newer GPUs (off: full fp32, as EG3D trains)

    # Resume.
    resume: str | None = None  # network snapshot whose networks started this stage (None: fresh)
    trust_pickle: bool = False  # read that snapshot, if a network pickle, by running its code
    stage_start_kimg: float = 0.0  # absolute kimg where this training stage started
    resume_state: str | None = None  # resume state to continue exactly (None: start at the stage start)
    desc: str | None = None  # appended to the run directory name

    # Conventions of a stage's starting snapshot (train.py takes them from its discriminator).
    d_mirror_camera: bool = True  # D's pose head mirrors the camera of left-side views with the image

    # Losses whose published behaviour is the default.
    pose_prior_match: str = 'paired'  # one of training.loss_options.POSE_PRIOR_MATCHES
    labelled_pose_loss_weight: float = 0.0  # D pose regression on fakes at the labelled poses (0: off, published)

    # -- Derived values ---------------------------------------------------------------------------

    @property
    def preset_name(self) -> str:
        """The preset's short name for run directories: 'cpu-small', or the JSON file's stem."""
        return os.path.splitext(os.path.basename(self.cfg))[0]

    @property
    def ema_kimg(self) -> float:
        return self.batch * self.ema_kimg_per_32 / 32

    @property
    def effective_blur_fade_kimg(self) -> float:
        return self.batch * self.blur_fade_kimg / 32

    @property
    def stage_start_nimg(self) -> int:
        """The image counter at the stage start."""
        return round(self.stage_start_kimg * 1000)

    @property
    def batch_per_process(self) -> int:
        return self.batch // self.gpus

    @property
    def g_reg_interval(self) -> int | None:
        """Iterations between Greg steps, None when there is no density regularization."""
        return self.density_reg_every if self.density_reg > 0 else None

    @property
    def r1_interval(self) -> int | None:
        """Iterations between Dreg (R1) steps, None when both R1 weights are 0."""
        return self.d_reg_interval if (self.gamma > 0 or self.gamma_seg > 0) else None

    # -- Construction -----------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, values: dict, source: str = 'config') -> 'TrainingConfig':
        """Build from a flat dict of field values; unknown or missing keys raise ConfigError."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f'{source}: unknown setting(s) {", ".join(unknown)}; known: {", ".join(sorted(names))}')
        required = [
            field.name
            for field in dataclasses.fields(cls)
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        ]
        missing = [name for name in required if name not in values]
        if missing:
            raise ConfigError(
                f'{source}: missing setting(s) {", ".join(missing)}; add them to the preset\'s "training" section'
            )
        hints = typing.get_type_hints(cls)
        converted = {name: _convert(value, hints[name], f'{source}: {name}') for name, value in values.items()}
        return cls(**converted)

    @classmethod
    def from_preset(cls, preset: dict, cfg: str, **overrides) -> 'TrainingConfig':
        """Merge a preset (see training.presets.load_preset) with overrides; None values keep the preset's.

        overrides: any field, plus `generator` as a dict of TriPlaneGenerator arguments that update
        the preset's generator section key by key.
        """
        training = preset.get('training')
        if not isinstance(training, dict):
            raise ConfigError(f'preset {cfg}: no "training" section; add one (see configs/cpu-small.json)')
        values = dict(training)
        overrides = {key: value for key, value in overrides.items() if value is not None}
        generator = {**preset['generator'], **overrides.pop('generator', {})}
        values.update(overrides)
        values.update(cfg=cfg, generator=generator)
        return cls.from_dict(values, source=f'preset {cfg}')

    def replace(self, **changes) -> 'TrainingConfig':
        """A copy with some fields changed (None values are ignored), type-checked like from_dict."""
        values = dataclasses.asdict(self)
        values.update({key: value for key, value in changes.items() if value is not None})
        return type(self).from_dict(values, source='options')

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = 'training_options.json') -> 'TrainingConfig':
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f'{source}: not valid JSON ({err})') from None
        if not isinstance(values, dict):
            raise ConfigError(f'{source}: expected a JSON object of training settings')
        return cls.from_dict(values, source=source)

    # -- Validation -------------------------------------------------------------------------------

    def validate(self) -> 'TrainingConfig':
        """Raise ConfigError naming the first bad option and its fix; returns self."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        # Imported here: the config is read before torch work starts.
        from training.networks.triplane import TriPlaneGenerator

        accepted = set(inspect.signature(TriPlaneGenerator.__init__).parameters) - {'self'}
        unknown = sorted(set(self.generator) - accepted)
        need(not unknown, f'generator: unknown argument(s) {", ".join(unknown)} of TriPlaneGenerator')

        need(self.gpus >= 1, f'--gpus must be at least 1, got {self.gpus}')
        need(
            self.batch >= 1 and self.batch_gpu >= 1,
            f'--batch and --batch-gpu must be positive, got {self.batch} and {self.batch_gpu}',
        )
        need(
            self.batch % (self.batch_gpu * self.gpus) == 0,
            f'--batch {self.batch} must be a multiple of --batch-gpu × --gpus = {self.batch_gpu} × {self.gpus}',
        )
        need(self.mbstd_group >= 1, f'--mbstd-group must be at least 1, got {self.mbstd_group}')
        need(
            self.batch_gpu < self.mbstd_group or self.batch_gpu % self.mbstd_group == 0,
            f'--batch-gpu {self.batch_gpu} must be a multiple of --mbstd-group {self.mbstd_group} (or smaller than it)',
        )
        for name in (
            'gamma',
            'gamma_seg',
            'pose_loss_weight',
            'labelled_pose_loss_weight',
            'input_pose_params_reg_loss_weight',
            'density_reg',
            'blur_init_sigma',
            'disc_c_noise',
            'density_reg_p_dist',
        ):
            need(getattr(self, name) >= 0, f'--{name} must be >= 0, got {getattr(self, name)}')
        for name in ('glr', 'dlr', 'kimg', 'tick'):
            need(getattr(self, name) > 0, f'--{name} must be > 0, got {getattr(self, name)}')
        for name in (
            'blur_fade_kimg',
            'density_noise_fade_kimg',
            'gpc_reg_fade_kimg',
            'input_pose_params_reg_loss_kimg',
            'input_pose_params_reg_loss_decay_kimg',
            'neural_rendering_resolution_fade_kimg',
            'ema_kimg_per_32',
            'stage_start_kimg',
        ):
            need(getattr(self, name) >= 0, f'--{name} must be >= 0, got {getattr(self, name)}')
        for name in ('gpc_reg_prob', 'bcg_reg_prob', 'style_mixing_prob'):
            need(0 <= getattr(self, name) <= 1, f'--{name} is a probability in [0, 1], got {getattr(self, name)}')
        need(self.ema_rampup is None or self.ema_rampup > 0, f'ema_rampup must be > 0 or null, got {self.ema_rampup}')
        for name in ('d_reg_interval', 'density_reg_every'):
            need(getattr(self, name) >= 1, f'--{name} must be at least 1, got {getattr(self, name)}')
        for name in ('snap', 'image_snap', 'freezed', 'd_num_fp16_res', 'seed', 'workers'):
            need(getattr(self, name) >= 0, f'--{name.replace("_", "-")} must be >= 0, got {getattr(self, name)}')
        need(self.d_channel_base >= 1 and self.d_channel_max >= 1, 'd_channel_base and d_channel_max must be positive')
        # A block at resolution r has min(channel_base // r, channel_max) channels: none below channel_base = r.
        for network, base, resolution in (
            ("G's tri-grid backbone", self.generator.get('channel_base'), self.generator.get('triplane_resolution')),
            ('D', self.d_channel_base, self.generator.get('img_resolution')),
        ):
            need(
                not isinstance(base, int) or not isinstance(resolution, int) or base >= resolution,
                f'--cbase {base} leaves the {resolution}x{resolution} blocks of {network} without channels '
                f'(channels = cbase / resolution); use --cbase {resolution} or more',
            )
        need(self.reg_type in REG_TYPES, f'--reg_type {self.reg_type!r}: expected one of {", ".join(REG_TYPES)}')
        need(
            self.pose_prior_match in POSE_PRIOR_MATCHES,
            f'--pose_prior_match {self.pose_prior_match!r}: expected one of {", ".join(POSE_PRIOR_MATCHES)}',
        )
        need(
            self.metric_pose_sample_mode in METRIC_POSE_SAMPLE_MODES,
            f'--metric_pose_sample_mode {self.metric_pose_sample_mode!r}: expected one of '
            f'{", ".join(METRIC_POSE_SAMPLE_MODES)}',
        )
        need(self.device in DEVICES, f'--device {self.device!r}: expected one of {", ".join(DEVICES)}')
        need(
            self.neural_rendering_resolution_initial >= 1,
            f'--neural_rendering_resolution_initial must be positive, got {self.neural_rendering_resolution_initial}',
        )
        need(
            self.neural_rendering_resolution_final is None or self.neural_rendering_resolution_final >= 1,
            f'--neural_rendering_resolution_final must be positive, got {self.neural_rendering_resolution_final}',
        )
        output = self.generator.get('img_resolution')
        for name in ('neural_rendering_resolution_initial', 'neural_rendering_resolution_final'):
            value = getattr(self, name)
            need(
                value is None or not isinstance(output, int) or value <= output,
                f'--{name} {value}: rays per image side cannot exceed the output resolution {output}',
            )
        need(
            len(self.snapshot_grid) == 2
            and all(isinstance(n, int) and n >= 1 for n in self.snapshot_grid)
            and self.snapshot_grid[0] % 2 == 0,
            f'snapshot_grid {self.snapshot_grid}: expected [columns, rows] with an even number of columns '
            f'(each image sits beside its mirror)',
        )
        need(
            self.kimg > self.stage_start_kimg,
            f'--kimg {self.kimg:g} must be above the stage start '
            f'{self.stage_start_kimg:g} kimg (it counts from image 0, not from the resume point)',
        )
        need(all(isinstance(name, str) and name for name in self.metrics), f'metrics {self.metrics}: expected names')
        unknown = [name for name in self.metrics if not is_valid_metric(name)]
        need(not unknown, f'--metrics: unknown metric {", ".join(unknown)}; expected {expected_metrics(none=True)}')
        return self


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field annotation (int, float, bool, str, list, dict, X | None), converting int -> float."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(option for option in options if option is not type(None))
        if value is None:
            raise ConfigError(f'{where}: null is not allowed, expected {annotation.__name__}')
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation in (list, dict):
        if isinstance(value, (list, tuple)) and annotation is list:
            return list(value)
        if isinstance(value, dict) and annotation is dict:
            return dict(value)
    else:
        raise TypeError(f'{where}: unsupported annotation {annotation!r}')
    raise ConfigError(f'{where}: expected {annotation.__name__}, got {type(value).__name__} {value!r}')
