"""Reading a finished knowledge cache (see :mod:`hskd.cache` for the layout): memory-mapped,
verified on open, sliced to serve any smaller budget of the same strategies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hskd.errors import HskdError
from hskd.files import read_json
from hskd.knowledge import Knowledge, KnowledgeSpec, Plan
from hskd.selectors import select_dims, width_index
from hskd.tasks import sha256_file

POSITIONAL = ("cls", "left", "all")  # length strategies whose token order is by position


def partial_dir(out_dir: Path) -> Path:
    """Where an unfinished cache for ``out_dir`` is written (``DIR.partial``)."""
    return out_dir.with_name(out_dir.name + ".partial")


class CacheReader:
    """Reads a finished cache, memory-mapped; verifies it on open.

    Raises (on open):
        HskdError: not a finished cache (interrupted or truncated), an array whose size or
            sha256 differs from the manifest (corrupted), or a fingerprint field that differs
            from ``expect`` (named in the message).
    """

    def __init__(self, path: str | Path, expect: dict | None = None, verify: bool = True):
        self.path = Path(path)
        manifest_file = self.path / "manifest.json"
        if not manifest_file.is_file():
            hint = " (an interrupted write is in .partial: rerun hskd cache to resume)" \
                if partial_dir(self.path).exists() else ""
            raise HskdError(f"{self.path} is not a finished knowledge cache{hint}; build it with hskd cache")
        self.manifest = read_json(manifest_file, "rebuild the cache with hskd cache --overwrite")
        if not isinstance(self.manifest, dict) or not {"fingerprint", "arrays", "spec", "pairs"} <= set(self.manifest):
            raise HskdError(f"{manifest_file} is not a knowledge-cache manifest; rebuild the cache with hskd cache "
                            "--overwrite")
        for field, value in (expect or {}).items():
            have = self.manifest["fingerprint"].get(field)
            if have != value:
                raise HskdError(f"cache {self.path} was built with a different {field} "
                                f"({str(have)[:16]}… vs {str(value)[:16]}…); rebuild it with hskd cache")
        self.arrays = {}
        for name, info in self.manifest["arrays"].items():
            file = self.path / f"{name}.npy"
            try:
                arr = np.load(file, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise HskdError(f"cache array {file} is truncated or unreadable ({exc}); rebuild the cache") from None
            if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
                raise HskdError(f"cache array {file} has shape {arr.shape}, expected {info['shape']}; rebuild the cache")
            if verify and sha256_file(file) != info["sha256"]:
                raise HskdError(f"cache array {file} is corrupted (sha256 differs); rebuild the cache")
            self.arrays[name] = arr
        self.spec = KnowledgeSpec.from_dict(self.manifest["spec"])
        self.pairs = [tuple(p) for p in self.manifest["pairs"]]
        self._plans: dict = {}

    @property
    def rows(self) -> int:
        return self.manifest["rows"]

    def serving(self, plan: Plan) -> dict:
        """How to serve ``plan`` from this cache by slicing.

        A cache serves a smaller budget of the same strategies: a subset of its layer pairs, a
        prefix of its tokens (rank order for attention, position order for cls/left/all), and
        a prefix (random, magnitude) or subset (uniform) of its dimensions; a cache with all
        dimensions serves any width strategy by selecting on the stored values.

        Raises:
            HskdError: ``plan`` needs knowledge this cache does not hold.
        """
        want, pairs = plan.spec, list(plan.pairs)
        key = (json.dumps(want.to_dict(), sort_keys=True), tuple(pairs))
        if key in self._plans:
            return self._plans[key]
        have = self.spec
        where = f"cache {self.path} ({have.describe()})"
        fix = "; build one at that budget with hskd cache"
        if want.attentions and want.attention_scores != have.attention_scores:
            kinds = {True: "attention scores", False: "attention probabilities"}
            raise HskdError(f"{where} holds {kinds[have.attention_scores]}, not {kinds[want.attention_scores]}{fix}")
        if (want.hidden and not have.hidden) or (want.attentions and not have.attentions):
            raise HskdError(f"{where} holds no {'hidden states' if want.hidden else 'attentions'}{fix}")
        missing = [p for p in pairs if p not in self.pairs]
        if missing:
            raise HskdError(f"{where} lacks layer pairs {missing} (it has {self.pairs}){fix}")
        how = {"pairs": [self.pairs.index(p) for p in pairs]}
        if want.hidden or want.attentions:
            cached_k = self.arrays["token_index"].shape[-1]
            same = want.length == have.length
            positional = want.length in POSITIONAL and have.length in ("left", "all")
            if not (same or positional) or (want.length == "all" and have.length != "all"):
                raise HskdError(f"{where} cannot serve length strategy {want.length!r}{fix}")
            if want.length.startswith("attention") and (want.rank_layer, want.rank_by) != (have.rank_layer, have.rank_by):
                raise HskdError(f"{where} ranks tokens by the {have.rank_layer} layer's {have.rank_by}, not the "
                                f"{want.rank_layer} layer's {want.rank_by}{fix}")
            want_k = {"all": cached_k, "cls": 1}.get(want.length, want.tokens)
            if want_k > cached_k:
                raise HskdError(f"{where} holds {cached_k} tokens, {want_k} asked{fix}")
            how["tokens"] = want_k
            how["trim"] = want.length == "all"
        if want.hidden:
            d = self.manifest["teacher_hidden"]
            w = want.kept_width(d)
            cached_w = self.arrays["hidden"].shape[-1]
            if have.width == "all":
                how["width"] = ("all",) if want.width == "all" else ("select", w)
            elif want.width == have.width and (not want.width.startswith("random") or want.seed == have.seed) \
                    and w <= cached_w:
                if want.width.startswith("uniform"):
                    dims = self.arrays["dims"]
                    wanted = width_index(want, torch.zeros(d)).numpy()
                    pos = {int(v): i for i, v in enumerate(dims)}
                    if any(int(v) not in pos for v in wanted):
                        raise HskdError(f"{where}: uniform width {w} is not a subset of the cached {cached_w}{fix}")
                    how["width"] = ("positions", np.array([pos[int(v)] for v in wanted]), wanted)
                else:
                    how["width"] = ("prefix", w)
            else:
                raise HskdError(f"{where} cannot serve width {want.width} at {want.width_fraction:g}{fix}")
        self._plans[key] = how
        return how

    def hsk_fraction(self, plan: Plan) -> float:
        """Fraction of the full HSK that ``want`` keeps over the whole training set: kept
        hidden values (real tokens only) over the full HSK's values (see :func:`size_report`)."""
        want, how = plan.spec, self.serving(plan)
        if not want.hidden:
            return 0.0
        index = self.arrays["token_index"][:, how["pairs"], : how["tokens"]]
        width = want.kept_width(self.manifest["teacher_hidden"])
        return float((index >= 0).sum()) * width / (self.manifest["full_hsk_bytes"] / 2)

    def __getstate__(self) -> dict:
        """Pickled without the memory maps (DataLoader workers started by spawn reopen them
        instead of copying the arrays)."""
        state = dict(self.__dict__)
        state["arrays"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in self.manifest["arrays"]}

    def read(self, ids: np.ndarray, plan: Plan, seq_len: int, device=None) -> Knowledge:
        """The knowledge of rows ``ids`` for ``plan``, on ``device`` (default: CPU).

        Values keep their storage dtypes (hidden states and attentions fp16, logits fp32);
        indices are int64, ``token_mask`` bool.

        Args:
            ids: example ids ``[batch]`` (row numbers of the training set).
            seq_len: the batch's padded length; positional "all" tokens are cut to it.
        """
        want, how = plan.spec, self.serving(plan)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise HskdError(f"example id out of range for cache {self.path} ({self.rows} rows); "
                            "the cache was built for other data")
        k = Knowledge(logits=torch.from_numpy(np.ascontiguousarray(self.arrays["logits"][ids])))
        if "tokens" in how:
            n = min(how["tokens"], seq_len) if how["trim"] else how["tokens"]
            p = how["pairs"]
            index = torch.from_numpy(self.arrays["token_index"][ids][:, p, :n].astype(np.int64))
            k.token_mask = index >= 0
            k.token_index = index.clamp_min(0)
            if want.hidden:
                # kept in the storage dtype (fp16): half the bytes to pin and copy; the losses
                # compute in fp32 on the device
                values = torch.from_numpy(np.ascontiguousarray(self.arrays["hidden"][ids][:, p, :n]))
                mode = how["width"]
                if mode[0] == "all":
                    k.hidden = values
                elif mode[0] == "select":  # selection on exact fp16 values, done in fp32 on the CPU
                    k.dim_index = width_index(want, values.float())
                    k.hidden = select_dims(values, k.dim_index)
                elif mode[0] == "positions":
                    k.hidden = values[..., mode[1]]
                    k.dim_index = torch.from_numpy(mode[2])
                else:
                    w = mode[1]
                    k.hidden = values[..., :w]
                    if "dim_index" in self.arrays:
                        k.dim_index = torch.from_numpy(self.arrays["dim_index"][ids][:, p, :n, :w].astype(np.int64))
                    else:
                        k.dim_index = torch.from_numpy(np.array(self.arrays["dims"][:w]))
            if want.attentions:
                att = self.arrays["attentions"][ids][:, p, :, :n, :seq_len]
                k.attentions = torch.from_numpy(np.ascontiguousarray(att))
        if device is not None:
            for name in ("logits", "hidden", "token_index", "token_mask", "dim_index", "attentions"):
                value = getattr(k, name)
                if value is not None:
                    setattr(k, name, value.to(device))
        return k
