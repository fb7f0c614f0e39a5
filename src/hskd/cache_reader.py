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
from hskd.selectors import keeps_mask, select_dims, width_index
from hskd.storage import STORAGES, array_dtype, decode, decode_batch
from hskd.tasks import sha256_file

POSITIONAL = ("cls", "left", "all")  # length strategies whose token order is by position
READABLE_FORMATS = (1, 2)  # 1: fp16 values, int16 indices (hskd before --storage)


def partial_dir(out_dir: Path) -> Path:
    """Where an unfinished cache for ``out_dir`` is written (``DIR.partial``)."""
    return out_dir.with_name(out_dir.name + ".partial")


def real_slots(index: np.ndarray, lengths: np.ndarray | None) -> int:
    """Filled token slots of ``index [rows, pairs, tokens]`` (-1 unfilled) at real tokens:
    positions below each row's ``lengths [rows]``. The padding slots that ``--hsk-padding
    include`` stores are not knowledge, so a share of the HSK leaves them out. Without
    ``lengths`` every filled slot counts."""
    filled = index >= 0
    if lengths is not None:
        filled &= index < np.asarray(lengths, dtype=np.int64)[:, None, None]
    return int(filled.sum())


def refuse_uncacheable(spec: KnowledgeSpec) -> None:
    """Raises HskdError for knowledge a cache cannot hold (MiniLM's relations, a width chosen
    over the whole batch), before any work."""
    if spec.relations:
        raise HskdError("MiniLM relations are [seq x seq] per example and are not cached; "
                        "distill the minilm recipe from --teacher")
    if keeps_mask(spec.width):
        raise HskdError(f"width {spec.width!r} depends on each batch's other examples and is not cached; "
                        "distill from --teacher, or use the per-token width magnitude (without --preset mud)")


