"""Process set-up of multi-process runs: torchrun's processes or ones spawned by the tools.

Every process picks its device (`process_device`) and joins the process group (`join_process_group`):
NCCL on CUDA, gloo on the CPU; the rendezvous is torchrun's environment (`env://`) or, for processes
that a tool spawned itself, a file in a temporary folder (`file://`).
"""

import os

import torch


def is_torchrun() -> bool:
    """Whether this process was started by torchrun (its RANK, WORLD_SIZE and LOCAL_RANK are set)."""
    return all(name in os.environ for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'))


def process_device(kind: str, rank: int, world_size: int) -> torch.device:
    """The device of process `rank`: cuda:LOCAL_RANK, made the current CUDA device, for kind 'cuda'; else the
    CPU, with the cores shared among the processes of this machine (one thread pool per core would
    oversubscribe them)."""
    if kind == 'cuda':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', rank)))
        torch.cuda.set_device(device)
        return device
    local_world = int(os.environ.get('LOCAL_WORLD_SIZE', world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return torch.device('cpu')


def join_process_group(device: torch.device, rank: int, world_size: int, init_file: str | None) -> None:
    """Join the group of `world_size` processes; nothing for a single process or one that has joined already.

    init_file: the rendezvous file of spawned processes; None under torchrun (its environment).
    """
    if world_size == 1 or torch.distributed.is_initialized():
        return
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    init_method = 'env://' if init_file is None else f'file://{init_file}'
    torch.distributed.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size)
