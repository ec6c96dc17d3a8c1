"""The plot stage: reliability diagrams per task and a summary of accuracy and ECE across tasks."""
from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_scripts.tables import atomic_path, read_table  # noqa: E402

DPI = 150
GAP_COLOUR = "tab:red"
FONT = {"title": 8, "label": 8, "tick": 7, "note": 7, "value": 6}
MAX_COLUMNS = 8  # reliability panels per row before wrapping into another block
MAX_VALUE_LABELS = 24  # bars per summary panel up to which values are written on them
TICKS = [0, 0.25, 0.5, 0.75, 1]
STRIP = 0.22  # height of the bin-count strip relative to the (square) reliability panel


def model_label(model: str, revision: str) -> str:
    """'model@revision', without '@main' and with commit hashes cut to 7 characters."""
    revision = str(revision)
    if revision == "main":
        return str(model)
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        revision = revision[:7]
    return f"{model}@{revision}"


def ordered_unique(values) -> list:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


def method_colours(summary: pd.DataFrame) -> dict[str, tuple]:
    """One colour per method across all tasks (never the gap's red), so figures agree."""
    palette = [c for c in plt.get_cmap("tab10").colors if c != matplotlib.colors.to_rgb(GAP_COLOUR)]
    return {m: palette[i % len(palette)] for i, m in enumerate(ordered_unique(summary["method"]))}


