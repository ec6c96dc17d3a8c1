"""Reliability diagrams per task: one figure per group of runs (runs in columns, methods in rows, the smooth
reliability curve over the bars) and an index of the groups' smooth reliability curves."""
from __future__ import annotations

import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..order import natural_key, natural_order, natural_runs, ordered_unique
from ..tables import read_table
from .style import (
    FONT,
    GAP_COLOUR,
    MAX_DIAGRAMS,
    MAX_LINES,
    TICKS,
    common_label_prefix,
    figure_title,
    format_number,
    model_label,
    panel_layout,
    primary_method_rows,
    save_figure,
    select_rows,
    style_axis,
    summary_primary_methods,
    task_rows,
    text_inches,
    thinned,
)

STRIP = 0.22  # height of the bin-count strip relative to the (square) reliability panel
INDEX_PANEL_WIDTH = 2.9  # inches a panel of the index takes with its axis labels, its legend beside it
INDEX_LEGEND_FONT = FONT["tick"] - 0.5
SMOOTH_COLOUR = "black"  # the smooth reliability curve over the bars


def method_colours(summary: pd.DataFrame) -> dict[str, tuple]:
    """One colour per method across all tasks, in natural order (see natural_order), so figures agree
    whatever the order of the rows; never the gap's red, nor grey (the count strip's) or brown (dark
    under the red gap)."""
    unused = {matplotlib.colors.to_rgb(c) for c in (GAP_COLOUR, "tab:gray", "tab:brown")}
    palette = [c for c in plt.get_cmap("tab10").colors if c not in unused]
    return {m: palette[i % len(palette)] for i, m in enumerate(ordered_unique(natural_order(summary)["method"]))}


def panel_grid(summary: pd.DataFrame, task: str, runs=None, primary: str | None = None
               ) -> tuple[list[tuple[str, str]], list[str]]:
    """The (model, revision) columns of `task`'s reliability grid in natural order (see run_keys),
    only those in `runs` where given (ValueError naming the runs without rows if none has any), and
    its method rows by name, `primary` first."""
    rows = task_rows(summary, task)
    if runs is not None:
        wanted = {(str(m), str(r)) for m, r in runs}
        rows = rows[[(str(m), str(r)) in wanted for m, r in zip(rows["model"], rows["revision"])]]
        if rows.empty:
            listed = ", ".join(model_label(m, r) for m, r in runs) or "none"
            raise ValueError(f"task {task!r} has no summary rows of the runs {listed}")
    methods = sorted(ordered_unique(rows["method"]), key=lambda m: (m != primary, natural_key(m)))
    return natural_runs(rows), methods


def panel_note(stats: pd.Series) -> str:
    """Panel title: ECE with its bootstrap CI, smooth ECE (where known) and accuracy."""
    ci = f" [{format_number(stats['ece_ci_low'])}, {format_number(stats['ece_ci_high'])}]"
    if pd.isna(stats["ece_ci_low"]) and pd.isna(stats["ece_ci_high"]):
        ci = ""
    smooth = f"smECE {format_number(stats['smece'])}, " if pd.notna(stats.get("smece", np.nan)) else ""
    return f"ECE {format_number(stats['ece'])}{ci}\n{smooth}acc {format_number(stats['accuracy'])}"


def wrap_label(label: str, width: int = 24) -> str:
    """Break a long label after '/' and before '@' so that lines stay near `width` characters."""
    lines = [""]
    for part in re.split(r"(?<=/)|(?=@)", label):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def smooth_curves(curves: pd.DataFrame, task: str) -> dict[tuple, pd.DataFrame]:
    """(model, revision, method) -> the smooth reliability curve (x, y sorted by x) of `task`'s raw
    confidences."""
    curves = select_rows(curves)
    curves = curves[(curves["task"] == task) & (curves["curve"] == "smooth_reliability")]
    return {key: group.sort_values("x") for key, group in
            curves.groupby(["model", "revision", "method"], sort=False)}


