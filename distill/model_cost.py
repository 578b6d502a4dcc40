"""What a model costs: parameters, forward FLOPs and inference throughput."""

import time

import torch
from torch import nn


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """FLOPs of one forward pass on a zero tensor of `input_size` (batch included).

    Uses torch's FlopCounterMode, which counts a multiply-add as 2 FLOPs (so
    Linear(i, o) on batch B is 2*B*i*o) and counts only matmul/conv/attention-like
    ops: elementwise work, norms, softmax and bias adds count 0.
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()  # don't disturb BatchNorm running stats
    try:
        x = torch.zeros(input_size, device=_model_device(model))
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


@torch.no_grad()
def measure_throughput(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 32, 32),
    batch_size: int = 256,
    device: torch.device | str | None = None,
    warmup: int = 5,
    iters: int = 20,
) -> float:
    """Inference throughput in images/s: eval mode, no_grad, random input.

    `input_size` is one image's (C, H, W). If `device` is given the model is moved
    there (in place, as nn.Module.to does); by default it stays where it is.
    Warm-up iterations are excluded so allocator and kernel-selection costs don't count.
    """
    if len(input_size) != 3:
        raise ValueError(f"input_size is one image's (C, H, W), got {tuple(input_size)}")
    if device is not None:
        model.to(device)
    device = _model_device(model)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    was_training = model.training
    model.eval()
    try:
        x = torch.randn(batch_size, *input_size, device=device)
        for _ in range(warmup):
            model(x)
        sync()  # CUDA launches are async; time only finished work
        start = time.perf_counter()
        for _ in range(iters):
            model(x)
        sync()
        elapsed = time.perf_counter() - start
    finally:
        model.train(was_training)
    return batch_size * iters / elapsed