def task_rows(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """The summary rows of `task`; ValueError naming the task and the tasks present if none."""
    rows = summary[summary["task"] == task]
    if rows.empty:
        present = ", ".join(map(str, ordered_unique(summary["task"]))) or "none"
        raise ValueError(f"task {task!r} has no rows in the summary (tasks present: {present})")
    return rows


def panel_grid(summary: pd.DataFrame, task: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (model, revision) columns and method rows of `task`'s reliability grid, in summary order."""
    rows = task_rows(summary, task)
    columns = ordered_unique(zip(rows["model"], rows["revision"]))
    return columns, ordered_unique(rows["method"])


def save_figure(fig, png_out, pdf_out) -> None:
    """Write `fig` as PNG and PDF, each atomically, then close it."""
    try:
        for path, fmt in ((png_out, "png"), (pdf_out, "pdf")):
            with atomic_path(path, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=DPI)
    finally:
        plt.close(fig)


def _fmt(x: float, digits: int = 3) -> str:
    """`x` with `digits` decimals, or 'n/a'."""
    return "n/a" if pd.isna(x) else f"{x:.{digits}f}"


def _panel_note(stats: pd.Series) -> str:
    """Panel title: ECE with its bootstrap CI, and accuracy."""
    ci = f" [{_fmt(stats['ece_ci_low'])}, {_fmt(stats['ece_ci_high'])}]"
    if pd.isna(stats["ece_ci_low"]) and pd.isna(stats["ece_ci_high"]):
        ci = ""
    return f"ECE {_fmt(stats['ece'])}{ci}\nacc {_fmt(stats['accuracy'])}"


def wrap_label(label: str, width: int = 24) -> str:
    """Break a long label after '/' and before '@' so that lines stay near `width` characters."""
    lines = [""]
    for part in re.split(r"(?<=/)|(?=@)", label):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def panel_layout(columns: list, methods: list, max_columns: int = MAX_COLUMNS):
    """Grid shape and {(column, method): (row, col)}: columns wrap into blocks of at most
    `max_columns` (balanced), each block holding one row per method."""
    n_blocks = -(-len(columns) // max_columns)
    per_block = -(-len(columns) // n_blocks)
    where = {(column, method): ((j // per_block) * len(methods) + i, j % per_block)
             for j, column in enumerate(columns) for i, method in enumerate(methods)}
    return (n_blocks * len(methods), per_block), where


def _draw_reliability(ax, strip, bins: pd.DataFrame, colour) -> None:
    """Accuracy bars with the gap to the diagonal shaded on `ax`; bin counts on `strip` below."""
    bins = bins.sort_values("bin")
    width = bins["bin_upper"] - bins["bin_lower"]
    filled = bins[bins["count"] > 0]
    ax.bar(filled["bin_lower"], filled["accuracy"], width=width[filled.index], align="edge",
           color=colour, alpha=0.85, edgecolor="white", linewidth=0.5, zorder=2)
    for lo, hi, acc in zip(filled["bin_lower"], filled["bin_upper"], filled["accuracy"]):
        ax.fill_between([lo, hi], [acc, acc], [lo, hi], color=GAP_COLOUR, alpha=0.25,
                        hatch="///", edgecolor=GAP_COLOUR, linewidth=0, zorder=3)
    ax.plot([0, 1], [0, 1], ls="--", color="0.3", lw=0.9, zorder=4)
    if filled.empty:
        ax.text(0.5, 0.75, "no data", ha="center", va="center", fontsize=FONT["note"])
    ax.set(xlim=(0, 1), ylim=(0, 1), xticks=TICKS, yticks=TICKS, box_aspect=1, anchor="S")
    ax.tick_params(labelsize=FONT["tick"], labelbottom=False)

    strip.bar(bins["bin_lower"], bins["count"], width=width, align="edge", color="0.55")
    top = int(filled["count"].max()) if not filled.empty else 1
    strip.set(ylim=(0, top * 1.05), yticks=[top] if not filled.empty else [], box_aspect=STRIP,
              anchor="N")
    strip.tick_params(labelsize=FONT["tick"] - 1)


def plot_reliability(summary_path, reliability_path, task: str, png_out, pdf_out) -> None:
    """Reliability diagrams of `task`: one column per (model, revision), one row per method."""
    summary = read_table(summary_path)
    columns, methods = panel_grid(summary, task)
    keys = ["model", "revision", "method"]
    stats = task_rows(summary, task).drop_duplicates(keys).set_index(keys)
    reliability = read_table(reliability_path)
    panels = dict(tuple(reliability[reliability["task"] == task].groupby(keys, sort=False)))
    empty = reliability.iloc[:0]
    colours = method_colours(summary)
    (n_rows, n_cols), where = panel_layout(columns, methods)

    fig = plt.figure(layout="constrained", figsize=(0.8 + 2.2 * n_cols, 0.5 + 3.0 * n_rows))
    fig.get_layout_engine().set(h_pad=5 / 72)
    grid = fig.add_gridspec(2 * n_rows, n_cols, height_ratios=[1, STRIP] * n_rows)
    for ((model, revision), method), (i, j) in where.items():
        ax = fig.add_subplot(grid[2 * i, j])
        strip = fig.add_subplot(grid[2 * i + 1, j], sharex=ax)
        key = (model, revision, method)
        _draw_reliability(ax, strip, panels.get(key, empty), colours[method])
        ax.set_title(_panel_note(stats.loc[key]) if key in stats.index else "no data",
                     fontsize=FONT["note"])
        if i % len(methods) == 0:
            ax.annotate(wrap_label(model_label(model, revision)), xy=(0.5, 1), xycoords=ax.title,
                        xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                        fontsize=FONT["title"], fontweight="bold")
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
    fig.suptitle(f"Reliability diagrams: {task}", fontsize=FONT["title"] + 2)
    save_figure(fig, png_out, pdf_out)


def _grouped_bars(ax, rows: pd.DataFrame, groups: list, methods: list, colours, metric: str) -> None:
    """Bars of `metric` per (model, revision) group, one per method; ECE gets its CI as error bars."""
    width = 0.8 / len(methods)
    n_bars = len(groups) * len(methods)
    for k, method in enumerate(methods):
        sub = rows[rows["method"] == method].drop_duplicates(["model", "revision"])
        sub = sub.set_index(["model", "revision"]).reindex(groups)
        x = np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width
        yerr = None
        if metric == "ece":
            low = (sub["ece"] - sub["ece_ci_low"]).clip(lower=0)
            high = (sub["ece_ci_high"] - sub["ece"]).clip(lower=0)
            yerr = np.vstack([low, high])  # NaN (no CI) draws no error bar
        bars = ax.bar(x, sub[metric].fillna(0), width=width, color=colours[method], label=method,
                      yerr=yerr, error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "0.2"}, zorder=2)
        if n_bars <= MAX_VALUE_LABELS:
            ax.bar_label(bars, labels=[_fmt(v, 2) for v in sub[metric]], fontsize=FONT["value"],
                         padding=1, rotation=90 if n_bars > 4 else 0)


def plot_summary(summary_path, png_out, pdf_out) -> None:
    """Accuracy and ECE per task (rows): grouped bars over model@revision, one bar per method."""
    summary = read_table(summary_path)
    if summary.empty:
        raise ValueError(f"summary {summary_path} has no rows")
    tasks = ordered_unique(summary["task"])
    groups = ordered_unique(zip(summary["model"], summary["revision"]))
    labels = [model_label(m, r) for m, r in groups]
    colours = method_colours(summary)
    most_bars = len(groups) * summary.groupby("task")["method"].nunique().max()
    rotate = len(groups) > 3 or max(map(len, labels)) > 12

    fig, axes = plt.subplots(len(tasks), 2, squeeze=False, sharex=True, layout="constrained",
                             figsize=(2 * max(3.2, 1.2 + 0.16 * most_bars), 1.2 + 2.4 * len(tasks)))
    for i, task in enumerate(tasks):
        rows = summary[summary["task"] == task]
        methods = ordered_unique(rows["method"])
        for ax, metric, name in ((axes[i, 0], "accuracy", "accuracy"), (axes[i, 1], "ece", "ECE")):
            _grouped_bars(ax, rows, groups, methods, colours, metric)
            if metric == "accuracy":
                ax.set(ylim=(0, 1.2), yticks=TICKS)
            else:
                ax.set_ylim(0, 1.3 * np.nanmax([rows["ece"].max(), rows["ece_ci_high"].max(), 0.01]))
            ax.set_title(f"{task}: {name}", fontsize=FONT["title"] + 1)
            ax.set_ylabel(name, fontsize=FONT["label"])
            ax.tick_params(labelsize=FONT["tick"])
            ax.grid(axis="y", color="0.9")
            ax.set_axisbelow(True)
        axes[i, 1].legend(fontsize=FONT["tick"], title="method", title_fontsize=FONT["tick"],
                          loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    for ax in axes[-1]:
        ax.set_xticks(np.arange(len(groups)), labels, rotation=40 if rotate else 0,
                      ha="right" if rotate else "center", rotation_mode="anchor")
        ax.set_xlabel("model", fontsize=FONT["label"])
    save_figure(fig, png_out, pdf_out)
