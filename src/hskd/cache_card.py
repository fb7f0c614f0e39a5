"""A knowledge cache describes itself: ``CACHE/README.md`` (written with the cache) and
``hskd inspect CACHE`` (the README plus the manifest's checks)."""

from __future__ import annotations

from pathlib import Path

from hskd.errors import HskdError
from hskd.knowledge import KnowledgeSpec

STORAGE_WORDS = {"fp16": "fp16 (2 bytes a value)", "bf16": "bf16 (2 bytes a value)",
                 "int8": "int8 with an fp16 scale per token row (1 byte a value)",
                 "int8-dim": "int8 with an fp16 scale per dimension of each example's layer (1 byte a value)",
                 "fp8": "fp8 e4m3 (1 byte a value)"}
LENGTH_WORDS = {"all": "every token", "cls": "the [CLS] token", "left": "the first {k} tokens",
                "attention": "the {k} tokens with the highest [CLS] attention",
                "attention-no-sep": "the {k} tokens with the highest [CLS] attention, [SEP] excluded"}


def budget_in_words(spec: KnowledgeSpec, pairs: list, hidden_size: int) -> str:
    """A spec in words, e.g. "1 layer (student 3 ← teacher 6), the 10 tokens with the highest
    [CLS] attention (...), 38 of 384 dimensions (uniform)"."""
    layers = ", ".join(f"{s}←{t}" for s, t in pairs)
    parts = [f"{len(pairs)} layer{'s' * (len(pairs) != 1)} of the {spec.depth} map (student←teacher: {layers})"]
    length = LENGTH_WORDS.get(spec.length, spec.length).format(k=spec.tokens)
    if spec.length.startswith("attention"):
        length += f" (ranked by the {spec.rank_layer} layer's {spec.rank_by})"
    parts.append(length)
    if spec.hidden:
        w = spec.kept_width(hidden_size)
        parts.append(f"{w} of {hidden_size} dimensions" + (f" ({spec.width})" if spec.width != "all" else ""))
    kinds = [name for name, on in (("hidden states", spec.hidden), ("attention scores" if spec.attention_scores
                                    else "attention rows", spec.attentions)) if on]
    return f"{' and '.join(kinds) or 'no hidden knowledge'}: " + ", ".join(parts)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def readme_text(manifest: dict) -> str:
    """The README.md of a cache, from its manifest."""
    spec = KnowledgeSpec.from_dict(manifest["spec"])
    fp, arrays = manifest["fingerprint"], manifest["arrays"]
    d = manifest["teacher_hidden"]
    sizes = ", ".join(f"{name} {_mib(info.get('bytes', 0))}" for name, info in arrays.items() if info.get("bytes"))
    storage = manifest.get("storage", "fp16")
    lines = [
        f"# Knowledge cache: {fp.get('task')}, {spec.describe()}",
        "",
        "The teacher's selected knowledge, extracted once by `hskd cache`; `hskd distill --cache` trains a "
        "student from it without loading the teacher.",
        "",
        f"- **Teacher:** {fp.get('teacher', 'not recorded')} ({manifest['teacher_layers']} layers, hidden "
        f"{d}, {manifest['teacher_heads']} heads)",
        f"- **Task:** {fp.get('task')}, {manifest['rows']:,} training rows, at most {manifest['max_seq_length']} "
        "tokens",
        f"- **Student:** {fp.get('student_layers', '?')} layers",
        f"- **Budget:** `{spec.describe()}`: {budget_in_words(spec, manifest['pairs'], d)}; soft labels (logits) "
        "for every row",
        f"- **Storage:** hidden values in {STORAGE_WORDS.get(storage, storage)}",
        f"- **Size on disk:** {_mib(manifest.get('bytes', 0))} ({sizes}); "
        f"{manifest.get('bytes_fraction', 0) * 100:.3f} % of the full HSK's "
        f"{_mib(manifest.get('full_hsk_bytes', 0))} (every layer of the uniform map, every real token and "
        f"dimension, in fp16); the hidden values kept are {manifest.get('hsk_fraction', 0) * 100:.3f} % of "
        "the full HSK's",
        f"- **Serves:** {serves(manifest)}",
    ]
    if manifest.get("extract_examples_per_second"):
        env = manifest.get("environment") or {}
        lines.append(f"- **Extraction:** {manifest['extract_seconds']:.1f} s, "
                     f"{manifest['extract_examples_per_second']:.1f} examples/s on {env.get('device', '?')}"
                     + (f" (resumed after {manifest['resumed_at_row']:,} rows: the time is the resumed part's)"
                        if manifest.get("resumed_at_row") else ""))
    lines.append(f"- **Created:** {manifest.get('created', '?')}")
    if manifest.get("command"):
        lines += ["", "Made with:", "", "```", manifest["command"], "```"]
    return "\n".join(lines) + "\n"


def serves(manifest: dict) -> str:
    """Which budgets a cache can serve by slicing (:meth:`CacheReader.serving`), in words."""
    spec = KnowledgeSpec.from_dict(manifest["spec"])
    pairs = manifest["pairs"]
    if not (spec.hidden or spec.attentions):
        return "soft labels only"
    tokens = manifest["arrays"]["token_index"]["shape"][-1]
    depth = f"any subset of its {len(pairs)} layer pair{'s' * (len(pairs) != 1)}"
    if spec.length in ("all", "left"):
        length = f"cls, left up to {tokens} tokens" + (", all" if spec.length == "all" else "")
    else:
        length = f"{spec.length} up to {tokens} tokens"
    if not spec.hidden:
        width = "no hidden states"
    elif spec.width == "all":
        width = "any width strategy and fraction"
    elif spec.width.startswith("uniform"):  # only fractions whose dims are among the stored ones
        width = f"{spec.width} width at {spec.width_fraction:g}, or a smaller fraction whose dims it stores"
    else:
        width = f"{spec.width} width up to {spec.width_fraction:g}"
    return f"{depth}; {length}; {width}"


def inspect_cache(path: str | Path, verify: bool = True) -> str:
    """``hskd inspect CACHE``: the cache's README and its checks (complete, fingerprint, sizes
    and checksums, storage, what it serves), as text.

    Raises:
        HskdError: not a cache (no manifest), with the reason: missing, interrupted, corrupted.
    """
    from hskd.cache_reader import CacheReader, partial_dir

    path = Path(path).expanduser()
    if not (path / "manifest.json").is_file() and partial_dir(path).exists():
        done = sorted(partial_dir(path).glob("progress.*.json"))
        raise HskdError(f"{path} is not finished: an interrupted write is in {partial_dir(path).name} "
                        f"({len(done)} rank file(s) of progress); rerun the same hskd cache command to resume")
    reader = CacheReader(path, verify=verify)  # raises on a missing, truncated or corrupted cache
    m = reader.manifest
    readme = path / "README.md"
    text = readme.read_text() if readme.is_file() else readme_text(m)
    fp = m["fingerprint"]
    checks = [
        "## Checks",
        "",
        "- complete: yes (manifest.json present, no .partial)",
        f"- arrays: {len(m['arrays'])}, shapes and dtypes as the manifest says"
        + ("; sha256 verified" if verify else "; sha256 not verified (--no-verify)"),
        f"- storage: {reader.storage}, format {m.get('format', 1)}",
        "- fingerprint: " + ", ".join(f"{k} {str(v)[:12]}" for k, v in fp.items() if k not in ("spec", "labels")),
        f"- serves: {serves(m)}",
    ]
    return text + "\n" + "\n".join(checks) + "\n"