class CacheReader:
    """Reads a finished cache, memory-mapped; verifies it on open.

    Raises (on open):
        HskdError: not a finished cache (interrupted or truncated), an array whose size or
            sha256 differs from the manifest (corrupted), a fingerprint field that differs
            from ``expect`` (named in the message), a storage other than ``storage`` (when
            given) or hidden values whose dtype is not the recorded storage's.
    """

    def __init__(self, path: str | Path, expect: dict | None = None, verify: bool = True,
                 storage: str | None = None):
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
        fmt = self.manifest.get("format", 1)
        if fmt not in READABLE_FORMATS:
            raise HskdError(f"cache {self.path} is of format {fmt}, which this hskd cannot read; upgrade hskd "
                            "or rebuild the cache")
        self.storage = self.manifest.get("storage", "fp16")
        if self.storage not in STORAGES:
            raise HskdError(f"cache {self.path} has an unknown storage {self.storage!r}; rebuild it with hskd cache")
        if storage is not None and storage != self.storage:
            raise HskdError(f"cache {self.path} stores its hidden values as {self.storage}, not {storage}; "
                            f"drop --storage (the cache's own is used) or rebuild it with --storage {storage}")
        hidden = self.manifest["arrays"].get("hidden")
        if hidden is not None and hidden["dtype"] != array_dtype(self.storage):
            raise HskdError(f"cache {self.path} says {self.storage} storage but its hidden values are "
                            f"{hidden['dtype']}; rebuild it with hskd cache --overwrite")
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
        refuse_uncacheable(want)  # e.g. a batch-wide width, which no stored value can give
        have = self.spec
        where = f"cache {self.path} ({have.describe()})"
        fix = "; build one at that budget with hskd cache"
        if want.attentions and want.attention_scores != have.attention_scores:
            kinds = {True: "attention scores", False: "attention probabilities"}
            raise HskdError(f"{where} holds {kinds[have.attention_scores]}, not {kinds[want.attention_scores]}{fix}")
        if (want.hidden and not have.hidden) or (want.attentions and not have.attentions):
            raise HskdError(f"{where} holds no {'hidden states' if want.hidden else 'attentions'}{fix}")
        if (want.hidden or want.attentions) and want.padding != have.padding:
            raise HskdError(f"{where} was written with --hsk-padding {have.padding}, not {want.padding}{fix}")
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

    def hsk_fraction(self, plan: Plan, lengths: np.ndarray | None = None) -> float:
        """Fraction of the full HSK that ``plan`` keeps over the whole training set: kept
        hidden values at real tokens over the full HSK's values (see :func:`size_report`).

        ``lengths [rows]``: each training row's real tokens, in the cache's row order. A cache
        written under ``--hsk-padding include`` stores padding slots, and only these lengths tell
        them apart: without them, they count (:func:`hskd.sweep.train_lengths` gives them).
        """
        want, how = plan.spec, self.serving(plan)
        if not want.hidden:
            return 0.0
        index = self.arrays["token_index"][:, how["pairs"], : how["tokens"]]
        width = want.kept_width(self.manifest["teacher_hidden"])
        return real_slots(index, lengths) * width / (self.manifest["full_hsk_bytes"] / 2)

    def __getstate__(self) -> dict:
        """Pickled without the memory maps (DataLoader workers started by spawn reopen them
        instead of copying the arrays)."""
        state = dict(self.__dict__)
        state["arrays"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.arrays = {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in self.manifest["arrays"]}

    def read_stored(self, ids: np.ndarray, plan: Plan, seq_len: int) -> dict:
        """The rows ``ids`` for ``plan`` as stored, on the CPU: the fields of :class:`Knowledge`
        with ``hidden`` still in the cache's storage form, plus ``hidden_storage`` (its name)
        and ``hidden_scale`` (int8 storages). :func:`hskd.storage.decode_batch` decodes them,
        on the training device. Logits fp32, indices int64, ``token_mask`` bool.

        Args:
            ids: example ids ``[batch]`` (row numbers of the training set).
            seq_len: the batch's padded length; positional "all" tokens are cut to it.
        """
        want, how = plan.spec, self.serving(plan)
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise HskdError(f"example id out of range for cache {self.path} ({self.rows} rows); "
                            "the cache was built for other data")
        k = {"logits": torch.from_numpy(np.ascontiguousarray(self.arrays["logits"][ids]))}
        if "tokens" not in how:
            return k
        n = min(how["tokens"], seq_len) if how["trim"] else how["tokens"]
        p = how["pairs"]
        index = torch.from_numpy(self.arrays["token_index"][ids][:, p, :n].astype(np.int64))
        k["token_mask"] = index >= 0
        k["token_index"] = index.clamp_min(0)
        if want.hidden:
            k.update(self._hidden(ids, p, n, want, how["width"]))
        if want.attentions:
            att = self.arrays["attentions"][ids][:, p, :, :n, :seq_len]
            k["attentions"] = torch.from_numpy(np.ascontiguousarray(att))
        return k

    def _hidden(self, ids: np.ndarray, p: list, n: int, want: KnowledgeSpec, mode: tuple) -> dict:
        """The hidden values of rows ``ids`` (pairs ``p``, first ``n`` tokens) in the width that
        ``mode`` (from :meth:`serving`) says, still encoded, with their dim indices."""
        # kept in the storage form (fp16, or 1 byte for int8/fp8): fewer bytes to pin and copy;
        # decoded on the device, and the losses compute in fp32 there
        values = torch.from_numpy(np.ascontiguousarray(self.arrays["hidden"][ids][:, p, :n]))
        scale = None
        if "hidden_scale" in self.arrays:
            stored = self.arrays["hidden_scale"][ids][:, p]
            scale = torch.from_numpy(np.ascontiguousarray(stored[:, :, :n] if self.storage == "int8" else stored))
        out = {"hidden_storage": self.storage}
        per_dim = self.storage == "int8-dim"
        if mode[0] == "all":
            out["hidden"] = values
        elif mode[0] == "select":
            # magnitude (or another strategy) chosen on the stored values: decoded here, on the
            # CPU, because the choice depends on them; then stored as fp16 for the copy
            values = decode(values, self.storage, scale)
            out["dim_index"] = width_index(want, values)
            out["hidden"] = select_dims(values, out["dim_index"]).half()
            return {**out, "hidden_storage": "fp16"}
        elif mode[0] == "positions":
            out["hidden"] = values[..., mode[1]]
            out["dim_index"] = torch.from_numpy(mode[2])
            scale = scale[..., mode[1]] if per_dim else scale
        else:
            w = mode[1]
            out["hidden"] = values[..., :w]
            scale = scale[..., :w] if per_dim else scale
            if "dim_index" in self.arrays:
                out["dim_index"] = torch.from_numpy(self.arrays["dim_index"][ids][:, p, :n, :w].astype(np.int64))
            else:
                out["dim_index"] = torch.from_numpy(np.array(self.arrays["dims"][:w]).astype(np.int64))
        if scale is not None:
            out["hidden_scale"] = scale
        return out

    def read(self, ids: np.ndarray, plan: Plan, seq_len: int, device=None) -> Knowledge:
        """The knowledge of rows ``ids`` for ``plan``, decoded, on ``device`` (default: CPU):
        :meth:`read_stored`, moved, then :func:`hskd.storage.decode_batch`. Hidden values are
        fp16 for fp16 storage and fp32 otherwise; attentions fp16, logits fp32."""
        k = self.read_stored(ids, plan, seq_len)
        if device is not None:
            k = {name: v.to(device) if isinstance(v, torch.Tensor) else v for name, v in k.items()}
        return Knowledge(**decode_batch(k))