def _draw_smooth(ax, curve: pd.DataFrame, colour=SMOOTH_COLOUR, gid: str = "smooth", width: float = 1.6) -> None:
    """The smooth reliability curve (x, y), wider and more opaque where the kernel density of the
    confidences (column `density`, where given) is higher, as relplot draws it: where no prediction
    lies the smoothed accuracy is pulled towards 0 and the curve fades out."""
    x, y = curve["x"].to_numpy(float), curve["y"].to_numpy(float)
    density = curve["density"].to_numpy(float) if "density" in curve.columns else np.ones(len(x))
    weight = np.nan_to_num(density / np.nanmax(density)) if np.nanmax(density, initial=0) > 0 else np.ones(len(x))
    weight = (weight[:-1] + weight[1:]) / 2  # per segment
    colours = [(*matplotlib.colors.to_rgb(colour), a) for a in np.clip(3 * weight, 0, 1)]
    segments = np.stack([np.column_stack([x[:-1], y[:-1]]), np.column_stack([x[1:], y[1:]])], axis=1)
    ax.add_collection(matplotlib.collections.LineCollection(
        segments, colors=colours, linewidths=0.6 + width * weight, capstyle="round", zorder=5, gid=gid))


def draw_reliability(ax, strip, bins: pd.DataFrame, colour, smooth: pd.DataFrame | None = None) -> None:
    """Accuracy bars with the gap to the diagonal shaded on `ax`, the smooth reliability curve over
    them where given; bin counts on `strip` below."""
    bins = bins.sort_values("bin")
    width = bins["bin_upper"] - bins["bin_lower"]
    filled = bins[bins["count"] > 0]
    ax.bar(filled["bin_lower"], filled["accuracy"], width=width[filled.index], align="edge",
           color=colour, alpha=0.85, edgecolor="white", linewidth=0.5, zorder=2)
    gaps = [[(lo, acc), (hi, acc), (hi, hi), (lo, lo)]  # bar top to the diagonal, one artist for all bins
            for lo, hi, acc in zip(filled["bin_lower"], filled["bin_upper"], filled["accuracy"])]
    ax.add_collection(matplotlib.collections.PolyCollection(
        gaps, facecolors=matplotlib.colors.to_rgba(GAP_COLOUR, 0.25), hatch="///",
        edgecolors=matplotlib.colors.to_rgba(GAP_COLOUR, 0.25), linewidths=0, zorder=3, gid="gap"))
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=0.9, zorder=4)
    if smooth is not None:
        _draw_smooth(ax, smooth)
    if filled.empty:
        ax.text(0.5, 0.75, "no data", ha="center", va="center", fontsize=FONT["note"])
    ax.set(xlim=(0, 1), ylim=(0, 1), xticks=TICKS, yticks=TICKS, box_aspect=1, anchor="S")
    ax.tick_params(labelsize=FONT["tick"], labelbottom=False)

    strip.bar(bins["bin_lower"], bins["count"], width=width, align="edge", color="0.55")
    top = int(filled["count"].max()) if not filled.empty else 1
    strip.set(ylim=(0, top * 1.05), yticks=[top] if not filled.empty else [], box_aspect=STRIP,
              anchor="N")
    strip.tick_params(labelsize=FONT["tick"] - 1)


def column_labels(runs: list[tuple[str, str]]) -> tuple[str, list[str]]:
    """Short labels of the runs of one figure and what they leave out: runs of one model are named by
    revision (the model left out); runs of several models by model_label without the models'
    common_label_prefix; a single run in full."""
    models = ordered_unique(str(m) for m, _ in runs)
    if len(runs) > 1 and len(models) == 1:
        return models[0], [str(r) for _, r in runs]
    prefix = common_label_prefix(models)
    return prefix, [model_label(m, r)[len(prefix):] for m, r in runs]


def _prefix_note(prefix: str, runs) -> str:
    """What column_labels left out, for a title: 'model <name>' or 'models <prefix>…'."""
    return f"model {prefix}" if prefix in {str(m) for m, _ in runs} else f"models {prefix}\u2026"


