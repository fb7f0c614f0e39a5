"""GLUE task registry, data loading and the official metrics.

Label order is fixed here, per task, and never inferred from the data: the same order is used
for local GLUE files and for the hub copy (``nyu-mll/glue``), so a teacher trained on one and a
student trained on the other agree on what label 0 means.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hskd.errors import HskdError

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class TaskSpec:
    """How one task's files are read and scored.

    Attributes:
        name: the GLUE name (``SST-2``) or a user's name for custom data.
        text_columns: the one or two text columns, by header name (or index for files without
            a header, as CoLA).
        label_column: the label column, by header name or index.
        labels: label strings in id order; ``None`` for regression.
        metrics: metric names reported by :func:`compute_metrics`; the first is the one used to
            keep the best checkpoint.
        dev_splits: dev split name -> file name in the ``glue_data`` layout.
        header: whether the files have a header row.
        hub_config / hub_columns / hub_dev_splits: where the same data is on the hub.
        skip_malformed: skip rows with too few columns, as the GLUE processor for QQP does.
        max_seq_length: default max length in tokens (64 for single sentences, 128 for pairs).
    """

    name: str
    text_columns: tuple
    label_column: str | int
    labels: tuple[str, ...] | None
    metrics: tuple[str, ...]
    dev_splits: dict = field(default_factory=lambda: {"dev": "dev.tsv"})
    header: bool = True
    hub_config: str | None = None
    hub_columns: tuple[str, ...] = ()
    hub_dev_splits: dict = field(default_factory=lambda: {"dev": "validation"})
    skip_malformed: bool = False
    max_seq_length: int = 128

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]


_PAIR = ("sentence1", "sentence2")
GLUE_TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("CoLA", (3,), 1, ("0", "1"), ("matthews_correlation",), header=False,
                 hub_config="cola", hub_columns=("sentence",), max_seq_length=64),
        TaskSpec("SST-2", ("sentence",), "label", ("0", "1"), ("accuracy",),
                 hub_config="sst2", hub_columns=("sentence",), max_seq_length=64),
        TaskSpec("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), ("f1", "accuracy"),
                 hub_config="mrpc", hub_columns=_PAIR),
        TaskSpec("STS-B", _PAIR, "score", None, ("pearson", "spearman"),
                 hub_config="stsb", hub_columns=_PAIR),
        TaskSpec("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"),
                 ("accuracy", "f1"), hub_config="qqp", hub_columns=("question1", "question2"),
                 skip_malformed=True),
        # Hub order for MNLI: entailment=0, neutral=1, contradiction=2.
        TaskSpec("MNLI", _PAIR, "gold_label", ("entailment", "neutral", "contradiction"),
                 ("accuracy",),
                 dev_splits={"dev_matched": "dev_matched.tsv",
                             "dev_mismatched": "dev_mismatched.tsv"},
                 hub_config="mnli", hub_columns=("premise", "hypothesis"),
                 hub_dev_splits={"dev_matched": "validation_matched",
                                 "dev_mismatched": "validation_mismatched"}),
        TaskSpec("QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment"),
                 ("accuracy",), hub_config="qnli", hub_columns=("question", "sentence")),
        TaskSpec("RTE", _PAIR, "label", ("entailment", "not_entailment"), ("accuracy",),
                 hub_config="rte", hub_columns=_PAIR),
        TaskSpec("WNLI", _PAIR, "label", ("0", "1"), ("accuracy",),
                 hub_config="wnli", hub_columns=_PAIR),
    ]
}
_ALIASES = {k.lower().replace("-", ""): k for k in GLUE_TASKS}


def get_task(name: str) -> TaskSpec:
    """Return the registered GLUE task ``name`` (case and dashes ignored: ``sst2`` works).

    Raises:
        HskdError: the name is not a GLUE task.
    """
    key = _ALIASES.get(name.lower().replace("-", ""))
    if key is None:
        raise HskdError(
            f"unknown task {name!r}: use one of {', '.join(GLUE_TASKS)}, "
            "or give --train-file with --text-columns and --label-column for custom data"
        )
    return GLUE_TASKS[key]


@dataclass
class TaskData:
    """A task's splits as ``datasets.Dataset`` with columns ``text_a``, ``text_b`` (pairs
    only), ``label`` (int id, or float for regression) and ``example_id`` (row number)."""

    task: TaskSpec
    train: object
    dev: dict
    sources: dict  # split -> {"path": ..., "sha256": ...} or {"hub": ...}


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (``hashlib.file_digest``: streamed, not read whole)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _read_rows(path: Path, delimiter: str, header: bool, columns: list, skip_malformed: bool) -> dict[str, list]:
    """Read the wanted ``columns`` (names, or indices when there is no header) from a file."""
    if not path.is_file():
        raise HskdError(f"data file not found: {path} (check --data-dir, $GLUE_DIR or --train-file)")
    try:
        return _parse_rows(path, delimiter, header, columns, skip_malformed)
    except UnicodeDecodeError as exc:
        raise HskdError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                        "re-save it as UTF-8") from None


def _parse_rows(path: Path, delimiter: str, header: bool, columns: list, skip_malformed: bool) -> dict[str, list]:
    out = {c: [] for c in columns}
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter,
                            quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL)
        index = {c: c for c in columns}
        if header:
            names = next(reader, None)
            if names is None:
                raise HskdError(f"{path} is empty; give a file with a header and rows")
            for c in columns:
                if names.count(c) > 1:
                    raise HskdError(f"{path}: column {c!r} appears {names.count(c)} times in the header; "
                                    "rename the duplicates")
                if c not in names:
                    raise HskdError(
                        f"{path}: no column {c!r} (it has {', '.join(names)}); "
                        "fix --text-columns/--label-column")
                index[c] = names.index(c)
        need = max(index.values()) + 1
        for n, row in enumerate(reader, 2 if header else 1):
            if len(row) < need:
                if skip_malformed or not any(row):
                    continue
                raise HskdError(f"{path}:{n}: {len(row)} columns, expected at least {need}; fix the row")
            for c in columns:
                out[c].append(row[index[c]])
    return out


def _read_table(path: Path, builder: str, columns: list) -> dict[str, list]:
    """The wanted ``columns`` of a CSV or JSONL file, read with ``datasets.load_dataset``.

    Raises:
        HskdError: a missing file, a file datasets cannot parse, or a missing column.
    """
    import datasets

    if not path.is_file():
        raise HskdError(f"data file not found: {path} (check --train-file/--validation-file)")
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001 - datasets wraps parser errors in several types
        cause = exc.__cause__ or exc
        raise HskdError(f"{path} cannot be read as {builder.upper()} ({str(cause).splitlines()[0][:160]}); "
                        "fix the file") from None
    for c in columns:
        if c not in table.column_names:
            raise HskdError(f"{path}: no column {c!r} (it has {', '.join(table.column_names)}); "
                            "fix --text-columns/--label-column")
    return {c: ["" if v is None else v for v in table[c]] for c in columns}


def _to_dataset(task: TaskSpec, texts: list[list], raw_labels: list, where: str):
    import datasets

    if not raw_labels:
        raise HskdError(f"{where} has no rows; give a non-empty split")
    if task.is_regression:
        labels = []
        for i, y in enumerate(raw_labels):
            try:
                labels.append(float(y))
            except (TypeError, ValueError):
                raise HskdError(
                    f"{where}: row {i + 1} has regression target {y!r}, not a number; "
                    "fix the label column or use a classification task") from None
    else:
        ids = {name: i for i, name in enumerate(task.labels)}
        labels = []
        for i, y in enumerate(raw_labels):
            key = str(y).strip()
            if key not in ids:
                raise HskdError(
                    f"{where}: row {i + 1} has label {y!r}, not one of {list(task.labels)}; "
                    "fix the data or pass --labels")
            labels.append(ids[key])
    columns = {"text_a": [str(t) for t in texts[0]]}
    if len(texts) > 1:
        columns["text_b"] = [str(t) for t in texts[1]]
    columns["label"] = labels
    columns["example_id"] = list(range(len(labels)))
    return datasets.Dataset.from_dict(columns)


def find_glue_dir(task: TaskSpec, data_dir: str | None) -> Path | None:
    """The task's folder in a ``glue_data`` layout, from ``data_dir`` or ``$GLUE_DIR``.

    Returns ``None`` when neither is set (the caller falls back to the hub).

    Raises:
        HskdError: a directory was given but holds no folder for the task.
    """
    root = data_dir or os.environ.get("GLUE_DIR")
    if not root:
        return None
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise HskdError(f"data directory not found: {root_path}; fix --data-dir or $GLUE_DIR")
    for name in (task.name, task.name.replace("-", ""), task.name.lower()):
        if (root_path / name).is_dir():
            return root_path / name
    raise HskdError(f"no folder {task.name}/ in {root_path}; point --data-dir at a glue_data directory")


def load_glue(task: TaskSpec, data_dir: str | None = None, max_train_samples: int | None = None) -> TaskData:
    """Load a GLUE task from local files (``--data-dir`` or ``$GLUE_DIR``), else from the hub.

    Files are read as the GLUE processors read them: tab-separated, ``csv.QUOTE_NONE``, UTF-8;
    CoLA has no header. ``max_train_samples`` keeps the first N training rows.

    Raises:
        HskdError: a missing file, a missing column, a label outside the task's label set,
            an empty split, or (no local files) an unreachable hub.
    """
    folder = find_glue_dir(task, data_dir)
    if folder is None:
        return _load_glue_hub(task, max_train_samples)
    columns = list(task.text_columns) + [task.label_column]
    splits, sources = {}, {}
    for split, file in [("train", "train.tsv"), *task.dev_splits.items()]:
        path = folder / file
        rows = _read_rows(path, "\t", task.header, columns, task.skip_malformed)
        if split == "train" and max_train_samples:
            rows = {c: v[:max_train_samples] for c, v in rows.items()}
        texts = [rows[c] for c in task.text_columns]
        splits[split] = _to_dataset(task, texts, rows[task.label_column], str(path))
        sources[split] = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    train = splits.pop("train")
    return TaskData(task, train, splits, sources)


def _load_glue_hub(task: TaskSpec, max_train_samples: int | None) -> TaskData:
    import datasets

    splits, sources = {}, {}
    for split, hub_split in [("train", "train"), *task.hub_dev_splits.items()]:
        try:
            ds = datasets.load_dataset("nyu-mll/glue", task.hub_config, split=hub_split)
        except Exception as exc:  # network, cache or hub errors all mean the same to a user
            raise HskdError(
                f"could not load {task.name} from the hub ({type(exc).__name__}); "
                "pass --data-dir (or set $GLUE_DIR) to a glue_data directory") from None
        if split == "train" and max_train_samples:
            ds = ds.select(range(min(max_train_samples, len(ds))))
        texts = [ds[c] for c in task.hub_columns]
        labels = ds["label"]
        if not task.is_regression:  # hub labels are ids in the registry's order already
            labels = [task.labels[y] for y in labels]
        splits[split] = _to_dataset(task, texts, labels, f"nyu-mll/glue {task.hub_config} {hub_split}")
        sources[split] = {"hub": f"nyu-mll/glue/{task.hub_config}/{hub_split}",
                          "sha256": ds._fingerprint}
    train = splits.pop("train")
    return TaskData(task, train, splits, sources)


def custom_task(name: str, text_columns: list[str], label_column: str, labels: list[str] | None,
                regression: bool) -> TaskSpec:
    """A task over the user's own CSV/TSV/JSONL files."""
    if not text_columns or len(text_columns) > 2:
        raise HskdError("--text-columns takes one or two column names, e.g. 'sentence' or 'q1,q2'")
    return TaskSpec(name, tuple(text_columns), label_column,
                    None if regression else tuple(labels or ()),
                    ("pearson", "spearman") if regression else ("accuracy", "f1_macro"))


