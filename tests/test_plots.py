"""Tests of the plot stage: figures are written whole, grids hold the right panels in order."""

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest


from workflow_scripts import plots  # noqa: E402
from workflow_scripts.tables import write_table  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = {"facts": ["first_token_prob", "seq_prob", "mean_token_prob"], "mc": ["option_softmax"]}


def make_tables(models, revisions, tasks=TASKS, n_bins=10, seed=0):
    """Summary and reliability tables of plausible, overconfident models (some bins empty)."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, 1, n_bins + 1)
    summary, reliability = [], []
    for task, methods in tasks.items():
        for model in models:
            for revision in revisions:
                for method in methods:
                    confidence = rng.beta(5, 1.5, 200).clip(0, 0.999)
                    correct = rng.random(200) < 0.8 * confidence
                    which = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
                    ece = 0.0
                    for b in range(n_bins):
                        inside = which == b
                        count = int(inside.sum())
                        conf = confidence[inside].mean() if count else np.nan
                        acc = correct[inside].mean() if count else np.nan
                        ece += count / 200 * abs(conf - acc) if count else 0.0
                        reliability.append(dict(
                            task=task, model=model, revision=revision, method=method, bin=b,
                            bin_lower=edges[b], bin_upper=edges[b + 1], count=count,
                            mean_confidence=conf, accuracy=acc))
                    summary.append(dict(
                        task=task, model=model, revision=revision, method=method, n=200,
                        accuracy=correct.mean(), mean_confidence=confidence.mean(), ece=ece,
                        mce=2 * ece, ace=ece, brier=0.2, auroc=0.7, ece_ci_low=ece - 0.03,
                        ece_ci_high=ece + 0.03, family="demo"))
    return pd.DataFrame(summary), pd.DataFrame(reliability)


def write_tables(folder, models, revisions, **kwargs):
    summary, reliability = make_tables(models, revisions, **kwargs)
    write_table(summary, folder / "summary.parquet")
    write_table(reliability, folder / "reliability.parquet")
    return folder / "summary.parquet", folder / "reliability.parquet"


def assert_figure(png, pdf, min_width=200, min_height=200):
    """PNG and PDF exist and are whole; returns the PNG's (height, width)."""
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2000
    height, width = mpimg.imread(png).shape[:2]
    assert width >= min_width and height >= min_height
    return height, width


def assert_no_temp_files(folder):
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def one_model(tmp_path_factory):
    return write_tables(tmp_path_factory.mktemp("one"), ["gpt2"], ["main"])


@pytest.fixture(scope="module")
def many_models(tmp_path_factory):
    models = [f"EleutherAI/pythia-{size}" for size in ("70m", "160m", "410m", "1b", "1.4b")]
    return write_tables(tmp_path_factory.mktemp("many"), models, ["main", "step143000"],
                        tasks={"facts": TASKS["facts"][:2], "lm": ["max_prob"]})


def test_reliability_one_model(one_model, tmp_path):
    summary, reliability = one_model
    png, pdf = tmp_path / "facts.png", tmp_path / "facts.pdf"
    plots.plot_reliability(summary, reliability, "facts", png, pdf)
    height, width = assert_figure(png, pdf)
    assert height > width  # one column, three method rows
    assert_no_temp_files(tmp_path)


def test_reliability_many_models_wraps_into_blocks(many_models, tmp_path):
    summary, reliability = many_models
    png, pdf = tmp_path / "out" / "facts.png", tmp_path / "out" / "facts.pdf"
    plots.plot_reliability(summary, reliability, "facts", png, pdf)
    height, width = assert_figure(png, pdf, min_width=1500, min_height=1500)
    assert 0.5 < height / width < 2  # 10 columns wrap into 2 blocks of 5, not one long strip
    assert_no_temp_files(png.parent)


def test_summary_one_and_many(one_model, many_models, tmp_path):
    for name, (summary, _) in {"one": one_model, "many": many_models}.items():
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        plots.plot_summary(summary, png, pdf)
        assert_figure(png, pdf)
    assert mpimg.imread(tmp_path / "many.png").shape[1] > mpimg.imread(tmp_path / "one.png").shape[1]
    assert_no_temp_files(tmp_path)


def test_missing_task_raises_naming_it(one_model, tmp_path):
    summary, reliability = one_model
    with pytest.raises(ValueError, match=r"'nope'.*facts, mc"):
        plots.plot_reliability(summary, reliability, "nope", tmp_path / "x.png", tmp_path / "x.pdf")
    assert list(tmp_path.iterdir()) == []


def test_panel_without_reliability_rows_is_drawn_empty(tmp_path):
    summary, reliability = make_tables(["a", "b"], ["main"], tasks={"mc": ["option_softmax"]})
    write_table(summary, tmp_path / "s.parquet")
    write_table(reliability[reliability["model"] == "a"], tmp_path / "r.parquet")
    plots.plot_reliability(tmp_path / "s.parquet", tmp_path / "r.parquet", "mc",
                           tmp_path / "mc.png", tmp_path / "mc.pdf")
    assert_figure(tmp_path / "mc.png", tmp_path / "mc.pdf")


def test_panel_grid_keeps_summary_order():
    summary = pd.DataFrame({
        "task": ["facts"] * 6 + ["mc"],
        "model": ["m2", "m2", "m1", "m1", "m2", "m1", "m3"],
        "revision": ["main", "main", "main", "main", "step1", "main", "main"],
        "method": ["seq_prob", "first_token_prob", "seq_prob", "first_token_prob", "seq_prob",
                   "seq_prob", "option_softmax"],
    })
    columns, methods = plots.panel_grid(summary, "facts")
    assert columns == [("m2", "main"), ("m1", "main"), ("m2", "step1")]
    assert methods == ["seq_prob", "first_token_prob"]
    assert plots.panel_grid(summary, "mc") == ([("m3", "main")], ["option_softmax"])
    with pytest.raises(ValueError, match="'lm'.*facts, mc"):
        plots.panel_grid(summary, "lm")


def test_panel_layout_wraps_columns_into_balanced_blocks():
    columns = [f"c{k}" for k in range(10)]
    shape, where = plots.panel_layout(columns, ["a", "b"], max_columns=8)
    assert shape == (4, 5)  # 2 blocks of 5 columns, 2 method rows each
    assert where[("c0", "a")] == (0, 0) and where[("c0", "b")] == (1, 0)
    assert where[("c4", "b")] == (1, 4)
    assert where[("c5", "a")] == (2, 0) and where[("c9", "b")] == (3, 4)
    assert plots.panel_layout(["only"], ["m"]) == ((1, 1), {("only", "m"): (0, 0)})
    shape, _ = plots.panel_layout(columns[:8], ["a"])
    assert shape == (1, 8)


def test_labels():
    assert plots.model_label("gpt2", "main") == "gpt2"
    assert plots.model_label("org/m", "step1") == "org/m@step1"
    assert plots.model_label("m", "0123456789abcdef0123456789abcdef01234567") == "m@0123456"
    assert plots.wrap_label("EleutherAI/pythia-160m@step143000") == "EleutherAI/pythia-160m\n@step143000"
    assert plots.wrap_label("gpt2") == "gpt2"


def test_method_colours_are_stable_and_avoid_the_gap_red():
    summary = pd.DataFrame({"method": ["b", "a", "b", "c"]})
    colours = plots.method_colours(summary)
    assert list(colours) == ["b", "a", "c"]
    assert len(set(colours.values())) == 3
    assert plots.matplotlib.colors.to_rgb(plots.GAP_COLOUR) not in colours.values()
