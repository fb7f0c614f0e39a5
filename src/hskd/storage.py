"""How a knowledge cache stores the teacher's hidden values: fp16, bf16, int8 or fp8.

The cache's largest array is ``hidden`` ``[rows, pairs, tokens, width]``. Each storage is a
codec with an encoder (run on the device, at extraction) and a decoder (run on the device, in
the training data path, after the batch was copied there):

========== ========= ====================================== ==========================================
storage    bytes/val extra array                            error bound (per value)
========== ========= ====================================== ==========================================
fp16       2         —                                      ≤ 2⁻¹¹·|x| (round to nearest)
bf16       2         —                                      ≤ 2⁻⁸·|x|
int8       1         ``hidden_scale`` fp16 per token row    ≤ s/2 + 2⁻¹¹·|x|, s = max|row| / 127 (†)
                     ``[rows, pairs, tokens]``
int8-dim   1         ``hidden_scale`` fp16 per dimension    ≤ s/2 + 2⁻¹¹·|x|, s = max over the
                     ``[rows, pairs, width]``               example's tokens of |x_dim| / 127
fp8        1         —                                      ≤ 2⁻⁴·|x| for |x| ≥ 2⁻⁶; 2⁻¹⁰ absolute
                                                            below (e4m3: 3 mantissa bits, max 448)
========== ========= ====================================== ==========================================

numpy has no bf16 or fp8 dtype, so those are stored as the raw bits (``int16``, ``uint8``) and
viewed back as ``torch.bfloat16`` / ``torch.float8_e4m3fn`` when read. fp8 values beyond ±448
are clipped to ±448 (hidden states of BERT-family models stay well inside it).

(†) The int8 scales are fp16, kept within its normal range: s is at least 2⁻¹⁴ (so a row whose
largest value is below 127·2⁻¹⁴ ≈ 7.8e-3 is stored to 2⁻¹⁵ absolute, not relative, error) and
at most 65504 (values beyond ±127·65504 ≈ ±8.3e6 are clipped).

Indices use the smallest signed integer type that holds them (:func:`index_dtype`).
"""

from __future__ import annotations

import numpy as np
import torch

from hskd.errors import HskdError

STORAGES = ("fp16", "bf16", "int8", "int8-dim", "fp8")
FP8_MAX = 448.0  # largest finite float8_e4m3fn
FP16_TINY, FP16_MAX = 2.0 ** -14, 65504.0  # the smallest normal and the largest finite float16
# int8 gave the same dev predictions as fp16 on MRPC, CoLA and SST-2 (3 seeds each) at half the
# bytes: docs/RESULTS.md, issue 15
DEFAULT_STORAGE = "int8"

# numpy dtype of the stored hidden array (bf16 and fp8 as their raw bits)
_ARRAY_DTYPE = {"fp16": "float16", "bf16": "int16", "int8": "int8", "int8-dim": "int8", "fp8": "uint8"}


def check_storage(storage: str) -> str:
    """Returns ``storage`` if known.

    Raises:
        HskdError: an unknown storage, or fp8 where this torch lacks ``float8_e4m3fn``.
    """
    if storage not in STORAGES:
        raise HskdError(f"unknown --storage {storage!r}: use {', '.join(STORAGES)}")
    if storage == "fp8" and not hasattr(torch, "float8_e4m3fn"):
        raise HskdError("this torch has no float8_e4m3fn; choose --storage int8 or fp16")
    return storage


def array_dtype(storage: str) -> str:
    """The numpy dtype name of the ``hidden`` array for ``storage``."""
    return _ARRAY_DTYPE[check_storage(storage)]


def scale_shape(storage: str, hidden_shape: tuple) -> tuple | None:
    """Shape of the ``hidden_scale`` array for a ``hidden`` array of ``hidden_shape``
    (``[rows, pairs, tokens, width]``), or ``None`` when the storage has no scale."""
    if storage == "int8":
        return tuple(hidden_shape[:-1])
    if storage == "int8-dim":
        return (*hidden_shape[:-2], hidden_shape[-1])
    return None


