"""Device and precision: choosing the device, refusing what it cannot run in one line, losses in
fp32 under mixed precision, gradient accumulation, the cache read in the DataLoader (workers
included), and a training step with no host synchronisation."""

import json
import pickle

import pytest
import torch
import yaml
from torch.profiler import ProfilerActivity, profile
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from hskd import losses
from hskd.cache import CacheReader, write_cache
from hskd.config import Settings
from hskd.data import Collator, tokenize
from hskd.device import check_precision, resolve_device
from hskd.errors import HskdError
from hskd.knowledge import Knowledge, parse_budget
from hskd.models import build_student, load_classifier, load_tokenizer
from hskd.pipeline import load_data
from hskd.sources import CachedKnowledge, OnlineTeacher
from hskd.terms import LossInputs, Objective
from hskd.train import DistillationModel, DistillationTrainer
from tests.conftest import TINY, run_cli

HAS_CUDA = torch.cuda.is_available()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hskd: error: "), err
    return err[0]


def test_device_resolution():
    auto = resolve_device(None)
    assert auto.type == ("cuda" if HAS_CUDA else "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if HAS_CUDA:
        assert resolve_device("cuda") == torch.device("cuda", 0)
    else:
        with pytest.raises(HskdError, match="no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(HskdError, match="unknown --device"):
        resolve_device("gpu0")
    with pytest.raises(HskdError, match="CUDA GPUs|no CUDA"):
        resolve_device("cuda:99")


def test_precision_checks():
    cpu = torch.device("cpu")
    check_precision(cpu, bf16=True, fp16=False)  # bf16 autocast runs on the CPU
    with pytest.raises(HskdError, match="needs a CUDA GPU"):
        check_precision(cpu, bf16=False, fp16=True)
    with pytest.raises(HskdError, match="at most one"):
        check_precision(cpu, bf16=True, fp16=True)


def test_fp16_on_the_cpu_is_one_line_and_writes_nothing(tmp_path, capsys, tiny_glue, tiny_backbone):
    out = tmp_path / "out"
    code = run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                   "--output-dir", out, "--device", "cpu", "--fp16", *TINY)
    assert code == 2
    assert "--fp16 needs a CUDA GPU" in _error_line(capsys)
    assert not out.exists()
    if not HAS_CUDA:
        code = run_cli("evaluate", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone,
                       "--device", "cuda")
        assert code == 2 and "no CUDA GPU" in _error_line(capsys)


def test_bf16_run_on_the_cpu_records_device_precision_and_versions(tmp_path, tiny_glue, tiny_backbone, tiny_teacher):
    out = tmp_path / "kd"
    assert run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--student-model", tiny_backbone, "--student-layers", "2", "--recipe", "tinybert",
                   "--output_dir", out, "--bf16", "--device", "cpu", "--gradient_accumulation_steps", "2",
                   *TINY) == 0
    record = json.loads((out / "hskd.json").read_text())
    env = record["environment"]
    assert env["precision"] == "bf16" and env["device"].startswith("cpu")
    assert env["torch"] == torch.__version__ and "transformers" in env
    assert record["eval"]["device"].startswith("cpu")
    text = (out / "config.yaml").read_text()
    assert "# precision: bf16" in text and f"# torch: {torch.__version__}" in text
    config = yaml.safe_load(text)  # the comments keep it a valid --config file
    assert config["bf16"] is True and config["gradient_accumulation_steps"] == 2
    # bf16 was really used: the Trainer's arguments saved in the checkpoint say so
    args = torch.load(next(out.glob("checkpoints/*/checkpoint-*/training_args.bin")), weights_only=False)
    assert args.bf16 and args.gradient_accumulation_steps == 2 and args.use_cpu


