"""Methods as data: a recipe is knowledge plus stages of weighted loss terms (see
:mod:`hskd.recipe_book` for the format and the built-in ones). ``--recipe NAME`` takes a
built-in recipe, ``--recipe my_recipe.yaml`` a user's; ``hskd recipes`` lists them.
"""

from __future__ import annotations

import ast
import copy
import operator
from dataclasses import dataclass
from pathlib import Path

import yaml

from hskd import terms_contrastive, terms_minilm  # noqa: F401, I001 - they register the built-in terms
from hskd.errors import HskdError
from hskd.knowledge import KnowledgeSpec, Plan, parse_budget
from hskd.recipe_book import BUILTIN
from hskd.registry import Registry
from hskd.terms import LOSSES, Objective, TermContext

IRD_SCHEDULES = ("all", "progressive", "stacked")
RECIPE_KEYS = {"name", "source", "defaults", "knowledge", "stages"}
STAGE_KEYS = {"name", "epochs", "learning_rate", "scheduler", "select_best", "schedule", "terms"}
# Settings that set a term's option for every recipe (the named departures of docs/METHODS.md):
# term -> option -> (setting, {setting value: option value} or None for the same value)
TERM_SETTINGS = {
    "kd": {"form": ("kd_form", None), "reduction": ("kd_reduction", None),
           "t_squared": ("kd_temperature_scaling", {"t2": True, "none": False})},
    "pkd": {"normalize": ("pkd_states", {"normalized": True, "raw": False})},
    "hidden_mse": {"width_loss": ("hidden_width_loss", None)},
    "attention_kl": {"average": ("attention_kl_average", None)},
}
KNOWLEDGE_BUILDERS = Registry("knowledge builder")
register_knowledge = KNOWLEDGE_BUILDERS.register


@dataclass
class Stage:
    """One training run within a recipe: its own epochs, learning rate and objective.
    ``select_best`` keeps the best checkpoint by the dev metric (stages that train the
    classifier); otherwise the last weights are kept."""

    name: str
    epochs: float
    learning_rate: float
    objective: Objective
    select_best: bool = True
    scheduler: str = "linear"


def is_recipe_file(recipe: str) -> bool:
    return str(recipe).endswith((".yaml", ".yml"))


def load_recipe(recipe: str) -> dict:
    """A recipe definition: built-in by name, or a user's YAML file.

    Raises:
        HskdError: an unknown name, a missing or malformed file, or unknown keys.
    """
    if not is_recipe_file(recipe):
        if recipe not in BUILTIN:
            raise HskdError(f"unknown recipe {recipe!r}: use one of {', '.join(BUILTIN)}, or a recipe .yaml file")
        return {"name": recipe, **copy.deepcopy(BUILTIN[recipe])}
    path = Path(recipe).expanduser()
    if not path.is_file():
        raise HskdError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise HskdError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); fix the recipe") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise HskdError(f"{path}: a recipe is a mapping with a non-empty 'stages' list (see hskd recipes --show kd)")
    unknown = set(data) - RECIPE_KEYS
    if unknown:
        raise HskdError(f"{path}: unknown recipe key(s) {sorted(unknown)}; use {sorted(RECIPE_KEYS)}")
    for stage in data["stages"]:
        if not isinstance(stage, dict) or not isinstance(stage.get("terms"), list):
            raise HskdError(f"{path}: each stage is a mapping with a 'terms' list")
        bad = set(stage) - STAGE_KEYS
        if bad:
            raise HskdError(f"{path}: unknown stage key(s) {sorted(bad)}; use {sorted(STAGE_KEYS)}")
        for term in stage["terms"]:
            if not isinstance(term, dict) or "loss" not in term:
                raise HskdError(f"{path}: a term is a mapping with 'loss' (got {term!r})")
            LOSSES.get(term["loss"])  # an unknown term fails now, before any model is loaded
    return {"name": path.stem, **data}


def recipe_names() -> list[str]:
    return list(BUILTIN)


def recipe_defaults(recipe: str | None) -> dict:
    """The settings a recipe changes unless the user sets them (its published defaults)."""
    return dict(load_recipe(recipe).get("defaults") or {}) if recipe else {}


# ----------------------------------------------------------------------------- expressions
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg}