def index_dtype(largest: int) -> str:
    """The smallest signed integer type that holds -1 (an unfilled slot) to ``largest``."""
    for name in ("int8", "int16", "int32"):
        if largest <= np.iinfo(name).max:
            return name
    return "int64"


def encode(values: torch.Tensor, storage: str) -> dict[str, torch.Tensor]:
    """Encode hidden values for the cache, on their device.

    Args:
        values: ``[batch, pairs, tokens, width]`` floating point; unfilled slots are 0.

    Returns:
        ``{"hidden": ...}`` in the array dtype of :func:`array_dtype` (as a torch tensor:
        ``float16``, ``int16`` bits for bf16, ``int8``, ``uint8`` bits for fp8), plus
        ``"hidden_scale"`` fp16 for the int8 storages (shape :func:`scale_shape`).
    """
    check_storage(storage)
    x = values.float()
    out: dict[str, torch.Tensor] = {}
    if storage == "fp16":
        out["hidden"] = x.to(torch.float16)
    elif storage == "bf16":
        out["hidden"] = x.to(torch.bfloat16).view(torch.int16)
    elif storage == "fp8":
        out["hidden"] = x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8)
    else:
        axis = -1 if storage == "int8" else -2  # over a token row's dims, or a dim's tokens
        # the scale is rounded to fp16 first, so that the decoder multiplies by exactly the
        # scale the values were divided by, and kept within fp16's normal range: a subnormal
        # scale would lose its relative precision, an infinite one would decode to NaN
        scale = (x.abs().amax(dim=axis, keepdim=True) / 127).clamp(FP16_TINY, FP16_MAX).to(torch.float16)
        out["hidden"] = (x / scale.float()).round().clamp(-127, 127).to(torch.int8)
        out["hidden_scale"] = scale.squeeze(axis)
    return out


def decode(hidden: torch.Tensor, storage: str, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Decode stored hidden values (on whatever device they are) to float32.

    Args:
        hidden: ``[batch, pairs, tokens, width]`` as read (``float16``; ``int16`` bits for bf16;
            ``int8``; ``uint8`` bits for fp8).
        scale: ``hidden_scale`` rows for the int8 storages (``[batch, pairs, tokens]`` or
            ``[batch, pairs, width]``; may be narrowed to the same dims as ``hidden``).

    Raises:
        HskdError: a dtype that is not the storage's (a cache read with the wrong codec), or an
            int8 storage without its scale.
    """
    want = {"fp16": (torch.float16,), "bf16": (torch.int16, torch.bfloat16),
            "int8": (torch.int8,), "int8-dim": (torch.int8,), "fp8": (torch.uint8, torch.float8_e4m3fn)}[storage]
    if hidden.dtype not in want:
        raise HskdError(f"hidden values of dtype {hidden.dtype} are not {storage} storage; "
                        "the cache was written with another --storage: rebuild it or read it with its own")
    if storage == "fp16":
        return hidden.float()
    if storage == "bf16":
        return hidden.view(torch.bfloat16).float() if hidden.dtype != torch.bfloat16 else hidden.float()
    if storage == "fp8":
        return hidden.view(torch.float8_e4m3fn).float() if hidden.dtype == torch.uint8 else hidden.float()
    if scale is None:
        raise HskdError(f"{storage} storage needs its hidden_scale array; rebuild the cache")
    axis = -1 if storage == "int8" else -2
    return hidden.float() * scale.float().unsqueeze(axis)




def decode_batch(knowledge: dict) -> dict:
    """A batch's knowledge fields as read from a cache (``hidden`` in its storage form, with
    ``hidden_storage`` and ``hidden_scale``), with ``hidden`` decoded to float32 where the
    tensors are (the training device: the trainer calls this after the batch was copied there,
    so only the compact form crosses the bus). fp16 values are left as they are.
    """
    knowledge = dict(knowledge)
    storage = knowledge.pop("hidden_storage", "fp16")
    scale = knowledge.pop("hidden_scale", None)
    if knowledge.get("hidden") is not None and storage != "fp16":
        knowledge["hidden"] = decode(knowledge["hidden"], storage, scale)
    return knowledge
