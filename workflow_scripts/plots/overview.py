"""The overview: accuracy and ECE of every run and task in one heatmap whose size follows its content, and
the summary as an HTML table for the report."""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..order import is_missing, natural_key, natural_order, natural_runs, ordered_unique
from ..tables import atomic_path, read_table
from .style import FONT, SEPARATORS, model_label, save_figure, select_rows, summary_primary_methods, with_labels

ROW_HEIGHT = 0.2  # inches per heatmap row (a run or a family header): 14.4 pt for 7 pt text
CELL_WIDTH = 0.42  # inches per heatmap column (a task's method): '0.123' at FONT['value'] fits
STAGE_FILLS = {"base": "0.88", "sft": "#c6dbef", "dpo": "#dadaeb", "rlhf": "#fcbba1"}


def short_label(model: str, revision: str, family=None) -> str:
    """model_label without the family's name in front ('geo-neox-l-standard' of family 'geo-neox':
    'l-standard'), where the model name starts with it and a separator."""
    label = model_label(model, revision)
    if not is_missing(family) and len(str(model)) > len(str(family)) + 1:
        family = str(family)
        if str(model).startswith(family) and str(model)[len(family)] in SEPARATORS:
            return label[len(family) + 1:]
    return label


def primary_first(methods, primary: str | None) -> list[str]:
    """`methods` by name (digits as numbers), `primary` first."""
    return sorted(ordered_unique(methods), key=lambda m: (m != primary, natural_key(m)))


def summary_grid(summary: pd.DataFrame, methods: dict[str, str] | None = None) -> dict:
    """What the overview heatmap draws, from raw micro rows (select_rows): ``rows``, its rows top to
    bottom, each a dict with ``kind`` 'family' (a header: ``label`` the family, or 'other models') or
    'run' (``run`` (model, revision), ``label`` its short_label, ``stage``), runs in natural order
    (see run_keys) under a header per family; ``columns``, per metric ('accuracy', 'ece') the list of
    (task, methods) in natural task order, each task's primary method (``methods[task]``, else the
    first by name) first; accuracy keeps one method where every method of a task has the same
    accuracy on every run (the answer does not depend on the confidence method)."""
    rows = select_rows(summary)
    if rows.empty:
        raise ValueError("the summary has no rows of raw confidences (recalibration 'none', items pooled)")
    rows = with_labels(natural_order(rows))
    primary = summary_primary_methods(rows, methods)
    grid_rows, family = [], object()
    info = rows.drop_duplicates(["model", "revision"]).set_index(["model", "revision"])
    for model, revision in natural_runs(rows):
        labels = info.loc[(model, revision)]
        if is_missing(labels["family"]) is not is_missing(family) or (
                not is_missing(family) and labels["family"] != family):
            family = labels["family"]
            grid_rows.append({"kind": "family", "label": "other models" if is_missing(family) else str(family)})
        stage = "base" if is_missing(labels["stage"]) else str(labels["stage"])
        grid_rows.append({"kind": "run", "run": (model, revision), "stage": stage,
                          "label": short_label(model, revision, labels["family"])})
    ece_columns, accuracy_columns = [], []
    for task in ordered_unique(rows["task"]):
        task_rows_ = rows[rows["task"] == task]
        ordered = primary_first(task_rows_["method"], primary.get(task))
        ece_columns.append((task, ordered))
        accuracy = task_rows_.pivot_table(index=["model", "revision"], columns="method", values="accuracy")
        same = accuracy.nunique(axis=1, dropna=True).le(1).all() and accuracy.notna().all(axis=None)
        accuracy_columns.append((task, ordered[:1] if same and len(ordered) > 1 else ordered))
    return {"rows": grid_rows, "columns": {"accuracy": accuracy_columns, "ece": ece_columns}}