def reliability_figure(summary: pd.DataFrame, reliability: pd.DataFrame, curves: pd.DataFrame,
                       task: str, runs=None, methods: dict[str, str] | None = None, group: str | None = None):
    """Reliability diagrams of `task`'s raw confidences: one column per run ((model, revision), only
    those of `runs` where given) in natural order, at most MAX_DIAGRAMS (evenly spread), wrapped into blocks of at
    most MAX_COLUMNS; one row per method (the primary one of `methods` first); the smooth reliability curve over
    the bars. Columns are labelled by column_labels, the title naming `group`, the runs left out and what the
    labels leave out."""
    summary = select_rows(summary)
    primary = summary_primary_methods(task_rows(summary, task), methods).get(task)
    every, methods = panel_grid(summary, task, runs, primary)
    columns = thinned(every, MAX_DIAGRAMS)
    keys = ["model", "revision", "method"]
    stats = task_rows(summary, task).drop_duplicates(keys).set_index(keys)
    reliability = select_rows(reliability)
    panels = dict(tuple(reliability[reliability["task"] == task].groupby(keys, sort=False)))
    smooth = smooth_curves(curves, task)
    empty = reliability.iloc[:0]
    colours = method_colours(summary)
    (n_rows, n_cols), where = panel_layout(columns, methods)
    prefix, labels = column_labels(columns)
    label_of = dict(zip(columns, labels))

    fig = plt.figure(layout="constrained", figsize=(0.8 + 2.2 * n_cols, 0.7 + 3.0 * n_rows))
    fig.get_layout_engine().set(h_pad=5 / 72)
    grid = fig.add_gridspec(2 * n_rows, n_cols, height_ratios=[1, STRIP] * n_rows)
    for ((model, revision), method), (i, j) in where.items():
        ax = fig.add_subplot(grid[2 * i, j])
        strip = fig.add_subplot(grid[2 * i + 1, j], sharex=ax)
        key = (model, revision, method)
        draw_reliability(ax, strip, panels.get(key, empty), colours[method], smooth.get(key))
        ax.set_title(panel_note(stats.loc[key]) if key in stats.index else "no data",
                     fontsize=FONT["note"])
        if i % len(methods) == 0:
            ax.annotate(wrap_label(label_of[(model, revision)], 26), xy=(0.5, 1), xycoords=ax.title,
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=FONT["title"], fontweight="bold", gid="run")
        if i % len(methods) == len(methods) - 1:
            strip.set_xlabel("confidence", fontsize=FONT["label"])
        if j == 0:
            ax.set_ylabel("accuracy", fontsize=FONT["label"])
            strip.set_ylabel("count", fontsize=FONT["tick"])
            ax.annotate(method, xy=(0, 0.5), xycoords=ax.yaxis.label, xytext=(-4, 0),
                        textcoords="offset points", ha="right", va="center", rotation=90,
                        fontsize=FONT["title"] + 1, fontweight="bold")
        else:
            ax.tick_params(labelleft=False)
    title = f"Reliability diagrams: {task}" + (f", {group}" if group else "")
    if len(columns) < len(every):
        title += f" ({len(columns)} of {len(every)} runs, evenly spread)"
    if prefix and len(columns) > 1:
        title += f"\n{_prefix_note(prefix, columns)}"
    figure_title(fig, title)
    return fig


def reliability_runs(fig) -> list[str]:
    """The column labels of a reliability_figure, block by block, left to right."""
    return [t.get_text().replace("\n", "") for ax in fig.axes for t in ax.texts if t.get_gid() == "run"]


def plot_reliability(summary_path, reliability_path, curves_path, task: str, png_out, pdf_out, runs=None,
                     methods: dict[str, str] | None = None, group: str | None = None) -> None:
    """The reliability diagrams of `task` (see reliability_figure) as PNG and PDF."""
    fig = reliability_figure(read_table(summary_path), read_table(reliability_path),
                             read_table(curves_path), task, runs, methods, group)
    save_figure(fig, png_out, pdf_out)


def ordered_groups(summary: pd.DataFrame, groups: dict[str, list]) -> dict[str, list[tuple[str, str]]]:
    """`groups` (name -> runs) with the runs that have summary rows, each group's runs in natural
    order, the groups by their first run (natural order; see run_keys); groups without rows left out."""
    rank = {run: i for i, run in enumerate(natural_runs(summary))}
    out = {}
    for name, runs in groups.items():
        present = sorted({(str(m), str(r)) for m, r in runs} & set(rank), key=rank.get)
        if present:
            out[str(name)] = present
    return dict(sorted(out.items(), key=lambda item: rank[item[1][0]]))


