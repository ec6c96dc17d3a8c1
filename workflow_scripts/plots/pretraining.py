"""Calibration against scale and along training (Zhu et al. 2023, Figures 3 and 4): accuracy and ECE against
parameter count and training step, reliability diagrams across sizes, and the loss of the suite trained here."""
from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..order import STANDARD, natural_order, natural_runs, ordered_unique
from ..tables import atomic_path, read_table
from .reliability import STRIP, draw_reliability, panel_note, smooth_curves
from .style import (
    FONT,
    GAP_COLOUR,
    MAX_DIAGRAMS,
    STAR,
    ece_ylim,
    figure_title,
    humanize,
    marked_mask,
    panel_layout,
    primary_method_rows,
    read_comparisons,
    save_figure,
    select_rows,
    shades,
    significant_runs,
    star_handle,
    style_axis,
    task_rows,
    thinned,
    with_labels,
)

VARIANT_COLOURS = {"standard": "tab:blue", "deduped": "tab:orange"}
FAMILY_STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # marker, line per family
BAND_ALPHA = 0.18
MIN_TICK_GAP = 0.12  # size ticks closer than this (in decades) to a kept one are dropped
MAX_SIZE_TICKS = 10  # size ticks on an axis at most
ROTATE_TICKS = 6  # size tick labels are turned where there are more
MAX_LOSS_LEGEND = 16  # models the pretraining loss keys in a legend; more are keyed by a colour bar


def final_revisions(summary: pd.DataFrame) -> dict[str, str]:
    """model -> its final revision: the last in natural order (the largest step, else epoch, else by
    name; see run_keys)."""
    return {model: revision for model, revision in natural_runs(summary)}


def scale_rows(summary: pd.DataFrame, suites: list[str], methods: dict[str, str]) -> pd.DataFrame:
    """The rows of the base (pretrained, not aligned) models whose `family` is in `suites`, each at its
    final revision, for the primary method of each task, with a known positive parameter count;
    in natural order (task, then family, data variant with 'standard' first, params; see run_keys)."""
    summary = with_labels(summary)
    rows = summary[summary["family"].isin(list(suites)) & (summary["stage"].isna() | (summary["stage"] == "base"))]
    final = final_revisions(rows)
    rows = rows[rows["revision"] == rows["model"].map(final)]
    rows = primary_method_rows(rows, methods)
    rows = rows[rows["params"] > 0]
    return natural_order(rows).reset_index(drop=True)


def dynamics_rows(summary: pd.DataFrame, models: list[str], methods: dict[str, str]) -> pd.DataFrame:
    """The rows of `models` at every revision naming a step > 0 (step 0 cannot sit on the log
    axis and is dropped), for the primary method of each task; in natural order (task, then model and
    step, see run_keys)."""
    summary = with_labels(summary)
    rows = summary[summary["model"].isin(list(models)) & (summary["step"] > 0)]
    rows = primary_method_rows(rows, methods)
    return natural_order(rows).reset_index(drop=True)


def variant_colours(data_values) -> dict[str, str | tuple]:
    """One colour per data variant: standard blue, deduped orange, others (by name) from tab10,
    never the gap's red."""
    taken = {matplotlib.colors.to_rgb(c) for c in (*VARIANT_COLOURS.values(), GAP_COLOUR)}
    palette = [c for c in plt.get_cmap("tab10").colors if c not in taken]
    others = sorted(set(map(str, data_values)) - set(VARIANT_COLOURS))
    return {**VARIANT_COLOURS, **{d: palette[i % len(palette)] for i, d in enumerate(others)}}


def variant_label(family, data) -> str:
    family = "?" if pd.isna(family) else str(family)
    return f"{family} ({data})"


def _ece_band(ax, x, rows: pd.DataFrame, colour, alpha: float = BAND_ALPHA) -> None:
    """The bootstrap CI of ECE as a band (gaps where a CI is missing); error bars for one point."""
    low, high = rows["ece_ci_low"].astype(float), rows["ece_ci_high"].astype(float)
    if len(rows) == 1:
        yerr = np.vstack([(rows["ece"] - low).clip(lower=0), (high - rows["ece"]).clip(lower=0)])
        ax.errorbar(x, rows["ece"], yerr=yerr, fmt="none", ecolor=colour, elinewidth=1, capsize=3,
                    zorder=2)
        return
    ax.fill_between(x, low, high, color=colour, alpha=alpha, linewidth=0, zorder=1)


