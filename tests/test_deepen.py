"""bench/deepen.py: the 12-layer stand-in teacher of PKD's 12 -> 6 table in docs/RESULTS.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from hskd.families import layer_list
from hskd.models import keep_layers

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "deepen.py"


def _deepen_module():
    spec = importlib.util.spec_from_file_location("deepen", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_layer_is_repeated_in_place_as_an_untied_copy(tiny_backbone: Path) -> None:
    base = AutoModel.from_pretrained(tiny_backbone)
    deep = _deepen_module().deepen(str(tiny_backbone), repeat=2)
    n = base.config.num_hidden_layers
    assert deep.config.num_hidden_layers == len(layer_list(deep)) == 2 * n
    for i, block in enumerate(layer_list(deep)):
        source = layer_list(base)[i // 2].state_dict()
        assert all(torch.equal(source[k], v) for k, v in block.state_dict().items())
    first, second = layer_list(deep)[0], layer_list(deep)[1]
    # tied copies would train as one layer: every tensor of the pair must have its own storage
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert a.data_ptr() != b.data_ptr()
    assert torch.equal(deep.embeddings.word_embeddings.weight, base.embeddings.word_embeddings.weight)


def test_the_saved_model_loads_and_runs_with_its_new_depth(tiny_backbone: Path, tmp_path: Path) -> None:
    deep = _deepen_module().deepen(str(tiny_backbone), repeat=3)
    deep.save_pretrained(tmp_path / "deep")
    loaded = AutoModel.from_pretrained(tmp_path / "deep").eval()
    ids = torch.tensor([[2, 5, 7, 3]])
    out = loaded(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == 3 * AutoModel.from_pretrained(tiny_backbone).config.num_hidden_layers + 1


def test_repeat_below_one_is_refused(tiny_backbone: Path) -> None:
    with pytest.raises(SystemExit, match="--repeat 0"):
        _deepen_module().deepen(str(tiny_backbone), repeat=0)


def test_a_student_that_keeps_a_layer_twice_gets_an_untied_copy(tiny_backbone: Path) -> None:
    # the mechanism deepen.py shares with build_student (`--student-layers 0,0`)
    model = AutoModel.from_pretrained(tiny_backbone)
    keep_layers(model, [1, 0, 1])
    first, _, again = layer_list(model)
    assert model.config.num_hidden_layers == 3
    assert [block.attention.self.layer_idx for block in layer_list(model)] == [0, 1, 2]  # renumbered
    assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr()
               for a, b in zip(first.parameters(), again.parameters(), strict=True))
