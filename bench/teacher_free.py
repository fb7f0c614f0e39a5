"""Teacher-free KD speed: plain fine-tuning vs online KD vs KD from the knowledge cache.

Prints one table: training examples/s of each mode (steady state, after warm-up steps), the
cache read cost per batch, peak memory (max RSS of the process that ran the mode), and cache
extraction throughput against the teacher's bare eval forward. Two setups:

- minilm: the default 6-layer MiniLM-H384 teacher, a 3-layer student from its first layers;
- bert-base: a BERT-base-sized teacher (12 layers, 768 wide, random weights) and a 4-layer,
  312-wide student (TinyBERT-4's shape), as in the MUD paper. Random weights: only speed counts.

Each mode runs in its own process, on real SST-2 sentences (max length 64, batch 32), with the
same knowledge spec online and cached (default 1l_10t_0.1h, attention length strategy).

    python bench/teacher_free.py --data-dir ../shared/data/glue [--steps 40] [--knowledge 1l_10t_0.1h]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build(setup: str, attentions: bool):
    """(teacher, student) for a setup; both classifiers for SST-2."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from hskd.models import build_student, load_classifier
    from hskd.tasks import get_task

    task = get_task("SST-2")
    torch.manual_seed(0)
    attn = "eager" if attentions else "sdpa"
    if setup == "minilm":
        return (load_classifier(None, task, attentions=attentions),
                build_student(None, task, layers=3))
    teacher = BertForSequenceClassification(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                       intermediate_size=3072, num_labels=2,
                                                       attn_implementation=attn))
    student = BertForSequenceClassification(BertConfig(hidden_size=312, num_hidden_layers=4, num_attention_heads=12,
                                                       intermediate_size=1200, num_labels=2))
    return teacher, student


def dataset(data_dir: str, rows: int):
    from hskd.config import Settings
    from hskd.data import tokenize
    from hskd.models import load_tokenizer
    from hskd.pipeline import load_data

    data = load_data(Settings(task="SST-2", data_dir=data_dir, max_train_samples=rows))
    tok = load_tokenizer(None)
    return tokenize(data.train, tok, 64), tok


