"""What a job trains on: the task's splits per the settings, tokenized, and batched with
dynamic padding, the example id kept for the cache."""

from __future__ import annotations

from transformers import DataCollatorWithPadding

from hskd.errors import HskdError
from hskd.tasks import TaskData, custom_task, get_task, load_custom, load_glue, load_hf_dataset

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(dataset, tokenizer, max_seq_length: int):
    """Tokenize a split from :mod:`hskd.tasks` into ``input_ids``, ``attention_mask``,
    ``token_type_ids``, ``labels``, ``example_id`` and ``length`` (tokens, for grouping by
    length). Truncates to ``max_seq_length`` tokens; pads nothing (the collator pads per batch).
    """
    pair = "text_b" in dataset.column_names

    def encode(rows):
        enc = tokenizer(rows["text_a"], rows["text_b"] if pair else None,
                        truncation=True, max_length=max_seq_length)
        enc["labels"] = rows["label"]
        enc["example_id"] = rows["example_id"]
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc

    return dataset.map(encode, batched=True, remove_columns=dataset.column_names,
                       desc="tokenizing", load_from_cache_file=False)


class Collator:
    """Pads a list of examples to the longest in the batch (or to ``pad_to`` tokens: the
    static padding of MUD's and TinyBERT's code, for ``--hsk-padding include``) and returns
    tensors: the model inputs ``[batch, seq]``, ``labels [batch]`` and ``example_id [batch]``."""

    def __init__(self, tokenizer, pad_to: int | None = None):
        padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {}
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt", **padding)

    def __call__(self, features: list[dict]) -> dict:
        keep = (*MODEL_INPUTS, "labels", "example_id")
        return self.pad([{k: f[k] for k in keep if k in f} for f in features])


def load_data(s, labels_from_model=None) -> TaskData:
    """The task's train and dev splits, GLUE or custom, per the settings.

    ``labels_from_model``: a teacher whose saved label order custom data must follow.
    """
    text_columns = s.text_columns or ",".join(c for c in (s.text_column, s.text_pair_column) if c) or None
    if s.train_file or s.dataset:
        if not s.task:
            raise HskdError("give --task NAME for custom data (any name)")
        if not text_columns or not s.label_column:
            raise HskdError("custom data needs --text-columns a[,b] (or --text-column, --text-pair-column) and "
                            "--label-column y")
        labels = s.labels.split(",") if s.labels else None
        if labels is None and labels_from_model is not None and s.task_type != "regression":
            cfg = labels_from_model.config
            labels = [cfg.id2label[i] for i in range(cfg.num_labels)]
        task = custom_task(s.task, text_columns.split(","), s.label_column, labels,
                           s.task_type == "regression")
        if s.dataset:
            data = load_hf_dataset(task, s.dataset, s.dataset_config, s.train_split, s.validation_split,
                                   s.max_train_samples)
        else:
            data = load_custom(task, s.train_file, s.validation_file, s.max_train_samples)
    else:
        if not s.task:
            raise HskdError("give --task (a GLUE task such as SST-2, or a name for custom data)")
        data = load_glue(get_task(s.task), s.data_dir, s.max_train_samples)
    if s.max_eval_samples:
        data.dev = {k: v.select(range(min(s.max_eval_samples, len(v)))) for k, v in data.dev.items()}
    return data


def max_length(s, data: TaskData) -> int:
    """``--max-seq-length``, or the task's default (64 single sentences, 128 pairs)."""
    return s.max_seq_length or data.task.max_seq_length


def knowledge_pad_to(spec, max_len: int) -> int | None:
    """The static padding a knowledge spec needs: ``max_len`` when it counts padding positions
    (``padding: include``), else ``None`` (per-batch padding)."""
    return max_len if spec is not None and spec.padding == "include" else None
