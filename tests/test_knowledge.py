"""Layer maps, selectors, the MUD notation, the projection, and extract/gather."""

from types import SimpleNamespace

import pytest
import torch

from hskd.errors import HskdError
from hskd.knowledge import (
    LENGTH,
    WIDTH,
    KnowledgeSpec,
    extract,
    gather,
    parse_budget,
)
from hskd.models import Projection


def test_uniform_map_includes_embedding_and_uses_t_top():
    spec = KnowledgeSpec(hidden=True)
    assert spec.layer_pairs(3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    # MUD: g(l, T_top) = round(l * T_top / n_s), half to even
    assert KnowledgeSpec(hidden=True, t_top=10).layer_pairs(4, 12) == [(0, 0), (1, 2), (2, 5), (3, 8), (4, 10)]
    assert KnowledgeSpec(hidden=True, t_top=8).layer_pairs(4, 12) == [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)]


def test_top_k_layers_keeps_the_highest_student_layers():
    assert KnowledgeSpec(hidden=True, layers=2).layer_pairs(3, 6) == [(2, 4), (3, 6)]
    with pytest.raises(HskdError):
        KnowledgeSpec(hidden=True, layers=5).layer_pairs(3, 6)


def test_pkd_skip_and_last_maps():
    assert KnowledgeSpec(hidden=True, depth="skip").layer_pairs(6, 12) == [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]
    assert KnowledgeSpec(hidden=True, depth="last").layer_pairs(6, 12) == [(1, 7), (2, 8), (3, 9), (4, 10), (5, 11)]
    assert KnowledgeSpec(hidden=True, depth="skip").layer_pairs(3, 6) == [(1, 2), (2, 4)]
    assert KnowledgeSpec(hidden=True, depth="last").layer_pairs(3, 6) == [(1, 4), (2, 5)]


def test_explicit_map_and_range_check():
    spec = KnowledgeSpec(hidden=True, depth="list", layer_map=[[1, 2], [3, 6]])
    assert spec.layer_pairs(3, 6) == [(1, 2), (3, 6)]
    with pytest.raises(HskdError, match="out of range"):
        KnowledgeSpec(hidden=True, depth="list", layer_map=[[1, 9]]).layer_pairs(3, 6)


def test_parse_budget_notation():
    spec = parse_budget("1l_10t_0.1h")
    assert (spec.layers, spec.tokens, spec.width_fraction) == (1, 10, 0.1)
    assert (spec.length, spec.width, spec.hidden) == ("attention", "uniform", True)
    spec = parse_budget("2l_5t_0.5h", length="left", width="random")
    assert (spec.layers, spec.tokens, spec.length, spec.width) == (2, 5, "left", "random")
    assert parse_budget("3l").tokens is None and parse_budget("3l").length == "all"
    for bad in ("", "1x", "l_t_h", "0.1"):
        with pytest.raises(HskdError):
            parse_budget(bad)
    same = KnowledgeSpec.from_dict(parse_budget("1l_10t_0.1h").to_dict())
    assert same == parse_budget("1l_10t_0.1h")


def test_left_masks_past_the_end_and_cls_is_position_zero():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    index, valid = LENGTH["left"](attention_mask=mask, k=4, pairs=1)
    assert valid.tolist() == [[[True, True, True, False]], [[True, True, True, True]]]
    index, valid = LENGTH["cls"](attention_mask=mask, k=None, pairs=2)
    assert index.shape == (2, 2, 1) and index.sum() == 0 and valid.all()


def _attention(rows):
    """[batch, pairs=1, seq]: the head-averaged [CLS] attention row."""
    return torch.tensor(rows, dtype=torch.float)[:, None, :]


def test_attention_ranks_cls_row_and_never_picks_padding():
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    att = _attention([[0.1, 0.4, 0.2, 0.3, 0.9]])  # the padding position has the largest score
    index, valid = LENGTH["attention"](attention_mask=mask, k=3, pairs=1, cls_attention=att)
    assert index.tolist() == [[[1, 3, 2]]] and valid.all()
    index, valid = LENGTH["attention"](attention_mask=mask, k=5, pairs=1, cls_attention=att)
    assert index[0, 0, :4].tolist() == [1, 3, 2, 0]
    assert valid.tolist() == [[[True, True, True, True, False]]]


