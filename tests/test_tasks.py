"""Label mapping for every GLUE task on files in the GLUE layout, metrics, and data errors."""

import json

import numpy as np
import pytest

from hskd.errors import HskdError
from hskd.tasks import GLUE_TASKS, compute_metrics, custom_task, get_task, load_custom, load_glue
from tests.conftest import write_glue

EXPECTED_LABELS = {
    "SST-2": [1, 0, 1, 0],
    "CoLA": [1, 0, 1, 0],
    "MRPC": [1, 0, 1, 0],
    "STS-B": [5.0, 1.5, 0.25, 4.0],
    "QQP": [0, 1, 0, 1],
    "MNLI": [0, 2, 1],  # entailment, contradiction, neutral in the hub's order (e=0, n=1, c=2)
    "QNLI": [0, 1],
    "RTE": [0, 1],
    "WNLI": [1, 0],
}


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_label_mapping_for_every_glue_task(tmp_path, task):
    write_glue(tmp_path, task)
    data = load_glue(get_task(task), str(tmp_path))
    assert data.train["label"] == EXPECTED_LABELS[task]
    assert data.train["example_id"] == list(range(len(EXPECTED_LABELS[task])))
    pair = len(get_task(task).text_columns) == 2
    assert ("text_b" in data.train.column_names) == pair
    assert set(data.dev) == ({"dev_matched", "dev_mismatched"} if task == "MNLI" else {"dev"})


def test_cola_has_no_header_and_reads_column_3(tmp_path):
    write_glue(tmp_path, "CoLA")
    data = load_glue(get_task("cola"), str(tmp_path))
    assert data.train["text_a"][1] == "cat the sat ."


def test_quotes_are_not_special(tmp_path):
    write_glue(tmp_path, "SST-2", train_rows=['"it\'s "great\t1', 'a " quote\t0'])
    data = load_glue(get_task("SST-2"), str(tmp_path))
    assert data.train["text_a"] == ['"it\'s "great', 'a " quote']


def test_max_train_samples_keeps_first_rows(tmp_path):
    write_glue(tmp_path, "SST-2")
    data = load_glue(get_task("SST-2"), str(tmp_path), max_train_samples=2)
    assert data.train["text_a"] == ["a good film", "a dull mess"]


def test_glue_dir_from_environment(tmp_path, monkeypatch):
    write_glue(tmp_path, "WNLI")
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    assert load_glue(get_task("WNLI")).train["label"] == [1, 0]


def test_real_glue_row_counts(glue_dir):
    for task, rows, dev in [("SST-2", 67349, 872), ("MRPC", 3668, 408), ("CoLA", 8551, 1043), ("WNLI", 635, 71)]:
        data = load_glue(get_task(task), str(glue_dir))
        assert (len(data.train), len(data.dev["dev"])) == (rows, dev), task


@pytest.mark.parametrize("case, match", [
    ("missing_dir", "not found"),
    ("missing_task", "no folder"),
    ("missing_column", "no column 'sentence'"),
    ("bad_label", "label '2'"),
    ("empty", "no rows"),
    ("regression_text", "not a number"),
])
def test_data_errors_name_the_problem(tmp_path, case, match):
    task = "STS-B" if case == "regression_text" else "SST-2"
    if case == "missing_dir":
        root = tmp_path / "nope"
    else:
        root = tmp_path
        if case != "missing_task":
            write_glue(tmp_path, task)
    folder = tmp_path / task
    if case == "missing_column":
        (folder / "train.tsv").write_text("text\tlabel\nhi\t1\n")
    elif case == "bad_label":
        (folder / "train.tsv").write_text("sentence\tlabel\nhi\t2\n")
    elif case == "empty":
        (folder / "dev.tsv").write_text("sentence\tlabel\n")
    elif case == "regression_text":
        header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"
        (folder / "train.tsv").write_text(header + "\n0\tg\tf\ty\t0\ts\ts\tA\tB\thigh\n")
    with pytest.raises(HskdError, match=match):
        load_glue(get_task(task), str(root))


def test_custom_csv_tsv_jsonl(tmp_path):
    (tmp_path / "t.csv").write_text('q,a,y\n"one, two",x,pos\nthree,y,neg\n')
    (tmp_path / "d.jsonl").write_text(json.dumps({"q": "a", "a": "b", "y": "neg"}) + "\n")
    task = custom_task("mine", ["q", "a"], "y", None, regression=False)
    data = load_custom(task, str(tmp_path / "t.csv"), str(tmp_path / "d.jsonl"))
    assert data.task.labels == ("neg", "pos")  # sorted, recorded; never re-inferred downstream
    assert data.train["text_a"][0] == "one, two" and data.train["label"] == [1, 0]
    reg = custom_task("score", ["q"], "y", None, regression=True)
    (tmp_path / "r.tsv").write_text("q\ty\nhi\t0.5\n")
    assert load_custom(reg, str(tmp_path / "r.tsv"), str(tmp_path / "r.tsv")).train["label"] == [0.5]
    with pytest.raises(HskdError, match="unknown file type"):
        load_custom(task, str(tmp_path / "t.xml"), str(tmp_path / "t.csv"))


def test_metrics_match_definitions():
    labels = np.array([1, 0, 1, 1])
    logits = np.array([[0, 1], [1, 0], [1, 0], [0, 1]], dtype=float)
    assert compute_metrics(get_task("SST-2"), logits, labels) == {"accuracy": 0.75}
    mrpc = compute_metrics(get_task("MRPC"), logits, labels)
    assert mrpc["f1"] == pytest.approx(0.8) and mrpc["accuracy"] == 0.75
    cola = compute_metrics(get_task("CoLA"), logits, labels)
    assert cola["matthews_correlation"] == pytest.approx(0.5773502691896258)
    stsb = compute_metrics(get_task("STS-B"), np.array([[1.0], [2.0], [3.0]]), np.array([2.0, 4.0, 6.5]))
    # by hand: dx = (-1, 0, 1), dy = (-13/6, -1/6, 7/3); r = 4.5 / (sqrt(2) * sqrt(61/6))
    assert stsb["pearson"] == pytest.approx(4.5 / (2 ** 0.5 * (61 / 6) ** 0.5))
    assert stsb["spearman"] == pytest.approx(1.0)


def test_any_dataset_that_datasets_reads(tmp_path, capsys, tiny_backbone):
    import json

    import datasets

    from tests.conftest import TINY, run_cli

    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "gold": datasets.ClassLabel(names=["yes", "no"])})
    rows = {"premise": [f"the cat sat {i}" for i in range(12)], "hypothesis": ["a cat", "dogs bark"] * 6,
            "gold": [0, 1] * 6}
    folder = tmp_path / "pairs"
    datasets.DatasetDict({"fit": datasets.Dataset.from_dict(rows, features=features),
                          "check": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(folder)
    common = ("--task", "pairs", "--dataset", folder, "--text-column", "premise", "--text-pair-column", "hypothesis",
              "--label-column", "gold", "--train-split", "fit", "--model", tiny_backbone, *TINY)
    assert run_cli("finetune", *common, "--validation-split", "check", "--output-dir", tmp_path / "run") == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["id2label"] == {"0": "yes", "1": "no"}  # the ClassLabel names, in their order
    record = json.loads((tmp_path / "run" / "hskd.json").read_text())
    assert set(record["eval"]["dev"]["dev"]) == {"accuracy", "f1_macro"}
    capsys.readouterr()
    assert run_cli("finetune", *common, "--output-dir", tmp_path / "bad") == 2  # no split "validation"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no split 'validation' (it has fit, check)" in err[0]