def _file_format(path: Path) -> tuple[str, bool]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return "", True
    if suffix in (".tsv", ".txt"):
        return "\t", False
    if suffix == ".csv":
        return ",", False
    raise HskdError(f"{path}: unknown file type {suffix!r}; use .csv, .tsv or .jsonl")


def load_custom(task: TaskSpec, train_file: str, validation_file: str | None,
                max_train_samples: int | None = None) -> TaskData:
    """Load custom data with named columns from CSV, TSV or JSONL files.

    When ``task.labels`` is empty, the label set is the sorted set of training labels; it is
    then recorded in the model's config, and students take it from the teacher.

    Raises:
        HskdError: as :func:`load_glue`, and when no validation file is given.
    """
    if not validation_file:
        raise HskdError("custom data needs --validation-file as well as --train-file")
    columns = list(task.text_columns) + [task.label_column]
    raw = {}
    for split, file in [("train", train_file), ("dev", validation_file)]:
        path = Path(file).expanduser()
        delimiter, jsonl = _file_format(path)
        # TSV is read as the GLUE processors read it (QUOTE_NONE); CSV and JSONL by datasets
        rows = _read_rows(path, delimiter, True, columns, False) if delimiter == "\t" else \
            _read_table(path, "json" if jsonl else "csv", columns)
        if split == "train" and max_train_samples:
            rows = {c: v[:max_train_samples] for c, v in rows.items()}
        raw[split] = (path, rows)
    if not task.is_regression and not task.labels:
        found = sorted({str(y).strip() for y in raw["train"][1][task.label_column]})
        task = TaskSpec(**{**task.__dict__, "labels": tuple(found)})
    splits, sources = {}, {}
    for split, (path, rows) in raw.items():
        texts = [rows[c] for c in task.text_columns]
        splits[split] = _to_dataset(task, texts, rows[task.label_column], str(path))
        sources[split] = {"path": str(path.resolve()), "sha256": sha256_file(path)}
    return TaskData(task, splits["train"], {"dev": splits["dev"]}, sources)