def _cell_text_colour(cmap, norm, value) -> str:
    r, g, b, _ = cmap(norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "white"


def _draw_heat(ax, values: np.ndarray, headers: list[int], cmap, norm) -> None:
    """One task's cells (rows x methods) with their values written in; NaN cells grey 'n/a', header
    rows blank."""
    n_rows, n_cols = values.shape
    ax.set_facecolor("0.93")
    ax.pcolormesh(np.arange(n_cols + 1) - 0.5, np.arange(n_rows + 1) - 0.5, np.ma.masked_invalid(values),
                  cmap=cmap, norm=norm, edgecolors="white", linewidth=0.6)
    for y in headers:
        ax.axhspan(y - 0.5, y + 0.5, color="white", zorder=2, lw=0)
    for (y, x), value in np.ndenumerate(values):
        if y in headers:
            continue
        ax.text(x, y, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                fontsize=FONT["value"], color="0.45" if np.isnan(value) else _cell_text_colour(cmap, norm, value))
    ax.set(xlim=(-0.5, n_cols - 0.5), ylim=(n_rows - 0.5, -0.5), yticks=[])
    ax.tick_params(axis="x", top=True, bottom=False, labeltop=True, labelbottom=False, length=0,
                   labelsize=FONT["tick"], labelrotation=90, pad=2)
    ax.spines[:].set_visible(False)


def _draw_stages(ax, grid_rows: list[dict]) -> None:
    """The stage of each run as a strip of blocks (one per stretch of runs of one stage, named in it)."""
    y = 0
    while y < len(grid_rows):
        entry = grid_rows[y]
        if entry["kind"] != "run":
            y += 1
            continue
        end = y
        while end + 1 < len(grid_rows) and grid_rows[end + 1]["kind"] == "run" and \
                grid_rows[end + 1]["stage"] == entry["stage"]:
            end += 1
        ax.add_patch(matplotlib.patches.Rectangle((0, y - 0.5 + 0.06), 1, end - y + 1 - 0.12, lw=0,
                                                  color=STAGE_FILLS.get(entry["stage"], "0.8"), zorder=1))
        ax.text(0.5, (y + end) / 2, entry["stage"], ha="center", va="center", fontsize=FONT["value"], zorder=2)
        y = end + 1
    ax.set(xlim=(0, 1), ylim=(len(grid_rows) - 0.5, -0.5), xticks=[])
    ax.set_yticks(range(len(grid_rows)), [e["label"] for e in grid_rows])
    ax.tick_params(axis="y", length=0, labelsize=FONT["tick"], pad=3)
    for entry, label in zip(grid_rows, ax.get_yticklabels()):
        if entry["kind"] == "family":
            label.set(fontweight="bold", fontsize=FONT["label"])
    ax.spines[:].set_visible(False)
    ax.set_title("stage", fontsize=FONT["tick"], loc="center", pad=2)


def summary_figure(summary: pd.DataFrame, methods: dict[str, str] | None = None):
    """The overview heatmap (see summary_grid): accuracy (blue, 0 to 1) then ECE (red, 0 to the
    largest ECE) of every run (rows) for every task and method (columns), the values in the cells,
    runs under a header per family with their stage in a strip; font sizes fixed, the figure's size
    following the number of rows, columns and the longest labels."""
    grid = summary_grid(summary, methods)
    rows = with_labels(select_rows(summary))
    grid_rows = grid["rows"]
    index = {e["run"]: y for y, e in enumerate(grid_rows) if e["kind"] == "run"}
    headers = [y for y, e in enumerate(grid_rows) if e["kind"] == "family"]
    values = rows.drop_duplicates(["task", "model", "revision", "method"]).set_index(
        ["task", "model", "revision", "method"])
    ece_top = float(np.nanmax([values["ece"].max(), 0.05]))
    ece_top = np.ceil(ece_top * 20) / 20  # a round upper end, in steps of 0.05
    scales = {"accuracy": (plt.get_cmap("Blues"), matplotlib.colors.Normalize(0, 1), "accuracy"),
              "ece": (plt.get_cmap("Reds"), matplotlib.colors.Normalize(0, ece_top), "ECE")}
    n_items = rows.groupby("task")["n"].agg(["min", "max"]) if "n" in rows.columns else None

    fig = plt.figure(figsize=(8, 8))
    renderer = fig.canvas.get_renderer()

    def inches(text) -> tuple[float, float]:  # drawn width and height of a text artist
        box = text.get_window_extent(renderer)
        return box.width / fig.dpi, box.height / fig.dpi

    stages = fig.add_axes((0, 0, 0.1, 0.1))
    _draw_stages(stages, grid_rows)
    label_width = max(inches(label)[0] for label in stages.get_yticklabels())
    blocks = []  # (metric, axes, its width in inches, the task's header text)
    for metric in ("accuracy", "ece"):
        cmap, norm, _ = scales[metric]
        for task, ms in grid["columns"][metric]:
            ax = fig.add_axes((0, 0, 0.1, 0.1))
            matrix = np.full((len(grid_rows), len(ms)), np.nan)
            for x, method in enumerate(ms):
                for run, y in index.items():
                    if (task, *run, method) in values.index:
                        matrix[y, x] = values.loc[(task, *run, method), metric]
            _draw_heat(ax, matrix, headers, cmap, norm)
            collapsed = metric == "accuracy" and len(ms) < len(dict(grid["columns"]["ece"])[task])
            ax.set_xticks(range(len(ms)), ["all methods"] if collapsed else ms)
            n = ""
            if n_items is not None and task in n_items.index:
                low, high = n_items.loc[task]
                n = f"\nn = {int(low):,}" if low == high else f"\nn = {int(low):,}-{int(high):,}"
            header = fig.text(0, 0, f"{task}{n}", ha="center", va="bottom", fontsize=FONT["title"])
            width = max(CELL_WIDTH * len(ms), inches(header)[0] + 0.08)
            blocks.append((metric, ax, width, header))
    ticks_height = max(inches(label)[1] for _, ax, _, _ in blocks for label in ax.get_xticklabels())
    header_height = max(inches(header)[1] for *_, header in blocks)

    # the layout, in inches from the bottom left: labels | stage strip | accuracy tasks | ECE tasks
    margin, strip, between, gap = 0.12, 0.42, 0.06, 0.35
    body = ROW_HEIGHT * len(grid_rows)
    bar_height, bar_block = 0.11, 0.11 + 0.5  # the colour bar, and it with its title and ticks
    top_of_body = margin + body
    x = margin + label_width + 0.08
    place = {}
    place[stages] = (x, strip)
    x += strip + gap / 2
    spans = {}
    for metric, ax, width, _ in blocks:
        if metric == "ece" and "ece" not in spans:
            x += gap
        place[ax] = (x, width)
        spans.setdefault(metric, [x, x + width])[1] = x + width
        x += width + between
    total_width = x - between + margin
    words = ("Accuracy and calibration error of every run (raw confidences, items pooled; per task the primary "
             "method first)")
    title = fig.suptitle(words, fontsize=FONT["title"] + 1, va="top")
    if inches(title)[0] > total_width - 2 * margin:  # a narrow figure: the title in lines that fit
        characters = int(len(words) * (total_width - 2 * margin) / inches(title)[0])
        title.set_text("\n".join(textwrap.wrap(words, max(characters, 20))))
    above = 0.04 + ticks_height + 0.06 + header_height + 0.08 + bar_block + inches(title)[1] + 0.12
    height = top_of_body + above
    title.set_y(1 - 0.08 / height)
    fig.set_size_inches(total_width, height)
    for ax, (left, width) in place.items():
        ax.set_position((left / total_width, margin / height, width / total_width, body / height))
    header_y = top_of_body + 0.04 + ticks_height + 0.06
    for _, ax, width, header in blocks:
        left = place[ax][0]
        header.set_position(((left + width / 2) / total_width, header_y / height))
    bar_y = header_y + header_height + 0.08
    for metric, (left, right) in spans.items():
        cmap, norm, name = scales[metric]
        cax = fig.add_axes((left / total_width, bar_y / height, (right - left) / total_width, bar_height / height))
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
        cax.tick_params(labelsize=FONT["tick"], length=2, pad=1)
        cax.xaxis.set_ticks_position("top")
        cax.set_title(name, fontsize=FONT["title"] + 1, fontweight="bold", pad=3)
    return fig


def plot_summary(summary_path, png_out, pdf_out, methods: dict[str, str] | None = None) -> None:
    """The overview heatmap (see summary_figure) as PNG and PDF."""
    save_figure(summary_figure(read_table(summary_path), methods), png_out, pdf_out)


TABLE_STYLE = """
body { font: 13px/1.35 system-ui, sans-serif; margin: 12px; color: #222; }
h1 { font-size: 16px; margin: 0 0 4px; }
p { margin: 0 0 10px; max-width: 70em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { padding: 2px 6px; border-bottom: 1px solid #ddd; text-align: right; white-space: nowrap; }
th { position: sticky; top: 0; background: #f3f3f3; }
td:nth-child(-n+6), th:nth-child(-n+6) { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
"""


def summary_table_html(summary: pd.DataFrame, title: str = "results/metrics/summary.csv") -> str:
    """summary.csv as one HTML page: every row in natural order (see natural_order) and column,
    numbers to 4 significant digits, the header kept in view."""
    table = natural_order(summary)
    body = table.to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0,
                         classes="summary", escape=True)
    runs = table.drop_duplicates(["model", "revision"]).shape[0]
    tasks = table["task"].nunique()
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{TABLE_STYLE}</style></head><body>\n<h1>{title}</h1>\n"
            f"<p>{len(table)} rows: {runs} runs (model and revision) x {tasks} tasks x their confidence methods x "
            "recalibrations ('none': the raw confidences) x aggregation (micro: items pooled; macro: the mean over "
            "subjects, where a task has subjects). Runs in the figures' order: by family, data, size, stage, then "
            "step or epoch.</p>\n" + body + "\n</body></html>\n")


def write_summary_table(summary_path, html_out) -> None:
    """The summary as an HTML table (see summary_table_html), written atomically."""
    with atomic_path(html_out, suffix=".html") as tmp:
        Path(tmp).write_text(summary_table_html(read_table(summary_path)), encoding="utf-8")
