"""The knowledge cache: online equals cached for every selector, slicing, resume, integrity,
fingerprints, multi-process writes, and a teacher that is never opened."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hskd.cache import CacheReader, write_cache
from hskd.config import Settings
from hskd.data import Collator, tokenize
from hskd.errors import HskdError
from hskd.knowledge import KnowledgeSpec, Plan, parse_budget
from hskd.models import build_student, load_classifier, load_tokenizer
from hskd.pipeline import load_data
from hskd.sources import CachedKnowledge, OnlineTeacher
from hskd.terms import Objective
from hskd.train import DistillationModel
from tests.conftest import TINY, run_cli

MAX_LEN = 32


@pytest.fixture(scope="module")
def setup(tiny_teacher, tiny_glue, tiny_narrow):
    data = load_data(Settings(task="SST-2", data_dir=str(tiny_glue)))
    tok = load_tokenizer(str(tiny_teacher))
    teacher = load_classifier(str(tiny_teacher), data.task, attentions=True)
    ds = tokenize(data.train, tok, MAX_LEN)
    torch.manual_seed(0)
    student = build_student(str(tiny_narrow), data.task, attentions=True)
    return teacher, tok, ds, student


def _cache(tmp_path, setup, spec, name="cache", batch_size=5, **kw):
    # fp16, not the int8 default: these tests compare the cache with the online teacher exactly;
    # the storages' own errors are tested in test_storage.py
    kw.setdefault("storage", "fp16")
    teacher, tok, ds, student = setup
    plan = spec.resolve(student.config.num_hidden_layers, teacher.config.num_hidden_layers)
    write_cache(tmp_path / name, teacher, ds, Collator(tok), plan, {"rows": len(ds)}, tok.sep_token_id,
                MAX_LEN, batch_size=batch_size, flush_every=1, progress=False, **kw)
    return CacheReader(tmp_path / name), plan


def _losses(setup, plan, reader):
    """Hidden (and attention) loss of one batch, online and from the cache."""
    teacher, tok, ds, student = setup
    features = [ds[i] for i in (7, 0, 12, 3)]  # not an extraction batch
    spec = plan.spec
    model = DistillationModel(student, teacher.config.hidden_size, plan).eval()
    model.objective = Objective.of(ce=0, hidden=1.0 if spec.hidden else 0, attention=1.0 if spec.attentions else 0)
    results = []
    for source in (OnlineTeacher(teacher, plan, tok.sep_token_id), CachedKnowledge(reader, plan)):
        batch = source.collator(Collator(tok))(features)  # the cache is read here, as in training
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        k = source(inputs, batch.get("knowledge"))
        with torch.no_grad():
            out, loss, parts = model(knowledge=k, labels=batch["labels"], example_id=batch["example_id"], **inputs)
        results.append((loss, k))
    return results


SPECS = [
    *[KnowledgeSpec(hidden=True, layers=2, length=length, tokens=4)
      for length in ("all", "cls", "left", "attention", "attention-no-sep")],
    *[KnowledgeSpec(hidden=True, length="left", tokens=5, width=width, width_fraction=0.25, seed=3)
      for width in ("uniform", "random", "magnitude")],
    KnowledgeSpec(hidden=True, length="attention", tokens=3, width="magnitude", width_fraction=0.5),
    KnowledgeSpec(hidden=True, attentions=True, depth="skip", length="cls"),
    KnowledgeSpec(hidden=True, attentions=True, depth="uniform", layers=2, length="all"),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.length}-{s.width}-{'att' if s.attentions else 'h'}")
def test_online_equals_cached(tmp_path, setup, spec):
    reader, plan = _cache(tmp_path, setup, spec)
    (online, k_on), (cached, k_ca) = _losses(setup, plan, reader)
    assert torch.equal(k_on.token_index * k_on.token_mask, k_ca.token_index[..., : k_on.token_index.size(-1)]
                       * k_ca.token_mask[..., : k_on.token_index.size(-1)])
    assert torch.allclose(k_on.logits, k_ca.logits, atol=1e-5)
    assert online.item() > 0
    assert torch.allclose(online, cached, rtol=2e-3, atol=1e-4), (online.item(), cached.item())


@pytest.mark.parametrize("small", [
    parse_budget("1l_3t_0.5h", length="attention", width="uniform"),
    parse_budget("2l_2t_0.25h", length="attention", width="magnitude"),
    parse_budget("1l_1t", length="attention"),
])
def test_a_larger_cache_serves_smaller_budgets_by_slicing(tmp_path, setup, small):
    big = parse_budget("3l_6t", length="attention")  # all dims
    reader, _ = _cache(tmp_path, setup, big)
    _, _, _, student = setup
    (online, _), (cached, _) = _losses(setup, small.resolve(student.config.num_hidden_layers, 4), reader)
    assert torch.allclose(online, cached, rtol=2e-3, atol=1e-4)


def test_slicing_refuses_what_the_cache_lacks(tmp_path, setup):
    reader, _ = _cache(tmp_path, setup, parse_budget("1l_3t_0.5h", length="left", width="random"))
    with pytest.raises(HskdError, match="lacks layer pairs"):
        reader.serving(Plan(parse_budget("2l_3t_0.5h", length="left", width="random"), tuple([(1, 2), (2, 4)]), 2, 4))
    with pytest.raises(HskdError, match="tokens"):
        reader.serving(Plan(parse_budget("1l_4t_0.5h", length="left", width="random"), tuple([(2, 4)]), 2, 4))
    with pytest.raises(HskdError, match="length strategy"):
        reader.serving(Plan(parse_budget("1l_2t_0.5h", length="attention", width="random"), tuple([(2, 4)]), 2, 4))
    with pytest.raises(HskdError, match="width"):
        reader.serving(Plan(parse_budget("1l_2t_0.5h", length="left", width="magnitude"), tuple([(2, 4)]), 2, 4))


def _arrays(folder: Path) -> dict:
    return {f.name: f.read_bytes() for f in sorted(folder.glob("*.npy"))}


def test_resume_after_a_kill_is_byte_identical(tmp_path, setup):
    spec = parse_budget("2l_4t_0.5h", length="attention", width="magnitude")
    _cache(tmp_path, setup, spec, name="whole")
    with pytest.raises(KeyboardInterrupt):
        _cache(tmp_path, setup, spec, name="killed", stop_after_batches=2)
    assert (tmp_path / "killed.partial").exists() and not (tmp_path / "killed").exists()
    with pytest.raises(HskdError, match="interrupted"):
        CacheReader(tmp_path / "killed")
    _cache(tmp_path, setup, spec, name="killed")
    assert not (tmp_path / "killed.partial").exists()
    assert _arrays(tmp_path / "whole") == _arrays(tmp_path / "killed")


def test_resume_with_another_batch_size_fills_every_row(tmp_path, setup):
    # progress is counted in rows: 2 batches of 5 are durable, the resume goes on in batches of 3
    import json

    spec = parse_budget("2l_4t_0.5h", length="attention", width="magnitude")
    whole, _ = _cache(tmp_path, setup, spec, name="whole")
    with pytest.raises(KeyboardInterrupt):
        _cache(tmp_path, setup, spec, name="killed", stop_after_batches=2)
    progress = json.loads((tmp_path / "killed.partial" / "progress.rank0of1.json").read_text())
    assert progress == {"rows_done": 10}
    resumed, _ = _cache(tmp_path, setup, spec, name="killed", batch_size=3)
    for name, arr in whole.arrays.items():
        other = resumed.arrays[name]
        if arr.dtype.kind == "f":  # batches padded to other lengths: the same values up to rounding
            assert np.allclose(arr, other, atol=2e-3), name
        else:
            assert np.array_equal(arr, other), name
    assert (np.asarray(resumed.arrays["token_index"])[:, :, 0] >= 0).all()  # no row left unwritten


def test_integrity_and_fingerprint_checks(tmp_path, setup):
    reader, _ = _cache(tmp_path, setup, parse_budget("1l_4t", length="left"))
    folder = reader.path
    with pytest.raises(HskdError, match="different rows"):
        CacheReader(folder, expect={"rows": 3})
    data = (folder / "hidden.npy").read_bytes()
    (folder / "hidden.npy").write_bytes(data[:-10])
    with pytest.raises(HskdError, match="truncated"):
        CacheReader(folder)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    (folder / "hidden.npy").write_bytes(bytes(flipped))
    with pytest.raises(HskdError, match="corrupted"):
        CacheReader(folder)


def _cli_cache(out, tiny_glue, teacher, torchrun=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = ["cache", "--task", "SST-2", "--data-dir", str(tiny_glue), "--teacher", str(teacher),
           "--output-dir", str(out), "--knowledge", "2l_4t_0.5h", "--width-strategy", "magnitude",
           "--student-layers", "2", "--eval-batch-size", "3", "--quiet"]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "hskd.cli"] \
        if torchrun else [sys.executable, "-m", "hskd.cli"]
    proc = subprocess.run(launcher + cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_write_equals_one_process(tmp_path, tiny_glue, tiny_teacher):
    _cli_cache(tmp_path / "one", tiny_glue, tiny_teacher)
    _cli_cache(tmp_path / "two", tiny_glue, tiny_teacher, torchrun=True)
    one, two = _arrays(tmp_path / "one"), _arrays(tmp_path / "two")
    assert one.keys() == two.keys() and one == two


def test_distill_from_cache_never_opens_the_teacher(tmp_path, tiny_glue, tiny_teacher, tiny_narrow, monkeypatch):
    cache = tmp_path / "cache"
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--output-dir", cache, "--knowledge", "1l_4t", "--student-layers", "2", "--quiet") == 0
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        if str(tiny_teacher) in str(file):
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    out = tmp_path / "student"
    assert run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tmp_path / "gone",
                   "--cache", cache, "--student-model", tiny_narrow, "--student-layers", "2",
                   "--recipe", "mud", "--knowledge", "1l_2t", "--hsk-epochs", "1", "--output-dir", out, *TINY) == 0
    assert opened == []
    assert (out / "model.safetensors").exists()


def test_distill_refuses_a_cache_of_other_data(tmp_path, capsys, tiny_glue, tiny_teacher, tiny_narrow):
    cache = tmp_path / "cache"
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher,
                   "--output-dir", cache, "--knowledge", "1l_4t", "--student-layers", "2", "--quiet") == 0
    out = tmp_path / "student"
    code = run_cli("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--cache", cache, "--max-train-samples", "8",
                   "--student-model", tiny_narrow, "--student-layers", "2", "--recipe", "mud",
                   "--knowledge", "1l_2t", "--output-dir", out, *TINY)
    assert code == 2
    assert "different rows" in capsys.readouterr().err and not out.exists()
    np.testing.assert_equal(CacheReader(cache).rows, 16)