def load_hf_dataset(task: TaskSpec, source: str, config: str | None, train_split: str, dev_split: str,
                    max_train_samples: int | None = None) -> TaskData:
    """Load a task from anything ``datasets`` reads: a hub name (offline: from the local cache)
    or a folder written by ``save_to_disk``, with the splits and columns named by the user.
    Class labels take the dataset's ``ClassLabel`` names (in their order) when it has them.

    Raises:
        HskdError: the dataset cannot be loaded, or a split or column is missing.
    """
    import datasets

    path = Path(source).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
        else:
            ds = datasets.load_dataset(source, config)
    except Exception as exc:  # noqa: BLE001 - hub, cache and format errors all mean the same to a user
        raise HskdError(f"could not load dataset {source!r} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                        "give a folder saved with save_to_disk, or a dataset name in the local cache") from None
    if not isinstance(ds, datasets.DatasetDict):
        raise HskdError(f"{source} is a single split; save a DatasetDict with {train_split!r} and {dev_split!r}")
    for split, flag in ((train_split, "--train-split"), (dev_split, "--validation-split")):
        if split not in ds:
            raise HskdError(f"{source} has no split {split!r} (it has {', '.join(ds)}); fix {flag}")
    columns = [*task.text_columns, task.label_column]
    raw = {}
    for split, name in (("train", train_split), ("dev", dev_split)):
        part = ds[name]
        for c in columns:
            if c not in part.column_names:
                raise HskdError(f"{source}/{name}: no column {c!r} (it has {', '.join(part.column_names)}); "
                                "fix --text-columns/--label-column")
        if split == "train" and max_train_samples:
            part = part.select(range(min(max_train_samples, len(part))))
        feature = part.features[task.label_column]
        labels = part[task.label_column]
        if isinstance(feature, datasets.ClassLabel):
            labels = [feature.names[y] if y is not None and y >= 0 else None for y in labels]
        raw[split] = (part, labels, feature)
    if not task.is_regression and not task.labels:
        feature = raw["train"][2]
        names = feature.names if isinstance(feature, datasets.ClassLabel) else sorted({str(y) for y in raw["train"][1]})
        task = TaskSpec(**{**task.__dict__, "labels": tuple(names)})
    splits, sources = {}, {}
    for split, (part, labels, _) in raw.items():
        texts = [["" if v is None else str(v) for v in part[c]] for c in task.text_columns]
        splits[split] = _to_dataset(task, texts, [y if task.is_regression else str(y) for y in labels],
                                    f"{source}/{split}")
        sources[split] = {"dataset": source, "split": part.split and str(part.split), "sha256": part._fingerprint}
    return TaskData(task, splits["train"], {"dev": splits["dev"]}, sources)


def compute_metrics(task: TaskSpec, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's official dev metrics.

    Args:
        predictions: logits ``[n, num_labels]`` (``[n, 1]`` or ``[n]`` for regression).
        labels: gold label ids ``[n]`` (floats for regression).

    Returns:
        e.g. ``{"f1": 0.88, "accuracy": 0.84}`` for MRPC; values in [0, 1] (correlations in
        [-1, 1]).
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if task.is_regression:
        scores = predictions.reshape(-1).astype(np.float64)
        return {"pearson": float(pearsonr(scores, labels)[0]),
                "spearman": float(spearmanr(scores, labels)[0])}
    pred = predictions.argmax(-1)
    known = {
        "accuracy": lambda: accuracy_score(labels, pred),
        "f1": lambda: f1_score(labels, pred),
        "f1_macro": lambda: f1_score(labels, pred, average="macro"),
        "matthews_correlation": lambda: matthews_corrcoef(labels, pred),
    }
    return {name: float(known[name]()) for name in task.metrics}
