"""Where a run computes and in what precision: the device an operator names (GRPO_DEVICE, `grpo train --device`)
and the dtype the base model is held in (the `dtype` hyperparameter).

A name is checked here without torch (the API's settings check GRPO_DEVICE and never load the engine); resolving
it needs torch, and says so when the device is not there. Both are resolved once per run, by the trainer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_FORMS = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"(auto|cpu|cuda(:\d+)?)")


def check_device_name(name: str) -> str:
    """`name` in canonical form (trimmed, lower case) when it is one of the accepted forms; ValueError otherwise."""
    canonical = name.strip().lower() if isinstance(name, str) else ""
    if not _DEVICE_NAME.fullmatch(canonical):
        raise ValueError(f"device must be {DEVICE_FORMS}, got {name!r}")
    return canonical


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """The torch.device for a device name: auto is the current CUDA GPU when torch sees one, else the CPU; cuda is
    the current CUDA GPU. A CUDA device always comes back with its index, so RNG and memory calls name it.

    ValueError when the name is malformed, when CUDA is asked for and torch sees none, or when cuda:N is past the
    GPUs there are."""
    import torch

    canonical = check_device_name(str(name))
    if canonical == "cpu" or (canonical == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            f"device {canonical!r}: torch sees no CUDA device (a CPU-only torch build, no GPU, or no driver); "
            "use auto or cpu"
        )
    index = torch.cuda.current_device() if ":" not in canonical else int(canonical.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise ValueError(f"device {canonical!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The base model's dtype for a config's `dtype` on `device`: auto is bfloat16 on a CUDA GPU that computes
    in it (Ampere and later), else float32; float32 and bfloat16 are taken as asked (bfloat16 runs on a CPU too,
    slowly)."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            with torch.cuda.device(device):
                supported = torch.cuda.is_bf16_supported(including_emulation=False)
            return torch.bfloat16 if supported else torch.float32
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype must be one of auto, {', '.join(dtypes)}; got {name!r}")
    return dtypes[name]


def dtype_name(dtype: torch.dtype) -> str:
    """ "float32" for torch.float32: how a dtype is written in a config and a checkpoint."""
    return str(dtype).removeprefix("torch.")


@contextmanager
def forked_rng(device: torch.device) -> Iterator[None]:
    """Run the block on its own random streams: the CPU generator's and, on a CUDA device, that device's are
    restored on exit, so what the block draws (evaluation) never shifts what training draws next."""
    import torch

    devices = [device.index] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda"):
        yield


@contextmanager
def deterministic_kernels(device: torch.device) -> Iterator[None]:
    """On a CUDA device, run the block with torch's deterministic algorithms, so that a run resumed from a
    checkpoint repeats the uninterrupted one bit for bit, as it does on a CPU. Without them CUDA sums some
    gradients in whatever order its threads finish: attention's backward, and repeat_interleave's (the prompt's KV
    cache shared by a group) use atomic adds. The previous setting is restored on exit; on a CPU this does nothing
    (the CPU kernels used here are deterministic already)."""
    import os

    import torch

    if device.type != "cuda":
        yield
        return
    # cuBLAS is deterministic only with a fixed workspace; torch refuses deterministic mode without this setting.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was_enabled, was_warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_enabled, warn_only=was_warn_only)