def test_losses_are_fp32_under_mixed_precision():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 4, 8).bfloat16(), torch.randn(2, 3, 4, 8).half()
    mask = torch.rand(2, 3, 4) > 0.3
    got = losses.hidden_mse(s, t, mask)
    assert got.dtype == torch.float32
    want = losses.hidden_mse(s.float(), t.float(), mask)
    assert torch.equal(got, want)
    logits, labels = torch.randn(4, 3).bfloat16(), torch.tensor([0, 2, 1, 0])
    teacher = torch.randn(4, 3)
    objective = Objective.of(ce=0.5, kd=0.5, temperature=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = objective(LossInputs(logits=logits, labels=labels, knowledge=Knowledge(logits=teacher)))
    assert total.dtype == torch.float32
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in parts.values())  # no host sync
    ref = 0.5 * losses.task_loss(logits.float(), labels) + 0.5 * losses.soft_label_loss(logits.float(), teacher, 2.0)
    assert torch.allclose(total, ref, atol=1e-6)


def _tiny_classifier(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, num_labels=2)
    return BertForSequenceClassification(config)


def _one_sgd_step(tmp_path, ds, tok, batch: int, accumulate: int):
    model = DistillationModel(_tiny_classifier())
    args = TrainingArguments(output_dir=str(tmp_path / f"b{batch}"), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulate, max_steps=1, learning_rate=0.5, optim="sgd",
                             max_grad_norm=0.0, weight_decay=0.0, lr_scheduler_type="constant", save_strategy="no",
                             report_to="none", disable_tqdm=True, remove_unused_columns=False, label_names=["labels"],
                             train_sampling_strategy="group_by_length", seed=0, use_cpu=True)
    trainer = DistillationTrainer(model=model, args=args, data_collator=Collator(tok), train_dataset=ds,
                                  objective=Objective.of())
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, tiny_glue):
    """2 x 4 accumulated = 8 at once: the Trainer must divide our batch-mean loss by the
    accumulation steps (it would not if it took the model for one that sums over items)."""
    data = load_data(Settings(task="SST-2", data_dir=str(tiny_glue)))
    tok = load_tokenizer(None)
    ds = tokenize(data.train, tok, 32)
    start = {k: v.clone() for k, v in DistillationModel(_tiny_classifier()).state_dict().items()}
    big = _one_sgd_step(tmp_path, ds, tok, batch=8, accumulate=1)
    small = _one_sgd_step(tmp_path, ds, tok, batch=4, accumulate=2)
    moved = max((big[k] - start[k]).abs().max().item() for k in big)
    assert moved > 1e-4  # the step did change the weights
    assert max((big[k] - small[k]).abs().max().item() for k in big) < 1e-5 * max(1.0, moved) + 1e-6