def evaluate(expr, s):
    """A number, or arithmetic over setting names (``1 - alpha``); ``None`` stays ``None``.

    Raises:
        HskdError: an unknown name or an expression that is not plain arithmetic.
    """
    if expr is None or isinstance(expr, bool | int | float):
        return expr

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.Name):
            if not hasattr(s, node.id):
                raise HskdError(f"recipe expression {expr!r}: unknown setting {node.id!r}")
            return getattr(s, node.id)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            return None if left is None or right is None else _OPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            value = walk(node.operand)
            return None if value is None else _OPS[type(node.op)](value)
        raise HskdError(f"recipe expression {expr!r}: use numbers, setting names and + - * /")

    try:
        return walk(ast.parse(str(expr), mode="eval"))
    except SyntaxError:
        raise HskdError(f"recipe expression {expr!r} is not arithmetic") from None


# ------------------------------------------------------------------------------- knowledge
@register_knowledge("budget")
def knowledge_spec(s) -> KnowledgeSpec:
    """MUD's ``--knowledge`` as a spec: a budget string with the strategy flags, or a mapping
    (the YAML form; the strategy flags, and so a preset's, fill the fields it leaves out). Soft
    labels are always included; under ``--preset mud`` the width names map to MUD's own
    selectors (``uniform`` → ``uniform-stride``, ...) in both forms.

    Raises:
        HskdError: no ``--knowledge``, a bad budget string or an unknown field in the mapping.
    """
    from hskd.presets import preset_width

    padding = {"padding": s.hsk_padding} if getattr(s, "hsk_padding", None) else {}
    if isinstance(s.knowledge, dict):
        flags = {"depth": s.depth_strategy, "length": s.length_strategy, "width": s.width_strategy, "t_top": s.t_top,
                 "seed": s.width_seed, "rank_layer": s.rank_layer, "rank_by": s.rank_by}
        given = {k: v for k, v in flags.items() if v is not None and k not in s.knowledge}
        spec = KnowledgeSpec.from_dict({**given, **s.knowledge, "logits": True, **padding})
    elif not s.knowledge:
        raise HskdError("give --knowledge, e.g. 1l_10t_0.1h")
    else:
        spec = parse_budget(str(s.knowledge), depth=s.depth_strategy or "uniform", length=s.length_strategy,
                            width=s.width_strategy, t_top=s.t_top, seed=s.width_seed, logits=True,
                            rank_layer=s.rank_layer, rank_by=s.rank_by, **padding)
    width = preset_width(getattr(s, "preset", None), spec.width)
    return spec if width == spec.width else KnowledgeSpec.from_dict({**spec.to_dict(), "width": width})


@register_knowledge("ird-rows")
def ird_spec(s) -> KnowledgeSpec:
    """Aguilar et al.: attentions and [CLS] on the uniform map; the attention rows are all
    tokens, the first k (``left``, k from ``--knowledge``) or [CLS] only."""
    rows = s.length_strategy or "all"
    if rows not in ("all", "left", "cls"):
        raise HskdError("ird takes --length-strategy all, left or cls (attention rows)")
    tokens = parse_budget(str(s.knowledge)).tokens if rows == "left" and s.knowledge else None
    return KnowledgeSpec(logits=True, hidden=True, attentions=True, depth="uniform", t_top=s.t_top,
                         length=rows, tokens=tokens)


def recipe_spec(recipe: str, s) -> KnowledgeSpec | None:
    """The knowledge a recipe needs, from settings ``s`` (a :class:`hskd.config.Settings`)."""
    knowledge = load_recipe(recipe).get("knowledge")
    if knowledge is None:
        return None
    if not isinstance(knowledge, dict):
        raise HskdError(f"recipe {recipe}: knowledge must be a mapping (a spec or {{builder: NAME}})")
    if "builder" in knowledge:
        spec = KNOWLEDGE_BUILDERS[knowledge["builder"]](s)
    else:
        values = {k: getattr(s, v[1:]) if isinstance(v, str) and v.startswith("$") else v
                  for k, v in knowledge.items()}
        spec = KnowledgeSpec.from_dict(values)
    padding = getattr(s, "hsk_padding", None)
    if padding and padding != spec.padding:  # --hsk-padding (or a preset) applies to every recipe's spec
        spec = KnowledgeSpec.from_dict({**spec.to_dict(), "padding": padding})
    return spec


# --------------------------------------------------------------------------------- stages
def _schedule(name: str, n_pairs: int) -> list[tuple[str, list[int] | None]]:
    """Aguilar et al.'s schedules: (stage suffix, active layer-pair positions)."""
    if name not in IRD_SCHEDULES:
        raise HskdError(f"unknown --ird-schedule {name!r}: use {', '.join(IRD_SCHEDULES)}")
    if name == "all":
        return [("", None)]
    if name == "progressive":
        return [(f"layer{i + 1}", [i]) for i in range(n_pairs)]
    return [(f"layers1-{i + 1}", list(range(i + 1))) for i in range(n_pairs)]


