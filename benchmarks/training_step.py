"""Where one training step of a preset spends its time on the CPU: phases, forward against backward, ops.

Runs the phases of one training iteration (Gmain, Greg when density_reg > 0, Dmain, Dreg) on one
chunk of `--batch` images through `PortraitGANLoss.accumulate_gradients` with the schedule values
of `--at-kimg`, exactly as training/training_loop.py calls it, on freshly initialized networks and
random real images. Two passes:

1. wall time of each phase (best of `--reps`, each rep started on an idle CPU), split into G
   forward, D forward, backward (`Tensor.backward`) and R1's input gradient (`autograd.grad`
   with create_graph, the first half of R1's double backward); the optimizer step is timed apart;
2. one `torch.profiler` run per phase: self CPU time aggregated by op name, forward and backward
   ops apart (an op is backward when it runs inside an autograd node); GFLOP/s of the
   convolutions and matrix products as a fraction of this CPU's fp32 and bf16 peak, measured here
   (the better of a 2048^3 matrix product and a large oneDNN convolution); each op's self time
   charged to the outermost network module and the innermost project source file it ran from (for
   backward ops: those of the forward op that created the autograd node), so that the networks,
   bias_act, upfirdn2d, the tri-grid sampler and the deformation show their share; and the layout
   copies (copy_, clone, contiguous, _to_copy) with the op they ran inside.

    python -m benchmarks.training_step [--cfg cpu-small] [--batch N] [--reps 3] [--top 12] [--at-kimg 0] [--bf16]

Profiling costs time of its own (Python stacks are recorded), so the op table gives shares;
the wall times come from pass 1.
"""

import argparse
import bisect
import collections
import contextlib
import dataclasses
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.timing import time_calls, wait_for_idle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKWARD_NODE_PREFIX = 'autograd::engine::evaluate_function: '
MODULE_PREFIX = 'nn.Module: '
COPY_OPS = ('aten::copy_', 'aten::clone', 'aten::contiguous', 'aten::_to_copy', 'aten::to')
MATMUL_OPS = ('aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm')
CONV_OPS = ('aten::convolution', 'aten::convolution_backward')
# Project folders whose files are charged with the ops they run; the benchmark itself is not one.
SOURCE_ROOTS = ('training/', 'torch_utils/')


@dataclasses.dataclass
class OpRecord:
    """One profiled op: its own time, and the FLOPs it did when it is a convolution or a matrix product."""

    name: str
    backward: bool
    self_us: float
    total_us: float  # including the ops it called
    flops: float  # 0 unless a convolution or matrix product (counted once, at its top aten call)
    source: str  # innermost project file it ran from, or 'other'
    module: str  # outermost network module it ran in (the class name), or 'other'
    context: str  # for copies: the op they ran inside


# ------------------------------------------------------------------------------------------------
# FLOPs and event classification.


def convolution_flops(name: str, shapes: list, arguments: list) -> float:
    """Multiply-add FLOPs (2 per MAC) of an aten::convolution or aten::convolution_backward call.

    shapes: the recorded input shapes; arguments: the recorded concrete inputs.
    aten::convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups);
    aten::convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation,
    transposed, output_padding, groups, output_mask): one convolution's worth per gradient asked for
    (input, weight).
    """
    if name == 'aten::convolution':
        input_shape, weight_shape, transposed = shapes[0], shapes[1], bool(arguments[6])
        output_shape = None
        passes = 1
    else:
        output_shape, input_shape, weight_shape, transposed = shapes[0], shapes[1], shapes[2], bool(arguments[7])
        mask = arguments[10] or [True, True, False]
        passes = int(bool(mask[0])) + int(bool(mask[1]))
    if len(input_shape) != 4 or len(weight_shape) != 4:
        return 0.0
    weight_numel = weight_shape[0] * weight_shape[1] * weight_shape[2] * weight_shape[3]
    if transposed:  # every input pixel meets the whole weight
        pixels = input_shape[0] * input_shape[2] * input_shape[3]
    elif output_shape is not None:
        pixels = output_shape[0] * output_shape[2] * output_shape[3]
    else:
        stride, padding, dilation = arguments[3], arguments[4], arguments[5]
        out = [
            (input_shape[2 + i] + 2 * padding[i] - dilation[i] * (weight_shape[2 + i] - 1) - 1) // stride[i] + 1
            for i in range(2)
        ]
        pixels = input_shape[0] * out[0] * out[1]
    return 2.0 * pixels * weight_numel * passes