def test_attention_no_sep_uses_tokenizer_sep_id_per_example():
    sep = 7
    ids = torch.tensor([[2, 5, sep, 6, sep], [2, sep, 5, 5, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    att = _attention([[0.1, 0.2, 0.9, 0.3, 0.8], [0.1, 0.9, 0.3, 0.2, 0.0]])
    index, valid = LENGTH["attention-no-sep"](attention_mask=mask, k=3, pairs=1, cls_attention=att,
                                              input_ids=ids, sep_token_id=sep)
    assert index[0, 0].tolist() == [3, 1, 0]  # both [SEP]s skipped in the pair example
    assert index[1, 0].tolist() == [2, 3, 0]  # one [SEP] in the other


def test_width_selectors():
    values = torch.randn(2, 1, 3, 10)
    assert WIDTH["all"](values, 10, 0) is None
    assert WIDTH["uniform"](values, 5, 0).tolist() == [0, 2, 4, 6, 8]
    r1, r2 = WIDTH["random"](values, 4, 3), WIDTH["random"](values, 4, 3)
    assert r1.tolist() == r2.tolist() and len(set(r1.tolist())) == 4
    assert WIDTH["random"](values, 2, 3).tolist() == r1[:2].tolist()  # prefixes nest
    top = WIDTH["magnitude"](values, 3, 0)
    assert top.shape == (2, 1, 3, 3)
    expected = values.abs().argsort(-1, descending=True)[..., :3]
    assert torch.equal(top, expected)


def test_magnitude_selection_is_independent_of_batch_composition():
    values = torch.randn(4, 2, 5, 16)
    alone = WIDTH["magnitude"](values[1:2], 4, 0)
    together = WIDTH["magnitude"](values, 4, 0)[1:2]
    assert torch.equal(alone, together)


def test_projection_identity_and_subset():
    same = Projection(8, 8)
    x = torch.randn(2, 8)
    assert same.linear is None and torch.equal(same(x), x)
    proj = Projection(4, 8)
    x = torch.randn(3, 4)
    idx = torch.tensor([1, 5, 6])
    assert torch.allclose(proj(x, out_index=idx), proj(x)[:, idx], atol=1e-6)


def _outputs(hidden, att=None, logits=None):
    return SimpleNamespace(hidden_states=hidden, attentions=att, logits=logits if logits is not None else torch.zeros(1))


def test_gather_matches_extract_for_the_same_model():
    torch.manual_seed(0)
    b, seq, d, n = 2, 6, 8, 3
    hidden = tuple(torch.randn(b, seq, d) for _ in range(n + 1))
    att = tuple(torch.rand(b, 2, seq, seq).softmax(-1) for _ in range(n))
    batch = {"input_ids": torch.randint(5, 50, (b, seq)), "attention_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2])}
    out = _outputs(hidden, att, torch.randn(b, 2))
    for length in ("all", "cls", "left", "attention"):
        for width in ("all", "uniform", "random", "magnitude"):
            spec = KnowledgeSpec(hidden=True, attentions=length != "cls", depth="uniform", layers=2,
                                 length=length, tokens=3, width=width,
                                 width_fraction=1.0 if width == "all" else 0.5)
            plan = spec.resolve(n, n)
            k = extract(plan, out, batch)
            s_hidden, s_att = gather(plan, out, k, None)
            assert torch.allclose(s_hidden * k.token_mask[..., None], k.hidden), (length, width)
            if spec.attentions:
                assert torch.allclose(s_att, k.attentions)


def test_cls_attention_from_hidden_states_equals_eager_attention():
    from transformers import BertConfig, BertModel

    from hskd.models import cls_attention

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=32, attn_implementation="eager")
    model = BertModel(config).eval()
    ids = torch.randint(5, 50, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        rows = cls_attention(model, out.hidden_states, mask, [0, 2])
    expected = torch.stack([out.attentions[0], out.attentions[2]], 1).mean(2)[:, :, 0, :]
    assert torch.allclose(rows, expected, atol=1e-6)
    assert rows[1, :, 5:].abs().max() < 1e-6  # padding gets no attention


def test_spec_validation():
    with pytest.raises(HskdError, match="width strategy"):
        KnowledgeSpec(hidden=True, width="all", width_fraction=0.1)
    assert KnowledgeSpec(hidden=True, depth="list", layer_map=["1:2", "3:6"]).layer_map == [[1, 2], [3, 6]]
    with pytest.raises(HskdError, match="bad layer_map"):
        KnowledgeSpec(hidden=True, depth="list", layer_map=[[1]])
    with pytest.raises(HskdError, match="token count"):
        KnowledgeSpec(hidden=True, length="left")


def test_pkd_maps_of_a_three_layer_student_from_twelve():
    # METHODS row 16: hskd's Skip keeps every 4th teacher layer (the paper's definition); PKD's own
    # script for this case uses teacher layers 10, 11, which is hskd's Last
    assert KnowledgeSpec(hidden=True, depth="skip").layer_pairs(3, 12) == [(1, 4), (2, 8)]
    assert KnowledgeSpec(hidden=True, depth="last").layer_pairs(3, 12) == [(1, 10), (2, 11)]