def size_ticks(ax, params) -> None:
    """Major ticks at the parameter counts, labelled by size: near-coincident ones thinned out, then at most
    MAX_SIZE_TICKS, evenly spread (the smallest and largest kept); labels turned 45 degrees where more than
    ROTATE_TICKS."""
    kept = []
    for p in sorted(set(float(v) for v in params if v > 0)):
        if not kept or np.log10(p) - np.log10(kept[-1]) >= MIN_TICK_GAP:
            kept.append(p)
    kept = thinned(kept, MAX_SIZE_TICKS)
    ax.set_xticks(kept, [humanize(p) for p in kept])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.tick_params(axis="x", labelrotation=45 if len(kept) > ROTATE_TICKS else 0)
    if len(kept) == 1:
        ax.set_xlim(kept[0] / 2, kept[0] * 2)


def _pair_axes(n_tasks: int, width: float = 7.0):
    fig, axes = plt.subplots(n_tasks, 2, squeeze=False, sharex=True, layout="constrained",
                             figsize=(width, 0.7 + 2.1 * n_tasks))
    return fig, axes


def _no_suite(suites, families) -> ValueError:
    """The error of a scale figure whose suites match no model, naming the families present."""
    return ValueError(f"no summary rows of a model whose family is in the suites "
                      f"{', '.join(map(str, suites)) or '(none)'} (families present: "
                      f"{', '.join(map(str, families)) or 'none'})")


def scale_figure(summary: pd.DataFrame, suites: list[str], methods: dict[str, str],
                 comparisons: pd.DataFrame | None = None):
    """Accuracy | ECE against parameter count (log axis), one row per task, one line per
    (family, data) variant at each model's final revision; ECE with its bootstrap CI as a band and a
    star where it differs from the next smaller size at q < 0.05 (consecutive_sizes comparisons)."""
    summary = select_rows(summary)
    rows = scale_rows(summary, suites, methods)
    marks = significant_runs(comparisons, "consecutive_sizes")
    if rows.empty:
        families = sorted(with_labels(summary)["family"].dropna().astype(str).unique())
        raise _no_suite(suites, families)
    tasks = ordered_unique(rows["task"])
    colours = variant_colours(with_labels(summary)["data"])
    styles = {f: FAMILY_STYLES[i % len(FAMILY_STYLES)]
              for i, f in enumerate(ordered_unique(rows["family"].astype(str)))}

    fig, axes = _pair_axes(len(tasks))
    handles = {}
    for i, task in enumerate(tasks):
        task_rows_ = rows[rows["task"] == task]
        method = task_rows_["method"].iloc[0]
        for (family, data), line in task_rows_.groupby(["family", "data"], sort=False):
            line = line.drop_duplicates("params")
            marker, ls = styles[str(family)]
            label = variant_label(family, data)
            for ax, metric in ((axes[i, 0], "accuracy"), (axes[i, 1], "ece")):
                if metric == "ece":
                    _ece_band(ax, line["params"], line, colours[data])
                (h,) = ax.plot(line["params"], line[metric], marker=marker, ls=ls, ms=4, lw=1.3,
                               color=colours[data], label=label, zorder=3)
                handles.setdefault(label, h)
            starred = line[marked_mask(line, marks)]
            if not starred.empty:
                axes[i, 1].scatter(starred["params"], starred["ece"], color=colours[data], **STAR)
                handles.setdefault("star", star_handle("ECE differs from the next smaller size (q < 0.05)"))
        axes[i, 0].set_title(f"{task}: accuracy", fontsize=FONT["title"] + 1)
        axes[i, 1].set_title(f"{task}: ECE ({method})", fontsize=FONT["title"] + 1)
        style_axis(axes[i, 0], "accuracy")
        style_axis(axes[i, 1], "ECE")
        ece_ylim(axes[i, 1], task_rows_)
    for ax in axes.flat:
        ax.set_xscale("log")
    size_ticks(axes[0, 0], rows["params"])
    for ax in axes[-1]:
        ax.set_xlabel("parameters", fontsize=FONT["label"])
        ax.tick_params(axis="x", labelrotation=45 if axes[0, 0].get_xticks().size > ROTATE_TICKS else 0)
    _figure_legend(fig, handles)
    return fig