def _source_of_frame(name: str) -> str | None:
    """'training/loss.py(212): _g_main' -> 'training/loss.py'; None for other events."""
    path = name.split('(', 1)[0]
    if not path.endswith('.py'):
        return None
    if os.path.isabs(path):
        path = os.path.relpath(path, REPO)
    return path if path.startswith(SOURCE_ROOTS) else None


def copy_context(event) -> str:
    """The op or autograd node a copy ran inside: the nearest enclosing aten op that is not itself a
    copy, or autograd node; 'python code' when the copy was called from Python directly."""
    node = event.cpu_parent
    while node is not None:
        if node.name.startswith(BACKWARD_NODE_PREFIX):
            return node.name.removeprefix(BACKWARD_NODE_PREFIX)
        if node.name.startswith('aten::') and node.name not in COPY_OPS:
            return node.name
        if not node.name.startswith(('aten::', '<built-in')) and '): ' not in node.name:
            return node.name  # a custom autograd.Function or a record_function label
        node = node.cpu_parent
    return 'python code'


def op_records(events: list) -> list:
    """Flatten a profile (`prof.events()`, recorded with_stack and record_shapes) into OpRecords of its aten ops.

    Python-frame events and autograd node wrappers are not ops: they only give the ops' source and
    direction.
    """
    # Sequence number -> the ops recorded with it, by start time. Ops that create no autograd node record
    # the number the next node will get, so a node's creator is the last op with its number that started
    # before the node ran.
    by_sequence = collections.defaultdict(list)
    for event in sorted(events, key=lambda event: event.time_range.start):
        if event.sequence_nr >= 0 and not event.name.startswith(BACKWARD_NODE_PREFIX):
            by_sequence[event.sequence_nr].append(event)

    starts = {number: [event.time_range.start for event in ops] for number, ops in by_sequence.items()}

    def creator(node):
        candidates = by_sequence.get(node.sequence_nr, [])
        index = bisect.bisect_left(starts.get(node.sequence_nr, []), node.time_range.start)
        return candidates[index - 1] if index > 0 else None

    origin_cache = {}

    def origin(event) -> tuple[str, str, bool]:
        """(innermost project file, outermost network module, whether the event runs inside an autograd node)"""
        if event is None:
            return 'other', 'other', False
        if id(event) in origin_cache:
            return origin_cache[id(event)]
        found, module, backward, node = None, None, False, event
        while node is not None:
            if node.name.startswith(BACKWARD_NODE_PREFIX):
                backward = True
                creator_source, module, _ = origin(creator(node))
                found = found or creator_source
                break
            if node.name.startswith(MODULE_PREFIX):
                module = node.name.removeprefix(MODULE_PREFIX).rsplit('_', 1)[0]
            found = found or _source_of_frame(node.name)
            node = node.cpu_parent
        result = (found or 'other', module or 'other', backward)
        origin_cache[id(event)] = result
        return result

    records = []
    for event in events:
        if not event.name.startswith('aten::'):
            continue
        parent = event.cpu_parent
        flops = 0.0
        if event.name in CONV_OPS and not (parent is not None and parent.name in CONV_OPS):
            flops = convolution_flops(event.name, event.input_shapes, getattr(event, 'concrete_inputs', None) or [])
        elif event.name in MATMUL_OPS:
            flops = float(event.flops or 0)
        context = ''
        if event.name in COPY_OPS:
            context = copy_context(event)
        source, module, backward = origin(event)
        records.append(
            OpRecord(
                event.name,
                backward,
                float(event.self_cpu_time_total),
                float(event.cpu_time_total),
                flops,
                source,
                module,
                context,
            )
        )
    return records


# ------------------------------------------------------------------------------------------------
# Aggregation.


