"""``hskd export --onnx DIR``: a saved classifier as ONNX (``torch.onnx`` with its dynamo
exporter), with dynamic batch and sequence axes, its tokenizer and config beside it, and its
logits checked against PyTorch's on the task's dev set with onnxruntime.

Needs the optional packages ``onnx``, ``onnxscript`` and ``onnxruntime``
(``pip install 'hskd[onnx]'``).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hskd import models
from hskd.errors import HskdError
from hskd.files import write_json
from hskd.locks import OutputLock
from hskd.models import model_inputs

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
TOLERANCE = 1e-4  # max |logit difference| accepted, fp32


class _Logits(torch.nn.Module):
    """The classifier with positional inputs (``names``) and its logits as the one output."""

    def __init__(self, model, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        return self.model(**model_inputs({k: given[k] for k in self.names}, self.model)).logits


def input_names(model) -> list[str]:
    """The inputs the exported graph takes: those of ``INPUTS`` the model uses."""
    probe = {k: torch.ones(1, 2, dtype=torch.long) for k in INPUTS}
    used = model_inputs(probe, model)
    return [k for k in INPUTS if k in used]


def _require_onnx():
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise HskdError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'hskd[onnx]'") from None


def export_onnx(model_dir: str, out_dir: str, texts: list[list[str]] | None = None, max_len: int = 128,
                batch_size: int = 64) -> dict:
    """Export ``model_dir`` to ``out_dir/model.onnx`` and check it.

    Args:
        texts: one or two lists of texts (the dev set) to compare the logits on; without them
            a few built-in sentences are used.

    Returns: the check (``max_abs_diff``, ``argmax_agreement``, ``rows``, export and check
        seconds), also written to ``out_dir/onnx_check.json``.

    Raises:
        HskdError: the packages are missing, the model cannot be loaded, or the exported
            logits differ from PyTorch's by more than 1e-4 (nothing is left behind then).
    """
    _require_onnx()
    model = models.load_classifier(model_dir, None).eval().float()
    tok = models.load_tokenizer(model_dir)
    out = Path(out_dir).expanduser()
    texts = texts or [["a good film", "a dull and overlong mess of a film", "fine"]]
    with OutputLock(out) as lock:
        if out.exists() and any(out.iterdir()):
            raise HskdError(f"{out} is not empty; choose another directory for the ONNX export")
        if not out.exists():
            lock.created()
        work = Path(tempfile.mkdtemp(prefix=".onnx-", dir=out.parent))
        try:
            sample = tok(texts[0][:2], texts[1][:2] if len(texts) > 1 else None, padding=True, truncation=True,
                         max_length=max_len, return_tensors="pt")
            names = input_names(model)
            args = tuple(sample[k] if k in sample else torch.zeros_like(sample["input_ids"]) for k in names)
            batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
            start = time.perf_counter()
            torch.onnx.export(_Logits(model, names), args, str(work / "model.onnx"), input_names=names,
                              output_names=["logits"], dynamo=True,
                              dynamic_shapes={k: {0: batch, 1: seq} for k in names})
            export_seconds = time.perf_counter() - start
            check = _compare(model, tok, work / "model.onnx", texts, max_len, batch_size)
            check["export_seconds"] = export_seconds
            if check["max_abs_diff"] > TOLERANCE:
                raise HskdError(f"the ONNX logits differ from PyTorch's by {check['max_abs_diff']:.2e} "
                                f"(> {TOLERANCE:g}); the export is not kept")
            model.config.save_pretrained(work)
            tok.save_pretrained(work)
            write_json(work / "onnx_check.json", check)
            out.mkdir(parents=True, exist_ok=True)
            for f in work.iterdir():
                shutil.move(str(f), out / f.name)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return check


def _compare(model, tok, onnx_file: Path, texts, max_len: int, batch_size: int) -> dict:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    worst, agree, rows = 0.0, 0, 0
    start = time.perf_counter()
    for lo in range(0, len(texts[0]), batch_size):
        a = texts[0][lo:lo + batch_size]
        b = texts[1][lo:lo + batch_size] if len(texts) > 1 else None
        enc = tok(a, b, padding=True, truncation=True, max_length=max_len, return_tensors="np")
        feed = {k: (enc[k] if k in enc else np.zeros_like(enc["input_ids"])).astype(np.int64) for k in names}
        got = session.run(None, feed)[0]
        with torch.inference_mode():
            ref = model(**model_inputs({k: torch.from_numpy(v) for k, v in feed.items()}, model)).logits.numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
        agree += int((got.argmax(-1) == ref.argmax(-1)).sum()) if ref.shape[1] > 1 else len(a)
        rows += len(a)
    return {"max_abs_diff": worst, "argmax_agreement": agree / rows, "rows": rows,
            "check_seconds": time.perf_counter() - start, "tolerance": TOLERANCE}