class Timer:
    """Steady-state step timing: ignores the first ``warmup`` steps."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == warmup:
                    timer.start = time.perf_counter()
                timer.end, timer.steps = time.perf_counter(), state.global_step - warmup

        self.callback, self.start, self.end, self.steps = _CB(), None, None, 0


def run_mode(setup: str, mode: str, data_dir: str, steps: int, knowledge: str, cache_dir: str) -> dict:
    import torch
    from transformers import TrainingArguments

    from hskd.cache import CacheReader
    from hskd.data import Collator
    from hskd.knowledge import parse_budget
    from hskd.recipes import Objective
    from hskd.train import CachedKnowledge, DistillationModel, DistillationTrainer, OnlineTeacher

    spec = parse_budget(knowledge, logits=True)
    warmup, batch = 5, 32
    ds, tok = dataset(data_dir, (steps + warmup) * batch)
    teacher, student = build(setup, attentions=spec.attentions)
    pairs = spec.layer_pairs(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    objective, source = Objective(), None
    if mode != "finetune":
        objective = Objective(ce=0.5, kd=0.5, temperature=1.0, hidden=1.0)
        if mode == "online":
            source = OnlineTeacher(teacher, spec, pairs, tok.sep_token_id)
        else:
            del teacher  # teacher-free: the teacher is not in memory while training
            source = CachedKnowledge(CacheReader(cache_dir), spec, pairs)
    else:
        del teacher
    model = DistillationModel(student, 768 if setup == "bert-base" else 384)
    timer = Timer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps + warmup,
                                 learning_rate=1e-4, save_strategy="no", report_to="none", disable_tqdm=True,
                                 remove_unused_columns=False, label_names=["labels"], logging_steps=10**6,
                                 train_sampling_strategy="group_by_length", dataloader_pin_memory=False, seed=0)
        trainer = DistillationTrainer(model=model, args=args, data_collator=Collator(tok), train_dataset=ds,
                                      objective=objective, knowledge_source=source, pairs=pairs,
                                      callbacks=[timer.callback])
        reads_before = 0.0
        trainer.train()
    seconds = timer.end - timer.start
    result = {"setup": setup, "mode": mode, "examples_per_second": timer.steps * batch / seconds,
              "step_ms": 1000 * seconds / timer.steps,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads": torch.get_num_threads()}
    if mode == "cache":
        result["read_ms_per_batch"] = 1000 * (source.read_seconds - reads_before) / (timer.steps + warmup)
    return result


def run_extract(setup: str, data_dir: str, rows: int, knowledge: str, cache_dir: str) -> dict:
    """Cache extraction vs the teacher's bare eval forward (same batches, inference mode)."""
    import torch

    from hskd.cache import write_cache
    from hskd.data import Collator
    from hskd.knowledge import parse_budget

    spec = parse_budget(knowledge, logits=True)
    ds, tok = dataset(data_dir, rows)
    collator = Collator(tok)
    bare_teacher, student = build(setup, attentions=False)
    bare_teacher.eval()
    batch = 64
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, rows, batch):
            b = collator([ds[i] for i in range(lo, min(rows, lo + batch))])
            bare_teacher(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    bare = rows / (time.perf_counter() - start)
    teacher, _ = build(setup, attentions=spec.attentions)
    pairs = spec.layer_pairs(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    start = time.perf_counter()
    manifest = write_cache(cache_dir, teacher, ds, collator, spec, pairs, {"rows": rows}, tok.sep_token_id, 64,
                           batch_size=batch, progress=False)
    extract = rows / (time.perf_counter() - start)
    return {"setup": setup, "bare_forward_examples_per_second": bare, "extract_examples_per_second": extract,
            "cache_mb": manifest["megabytes"], "hsk_fraction": manifest["hsk_fraction"]}


def child(argv: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    parser.add_argument("--steps", type=int, default=40, help="timed steps per mode (after 5 warm-up steps)")
    parser.add_argument("--knowledge", default="1l_10t_0.1h")
    parser.add_argument("--setups", default="minilm,bert-base")
    parser.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child is not None:
        kind, setup, *more = args.child
        if kind == "extract":
            print(json.dumps(run_extract(setup, args.data_dir, int(more[0]), args.knowledge, more[1])))
        else:
            print(json.dumps(run_mode(setup, kind, args.data_dir, args.steps, args.knowledge, more[0])))
        return
    rows = (args.steps + 5) * 32
    print(f"threads: {os.cpu_count()} cores; steps: {args.steps} timed + 5 warm-up; batch 32; "
          f"max length 64; knowledge {args.knowledge}\n")
    print("| setup | plain fine-tuning ex/s | online KD ex/s | teacher-free KD ex/s | teacher-free / fine-tuning "
          "| teacher-free / online | cache read ms/batch (% of step) | peak RSS MB (ft / online / cache) "
          "| extraction ex/s (bare forward ex/s, ratio) | cache MB (HSK %) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setup in args.setups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cache = str(Path(tmp) / "cache")
            ex = child(["extract", setup, str(rows), cache, "--data-dir", args.data_dir,
                        "--knowledge", args.knowledge])
            res = {m: child([m, setup, cache, "--data-dir", args.data_dir, "--steps", str(args.steps),
                             "--knowledge", args.knowledge]) for m in ("finetune", "online", "cache")}
        ft, on, ca = (res[m]["examples_per_second"] for m in ("finetune", "online", "cache"))
        read = res["cache"]["read_ms_per_batch"]
        print(f"| {setup} | {ft:.1f} | {on:.1f} | {ca:.1f} | {ca / ft:.2f}x | {ca / on:.2f}x "
              f"| {read:.2f} ({100 * read / res['cache']['step_ms']:.1f}%) "
              f"| {res['finetune']['peak_rss_mb']:.0f} / {res['online']['peak_rss_mb']:.0f} / "
              f"{res['cache']['peak_rss_mb']:.0f} "
              f"| {ex['extract_examples_per_second']:.1f} ({ex['bare_forward_examples_per_second']:.1f}, "
              f"{ex['extract_examples_per_second'] / ex['bare_forward_examples_per_second']:.2f}x) "
              f"| {ex['cache_mb']:.1f} ({100 * ex['hsk_fraction']:.2f}%) |", flush=True)


if __name__ == "__main__":
    main()
