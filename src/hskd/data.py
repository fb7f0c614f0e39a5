"""Tokenization and batching: dynamic padding, with the example id kept for the cache."""

from __future__ import annotations

from transformers import DataCollatorWithPadding

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
    """Pads a list of examples to the longest in the batch and returns tensors: the model
    inputs ``[batch, seq]``, ``labels [batch]`` and ``example_id [batch]``."""

    def __init__(self, tokenizer):
        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict:
        keep = (*MODEL_INPUTS, "labels", "example_id")
        return self.pad([{k: f[k] for k in keep if k in f} for f in features])