def build_term(term: dict, s, context: TermContext, pairs: list[int] | None):
    """One loss term of a recipe, its weight and options evaluated against the settings."""
    if not isinstance(term, dict) or "loss" not in term:
        raise HskdError(f"a recipe term is a mapping with 'loss' (got {term!r})")
    options = {k: evaluate(v, s) for k, v in term.items() if k not in ("loss", "weight", "pairs")}
    for option, (setting, values) in TERM_SETTINGS.get(term["loss"], {}).items():
        value = getattr(s, setting, None)
        if value is not None:  # a flag (or --preset) names this departure: it wins over the recipe
            options[option] = values[value] if values else value
    weight = evaluate(term.get("weight", 1.0), s)
    return LOSSES[term["loss"]](context, weight=weight, pairs=term.get("pairs", pairs), **options)


def recipe_stages(recipe: str, s, plan: Plan | None, context: TermContext | None = None) -> list[Stage]:
    """The stages of a recipe for settings ``s`` (``learning_rate`` = the job's rate) and the
    resolved plan of its knowledge.

    Raises:
        HskdError: an unknown loss term (listing the registered ones), a bad expression, or a
            term that needs knowledge the recipe's spec lacks.
    """
    definition = load_recipe(recipe)
    context = context or TermContext(student_hidden=0)
    n_pairs = len(plan.pairs) if plan is not None else 0
    stages = []
    for stage in definition["stages"]:
        schedule = stage.get("schedule")
        if isinstance(schedule, str) and schedule.startswith("$"):
            schedule = getattr(s, schedule[1:]) or "all"
        epochs = evaluate(stage.get("epochs", "num_train_epochs"), s)
        lr = evaluate(stage.get("learning_rate", "learning_rate"), s)
        scheduler = stage.get("scheduler", "linear")
        if isinstance(scheduler, str) and scheduler.startswith("$"):
            scheduler = getattr(s, scheduler[1:]) or "linear"
        for suffix, active in _schedule(schedule, n_pairs) if schedule else [("", None)]:
            terms = [build_term(t, s, context, active) for t in stage["terms"]]
            objective = Objective([t for t in terms if t.weight != 0])  # e.g. CE at alpha = 1
            _check_needs(objective, plan, definition["name"])
            stages.append(Stage(suffix or stage["name"], s.num_train_epochs if epochs is None else epochs,
                                s.learning_rate if lr is None else lr, objective,
                                select_best=bool(stage.get("select_best", True)), scheduler=scheduler))
    return stages


def _check_needs(objective: Objective, plan: Plan | None, recipe: str) -> None:
    spec = plan.spec if plan is not None else KnowledgeSpec(logits=False)
    have = {"logits": spec.logits and plan is not None, "hidden": spec.hidden, "attentions": spec.attentions,
            "relations": spec.relations}
    for term in objective.terms:
        missing = [k for k in term.needs if not have.get(k)]
        if missing:
            raise HskdError(f"recipe {recipe}: loss term {term.name!r} needs {', '.join(missing)}, "
                            "which the recipe's knowledge does not hold")


def describe(recipe: str) -> list[str]:
    """Knowledge, stages and terms of a recipe, in words (``hskd recipes``)."""
    d = load_recipe(recipe)
    k = d.get("knowledge")
    knowledge = "none" if k is None else (f"builder {k['builder']}" if "builder" in k else
                                          ", ".join(f"{a}={b}" for a, b in k.items()))
    stages = "; ".join(f"{st['name']}{' (one per layer pair, --ird-schedule)' if st.get('schedule') else ''}: "
                       + " + ".join(f"{_weight(t.get('weight', 1))}·{t['loss']}" for t in st["terms"])
                       for st in d["stages"])
    return [d["name"], knowledge, stages, ", ".join(f"{a}={b}" for a, b in (d.get("defaults") or {}).items()) or "-",
            d.get("source", "")]


def _weight(w) -> str:
    return f"({w})" if isinstance(w, str) and " " in w else str(w)


def recipes_table() -> str:
    """The markdown table of the built-in recipes (docs/METHODS.md is checked against it)."""
    lines = ["| recipe | knowledge | stages: weighted terms | defaults | source |", "|---|---|---|---|---|"]
    for name in BUILTIN:
        lines.append("| " + " | ".join(f"`{c}`" if i == 0 else c for i, c in enumerate(describe(name))) + " |")
    return "\n".join(lines)
