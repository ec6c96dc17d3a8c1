"""What every figure shares: sizes, fonts and colours, the rows a figure reads (raw confidences, items
pooled; each task's primary method), the comparisons' significance, labels of runs, the layout of panels,
and writing a figure as PNG and PDF."""
from __future__ import annotations

import re
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..order import STANDARD, ordered_unique
from ..tables import atomic_path, read_table

DPI = 150
GAP_COLOUR = "tab:red"
FONT = {"title": 8, "label": 8, "tick": 7, "note": 7, "value": 6}
MAX_COLUMNS = 8  # reliability panels per row before wrapping into another block
MAX_DIAGRAMS = 3 * MAX_COLUMNS  # columns of reliability diagrams a figure at most (runs or sizes, evenly spread)
TICKS = [0, 0.25, 0.5, 0.75, 1]
SIGNIFICANCE = 0.05  # q-value below which a difference is marked
STAR = {"marker": "*", "s": 70, "edgecolors": "black", "linewidths": 0.5, "zorder": 6, "gid": "significant"}
MAX_LINES = 8  # curves per panel of a risk-coverage figure or reliability index (the others thinned or split)
SEPARATORS = "-_/.@ "  # where a label's common prefix may end (common_label_prefix)
COMPARISON_KINDS = ("aligned_vs_base", "consecutive_checkpoints", "consecutive_sizes", "recalibration")
COMPARISON_COLUMNS = ("comparison", "task", "method", "model_a", "revision_a", "model_b", "revision_b",
                      "ece_diff", "ece_q")


def select_rows(table: pd.DataFrame, recalibration: str | None = "none") -> pd.DataFrame:
    """The rows of a summary, bins or curves table that pool items (aggregation 'micro') with
    `recalibration` (None: every one); a table without either column counts as all 'micro' and
    all 'none'."""
    keep = pd.Series(True, index=table.index)
    if recalibration is not None:
        keep &= (table["recalibration"] == recalibration if "recalibration" in table.columns
                 else recalibration == "none")
    if "aggregation" in table.columns:
        keep &= table["aggregation"] == "micro"
    return table[keep]


def read_summary(path) -> pd.DataFrame:
    """The summary rows of the raw confidences, items pooled (see select_rows)."""
    return select_rows(read_table(path))


def read_comparisons(path) -> pd.DataFrame:
    """comparisons.csv (compare.compare), with model and revision names as text; ValueError naming
    the file and the missing columns."""
    text = {f"{c}_{s}": str for c in ("model", "revision", "recalibration") for s in "ab"}
    table = pd.read_csv(path, dtype={**text, "comparison": str, "task": str, "method": str})
    missing = [c for c in COMPARISON_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"comparisons {path} lacks the columns {', '.join(missing)}")
    return table


def significant_runs(comparisons: pd.DataFrame | None, kind: str) -> set[tuple[str, str, str, str]]:
    """(task, method, model, revision) of the second run (b) of every `kind` comparison of raw
    confidences whose ECE difference has q < SIGNIFICANCE (none without comparisons)."""
    if comparisons is None:
        return set()
    rows = comparisons[(comparisons["comparison"] == kind) & (comparisons["ece_q"] < SIGNIFICANCE)]
    for column in ("recalibration_a", "recalibration_b"):
        if column in rows.columns:
            rows = rows[rows[column] == "none"]
    return set(zip(rows["task"], rows["method"], rows["model_b"], rows["revision_b"]))


def marked_mask(rows: pd.DataFrame, marks: set) -> pd.Series:
    """Whether each summary row's (task, method, model, revision) is in `marks`."""
    keys = zip(rows["task"], rows["method"], rows["model"], rows["revision"].astype(str))
    return pd.Series([key in marks for key in keys], index=rows.index, dtype=bool)


def star_handle(label: str):
    """A legend entry of the significance star."""
    return matplotlib.lines.Line2D([], [], ls="", marker="*", ms=9, color="0.6", markeredgecolor="black",
                                   markeredgewidth=0.5, label=label)


def model_label(model: str, revision: str) -> str:
    """'model@revision', without '@main' and with commit hashes cut to 7 characters."""
    revision = str(revision)
    if revision == "main":
        return str(model)
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        revision = revision[:7]
    return f"{model}@{revision}"


def common_label_prefix(names) -> str:
    """The longest common prefix of `names` that ends at a separator (one of SEPARATORS, kept), ''
    where there is none or fewer than two distinct names."""
    names = ordered_unique(map(str, names))
    if len(names) < 2:
        return ""
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    cut = max(prefix.rfind(c) for c in SEPARATORS)
    return prefix[:cut + 1] if cut >= 0 else ""