def direction(record: OpRecord) -> str:
    return 'bwd' if record.backward else 'fwd'


def aggregate_ops(records: list) -> list:
    """Self time by (direction, op name), largest first -> [(direction, name, self_us, calls, flops, flop_us)].

    flops and flop_us: FLOPs of the op's calls and their inclusive time, for GFLOP/s (0 for other ops).
    """
    totals = collections.defaultdict(lambda: [0.0, 0, 0.0, 0.0])
    for record in records:
        entry = totals[(direction(record), record.name)]
        entry[0] += record.self_us
        entry[1] += 1
        if record.flops > 0:
            entry[2] += record.flops
            entry[3] += record.total_us
    rows = [(key[0], key[1], *values) for key, values in totals.items()]
    return sorted(rows, key=lambda row: -row[2])


def aggregate_by(records: list, key) -> list:
    """Self time summed by key(record), largest first -> [(key, self_us)]."""
    totals = collections.defaultdict(float)
    for record in records:
        totals[key(record)] += record.self_us
    return sorted(totals.items(), key=lambda item: -item[1])


def compute_rows(records: list) -> list:
    """Convolutions and matrix products -> [(direction, name, flops, inclusive us)], largest time first."""
    totals = collections.defaultdict(lambda: [0.0, 0.0])
    for record in records:
        if record.flops > 0:
            entry = totals[(direction(record), record.name)]
            entry[0] += record.flops
            entry[1] += record.total_us
    return sorted(((k[0], k[1], v[0], v[1]) for k, v in totals.items()), key=lambda row: -row[3])


# ------------------------------------------------------------------------------------------------
# Peaks and the training step.


def measured_peaks(reps: int = 5) -> dict:
    """GFLOP/s of this CPU in fp32 and bf16: the better of a 2048^3 matrix product (MKL for fp32, oneDNN
    for bf16) and a 512->512 3x3 convolution on [4, 512, 32, 32] channels_last (oneDNN), best of `reps`.

    -> {'float32': {'matmul': ..., 'conv': ..., 'peak': ...}, 'bfloat16': {...}}
    """
    peaks = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(2048, 2048).to(dtype), torch.randn(2048, 2048).to(dtype)
        x = torch.randn(4, 512, 32, 32).to(dtype).contiguous(memory_format=torch.channels_last)
        w = torch.randn(512, 512, 3, 3).to(dtype).contiguous(memory_format=torch.channels_last)
        wait_for_idle(30)
        matmul = 2 * 2048**3 / time_calls(lambda: torch.mm(a, b), reps, warmup=1).best / 1e9
        wait_for_idle(30)
        conv_seconds = time_calls(lambda: torch.nn.functional.conv2d(x, w, padding=1), reps, warmup=1).best
        conv = 2 * 4 * 32 * 32 * w.numel() / conv_seconds / 1e9
        peaks[str(dtype).removeprefix('torch.')] = dict(matmul=matmul, conv=conv, peak=max(matmul, conv))
    return peaks


class SectionTimer:
    """Wall time of named sections: wrapped callables add their call time to `seconds[name]`."""

    def __init__(self):
        self.seconds = collections.defaultdict(float)
        self.active = False

    def wrap(self, function, name: str):
        def timed(*args, **kwargs):
            if self.active:  # a nested call is part of the outer section
                return function(*args, **kwargs)
            self.active = True
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - start
                self.active = False

        return timed

    @contextlib.contextmanager
    def autograd_sections(self):
        """Time every `Tensor.backward` as 'backward' and every `autograd.grad` as 'R1 input gradient'."""
        original_backward, original_grad = torch.autograd.backward, torch.autograd.grad
        torch.autograd.backward = self.wrap(original_backward, 'backward')
        torch.autograd.grad = self.wrap(original_grad, 'R1 input gradient')
        try:
            yield
        finally:
            torch.autograd.backward, torch.autograd.grad = original_backward, original_grad