def reliability_index_figure(summary: pd.DataFrame, curves: pd.DataFrame, task: str,
                             groups: dict[str, list], methods: dict[str, str] | None = None):
    """The index of `task`'s reliability diagrams: one panel per group of runs (see ordered_groups;
    a group is one figure of reliability diagrams), each the smooth reliability curves of its runs
    for the task's primary method and raw confidences (at most MAX_LINES, evenly spread), the runs
    keyed with their column_labels and ECE; runs of one model shaded along training, others in
    distinct colours."""
    summary = select_rows(summary)
    rows = primary_method_rows(task_rows(summary, task), methods)
    method = rows["method"].iloc[0]
    given, groups = groups, ordered_groups(rows, groups)
    if not groups:
        raise ValueError(f"no run of the groups {', '.join(map(str, given)) or '(none)'} has rows in task {task!r}")
    smooth = smooth_curves(curves, task)
    ece = rows.drop_duplicates(["model", "revision"]).set_index(["model", "revision"])["ece"]
    n_cols = min(len(groups), 3)
    n_rows = -(-len(groups) // n_cols)
    keys = {}  # group -> the runs shown (at most MAX_LINES), what their labels leave out, their legend entries
    for name, runs in groups.items():
        shown = thinned(pd.DataFrame({"run": runs}), MAX_LINES)["run"].tolist()
        prefix, labels = column_labels(shown)
        keys[name] = shown, prefix, [f"{label}: ECE {format_number(ece.get(run, np.nan))}"
                                     for run, label in zip(shown, labels)]
    fig = plt.figure(layout="constrained")
    legend_width = max(text_inches(fig, entry, INDEX_LEGEND_FONT)[0] for *_, entries in keys.values()
                       for entry in entries) + 0.4  # and the line before the text
    fig.set_size_inches(n_cols * (INDEX_PANEL_WIDTH + legend_width), 0.6 + 2.75 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax, (name, runs) in zip(axes.flat, groups.items()):
        shown, prefix, entries = keys[name]
        one_model = len({m for m, _ in shown}) == 1 and len(shown) > 1
        colours = (plt.get_cmap("viridis")(np.linspace(0.05, 0.85, len(shown))) if one_model
                   else [plt.get_cmap("tab10").colors[k % 10] for k in range(len(shown))])
        handles = []
        for run, entry, colour in zip(shown, entries, colours):
            curve = smooth.get((*run, method))
            if curve is not None:
                _draw_smooth(ax, curve, colour=colour, gid="index", width=1.2)
            handles.append(matplotlib.lines.Line2D([], [], color=colour, lw=1.6, label=entry))
        ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=0.8, zorder=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=TICKS, yticks=TICKS, box_aspect=1)
        ax.set_xlabel("confidence", fontsize=FONT["label"])
        style_axis(ax, "accuracy")
        more = f", {len(shown)} of {len(runs)} runs" if len(shown) < len(runs) else ""
        ax.set_title(f"{name}{more}" + (f"\n{_prefix_note(prefix, shown)}" if prefix and len(shown) > 1 else ""),
                     fontsize=FONT["title"], loc="left")
        ax.legend(handles=handles, fontsize=INDEX_LEGEND_FONT, loc="upper left", bbox_to_anchor=(1.02, 1),
                  frameon=False, handlelength=1.4)
    for ax in list(axes.flat)[len(groups):]:
        ax.remove()
    figure_title(fig, f"Smooth reliability curves: {task} ({method}); one figure of reliability diagrams per group")
    return fig


def plot_reliability_index(summary_path, curves_path, task: str, groups: dict[str, list],
                           methods: dict[str, str] | None, png_out, pdf_out) -> None:
    """The index of `task`'s reliability diagrams (see reliability_index_figure) as PNG and PDF."""
    fig = reliability_index_figure(read_table(summary_path), read_table(curves_path), task, groups, methods)
    save_figure(fig, png_out, pdf_out)
