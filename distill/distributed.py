"""Process-group set-up shared by the programs: launched by `deepspeed`, `torchrun`
or plain `python` (one process). NCCL on GPUs, gloo on CPU."""
from __future__ import annotations

import os
import re
import socket
from contextlib import contextmanager

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) as the launcher set them; (0, 1, 0) for plain python."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def local_ranks() -> int:
    """Processes on this machine: torchrun's LOCAL_WORLD_SIZE, the deepspeed launcher's
    LOCAL_SIZE, else 1."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, e.g. a container's or taskset's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def set_rank_threads() -> int:
    """Torch's threads on this rank: its share of the cores (cores / local ranks), so that
    ranks on one machine do not oversubscribe it (two CPU ranks on two cores with two threads
    each ran ~4x slower); an OMP_NUM_THREADS the user (or `deepspeed --bind_cores_to_rank`)
    set is kept. Returns the thread count."""
    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, usable_cores() // local_ranks()))
    return torch.get_num_threads()


def capped_workers(workers: int, key: str, say: bool) -> int:
    """`workers` DataLoader processes, at most this rank's share of the cores (more only queue
    for them, and torch warns); the cap is said once, by the rank that `say`s."""
    share = max(1, usable_cores() // local_ranks())
    if workers <= share:
        return workers
    if say:
        print(f"{key}: {workers} DataLoader workers capped to {share}, this rank's share of the "
              f"{usable_cores()} cores ({local_ranks()} rank(s) here)")
    return share


def set_single_process_env() -> None:
    """Let DeepSpeed initialise under plain `python`: it expects a launcher's variables."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def init_process_group(device: torch.device) -> tuple[int, int]:
    """Join the launcher's process group when there is more than one process."""
    rank, world, _ = env_rank()
    if world > 1 and not dist.is_initialized():
        with port_in_use_said():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world


@contextmanager
def port_in_use_said():
    """A rendezvous port another process holds (a second run on the launchers' default 29500)
    is the user's to change: one line naming the port and the flag, not torch's traceback."""
    try:
        yield
    except dist.DistNetworkError as e:
        if "EADDRINUSE" not in str(e) and "address already in use" not in str(e).lower():
            raise
        from teacher_logits.errors import UserError

        port = os.environ.get("MASTER_PORT", "29500")
        raise UserError(f"port {port} (MASTER_PORT) is in use, probably by another run on this machine: pass "
                        "another with `deepspeed --master_port N` or `torchrun --master-port N` "
                        "(or set MASTER_PORT)") from None


def resolve_device(name: str) -> torch.device:
    """'auto' -> this rank's GPU if there is one, else the CPU; a device that is not there
    (a typo, CUDA on a CPU machine, a GPU index past the last) is the user's to fix."""
    from teacher_logits.errors import UserError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UserError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env_rank()[2])
    if device.type == "cuda":
        if device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: {torch.cuda.device_count()} CUDA device(s) visible; use --device cpu "
                            "or a GPU that exists")
        torch.cuda.set_device(device)
    return device


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
