"""Every encoder family of hskd's table (hskd.families), as a tiny random-weight model built in
memory with the bundled WordPiece tokenizer: fine-tuned, distilled (soft labels, and hidden
states with a layer cut from it as the student) and cached."""

import json

import pytest
import torch

from tests.conftest import TINY, run_cli


def _config(kind: str, vocab: int, pad: int):
    import transformers as tf

    common = dict(vocab_size=vocab, pad_token_id=pad)
    if kind == "distilbert":
        return tf.DistilBertConfig(dim=32, hidden_dim=64, n_layers=4, n_heads=4, max_position_embeddings=130, **common)
    if kind == "modernbert":
        return tf.ModernBertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                                   max_position_embeddings=130, global_attn_every_n_layers=2, **common)
    cls = {"roberta": tf.RobertaConfig, "xlm-roberta": tf.XLMRobertaConfig, "electra": tf.ElectraConfig,
           "deberta-v2": tf.DebertaV2Config}[kind]
    extra = {"type_vocab_size": 1} if kind in ("roberta", "xlm-roberta") else {}  # as the released checkpoints
    if kind == "electra":
        extra["embedding_size"] = 32
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
               max_position_embeddings=130, **extra, **common)


FAMILY_KINDS = ["roberta", "xlm-roberta", "electra", "deberta-v2", "distilbert", "modernbert"]


@pytest.fixture(scope="module", params=FAMILY_KINDS)
def backbone(request, tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    from hskd.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    torch.manual_seed(0)
    model = AutoModel.from_config(_config(request.param, tok.vocab_size, tok.pad_token_id))
    path = tmp_path_factory.mktemp(request.param) / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return request.param, path


@pytest.mark.slow
def test_a_family_finetunes_distills_and_caches(tmp_path, tiny_glue, backbone):
    kind, path = backbone
    task = ("--task", "MRPC", "--data-dir", tiny_glue)  # sentence pairs: token types matter
    teacher = tmp_path / "teacher"
    assert run_cli("finetune", *task, "--model", path, "--output-dir", teacher, *TINY) == 0
    assert json.loads((teacher / "config.json").read_text())["model_type"] == kind
    for recipe in ("kd", "tinybert"):  # soft labels; hidden states through the layer map
        out = tmp_path / recipe
        assert run_cli("distill", *task, "--teacher", teacher, "--student-model", path, "--student-layers", "2",
                       "--recipe", recipe, "--output-dir", out, *TINY) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == kind and config.get("num_hidden_layers", config.get("n_layers")) == 2
    cache = tmp_path / "cache"
    assert run_cli("cache", *task, "--teacher", teacher, "--knowledge", "1l_4t_0.5h", "--student-layers", "2",
                   "--output-dir", cache, "--quiet") == 0
    assert run_cli("distill", *task, "--cache", cache, "--student-model", path, "--student-layers", "2",
                   "--recipe", "mud", "--knowledge", "1l_4t_0.5h", "--hsk-epochs", "1", "--output-dir",
                   tmp_path / "mud", *TINY) == 0


def test_an_unknown_family_is_one_line(tmp_path, capsys, tiny_glue):
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    from hskd.models import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(None))
    path = tmp_path / "gpt2"
    GPT2Model(GPT2Config(vocab_size=tok.vocab_size, n_embd=16, n_layer=1, n_head=2)).save_pretrained(path)
    tok.save_pretrained(path)
    assert run_cli("finetune", "--task", "SST-2", "--data-dir", tiny_glue, "--model", path, "--output-dir",
                   tmp_path / "out", *TINY) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not handle 'gpt2' models; it distills bert, roberta" in err[0]