def build_step(cfg: str, batch: int | None, at_kimg: float, seed: int = 0, bf16: bool = False) -> tuple:
    """Networks, loss, phases and one chunk of inputs of a preset -> (loss, phases, optimizers, chunk, schedule, G, D).

    bf16: the preset with `cpu_bf16` (G's and D's convolutions in bfloat16, as train.py --cpu_bf16 true).

    chunk: (real_img [B, 3, S, S], real_seg [B, 1, S, S], real_c [B, 25], real_pose [B, 6],
    gen_z [B, z_dim], gen_c [B, 25], gen_pose [B, 6]) with B = batch (default: the preset's batch_gpu).
    """
    from training.config import TrainingConfig
    from training.loss import LossConfig, PortraitGANLoss
    from training.presets import load_preset
    from training.schedules import schedule_values
    from training.training_loop import build_networks, build_phases

    preset = load_preset(cfg)
    preset['generator']['cpu_bf16'] = bf16
    batch = batch or preset['training']['batch_gpu']
    config = TrainingConfig.from_preset(
        preset, cfg, data='unused.zip', seg_data='unused-seg.zip', gpus=1, batch=batch, batch_gpu=batch
    )
    device = torch.device('cpu')
    torch.manual_seed(seed)
    G, D = build_networks(config, device)
    phases, optimizers = build_phases(config, G, D)
    loss_config = LossConfig.from_training_config(config)
    loss = PortraitGANLoss(G, D, loss_config, device)
    schedule = schedule_values(loss_config, round(at_kimg * 1000))
    chunk = random_chunk(G, batch, torch.Generator().manual_seed(seed))
    return loss, phases, optimizers, chunk, schedule, G, D


def random_chunk(G: torch.nn.Module, batch: int, generator: torch.Generator) -> tuple:
    """Random inputs of one chunk for G's sizes -> (real_img [B, 3, S, S] in [-1, 1], real_seg [B, 1, S, S] of 0/1,
    real_c [B, 25], real_pose [B, 6], gen_z [B, z_dim], gen_c [B, 25], gen_pose [B, 6]), B = batch, S = G's
    image resolution; cameras on the training orbit, poses of about 0.2 rad."""
    from training.data.camera_utils import random_cameras

    size = G.img_resolution
    return (
        torch.rand([batch, 3, size, size], generator=generator) * 2 - 1,
        (torch.rand([batch, 1, size, size], generator=generator) > 0.5).float(),
        random_cameras(batch, generator=generator),
        0.2 * torch.randn([batch, G.pose_dim], generator=generator),
        torch.randn([batch, G.z_dim], generator=generator),
        random_cameras(batch, generator=generator),
        0.2 * torch.randn([batch, G.pose_dim], generator=generator),
    )


def run_phase(loss, phase, chunk: tuple, schedule: dict) -> None:
    """One phase on one chunk, as the training loop runs it (gradients on, accumulate, gradients off)."""
    for param in phase.params:
        param.requires_grad_(True)
        param.grad = None
    loss.accumulate_gradients(phase.name, *chunk, gain=phase.interval, schedule=schedule)
    for param in phase.params:
        param.requires_grad_(False)


def time_phase(loss, phase, optimizer, chunk: tuple, schedule: dict, reps: int) -> dict:
    """Best-of-reps wall time of a phase and of its sections -> {'total', 'G forward', ..., 'optimizer step'}."""
    timer = SectionTimer()
    loss.run_G = timer.wrap(loss.run_G, 'G forward')
    loss.G.get_pose_params = timer.wrap(loss.G.get_pose_params, 'G pose branch')
    loss.run_D = timer.wrap(loss.run_D, 'D forward')
    best = None
    try:
        with timer.autograd_sections():
            for rep in range(reps + 1):  # the first is a warm-up (oneDNN primitives, allocator)
                timer.seconds.clear()
                if rep > 0:
                    wait_for_idle(60)
                start = time.perf_counter()
                run_phase(loss, phase, chunk, schedule)
                total = time.perf_counter() - start
                if rep > 0 and (best is None or total < best['total']):
                    best = dict(total=total, **timer.seconds)
    finally:
        del loss.run_G, loss.G.get_pose_params, loss.run_D
    wait_for_idle(30)
    step = time_calls(optimizer.step, reps, warmup=1)
    best['optimizer step'] = step.best
    return best


