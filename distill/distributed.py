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
