"""Where and in what precision a job runs: the device, mixed precision, and the record of both.

Every stage (fine-tuning, distillation with its online teacher, cache extraction, evaluation)
takes its device from :func:`resolve_device`: ``--device`` when given, else the accelerator
when there is one (CUDA, then MPS), else the CPU. Under ``torchrun`` each rank uses the GPU of
its ``LOCAL_RANK``.
"""

from __future__ import annotations

import os
import platform

import torch

from hskd.errors import HskdError

_PINNED = "HSKD_PINNED_CUDA_DEVICE"  # set by pin_process_to: the GPU index that became cuda:0


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def under_torchrun() -> bool:
    """Whether this process is one of several ranks started by ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_process() -> bool:
    """Whether this process writes shared output: always in a single process, rank 0 under
    ``torchrun`` (the one rank check of hskd)."""
    return int(os.environ.get("RANK", "0")) == 0


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str | None = None) -> torch.device:
    """The device a job runs on.

    Args:
        name: ``None``/``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:N"`` or ``"mps"``. Under ``torchrun``, ``cuda`` means the rank's own GPU.

    Raises:
        HskdError: a device that is not there (or a malformed name), in one line.
    """
    text = (name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank() if under_torchrun() else torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise HskdError(f"unknown --device {name!r}: use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise HskdError(f"--device {name} asked, but torch sees no CUDA GPU "
                            f"(torch {torch.__version__}); use --device cpu or install a CUDA build of torch")
        index = device.index if device.index is not None else (_local_rank() if under_torchrun() else 0)
        if os.environ.get(_PINNED) == str(index):
            index = 0
        if index >= torch.cuda.device_count():
            raise HskdError(f"--device {name}: there are {torch.cuda.device_count()} CUDA GPUs (0.."
                            f"{torch.cuda.device_count() - 1})")
        return torch.device("cuda", index)
    if device.type == "mps":
        if not _mps_available():
            raise HskdError(f"--device {name} asked, but MPS is not available; use --device cpu")
        return device
    raise HskdError(f"unsupported --device {name!r}: use cpu, cuda, cuda:N or mps")


def pin_process_to(name: str | None) -> None:
    """Make ``--device cuda:N`` the only GPU this process sees, before CUDA starts.

    The ``Trainer`` trains on ``cuda:0`` and spreads over every visible GPU with
    ``DataParallel`` when several are visible in one process; pinning keeps a single-process
    run on the one GPU asked for. Under ``torchrun`` each rank already has its own GPU.
    """
    text = (name or "").strip().lower()
    if under_torchrun() or not text.startswith("cuda") or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    if torch.cuda.is_initialized():
        return
    index = text.partition(":")[2] or "0"
    if index.isdigit():
        os.environ["CUDA_VISIBLE_DEVICES"] = index
        os.environ[_PINNED] = index  # cuda:N is now this process's cuda:0


def precision_name(bf16: bool = False, fp16: bool = False) -> str:
    """``bf16``, ``fp16`` or ``fp32``."""
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"


def precision_dtype(bf16: bool = False, fp16: bool = False) -> torch.dtype:
    """The dtype a frozen model (the teacher) runs in for that precision."""
    return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32


def check_precision(device: torch.device, bf16: bool, fp16: bool) -> None:
    """Refuse a precision the device cannot run, in one line.

    Raises:
        HskdError: both flags; ``--fp16`` off CUDA; ``--bf16`` on a GPU without bf16.
    """
    if bf16 and fp16:
        raise HskdError("give at most one of --bf16 and --fp16")
    if fp16 and device.type != "cuda":
        raise HskdError(f"--fp16 needs a CUDA GPU (this run is on {device.type}); use --bf16 on the CPU, or fp32")
    if bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise HskdError(f"{torch.cuda.get_device_name(device)} has no bf16; use --fp16 or fp32")


def device_description(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)``, ``cpu (2 threads)`` or ``mps``."""
    if device.type == "cuda":
        pinned = os.environ.get(_PINNED)
        name = f"cuda:{pinned}" if pinned is not None else str(device)
        return f"{name} ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def environment(device: torch.device, bf16: bool = False, fp16: bool = False) -> dict:
    """What a run ran on: device, precision and the versions that shape its numbers."""
    import transformers

    from hskd import __version__

    info = {"device": device_description(device), "precision": precision_name(bf16, fp16),
            "hskd": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    return info


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