def profile_phase(loss, phase, chunk: tuple, schedule: dict) -> list:
    """OpRecords of one profiled run of a phase."""
    wait_for_idle(60)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_stack=True, with_flops=True) as prof:
        run_phase(loss, phase, chunk, schedule)
    return op_records(prof.events())


# ------------------------------------------------------------------------------------------------
# Report.


def _ms(us: float) -> str:
    return f'{us / 1000:,.0f}' if us >= 10_000 else f'{us / 1000:,.1f}'


def print_split(title: str, records: dict, key, profiled_us: float, limit: int) -> None:
    """A table of self CPU time by key(record), one forward and one backward column per phase."""
    phases = list(records)
    cells = collections.defaultdict(lambda: collections.defaultdict(float))
    for phase, phase_records in records.items():
        for record in phase_records:
            cells[key(record)][(phase, record.backward)] += record.self_us
    print(f'\n{title}, ms')
    print('| | ' + ' | '.join(f'{phase} fwd | {phase} bwd' for phase in phases) + ' | share of all |')
    print('|---|' + '---:|' * (2 * len(phases) + 1))
    for name, row in sorted(cells.items(), key=lambda item: -sum(item[1].values()))[:limit]:
        values = ' | '.join(f'{_ms(row[(phase, False)])} | {_ms(row[(phase, True)])}' for phase in phases)
        print(f'| {name} | {values} | {sum(row.values()) / profiled_us:.1%} |')


def print_ranked(headers: tuple, rows: list, profiled_us: float) -> None:
    """A table of (key tuple, self microseconds) rows: one column per key part, then ms and share of the step."""
    print('| ' + ' | '.join(headers) + ' | self ms | share |')
    print('|' + '---|' * len(headers) + '---:|---:|')
    for key, us in rows:
        print('| ' + ' | '.join(str(part) for part in key) + f' | {_ms(us)} | {us / profiled_us:.1%} |')


