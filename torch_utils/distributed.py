"""Process set-up of multi-process runs: torchrun's processes or ones spawned by the tools.

Every process picks its device (`process_device`) and joins the process group (`join_process_group`):
NCCL on CUDA, gloo on the CPU; the rendezvous is torchrun's environment (`env://`) or, for processes
that a tool spawned itself, a file in a temporary folder (`file://`). Every collective of the group
gives up after `COLLECTIVE_TIMEOUT`, so that a process whose partner hangs without exiting fails
instead of waiting forever (a partner that exits ends the collective at once).
"""

import datetime
import os

import torch

# Longer than anything one rank does while the others wait in a collective: rank 0 writing a
# snapshot or an image grid, the set-up building the synthetic data set. NCCL's own default.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


def is_torchrun() -> bool:
    """Whether this process was started by torchrun (its RANK, WORLD_SIZE and LOCAL_RANK are set)."""
    return all(name in os.environ for name in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'))


def torchrun_restart() -> tuple[str, int]:
    """-> (torchrun's run id, how often torchrun has restarted the group): ('', 0) outside torchrun.

    The run id is --rdzv-id ('none' unless given, for the static rendezvous of --master_addr); the
    count is 0 in the first attempt and goes up each time --max-restarts starts the workers anew. Each
    node counts its own restarts (a node restarted only because another one failed keeps its count),
    so with several processes this is a collective call that returns the largest count of the group.
    """
    count = int(os.environ.get('TORCHELASTIC_RESTART_COUNT', 0))
    if torch.distributed.is_initialized():
        device = torch.device('cuda') if torch.distributed.get_backend() == 'nccl' else torch.device('cpu')
        largest = torch.tensor(count, device=device)
        torch.distributed.all_reduce(largest, op=torch.distributed.ReduceOp.MAX)
        count = int(largest)
    return os.environ.get('TORCHELASTIC_RUN_ID', ''), count


def _torchrun_attempt_store(timeout: datetime.timedelta) -> torch.distributed.Store | None:
    """The key-value store of a one-node torchrun run, with the keys of this attempt apart -> store, or None
    where `env://` does the right thing.

    torchrun hands its own store to the workers of every attempt (TORCHELASTIC_USE_AGENT_STORE), and the
    process group's keys of a killed attempt stay there: a restarted process could read the address of a
    dead one and fail to connect. On one node the restart count numbers the attempts, so it can keep
    them apart; several nodes count theirs separately (restarting them needs torchrun's own fresh store
    per attempt: --rdzv-backend c10d with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1).
    """
    if os.environ.get('TORCHELASTIC_USE_AGENT_STORE') != 'True' or os.environ.get('GROUP_WORLD_SIZE', '1') != '1':
        return None
    store = torch.distributed.TCPStore(
        os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), is_master=False, timeout=timeout
    )
    return torch.distributed.PrefixStore(f'attempt-{os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")}', store)


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


def join_process_group(
    device: torch.device,
    rank: int,
    world_size: int,
    init_file: str | None,
    timeout: datetime.timedelta = COLLECTIVE_TIMEOUT,
) -> None:
    """Join the group of `world_size` processes; nothing for a single process or one that has joined already.

    init_file: the rendezvous file of spawned processes; None under torchrun (its environment).
    timeout: how long a collective (and the rendezvous) waits for the other processes before it raises.
    """
    if world_size == 1 or torch.distributed.is_initialized():
        return
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    store = _torchrun_attempt_store(timeout) if init_file is None else None
    if store is not None:
        torch.distributed.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=timeout)
        return
    init_method = 'env://' if init_file is None else f'file://{init_file}'
    torch.distributed.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
    )