def _figure_legend(fig, handles: dict) -> None:
    """The legend above the panels; the significance star (key 'star') last, on a row of its own."""
    star = handles.pop("star", None)
    fig.legend(handles.values(), handles.keys(), loc="outside upper center",
               ncol=min(len(handles), 4), fontsize=FONT["label"], frameon=False)
    if star is not None:
        fig.legend(handles=[star], loc="outside lower center", fontsize=FONT["label"], frameon=False)


def plot_scale(summary_path, suites: list[str], methods: dict[str, str], png_out, pdf_out,
               comparisons_path=None) -> None:
    """The scale figure (see scale_figure) as PNG and PDF; significance stars from
    `comparisons_path` where given."""
    comparisons = read_comparisons(comparisons_path) if comparisons_path else None
    save_figure(scale_figure(read_table(summary_path), suites, methods, comparisons), png_out, pdf_out)


def step_formatter():
    return matplotlib.ticker.FuncFormatter(lambda x, _: humanize(x))


def model_colours(rows: pd.DataFrame, colours_by_variant: dict) -> dict[str, tuple]:
    """model -> colour: its data variant's hue, lighter for smaller models within the variant."""
    out = {}
    info = rows.drop_duplicates("model")[["model", "data", "params"]]
    for data, group in info.groupby("data", sort=False):
        group = group.sort_values("params", kind="stable", na_position="last")
        for model, shade in zip(group["model"], shades(colours_by_variant[data], len(group))):
            out[model] = shade
    return out


def dynamics_figure(summary: pd.DataFrame, models: list[str], methods: dict[str, str],
                    comparisons: pd.DataFrame | None = None):
    """Accuracy | ECE against training step (log axis), one row per task, one line per model;
    ECE with its bootstrap CI as a band and a star where it differs from the previous checkpoint at
    q < 0.05 (consecutive_checkpoints comparisons). Step 0 is not drawn (see dynamics_rows)."""
    summary = select_rows(summary)
    rows = dynamics_rows(summary, models, methods)
    marks = significant_runs(comparisons, "consecutive_checkpoints")
    if rows.empty:
        stepped = with_labels(summary)
        present = ordered_unique(stepped.loc[stepped["step"] > 0, "model"])
        raise ValueError(f"no summary rows with a training step > 0 for the models "
                         f"{', '.join(map(str, models)) or '(none)'} (models with steps: "
                         f"{', '.join(map(str, present)) or 'none'})")
    tasks = ordered_unique(rows["task"])
    colours = model_colours(rows, variant_colours(with_labels(summary)["data"]))
    many = rows.groupby(["task", "model"]).size().max() > 12
    alpha = BAND_ALPHA if len(colours) <= 2 else BAND_ALPHA / 2  # bands of many lines pile up

    fig, axes = _pair_axes(len(tasks))
    handles = {}
    for i, task in enumerate(tasks):
        task_rows_ = rows[rows["task"] == task]
        method = task_rows_["method"].iloc[0]
        for model in ordered_unique(task_rows_["model"]):
            line = task_rows_[task_rows_["model"] == model].drop_duplicates("step")
            for ax, metric in ((axes[i, 0], "accuracy"), (axes[i, 1], "ece")):
                if metric == "ece":
                    _ece_band(ax, line["step"], line, colours[model], alpha)
                (h,) = ax.plot(line["step"], line[metric], marker="o", ms=2.5 if many else 4,
                               lw=1.3, color=colours[model], label=str(model), zorder=3)
                handles.setdefault(str(model), h)
            starred = line[marked_mask(line, marks)]
            if not starred.empty:
                axes[i, 1].scatter(starred["step"], starred["ece"], color=colours[model], **STAR)
                handles.setdefault("star", star_handle("ECE differs from the previous checkpoint (q < 0.05)"))
        axes[i, 0].set_title(f"{task}: accuracy", fontsize=FONT["title"] + 1)
        axes[i, 1].set_title(f"{task}: ECE ({method})", fontsize=FONT["title"] + 1)
        style_axis(axes[i, 0], "accuracy")
        style_axis(axes[i, 1], "ECE")
        ece_ylim(axes[i, 1], task_rows_)
    steps = rows["step"].astype(float)
    narrow = np.log10(steps.max() / steps.min()) < 1.5  # too few decades for 10^k ticks alone
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5) if narrow else (1,)))
        ax.xaxis.set_major_formatter(step_formatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if steps.nunique() == 1:
        axes[0, 0].set_xticks([steps.iloc[0]])
        axes[0, 0].set_xlim(steps.iloc[0] / 2, steps.iloc[0] * 2)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=FONT["label"])
    _figure_legend(fig, handles)
    return fig