def print_report(
    cfg: str, batch: int, timings: dict, records: dict, peaks: dict, top: int, precision: str = 'fp32'
) -> None:
    sections = ['G pose branch', 'G forward', 'D forward', 'R1 input gradient', 'backward']
    print(
        f'\n{cfg}, {batch} image(s) per pass, {torch.get_num_threads()} threads, {precision}; wall times in ms (best)'
    )
    print('| phase | total | ' + ' | '.join(sections) + ' | other | backward / forward | optimizer step |')
    print('|---|' + '---:|' * (len(sections) + 4))
    step_total = 0.0
    for name, timing in timings.items():
        forward = timing.get('G forward', 0) + timing.get('D forward', 0) + timing.get('G pose branch', 0)
        backward = timing.get('backward', 0) + timing.get('R1 input gradient', 0)
        other = timing['total'] - forward - backward
        step_total += timing['total']
        cells = [f'{timing.get(s, 0) * 1000:,.0f}' for s in sections]
        print(
            f'| {name} | {timing["total"] * 1000:,.0f} | '
            + ' | '.join(cells)
            + f' | {other * 1000:,.0f} | {backward / forward:.2f} | {timing["optimizer step"] * 1000:,.0f} |'
        )
    print(f'phases together: {step_total:.2f} s for {batch} image(s)')

    everything = [record for phase_records in records.values() for record in phase_records]
    profiled_us = sum(record.self_us for record in everything)
    fp32, bf16 = peaks['float32']['peak'], peaks['bfloat16']['peak']
    print(f'\nProfiled self CPU time, all phases: {profiled_us / 1e6:.2f} s (profiler overhead included)')
    print(
        'Peaks measured here (GFLOP/s): '
        + '; '.join(
            f'{dtype} matmul 2048^3 {p["matmul"]:,.0f}, conv 3x3 512ch {p["conv"]:,.0f}' for dtype, p in peaks.items()
        )
        + ' (the better one is the peak)'
    )
    for name, phase_records in [*records.items(), ('all phases', everything)]:
        phase_us = sum(record.self_us for record in phase_records)
        print(f'\nTop ops by self CPU time, {name} ({phase_us / 1000:,.0f} ms profiled)')
        print('| dir | op | self ms | share | calls | GFLOP/s | of fp32 peak | of bf16 peak |')
        print('|---|---|---:|---:|---:|---:|---:|---:|')
        for row_direction, op, self_us, calls, flops, flop_us in aggregate_ops(phase_records)[:top]:
            rate = ' | | '
            if flops > 0:
                gflops = flops / flop_us / 1e3
                rate = f'{gflops:,.0f} | {gflops / fp32:.0%} | {gflops / bf16:.0%}'
            print(f'| {row_direction} | {op} | {_ms(self_us)} | {self_us / phase_us:.1%} | {calls} | {rate} |')

    print('\nConvolutions and matrix products, all phases (time includes the ops they call)')
    print('| dir | op | GFLOP | ms | share of step | GFLOP/s | of fp32 peak | of bf16 peak |')
    print('|---|---|---:|---:|---:|---:|---:|---:|')
    for row_direction, op, flops, us in compute_rows(everything):
        rate = flops / us / 1e3
        print(
            f'| {row_direction} | {op} | {flops / 1e9:,.1f} | {_ms(us)} | {us / profiled_us:.1%} | {rate:,.0f} | '
            f'{rate / fp32:.0%} | {rate / bf16:.0%} |'
        )

    print_split(
        'Self CPU time by network module (outermost module; backward ops: that of their forward)',
        records,
        lambda record: record.module,
        profiled_us,
        top,
    )
    print_split(
        'Self CPU time by source file (backward ops: the file that built their forward)',
        records,
        lambda record: record.source,
        profiled_us,
        top,
    )

    print('\nTop (source, op) pairs by self CPU time, all phases')
    print_ranked(
        ('dir', 'source', 'op'),
        aggregate_by(everything, lambda record: (direction(record), record.source, record.name))[:top],
        profiled_us,
    )

    copies = [record for record in everything if record.name in COPY_OPS]
    copy_us = sum(record.self_us for record in copies)
    print(
        f'\nLayout copies and casts (copy_, clone, contiguous, _to_copy, to): {copy_us / profiled_us:.1%} of the step'
    )
    print_ranked(
        ('dir', 'inside', 'source'),
        aggregate_by(copies, lambda record: (direction(record), record.context, record.source))[:top],
        profiled_us,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--cfg', default='cpu-small', help='preset')
    parser.add_argument('--batch', type=int, help="images per pass (default: the preset's batch_gpu)")
    parser.add_argument('--reps', type=int, default=3, help='timed reps per phase (after one warm-up)')
    parser.add_argument('--top', type=int, default=12, help='rows of the op tables')
    parser.add_argument('--at-kimg', type=float, default=0.0, help='image counter of the schedule values (kimg)')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--bf16', action='store_true', help="G's and D's convolutions in bfloat16 (--cpu_bf16 true)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loss, phases, optimizers, chunk, schedule, G, D = build_step(args.cfg, args.batch, args.at_kimg, bf16=args.bf16)
    batch = chunk[0].shape[0]
    print(
        f'{args.cfg}: G {sum(p.numel() for p in G.parameters()) / 1e6:.2f} M, '
        f'D {sum(p.numel() for p in D.parameters()) / 1e6:.2f} M parameters; schedule at {args.at_kimg:g} kimg: {schedule}',
        flush=True,
    )
    peaks = measured_peaks()
    timings, records = {}, {}
    for phase in phases:
        if phase.name == 'Greg' and loss.config.density_reg <= 0:
            continue
        timings[phase.name] = time_phase(loss, phase, optimizers[phase.optimizer_name], chunk, schedule, args.reps)
        print(f'{phase.name}: {timings[phase.name]["total"]:.2f} s', flush=True)
    for name in timings:
        phase = next(phase for phase in phases if phase.name == name)
        records[name] = profile_phase(loss, phase, chunk, schedule)
    print_report(args.cfg, batch, timings, records, peaks, args.top, 'bf16 convolutions' if args.bf16 else 'fp32')


if __name__ == '__main__':
    main()
