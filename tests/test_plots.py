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


# --- calibration against scale and along training ---------------------------------------------

SIZES = {"70m": 70_426_624, "410m": 405_334_016, "1.4b": 1_414_647_808}


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    """Pythia-like tables: 3 sizes x (standard, deduped) at step143000, the 1.4B model also along
    training (with step0), and an unrelated family."""
    models = [f"pythia-{s}{v}" for v in ("", "-deduped") for s in SIZES] + ["gpt2"]
    summary, reliability = make_tables(
        models, ["step0", "step1000", "step143000"],
        tasks={"facts": ["seq_prob", "first_token_prob"], "mc": ["option_softmax"]})
    def keep(t):  # gpt2 at one revision (renamed 'main'), pythia-1.4b* at every step
        if_gpt2 = t["revision"] == "step0"
        if_pythia = t["model"].str.startswith("pythia-1.4b") | (t["revision"] == "step143000")
        return if_gpt2.where(t["model"] == "gpt2", if_pythia)
    summary, reliability = summary[keep(summary)], reliability[keep(reliability)]
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
    folder = tmp_path_factory.mktemp("suite")
    write_table(summary, folder / "summary.parquet")
    write_table(reliability, folder / "reliability.parquet")
    return folder / "summary.parquet", folder / "reliability.parquet"


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
    assert [plots.humanize(n) for n in (70_426_624, 162_322_944, 1_414_647_808, 11_846_072_320,
                                         160_000, 999_999, 143_000, 256, 0)] == \
        ["70M", "160M", "1.4B", "12B", "160K", "1M", "140K", "260", "0"]


def test_scale_rows_pick_final_revision_suite_and_primary_method():
    rows = plots.scale_rows(selection_table(), ["p"], {"t1": "m1"})
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
    rows = plots.scale_rows(selection_table(with_data=False), ["p", "q"], {})
    assert set(rows["data"]) == {"standard"}
    assert set(rows["family"]) == {"p", "q"}
    assert plots.scale_rows(selection_table(), ["nope"], {}).empty
    with pytest.raises(ValueError, match=r"'m3'.*'t1'.*m1, m2"):
        plots.scale_rows(selection_table(), ["p"], {"t1": "m3"})


def test_dynamics_rows_keep_listed_models_with_steps_sorted_by_step():
    rows = plots.dynamics_rows(selection_table(), ["p-small", "p-big", "p-nostep"], {"t2": "z"})
    assert list(rows["task"]) == ["t1"] * 6 + ["t2"] * 6
    assert list(rows["model"])[:6] == ["p-small"] * 3 + ["p-big"] * 3  # in the order given
    assert list(rows["step"])[:6] == [20, 100, 5000] * 2  # step0 dropped (log axis)
    assert set(rows.loc[rows["task"] == "t2", "method"]) == {"z"}
    assert set(rows.loc[rows["task"] == "t1", "method"]) == {"m1"}
    assert plots.dynamics_rows(selection_table(), ["p-nostep"], {}).empty


def test_scale_and_dynamics_figures(suite, tmp_path):
    summary, _ = suite
    plots.plot_scale(summary, ["pythia"], {"facts": "first_token_prob"},
                     tmp_path / "scale.png", tmp_path / "scale.pdf")
    height, width = assert_figure(tmp_path / "scale.png", tmp_path / "scale.pdf")
    assert height > 0.6 * width  # two tasks stacked, accuracy | ECE side by side
    plots.plot_dynamics(summary, ["pythia-1.4b", "pythia-1.4b-deduped"], {},
                        tmp_path / "dynamics.png", tmp_path / "dynamics.pdf")
    assert_figure(tmp_path / "dynamics.png", tmp_path / "dynamics.pdf")
    assert_no_temp_files(tmp_path)


def test_reliability_scale_figure(suite, tmp_path):
    summary, reliability = suite
    png, pdf = tmp_path / "out" / "rs.png", tmp_path / "out" / "rs.pdf"
    plots.plot_reliability_scale(summary, reliability, "facts", ["pythia"], {}, png, pdf)
    height, width = assert_figure(png, pdf, min_width=600)
    assert width > height  # three sizes across, two data variants down
    assert_no_temp_files(png.parent)


def test_scale_figures_raise_clearly_when_nothing_matches(suite, tmp_path):
    summary, reliability = suite
    out = tmp_path / "x.png", tmp_path / "x.pdf"
    with pytest.raises(ValueError, match=r"suites llama .*families present: gpt2, pythia"):
        plots.plot_scale(summary, ["llama"], {}, *out)
    with pytest.raises(ValueError, match=r"models nope, gpt2 .*pythia-1.4b"):
        plots.plot_dynamics(summary, ["nope", "gpt2"], {}, *out)
    with pytest.raises(ValueError, match=r"suites llama .*families present: gpt2, pythia"):
        plots.plot_reliability_scale(summary, reliability, "facts", ["llama"], {}, *out)
    with pytest.raises(ValueError, match=r"'lm'.*facts, mc"):
        plots.plot_reliability_scale(summary, reliability, "lm", ["pythia"], {}, *out)
    assert list(tmp_path.iterdir()) == []