@pytest.fixture(scope="module")
def cached(tmp_path_factory, tiny_teacher, tiny_glue, tiny_narrow):
    data = load_data(Settings(task="SST-2", data_dir=str(tiny_glue)))
    tok = load_tokenizer(str(tiny_teacher))
    teacher = load_classifier(str(tiny_teacher), data.task)
    ds = tokenize(data.train, tok, 32)
    spec = parse_budget("2l_4t_0.5h", length="attention", width="magnitude", logits=True)
    student = build_student(str(tiny_narrow), data.task)
    plan = spec.resolve(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    out = tmp_path_factory.mktemp("cache") / "c"
    write_cache(out, teacher, ds, Collator(tok), plan, {"rows": len(ds)}, tok.sep_token_id, 32,
                batch_size=5, flush_every=1, progress=False, storage="fp16")
    return teacher, tok, ds, plan, CacheReader(out), student


def test_cache_rows_are_read_in_dataloader_workers(cached):
    teacher, tok, ds, plan, reader, _ = cached
    source = CachedKnowledge(reader, plan)
    collate = source.collator(Collator(tok))
    copy = pickle.loads(pickle.dumps(reader))  # what a spawned worker gets: maps reopened, not copied
    assert copy.arrays["hidden"].shape == reader.arrays["hidden"].shape
    loader = torch.utils.data.DataLoader([ds[i] for i in range(len(ds))], batch_size=6, collate_fn=collate,
                                         num_workers=2)
    seen = 0
    for batch in loader:
        direct = reader.read(batch["example_id"].numpy(), plan, seq_len=batch["input_ids"].size(1))
        k = source({"input_ids": batch["input_ids"]}, batch["knowledge"])
        assert torch.equal(k.hidden, direct.hidden) and torch.equal(k.dim_index, direct.dim_index)
        assert k.hidden.dtype == torch.float16  # the storage dtype crosses to the device, not fp32
        assert batch["cache_read_seconds"] > 0
        seen += len(batch["example_id"])
    assert seen == len(ds)


def test_a_failing_cache_writer_raises_and_leaves_no_finished_cache(tmp_path, cached, monkeypatch):
    from hskd import cache as cache_module

    teacher, tok, ds, plan, _, _ = cached

    def broken(self, *args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module._Writer, "_write", broken)
    with pytest.raises(OSError, match="No space left"):
        write_cache(tmp_path / "c", teacher, ds, Collator(tok), plan, {"rows": len(ds)}, tok.sep_token_id,
                    32, batch_size=5, progress=False)
    assert not (tmp_path / "c").exists()


SYNC_OPS = ("aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::masked_select")


@pytest.mark.parametrize("mode", ["cache", "online"])
def test_the_training_step_makes_no_host_sync(tmp_path, cached, mode):
    """``.item()``, ``.tolist()``, ``float(tensor)`` and data-dependent shapes all show up in the
    profile as these ops; on a GPU each one stops the host until the device catches up."""
    teacher, tok, ds, plan, reader, student = cached
    source = CachedKnowledge(reader, plan) if mode == "cache" else OnlineTeacher(teacher, plan, tok.sep_token_id)
    model = DistillationModel(student, teacher.config.hidden_size, plan)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=1, report_to="none",
                             remove_unused_columns=False, label_names=["labels"], use_cpu=True,
                             logging_nan_inf_filter=False)
    trainer = DistillationTrainer(model=model, args=args, data_collator=Collator(tok), train_dataset=ds,
                                  objective=Objective.of(ce=0.5, kd=0.5, temperature=2.0, hidden=1.0),
                                  knowledge_source=source)
    batch = next(iter(trainer.get_train_dataloader()))
    assert ("knowledge" in batch) == (mode == "cache")
    inputs = trainer._prepare_inputs(batch)
    model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by train(), which this test does not run
    trainer.training_step(model, inputs)  # warm-up
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.training_step(model, inputs)
    names = [e.key for e in prof.key_averages()]
    assert "aten::gather" in names  # the profile did see the step
    assert not [n for n in names if n in SYNC_OPS], [n for n in names if n in SYNC_OPS]


def test_run_with_mud_extracts_a_cache_trains_teacher_free_and_times_each_stage(tmp_path, tiny_glue, tiny_backbone):
    out = tmp_path / "run"
    assert run_cli("run", "--task", "SST-2", "--data-dir", tiny_glue, "--model", tiny_backbone, "--student-model",
                   tiny_backbone, "--student-layers", "2", "--recipe", "mud", "--knowledge", "1l_3t_0.5h",
                   "--hsk-epochs", "1", "--device", "cpu", "--output-dir", out, *TINY) == 0
    assert (out / "cache" / "manifest.json").is_file()
    student = json.loads((out / "student" / "hskd.json").read_text())
    assert student["cache"] == str(out / "cache")  # trained from the cache: teacher-free
    assert student["stages"][0]["cache_read_seconds"] > 0
    run = json.loads((out / "run.json").read_text())
    stages = [t["stage"] for t in run["timings"]]
    assert stages == ["teacher (training)", "teacher (evaluation)", "student-finetune (training)",
                      "student-finetune (evaluation)", "cache (extraction)", "student: hsk (training)",
                      "student: prediction (training)", "student (evaluation)"]
    assert all(t["seconds"] > 0 for t in run["timings"])
    assert run["environment"]["device"].startswith("cpu")
    report = (out / "report.md").read_text()
    assert "Wall-clock per stage on cpu" in report and "| cache (extraction) |" in report