def plot_dynamics(summary_path, dynamics: list[str], methods: dict[str, str], png_out, pdf_out,
                  comparisons_path=None) -> None:
    """The training-dynamics figure of the models `dynamics` (see dynamics_figure) as PNG and PDF;
    significance stars from `comparisons_path` where given."""
    comparisons = read_comparisons(comparisons_path) if comparisons_path else None
    save_figure(dynamics_figure(read_table(summary_path), dynamics, methods, comparisons), png_out, pdf_out)


def _blank_cell(ax, strip) -> None:
    """A reliability panel and strip laid out like the others but drawing nothing."""
    ax.set(xlim=(0, 1), ylim=(0, 1), box_aspect=1, anchor="S")
    strip.set(box_aspect=STRIP, anchor="N")
    for a in (ax, strip):
        a.spines[:].set_visible(False)
        a.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)


def reliability_scale_figure(summary: pd.DataFrame, reliability: pd.DataFrame, curves: pd.DataFrame,
                             task: str, suites: list[str], methods: dict[str, str]):
    """Reliability diagrams of `task`'s primary method across sizes: one column per parameter
    count (ascending; at most MAX_DIAGRAMS, evenly spread), one row per (family, data) variant, each model at its
    final revision; the smooth reliability curve over the bars."""
    summary = select_rows(summary)
    task_rows(summary, task)  # ValueError naming the tasks present
    rows = scale_rows(summary, suites, methods)
    rows = rows[rows["task"] == task]
    if rows.empty:
        families = sorted(with_labels(summary[summary["task"] == task])["family"]
                          .dropna().astype(str).unique())
        raise _no_suite(suites, families)
    method = rows["method"].iloc[0]
    rows = rows.assign(size=rows["params"].map(humanize))
    if rows.duplicated(["family", "data", "size"]).any():  # two models of one variant, one label
        rows["size"] = rows["params"]
    every = list(rows.sort_values("params", kind="stable")["size"].drop_duplicates())
    sizes = thinned(every, MAX_DIAGRAMS)
    variants = ordered_unique(zip(rows["family"], rows["data"]))
    rows = rows[rows["size"].isin(sizes)]
    colours = variant_colours(with_labels(summary)["data"])
    reliability = select_rows(reliability)
    keys = ["model", "revision", "method"]
    panels = dict(tuple(reliability[(reliability["task"] == task)
                                    & (reliability["method"] == method)].groupby(keys, sort=False)))
    smooth = smooth_curves(curves, task)
    empty = reliability.iloc[:0]
    (n_rows, n_cols), where = panel_layout(sizes, variants)

    fig = plt.figure(layout="constrained", figsize=(0.9 + 1.8 * n_cols, 0.7 + 2.45 * n_rows))
    fig.get_layout_engine().set(h_pad=4 / 72)
    grid = fig.add_gridspec(2 * n_rows, n_cols, height_ratios=[1, STRIP] * n_rows)
    cells = {(r["size"], (r["family"], r["data"])): r for _, r in rows.iterrows()}
    first_drawn = {}  # grid row -> its first non-empty cell, which keeps the accuracy tick labels
    for (size, variant), (i, j) in sorted(where.items(), key=lambda item: item[1]):
        if (size, variant) in cells:
            first_drawn.setdefault(i, (i, j))
    for (size, variant), (i, j) in where.items():
        ax = fig.add_subplot(grid[2 * i, j])
        strip = fig.add_subplot(grid[2 * i + 1, j], sharex=ax)
        stats = cells.get((size, variant))
        if stats is None:  # no model of this variant at this size: an empty cell
            _blank_cell(ax, strip)
        else:
            key = (stats["model"], stats["revision"], method)
            draw_reliability(ax, strip, panels.get(key, empty), colours[variant[1]], smooth.get(key))
        ax.set_title(panel_note(stats) if stats is not None else "no model",
                     fontsize=FONT["note"], color="0.1" if stats is not None else "0.6")
        if i % len(variants) == 0:  # sizes head the first row of each block
            ax.annotate(humanize(size) if not isinstance(size, str) else size, xy=(0.5, 1),
                        xycoords=ax.title, xytext=(0, 2),
                        textcoords="offset points", ha="center", va="bottom",
                        fontsize=FONT["title"] + 1, fontweight="bold")
        if i % len(variants) == len(variants) - 1 and stats is not None:
            strip.set_xlabel("confidence", fontsize=FONT["label"])
        else:
            strip.tick_params(labelbottom=False)
        if j == 0:
            ax.set_ylabel("accuracy", fontsize=FONT["label"])
            strip.set_ylabel("count", fontsize=FONT["tick"])
            ax.annotate(variant_label(*variant), xy=(0, 0.5), xycoords=ax.yaxis.label,
                        xytext=(-4, 0), textcoords="offset points", ha="right", va="center",
                        rotation=90, fontsize=FONT["title"] + 1, fontweight="bold")
        elif (i, j) != first_drawn.get(i):
            ax.tick_params(labelleft=False)
    more = f", {len(sizes)} of {len(every)} sizes (evenly spread)" if len(sizes) < len(every) else ""
    figure_title(fig, f"Reliability across scale: {task} ({method}{more})")
    return fig