def test_pretrain_loss_table_and_figure(tmp_path):
    from workflow_scripts.plots import plot_pretrain_loss
    from workflow_scripts.tables import write_table

    dirs = []
    for name, start in (("toy-xs-standard", 7.0), ("toy-xs-deduped", 7.2)):
        folder = tmp_path / name
        write_table(pd.DataFrame({"step": [1, 2, 3], "loss": [start, start - 1, start - 1.5],
                                  "lr": [1e-3] * 3, "tokens": [64, 128, 192]}), folder / "loss.parquet")
        dirs.append(folder)
    plot_pretrain_loss(dirs, tmp_path / "loss.csv", tmp_path / "loss.png", tmp_path / "loss.pdf")
    table = pd.read_csv(tmp_path / "loss.csv")
    assert list(table.columns) == ["model", "step", "loss", "lr", "tokens"] and len(table) == 6
    assert table.groupby("model")["loss"].first().to_dict() == {"toy-xs-deduped": 7.2, "toy-xs-standard": 7.0}
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no trained models"):
        plot_pretrain_loss([], tmp_path / "x.csv", tmp_path / "x.png", tmp_path / "x.pdf")


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


def test_alignment_rows_follow_the_given_order_for_the_primary_method():
    rows = plots.alignment_rows(alignment_table(), ALIGN_MODELS, {"facts": "first_token_prob"})
    facts = rows[rows["task"] == "facts"]
    assert list(zip(facts["model"], facts["revision"])) == [(m, r) for m, revs in ALIGN_MODELS.items() for r in revs]
    assert set(rows["method"]) == {"first_token_prob", "option_softmax"}
    assert list(facts["variant"]) == ["base", "narrow full", "narrow full", "narrow lora", "narrow lora", "dpo",
                                      "rlhf", "rlhf"]
    with pytest.raises(ValueError, match="base-rlhf@epoch3"):
        plots.alignment_rows(alignment_table(), {**ALIGN_MODELS, "base-rlhf": ["epoch3"]}, {})


def test_rlhf_table_starts_from_the_policy_at_epoch_zero(tmp_path):
    write_table(alignment_table(), tmp_path / "summary.parquet")
    plots.write_rlhf_table(tmp_path / "summary.parquet", ALIGN_MODELS, {"facts": "seq_prob"}, tmp_path / "rlhf.csv")
    table = pd.read_csv(tmp_path / "rlhf.csv")
    assert list(table.columns) == plots.RLHF_COLUMNS
    facts = table[table["task"] == "facts"]
    assert list(zip(facts["stage"], facts["epoch"])) == [("sft", 0), ("dpo", 1), ("rlhf", 1), ("rlhf", 2)]
    assert facts.iloc[0]["model"] == "base-sft-narrow-full" and facts.iloc[0]["revision"] == "epoch2"
    assert set(facts["method"]) == {"seq_prob"}


def test_alignment_and_diversity_figures(tmp_path):
    write_table(alignment_table(), tmp_path / "summary.parquet")
    plots.plot_alignment(tmp_path / "summary.parquet", ALIGN_MODELS, {}, tmp_path / "a.png", tmp_path / "a.pdf")
    assert_figure(tmp_path / "a.png", tmp_path / "a.pdf", min_width=600)
    rng = np.random.default_rng(0)
    points = pd.DataFrame({"dataset": ["narrow"] * 30 + ["broad"] * 30, "item_id": [str(i) for i in range(60)],
                           "x": rng.normal(size=60), "y": rng.normal(size=60)})
    write_table(points, tmp_path / "map.parquet")
    pd.DataFrame({"dataset": ["narrow", "broad"], "n": [30, 30], "mean_cosine_distance": [0.5, 0.8]}).to_csv(
        tmp_path / "diversity.csv", index=False)
    plots.plot_diversity(tmp_path / "map.parquet", tmp_path / "diversity.csv", tmp_path / "d.png", tmp_path / "d.pdf")
    assert_figure(tmp_path / "d.png", tmp_path / "d.pdf")
    assert_no_temp_files(tmp_path)


def test_scale_rows_leave_out_aligned_models():
    table = selection_table()
    aligned = table[table["model"] == "p-big"].assign(model="p-big-sft", stage="sft")
    rows = plots.scale_rows(pd.concat([table.assign(stage="base"), aligned]), ["p"], {})
    assert "p-big-sft" not in set(rows["model"])
