"""``hskd predict``: a model's predictions in the GLUE benchmark's submission format, for the
test (or dev) split of a task, or for a file of new texts.

A submission file is ``OUT/<TASK>.tsv`` (``SST-2.tsv``, ``MNLI-m.tsv`` and ``MNLI-mm.tsv``, ...)
with the columns ``index`` and ``prediction``: label names for the NLI tasks (MNLI, QNLI, RTE),
0/1 for the others, and a score clipped to [0, 5] for STS-B, one row per row of the test file,
with its ``index``. This is the format of the GLUE benchmark's own submissions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hskd import models
from hskd.config import Settings
from hskd.data import MODEL_INPUTS, Collator
from hskd.device import precision_dtype
from hskd.errors import HskdError
from hskd.files import write_atomic
from hskd.job_inputs import run_device
from hskd.locks import OutputLock
from hskd.tasks import TaskSpec, _file_format, _read_rows, _read_table, find_glue_dir, get_task

# the benchmark's file name of each test split
SUBMISSION_NAMES = {"CoLA": {"test.tsv": "CoLA"}, "SST-2": {"test.tsv": "SST-2"}, "MRPC": {"test.tsv": "MRPC"},
                    "STS-B": {"test.tsv": "STS-B"}, "QQP": {"test.tsv": "QQP"}, "QNLI": {"test.tsv": "QNLI"},
                    "RTE": {"test.tsv": "RTE"}, "WNLI": {"test.tsv": "WNLI"},
                    "MNLI": {"test_matched.tsv": "MNLI-m", "test_mismatched.tsv": "MNLI-mm"}}
TEST_TEXT_COLUMNS = {"CoLA": ("sentence",)}  # the test files name their columns, CoLA's too
INDEX_COLUMN = {"QQP": "id"}


def predict(s: Settings, model_dir: str, split: str = "test", input_file: str | None = None) -> list[Path]:
    """Write the predictions of the model in ``model_dir`` into ``s.output_dir``.

    Args:
        split: ``test`` (the benchmark's unlabelled test files) or ``dev``; ignored with
            ``input_file``.
        input_file: a CSV/TSV/JSONL file of new texts (``--text-columns``); written as
            ``predictions.tsv`` with the row number as index, the label and its probability.

    Returns: the files written.

    Raises:
        HskdError: a missing model, file or column; a model whose labels are not the task's.
    """
    if not s.output_dir:
        raise HskdError("give --output-dir for the prediction files")
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise HskdError(f"model directory not found: {path}")
    model = models.load_classifier(str(path), None).eval()
    task = None
    if input_file is None:
        if not s.task:
            raise HskdError("give --task (a GLUE task), or --input FILE with --text-columns")
        task = get_task(s.task)
        models.check_labels(model, task, "model")
    inputs = _inputs(s, task, split, input_file)
    tok = models.load_tokenizer(str(path))
    max_len = s.max_seq_length or (task.max_seq_length if task else 128)
    models.check_positions(model.config, max_len, "model")
    device = run_device(s)
    model.to(device)
    out = Path(s.output_dir).expanduser()
    written = []
    with OutputLock(out) as lock:
        if not out.exists():
            lock.created()
        for name, (index, texts) in inputs.items():
            start = time.perf_counter()
            logits = predict_logits(model, tok, texts, max_len, s.eval_batch_size, device, s.bf16 or s.fp16,
                                    precision_dtype(s.bf16, s.fp16))
            rows = _format(model, task, index, logits, with_probability=input_file is not None)
            out.mkdir(parents=True, exist_ok=True)
            target = out / f"{name}.tsv"
            write_atomic(target, "\n".join(rows) + "\n")
            written.append(target)
            print(f"{target}: {len(index):,} predictions ({len(index) / (time.perf_counter() - start):.0f} ex/s)")
    return written


def _inputs(s: Settings, task: TaskSpec | None, split: str, input_file: str | None) -> dict:
    """``{file name: (index, [texts_a] or [texts_a, texts_b])}`` to predict."""
    if input_file is not None:
        if not s.text_columns:
            raise HskdError("--input needs --text-columns a[,b]: the columns that hold the texts")
        columns = s.text_columns.split(",")
        file = Path(input_file).expanduser()
        delimiter, jsonl = _file_format(file)
        if jsonl or delimiter == ",":
            rows = _read_table(file, "json" if jsonl else "csv", columns)
        else:
            rows = _read_rows(file, delimiter, True, columns, False)
        n = len(rows[columns[0]])
        if not n:
            raise HskdError(f"{file} has no rows")
        return {"predictions": ([str(i) for i in range(n)], [rows[c] for c in columns])}
    folder = find_glue_dir(task, s.data_dir)
    if folder is None:
        raise HskdError("hskd predict reads the GLUE files: pass --data-dir (or set $GLUE_DIR)")
    if split == "dev":
        files = {f"{Path(f).stem}": f for f in task.dev_splits.values()}
        out = {}
        for stem, file in files.items():
            rows = _read_rows(folder / file, "\t", task.header, list(task.text_columns), task.skip_malformed)
            n = len(rows[task.text_columns[0]])
            out[f"{task.name}-{stem}" if len(files) > 1 else task.name] = (
                [str(i) for i in range(n)], [rows[c] for c in task.text_columns])
        return out
    if split != "test":
        raise HskdError(f"--split is test or dev, not {split!r}")
    text_columns = TEST_TEXT_COLUMNS.get(task.name, task.text_columns)
    index_column = INDEX_COLUMN.get(task.name, "index")
    out = {}
    for file, name in SUBMISSION_NAMES[task.name].items():
        rows = _read_rows(folder / file, "\t", True, [index_column, *text_columns], False)
        out[name] = (rows[index_column], [rows[c] for c in text_columns])
    return out


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: list[list[str]], max_len: int, batch_size: int, device,
                   autocast: bool = False, dtype=torch.float32) -> np.ndarray:
    """Logits ``[rows, num_labels]`` (fp32) for one or two lists of texts, in batches padded
    to their longest row."""
    collate = Collator(tokenizer)
    pair = len(texts) > 1
    out = []
    for lo in range(0, len(texts[0]), batch_size):
        a = texts[0][lo:lo + batch_size]
        enc = tokenizer(a, texts[1][lo:lo + batch_size] if pair else None, truncation=True, max_length=max_len)
        batch = collate([{k: enc[k][i] for k in enc} for i in range(len(a))])
        with torch.autocast(device.type, dtype=dtype, enabled=autocast):
            logits = model(**models.model_inputs({k: batch[k].to(device) for k in MODEL_INPUTS if k in batch},
                                                 model)).logits
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out)


def _format(model, task: TaskSpec | None, index: list[str], logits: np.ndarray, with_probability: bool) -> list[str]:
    """The rows of a prediction file, header first."""
    if logits.shape[1] == 1:  # regression: STS-B scores live in [0, 5]
        values = logits[:, 0]
        if task is not None and task.name == "STS-B":
            values = np.clip(values, 0.0, 5.0)
        return ["index\tprediction"] + [f"{i}\t{v:.3f}" for i, v in zip(index, values)]
    names = [model.config.id2label[j] for j in range(logits.shape[1])]
    ids = logits.argmax(-1)
    if not with_probability:
        return ["index\tprediction"] + [f"{i}\t{names[j]}" for i, j in zip(index, ids)]
    probs = torch.from_numpy(logits).softmax(-1).numpy()
    return ["index\tprediction\tprobability"] + [f"{i}\t{names[j]}\t{probs[r, j]:.4f}"
                                                  for r, (i, j) in enumerate(zip(index, ids))]