def plot_reliability_scale(summary_path, reliability_path, curves_path, task: str, suites: list[str],
                           methods: dict[str, str], png_out, pdf_out) -> None:
    """The reliability diagrams of `task` across sizes (see reliability_scale_figure) as PNG and PDF."""
    fig = reliability_scale_figure(read_table(summary_path), read_table(reliability_path),
                                   read_table(curves_path), task, suites, methods)
    save_figure(fig, png_out, pdf_out)


def pretrain_loss_figure(losses: pd.DataFrame, variants: dict[str, str]):
    """Training loss (``model, step, loss``) of the suite trained here against step, one line per model (dashed:
    the models whose data variant, in ``variants``, is not the standard one), keyed by a legend, or by a colour bar
    of the models in order (a label every few) where there are more than MAX_LOSS_LEGEND."""
    models = ordered_unique(losses["model"])
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(models)))
    for model, colour in zip(models, colours):
        rows = losses[losses["model"] == model]
        ax.plot(rows["step"], rows["loss"], color=colour, lw=1.4, label=model,
                ls="-" if variants[model] == STANDARD else "--")
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (nats per token)")
    ax.grid(alpha=0.3)
    if len(models) <= MAX_LOSS_LEGEND:
        ax.legend(fontsize=8, ncol=2, frameon=False)
    else:
        norm = matplotlib.colors.BoundaryNorm(np.arange(len(models) + 1) - 0.5, len(models))
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm, matplotlib.colors.ListedColormap(colours)), ax=ax)
        shown = thinned(list(range(len(models))), MAX_LOSS_LEGEND)
        bar.set_ticks(shown, labels=[models[k] for k in shown], fontsize=FONT["tick"])
        bar.set_label(f"model ({len(models)}, a label every few)", fontsize=FONT["label"])
        ax.legend(handles=[matplotlib.lines.Line2D([], [], color="0.3", ls=ls, label=label)
                           for ls, label in (("-", f"{STANDARD} data"), ("--", "other data"))], fontsize=8,
                  frameon=False)
    ax.set_title("Pretraining loss of the suite trained here")
    return fig


def plot_pretrain_loss(model_dirs, variants: dict[str, str], table_out, png_out, pdf_out) -> None:
    """Training loss of the suite trained here: the table (``model, step, loss, lr, tokens``) and its figure (see
    pretrain_loss_figure)."""
    frames = [read_table(Path(d) / "loss.parquet").assign(model=Path(d).name) for d in model_dirs]
    if not frames:
        raise ValueError("no trained models: the config has no `pretrain` suite")
    losses = pd.concat(frames, ignore_index=True)[["model", "step", "loss", "lr", "tokens"]]
    with atomic_path(table_out, suffix=".csv") as tmp:
        losses.to_csv(tmp, index=False)
    save_figure(pretrain_loss_figure(losses, variants), png_out, pdf_out)