def task_rows(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """The summary rows of `task`; ValueError naming the task and the tasks present if none."""
    rows = summary[summary["task"] == task]
    if rows.empty:
        present = ", ".join(map(str, ordered_unique(summary["task"]))) or "none"
        raise ValueError(f"task {task!r} has no rows in the summary (tasks present: {present})")
    return rows


def with_labels(summary: pd.DataFrame) -> pd.DataFrame:
    """A copy whose label columns exist: missing `data` is 'standard', missing `family`/`stage` stay
    NaN; `params`, `step` and `epoch` are numeric (NaN where unknown)."""
    summary = summary.copy()
    for column in ("family", "data", "stage"):
        if column not in summary.columns:
            summary[column] = np.nan
    summary["data"] = summary["data"].where(summary["data"].notna(), STANDARD).astype(str)
    for column in ("params", "step", "epoch"):
        summary[column] = (pd.to_numeric(summary[column], errors="coerce")
                           if column in summary.columns else np.nan)
    return summary


def summary_primary_methods(summary: pd.DataFrame, methods: dict[str, str] | None) -> dict[str, str]:
    """task -> its primary method: `methods[task]`, else the task's first method in sorted order.
    ValueError when a named method has no rows in its task."""
    methods = dict(methods or {})
    primary = {}
    for task, rows in summary.groupby("task", sort=True):
        present = sorted(rows["method"].dropna().astype(str).unique())
        if task in methods:
            if methods[task] not in present:
                raise ValueError(f"primary method {methods[task]!r} of task {task!r} has no rows "
                                 f"(methods present: {', '.join(present) or 'none'})")
            primary[task] = methods[task]
        elif present:
            primary[task] = present[0]
    return primary


def primary_method_rows(summary: pd.DataFrame, methods) -> pd.DataFrame:
    """The rows of each task's primary method (see summary_primary_methods)."""
    primary = summary_primary_methods(summary, methods)
    return summary[summary["method"] == summary["task"].map(primary)]


def humanize(n) -> str:
    """A count in two significant figures with K/M/B/T: 70426624 -> '70M', 1414647808 -> '1.4B'."""
    if pd.isna(n):
        return "?"
    n = float(n)
    if n == 0:
        return "0"
    rounded = float(f"{n:.2g}")
    for factor, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(rounded) >= factor:
            return f"{rounded / factor:.3g}" + unit
    return f"{rounded:.3g}"


def format_number(x: float, digits: int = 3) -> str:
    """`x` with `digits` decimals, or 'n/a'."""
    return "n/a" if pd.isna(x) else f"{x:.{digits}f}"


def shades(colour, n: int) -> list[tuple]:
    """`n` shades of `colour` from light to dark (the colour itself when n == 1)."""
    base = np.array(matplotlib.colors.to_rgb(colour))
    if n == 1:
        return [tuple(base)]
    out = []
    for t in np.linspace(-0.5, 0.45, n):  # <0 mixes with white, >0 with black
        out.append(tuple(base + (1 - base) * -t if t < 0 else base * (1 - t)))
    return out


def thinned(rows: pd.DataFrame | list, n: int) -> pd.DataFrame | list:
    """At most `n` rows of a table (or items of a list), evenly spread, the first and last kept."""
    if len(rows) <= n:
        return rows
    keep = np.unique(np.round(np.linspace(0, len(rows) - 1, n)).astype(int))
    return rows.iloc[keep] if isinstance(rows, pd.DataFrame) else [rows[k] for k in keep]


def panel_layout(columns: list, methods: list, max_columns: int = MAX_COLUMNS):
    """Grid shape and {(column, method): (row, col)}: columns wrap into blocks of at most
    `max_columns` (balanced), each block holding one row per method."""
    n_blocks = -(-len(columns) // max_columns)
    per_block = -(-len(columns) // n_blocks)
    where = {(column, method): ((j // per_block) * len(methods) + i, j % per_block)
             for j, column in enumerate(columns) for i, method in enumerate(methods)}
    return (n_blocks * len(methods), per_block), where


def text_inches(fig, text: str, fontsize: float, **properties) -> tuple[float, float]:
    """The width and height, in inches, of `text` drawn on `fig` at `fontsize` (with text `properties`)."""
    artist = fig.text(0, 0, text, fontsize=fontsize, **properties)
    box = artist.get_window_extent(fig.canvas.get_renderer())
    artist.remove()
    return box.width / fig.dpi, box.height / fig.dpi


def wrapped(fig, words: str, width: float, fontsize: float, **properties) -> str:
    """`words` in as few lines as fit `width` inches at `fontsize` (each line of a text wrapped on its own; a word
    longer than a line stays whole)."""
    full = text_inches(fig, words, fontsize, **properties)[0]
    if full <= width:
        return words
    lines = words.split("\n")
    longest = max(map(len, lines))
    for characters in range(int(longest * width / full) + 1, 9, -1):
        text = "\n".join(part for line in lines  # names such as other-base stay whole
                         for part in textwrap.wrap(line, characters, break_long_words=False,
                                                   break_on_hyphens=False) or [""])
        if text_inches(fig, text, fontsize, **properties)[0] <= width:
            break
    return text


def figure_title(fig, words: str, fontsize: float = FONT["title"] + 2, margin: float = 0.15):
    """The suptitle of `fig`, in lines that fit its width less `margin` inches each side."""
    return fig.suptitle(wrapped(fig, words, fig.get_figwidth() - 2 * margin, fontsize), fontsize=fontsize)


def style_axis(ax, ylabel: str) -> None:
    """The y label, tick label size and a light grid behind the data."""
    ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    ax.grid(color="0.9", which="major")
    ax.set_axisbelow(True)


def ece_ylim(ax, rows: pd.DataFrame) -> None:
    """An ECE axis from 0 to a little above the largest ECE or upper CI bound of `rows`."""
    top = np.nanmax([rows["ece"].max(), rows["ece_ci_high"].max(), 0.01])
    ax.set_ylim(0, 1.1 * top)


def save_figure(fig, png_out, pdf_out) -> None:
    """Write `fig` as PNG and PDF, each atomically, then close it. The layout worked out for the PNG
    is kept for the PDF (it is in inches and points, the same at any resolution)."""
    try:
        for path, fmt in ((png_out, "png"), (pdf_out, "pdf")):
            with atomic_path(path, suffix=f".{fmt}") as tmp:
                fig.savefig(tmp, format=fmt, dpi=DPI)
            fig.set_layout_engine("none")
    finally:
        plt.close(fig)
