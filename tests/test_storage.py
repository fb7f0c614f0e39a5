"""Compact cache storage (issue 15): every codec round-trips within its stated bound, the
cache stores and serves each, a cache read with the wrong storage is refused, the planner's
bytes match the real cache, and a cache describes itself (README.md, hskd inspect)."""

import json

import numpy as np
import pytest
import torch

from hskd.cache import CacheReader
from hskd.cache_job import make_cache
from hskd.config import Settings
from hskd.errors import HskdError
from hskd.knowledge import parse_budget
from hskd.storage import STORAGES, decode, decode_batch, encode, index_dtype
from tests.conftest import TINY, run_cli
from tests.test_cache import _cache, _losses, setup  # noqa: F401 - the module fixture

FP16 = 2.0**-11


def _bound(storage: str, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """The per-value error bound each storage documents (hskd.storage's table)."""
    if storage == "fp16":
        return FP16 * x.abs() + 1e-7
    if storage == "bf16":
        return 2.0**-8 * x.abs() + 1e-30
    if storage == "fp8":
        return torch.maximum(2.0**-4 * x.abs(), torch.full_like(x, 2.0**-10))
    s = scale.float().unsqueeze(-1 if storage == "int8" else -2)
    return s / 2 + FP16 * x.abs() + 1e-7


@pytest.mark.parametrize("storage", STORAGES)
def test_every_storage_round_trips_within_its_bound(storage):
    torch.manual_seed(0)
    x = torch.randn(4, 2, 6, 10) * torch.logspace(-3, 1, 10)  # dims of very different scales
    x[0, :, 4:] = 0  # unfilled slots stay exactly 0
    x[1, 0, 0, 0] = 30.0  # an outlier in one row
    e = encode(x, storage)
    y = decode(e["hidden"], storage, e.get("hidden_scale"))
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert (y[0, :, 4:] == 0).all()
    err, bound = (y - x).abs(), _bound(storage, x, e.get("hidden_scale"))
    assert (err <= bound).all(), (storage, (err - bound).max().item())
    assert err.max() > 0  # a lossy codec (fp16 too, for these values)
    if storage in ("int8", "int8-dim", "fp8"):
        assert e["hidden"].element_size() == 1


def test_per_dimension_int8_is_finer_than_per_row_for_dims_of_different_scales():
    torch.manual_seed(1)
    x = torch.randn(8, 1, 10, 16) * torch.logspace(-3, 1, 16)
    errs = {}
    for storage in ("int8", "int8-dim"):
        e = encode(x, storage)
        errs[storage] = (decode(e["hidden"], storage, e["hidden_scale"]) - x)[..., :4].abs().mean()
    assert errs["int8-dim"] < errs["int8"] / 10  # the small dims are not rounded to 0


@pytest.mark.parametrize("storage", ["int8", "int8-dim"])
def test_int8_scales_stay_in_the_normal_fp16_range(storage):
    # a row of tiny values once got a subnormal fp16 scale (24 % error at 1e-5), a row of huge
    # ones an infinite scale (NaN on decoding)
    x = torch.tensor([[[[1e-5, -2e-5, 3e-6], [0.0, 0.0, 0.0], [1e9, -1.0, 2.0]]]])
    e = encode(x, storage)
    y = decode(e["hidden"], storage, e["hidden_scale"])
    assert torch.isfinite(y).all() and (y[0, 0, 1] == 0).all()
    assert (e["hidden_scale"].float() >= 2.0**-14).all()
    if storage == "int8":  # per row: the tiny row is within half the smallest normal scale
        assert ((y[0, 0, 0] - x[0, 0, 0]).abs() <= 2.0**-15).all()
        assert y[0, 0, 2, 0] == pytest.approx(127 * 65504.0)  # clipped, as documented


def test_fp8_clips_beyond_its_range_and_decoding_refuses_another_storage():
    e = encode(torch.tensor([[[[1000.0, -1000.0, 0.5]]]]), "fp8")
    assert decode(e["hidden"], "fp8").flatten().tolist() == [448.0, -448.0, 0.5]
    with pytest.raises(HskdError, match="another --storage"):
        decode(encode(torch.ones(1, 1, 2, 2), "int8")["hidden"], "fp16")
    with pytest.raises(HskdError, match="another --storage"):
        decode(torch.ones(1, 1, 2, 2, dtype=torch.float16), "fp8")
    with pytest.raises(HskdError, match="hidden_scale"):
        decode(encode(torch.ones(1, 1, 2, 2), "int8")["hidden"], "int8")
    assert [index_dtype(n) for n in (127, 128, 383, 70000)] == ["int8", "int16", "int16", "int32"]


@pytest.mark.parametrize("storage", ["bf16", "int8", "int8-dim", "fp8"])
def test_a_cache_in_each_storage_serves_what_fp16_serves_within_the_bound(tmp_path, setup, storage):  # noqa: F811
    spec = parse_budget("2l_4t_0.5h", length="attention", width="uniform")
    ref, plan = _cache(tmp_path, setup, spec, name="fp16")
    small, _ = _cache(tmp_path, setup, spec, name=storage, storage=storage)
    assert small.manifest["storage"] == storage and small.arrays["hidden"].dtype.itemsize < 3
    assert small.arrays["token_index"].dtype == np.int8  # 32 tokens fit in int8
    assert small.arrays["dims"].dtype == np.int8  # the uniform dims, stored once
    ids = np.arange(16)
    a, b = ref.read(ids, plan, seq_len=32), small.read(ids, plan, seq_len=32)
    assert torch.equal(a.token_index, b.token_index) and torch.equal(a.dim_index, b.dim_index)
    x = a.hidden.float()
    scale = small.read_stored(ids, plan, 32).get("hidden_scale")
    assert ((b.hidden - x).abs() <= _bound(storage, x, scale) + FP16 * x.abs()).all()
    if storage != "bf16":
        assert small.manifest["arrays"]["hidden"]["bytes"] < 0.6 * ref.manifest["arrays"]["hidden"]["bytes"]
    # training sees the decoded values: the loss from the compact cache is close to fp16's
    torch.manual_seed(0)  # the same projection for both
    (_, _), (loss_ref, _) = _losses(setup, plan, ref)
    torch.manual_seed(0)
    (_, _), (loss_small, _) = _losses(setup, plan, small)
    assert torch.allclose(loss_ref, loss_small, rtol=0.05), (loss_ref.item(), loss_small.item())


def test_a_sliced_read_keeps_the_scale_that_goes_with_the_dims(tmp_path, setup):  # noqa: F811
    _, _, _, student = setup
    big, _ = _cache(tmp_path, setup, parse_budget("3l_6t", length="attention"), storage="int8-dim")
    ref, _ = _cache(tmp_path, setup, parse_budget("3l_6t", length="attention"), name="ref")
    for small in (parse_budget("1l_3t_0.5h", length="attention", width="uniform"),
                  parse_budget("2l_2t_0.25h", length="attention", width="magnitude")):
        plan = small.resolve(student.config.num_hidden_layers, 4)
        a, b = ref.read(np.arange(16), plan, 32), big.read(np.arange(16), plan, 32)
        if small.width == "uniform":  # the same dims, each with its own dimension's scale
            assert torch.equal(a.dim_index, b.dim_index)
            assert torch.allclose(a.hidden.float(), b.hidden.float(), atol=0.03)
        else:  # magnitude chosen on decoded values: near-ties may swap dims, the top values agree
            top = [k.hidden.float().abs().sort(-1).values for k in (a, b)]
            assert torch.allclose(*top, atol=0.03)


def test_a_cache_read_with_the_wrong_storage_is_refused(tmp_path, setup):  # noqa: F811
    reader, _ = _cache(tmp_path, setup, parse_budget("1l_4t_0.5h"), storage="int8")
    with pytest.raises(HskdError, match="stores its hidden values as int8, not fp8"):
        CacheReader(reader.path, storage="fp8")
    manifest = json.loads((reader.path / "manifest.json").read_text())
    manifest["storage"] = "fp16"  # says fp16, holds int8 bytes
    (reader.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(HskdError, match="says fp16 storage but its hidden values are int8"):
        CacheReader(reader.path)
    # the trainer's decode step leaves a decoded batch as it is
    k = decode_batch({"hidden": torch.ones(1, 1, 1, 2), "logits": torch.zeros(1, 2)})
    assert set(k) == {"hidden", "logits"}


@pytest.mark.parametrize("budget,storage", [("1l_4t_0.5h", "int8"), ("2l_3t", "fp8"), ("3l", "fp16"),
                                            ("2l_5t_0.25h", "int8-dim")])
def test_the_planner_predicts_the_real_cache_within_2_percent(tmp_path, tiny_glue, tiny_teacher, budget, storage):
    s = Settings(task="SST-2", data_dir=str(tiny_glue), teacher=str(tiny_teacher), output_dir=str(tmp_path / "c"),
                 knowledge=budget, student_layers="2", storage=storage, quiet=True, dry_run=True)
    plan = make_cache(s)
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.partial").exists()  # nothing written
    real = make_cache(Settings(**{**s.__dict__, "dry_run": False}))
    assert abs(plan["bytes"] - real["bytes"]) <= 0.02 * real["bytes"]
    for name, info in real["arrays"].items():
        assert plan["arrays"][name]["bytes"] == info["bytes"], name
    assert plan["hsk_fraction"] == pytest.approx(real["hsk_fraction"], rel=0.02)
    assert plan["full_hsk_bytes"] == real["full_hsk_bytes"]
    assert plan["free_bytes"] > 0 and plan["extract_seconds"] > 0 and plan["timed_rows"] > 0


def test_dry_run_prints_the_plan_and_a_cache_describes_itself(tmp_path, capsys, tiny_glue, tiny_teacher):
    args = ("--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--output-dir", tmp_path / "c",
            "--knowledge", "1l_4t_0.5h", "--student-layers", "2", "--storage", "int8", "--quiet")
    assert run_cli("cache", *args, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "| values |" in out and "| indices |" in out and "| logits |" in out and "free space" in out
    assert "nothing written" in out and not (tmp_path / "c").exists()
    assert run_cli("cache", *args) == 0
    capsys.readouterr()
    readme = (tmp_path / "c" / "README.md").read_text()
    assert "1l_4t_0.5h" in readme and "int8 with an fp16 scale per token row" in readme
    assert "16 training rows" in readme and str(tiny_teacher) in readme and "hskd cache" in readme
    assert "the 4 tokens with the highest [CLS] attention" in readme and "16 of 32 dimensions" in readme
    assert run_cli("inspect", tmp_path / "c") == 0
    shown = capsys.readouterr().out
    assert readme in shown and "complete: yes" in shown and "sha256 verified" in shown and "serves:" in shown
    # a corrupted array is named; an interrupted write points at the resume
    hidden = tmp_path / "c" / "hidden.npy"
    data = bytearray(hidden.read_bytes())
    data[-1] ^= 0xFF
    hidden.write_bytes(bytes(data))
    assert run_cli("inspect", tmp_path / "c") == 2
    assert "corrupted" in capsys.readouterr().err
    (tmp_path / "p.partial").mkdir()
    assert run_cli("inspect", tmp_path / "p") == 2
    assert "rerun the same hskd cache command to resume" in capsys.readouterr().err
    # what a cache cannot hold is refused by the planner too, not planned and then refused
    minilm = ("--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--output-dir", tmp_path / "m",
              "--recipe", "minilm", "--student-layers", "2", "--quiet", "--dry-run")
    assert run_cli("cache", *minilm) == 2 and not (tmp_path / "m").exists()
    assert "not cached" in capsys.readouterr().err
    # a uniform-width cache serves only the smaller fractions whose dims it stores: it says so
    assert run_cli("cache", *args[:7], tmp_path / "u", "--knowledge", "1l_4t_0.5h", "--width-strategy", "uniform",
                   "--student-layers", "2", "--quiet") == 0
    assert "or a smaller fraction whose dims it stores" in (tmp_path / "u" / "README.md").read_text()


def test_distill_trains_from_the_default_int8_cache_and_refuses_another_storage(tmp_path, capsys, monkeypatch, tiny_glue,
                                                                      tiny_teacher, tiny_narrow):
    cache = tmp_path / "cache"
    assert run_cli("cache", "--task", "SST-2", "--data-dir", tiny_glue, "--teacher", tiny_teacher, "--output-dir",
                   cache, "--knowledge", "1l_4t_0.5h", "--student-layers", "2", "--quiet") == 0
    # int8 is the default storage (docs/RESULTS.md, issue 15: the same dev predictions as fp16)
    assert json.loads((cache / "manifest.json").read_text())["storage"] == "int8"
    assert np.load(cache / "hidden.npy", mmap_mode="r").dtype == np.int8
    common = ("distill", "--task", "SST-2", "--data-dir", tiny_glue, "--cache", cache, "--student-model", tiny_narrow,
              "--student-layers", "2", "--recipe", "mud", "--knowledge", "1l_4t_0.5h", "--hsk-epochs", "1", *TINY)
    assert run_cli(*common, "--storage", "fp16", "--output-dir", tmp_path / "bad") == 2
    assert "stores its hidden values as int8" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    from hskd.sources import CachedKnowledge

    seen, real_call = [], CachedKnowledge.__call__

    def spy(self, inputs, batch_knowledge):  # what reaches the step: decoded in the data path
        if "hidden" in batch_knowledge:  # the HSK stage (the prediction stage reads logits only)
            seen.append((batch_knowledge["hidden"].dtype, "hidden_scale" in batch_knowledge))
        return real_call(self, inputs, batch_knowledge)

    monkeypatch.setattr(CachedKnowledge, "__call__", spy)
    assert run_cli(*common, "--output-dir", tmp_path / "s") == 0
    assert seen and set(seen) == {(torch.float32, False)}
    hsk = json.loads((tmp_path / "s" / "checkpoints" / "00-hsk" / "stage.json").read_text())
    assert hsk["train_loss"] > 0 and np.isfinite(hsk["train_loss"])
