"""The analysis figures: recalibration (ECE before and after, fitted temperatures), risk-coverage curves
(selective prediction) and the agreement of the calibration metrics on the paired comparisons."""
from __future__ import annotations

import textwrap

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..order import STANDARD, natural_order, natural_runs, ordered_unique, recalibration_order
from ..tables import read_table
from .alignment import alignment_axis, alignment_rows, alignment_variant_colours
from .pretraining import (
    FAMILY_STYLES,
    dynamics_rows,
    model_colours,
    scale_rows,
    size_ticks,
    step_formatter,
    variant_colours,
    variant_label,
)
from .style import (
    COMPARISON_KINDS,
    FONT,
    GAP_COLOUR,
    MAX_LINES,
    SIGNIFICANCE,
    TICKS,
    format_number,
    humanize,
    model_label,
    primary_method_rows,
    read_comparisons,
    save_figure,
    select_rows,
    style_axis,
    task_rows,
    text_inches,
    thinned,
    with_labels,
    wrapped,
)

RECALIBRATION_STYLES = {"none": ("o", "black"), "temperature": ("s", "tab:blue"), "platt": ("^", "tab:orange"),
                        "isotonic": ("D", "tab:green"), "histogram": ("v", "tab:purple")}
ROW_HEIGHT = 0.15  # inches per run of the recalibration figure
RECALIBRATION_KEY_WIDTH = 1.0  # inches per entry of its legend
TEMPERATURE_HEIGHT = 3.0  # inches of its panels of fitted temperatures
MAX_LISTED = 12  # disagreeing comparisons written out under the agreement panels
MIN_COVERAGE = 0.1  # the risk-coverage axes end at the highest risk from this coverage on
METRIC_PAIRS = (("ece", "sce"), ("ece", "smece"), ("sce", "smece"))
METRIC_LABELS = {"ece": "ECE", "sce": "SCE", "smece": "smECE"}


def _recalibration_style(recalibration: str, order: list[str]) -> tuple[str, tuple | str]:
    if recalibration in RECALIBRATION_STYLES:
        return RECALIBRATION_STYLES[recalibration]
    spare = [c for c in plt.get_cmap("tab10").colors
             if c not in {matplotlib.colors.to_rgb(c) for _, c in RECALIBRATION_STYLES.values()}]
    return "P", spare[order.index(recalibration) % len(spare)]


def task_colours(tasks) -> dict[str, tuple]:
    """One tab10 colour per task, in the order given."""
    palette = plt.get_cmap("tab10").colors
    return {t: palette[i % len(palette)] for i, t in enumerate(ordered_unique(tasks))}


def temperature_panels(summary: pd.DataFrame, suites: list[str], dynamics: list[str],
                       alignment: dict[str, list[str]], methods: dict[str, str]) -> dict[str, pd.DataFrame]:
    """The fitted temperatures (rows of recalibration 'temperature' with a known `temperature`, micro,
    each task's primary method) against 'parameters' (scale_rows of `suites`), 'step' (dynamics_rows
    of `dynamics`) and 'alignment' (alignment_rows of `alignment`), leaving out those without rows."""
    rows = select_rows(summary, "temperature")
    if "temperature" not in rows.columns or rows["temperature"].isna().all():
        return {}
    panels = {"parameters": scale_rows(rows, suites, methods) if suites else rows.iloc[:0],
              "step": dynamics_rows(rows, dynamics, methods) if dynamics else rows.iloc[:0],
              "alignment": alignment_rows(rows, alignment, methods) if alignment else rows.iloc[:0]}
    panels = {name: panel[panel["temperature"].notna()] for name, panel in panels.items()}
    return {name: panel for name, panel in panels.items() if not panel.empty}


def _draw_ece_dots(ax, rows: pd.DataFrame, runs: list, order: list[str]) -> None:
    """One row per run: its ECE under each recalibration (hollow black ring: none), joined by a grey
    line from the smallest to the largest."""
    wide = rows.pivot_table(index=["model", "revision"], columns="recalibration", values="ece",
                            aggfunc="first").reindex(pd.MultiIndex.from_tuples(runs))
    y = np.arange(len(runs))
    ax.hlines(y, wide.min(axis=1), wide.max(axis=1), color="0.8", lw=1.2, zorder=1)
    for recalibration in order:
        if recalibration not in wide.columns:
            continue
        marker, colour = _recalibration_style(recalibration, order)
        if recalibration == "none":
            ax.scatter(wide[recalibration], y, marker=marker, s=30, facecolors="none", edgecolors=colour,
                       linewidths=1.1, zorder=4, label=recalibration)
        else:
            ax.scatter(wide[recalibration], y, marker=marker, s=14, color=colour, linewidths=0, zorder=3,
                       label=recalibration)
    ax.set_xlim(0, 1.08 * max(0.01, float(np.nanmax(wide.to_numpy()))))


def _draw_temperatures(ax, name: str, rows: pd.DataFrame, colours: dict) -> None:
    """The fitted temperature of each task's primary method (one colour per task) against `name`, on a
    log scale: T = 0.5 and T = 2 as far from 1, and T = 100 (the bound) in view."""
    ax.set_yscale("log")
    ax.axhline(1, ls="--", color="0.5", lw=0.8, zorder=1)
    span = np.log10(rows["temperature"].max() / rows["temperature"].min()) if len(rows) else 0
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5) if span < 1.5 else (1,)))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))  # 0.5, 1, 2, not 10^0
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if name == "alignment":
        bars, x, labels, variant_of = alignment_axis(rows)
        where = dict(zip(bars, x))
        for task, sub in rows.groupby("task", sort=False):
            for variant in ordered_unique(sub["variant"]):
                part = sub[sub["variant"] == variant]
                ax.plot([where[b] for b in zip(part["model"], part["revision"])], part["temperature"],
                        marker="o", ms=3, lw=1, color=colours[task], zorder=3)
        ax.set_xticks(x, labels, rotation=60, ha="right", rotation_mode="anchor", fontsize=FONT["tick"] - 1)
        ax.set_title("T along alignment", fontsize=FONT["title"] + 1)
        return
    column, groups = ("params", ["family", "data"]) if name == "parameters" else ("step", ["model"])
    styles = {}
    for (task, *group), line in rows.groupby(["task", *groups], sort=False):
        ls = styles.setdefault(tuple(group), FAMILY_STYLES[len(styles) % len(FAMILY_STYLES)][1])
        line = line.drop_duplicates(column)
        ax.plot(line[column], line["temperature"], marker="o", ms=3, lw=1, ls=ls, color=colours[task],
                zorder=3)
    ax.set_xscale("log")
    if name == "parameters":
        size_ticks(ax, rows["params"])
        ax.set_xlabel("parameters", fontsize=FONT["label"])
        ax.set_title("T against size (final step)", fontsize=FONT["title"] + 1)
        what = [variant_label(*g) for g in styles]
    else:
        ax.xaxis.set_major_formatter(step_formatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training step", fontsize=FONT["label"])
        ax.set_title("T along training", fontsize=FONT["title"] + 1)
        what = [str(g[0]) for g in styles]
    if len(styles) > 1:  # the line styles need a key
        ax.legend([matplotlib.lines.Line2D([], [], color="0.3", ls=ls) for ls in styles.values()], what,
                  fontsize=FONT["tick"] - 1, frameon=False, loc="best")


def recalibration_figure(summary: pd.DataFrame, suites: list[str], dynamics: list[str],
                         alignment: dict[str, list[str]], methods: dict[str, str]):
    """Top: per task (columns), the ECE of every run (rows, natural order) before ('none') and after
    each recalibration, for the task's primary method. Bottom: the fitted temperature against
    parameter count, training step and alignment stage (see temperature_panels), one colour per task."""
    rows = primary_method_rows(select_rows(summary, recalibration=None), methods)
    if "recalibration" not in rows.columns or not (rows["recalibration"] != "none").any():
        raise ValueError("the summary has no recalibrated rows (no `recalibration` other than 'none')")
    rows = natural_order(rows)
    tasks = ordered_unique(rows["task"])
    runs = natural_runs(rows)
    order = recalibration_order(rows["recalibration"])
    panels = temperature_panels(summary, suites, dynamics, alignment, methods)
    colours = task_colours(tasks)

    labels = [model_label(m, r) for m, r in runs]
    fig = plt.figure(layout="constrained")
    label_width = max(text_inches(fig, label, FONT["tick"] - 0.5)[0] for label in labels)
    widths = [max(1.0, 0.22 * len(alignment_axis(p)[0]) / 2.6) if name == "alignment" else 1.0
              for name, p in panels.items()]
    width = max(label_width + 0.4 + 2.0 * len(tasks), 0.8 + 2.6 * sum(widths))
    title = wrapped(fig, "ECE before (none) and after each recalibration, on held-out items", width - 0.3,
                    FONT["title"] + 2)
    key_columns = min(len(order), max(1, int((width - 0.3) / RECALIBRATION_KEY_WIDTH)))
    above = 0.2 * (title.count("\n") + 1) + 0.2 * -(-len(order) // key_columns)  # the legend: 0.2 inch a line
    top_height = above + 1.1 + max(ROW_HEIGHT * len(runs), 0.45)  # panel titles, x axis, the runs
    fig.set_size_inches(width, top_height + (TEMPERATURE_HEIGHT if panels else 0))
    top, bottom = (fig.subfigures(2, 1, height_ratios=[top_height, TEMPERATURE_HEIGHT]) if panels
                   else (fig, None))
    axes = top.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        task_rows_ = rows[rows["task"] == task]
        _draw_ece_dots(ax, task_rows_, runs, order)
        ax.set_title(f"{task}\nECE ({task_rows_['method'].iloc[0]})", fontsize=FONT["title"] + 1)
        ax.set_xlabel("ECE", fontsize=FONT["label"])
        ax.tick_params(labelsize=FONT["tick"])
        ax.grid(axis="x", color="0.9")
        ax.set_axisbelow(True)
    axes[0].set_yticks(np.arange(len(runs)), labels, fontsize=FONT["tick"] - 0.5)
    axes[0].set_ylim(len(runs) - 0.5, -0.5)  # the first run on top
    handles = {}  # every recalibration drawn in any task
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    top.legend([handles[r] for r in order], order, loc="outside upper center", ncol=key_columns,
               fontsize=FONT["label"], frameon=False, title_fontsize=FONT["title"] + 2, title=title)
    if panels:
        temperature_axes = bottom.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
        for ax, (name, panel) in zip(temperature_axes, panels.items()):
            _draw_temperatures(ax, name, panel, colours)
            style_axis(ax, "fitted temperature T")
        present = [t for t in tasks if any((p["task"] == t).any() for p in panels.values())]
        bottom.legend([matplotlib.lines.Line2D([], [], color=colours[t], marker="o", ms=3) for t in present],
                      present, loc="outside right upper", fontsize=FONT["label"], frameon=False, title="task",
                      title_fontsize=FONT["label"])
        bottom.suptitle("Fitted temperature (T > 1: the raw confidences were over-confident)",
                        fontsize=FONT["title"] + 1)
    return fig


def plot_recalibration(summary_path, suites: list[str], dynamics: list[str], alignment: dict[str, list[str]],
                       methods: dict[str, str], png_out, pdf_out) -> None:
    """The recalibration figure (see recalibration_figure) as PNG and PDF."""
    fig = recalibration_figure(read_table(summary_path), suites, dynamics, alignment, methods)
    save_figure(fig, png_out, pdf_out)


def risk_coverage_panels(rows: pd.DataFrame, suites: list[str], dynamics: list[str],
                         alignment: dict[str, list[str]], methods: dict[str, str]) -> list[tuple[str, list[tuple]]]:
    """The panels of a risk-coverage figure over summary `rows`, as (title, [(model, revision,
    label, colour, line style)]): each suite family's base models at their final revision (by data
    variant, then size; where there are more than MAX_LINES, a panel per data variant of at most MAX_LINES sizes,
    evenly spread), each dynamics model along training (at most MAX_LINES checkpoints, evenly
    spread), the alignment models (the base, then each tuned model at its last revision), then
    every other model, by family, at most MAX_LINES runs a panel."""
    rows = with_labels(rows)
    panels, covered = [], set()
    for family in suites:
        sizes = scale_rows(rows, [family], methods).drop_duplicates(["model", "revision"])
        if sizes.empty:
            continue
        colours = model_colours(sizes, variant_colours(rows["data"]))
        several = sizes["data"].nunique() > 1
        parts = [(f"{family}: sizes (final step)", sizes)] if len(sizes) <= MAX_LINES else [
            (f"{family} ({data}): sizes (final step)" + (f", {MAX_LINES} of {len(part)}" if len(part) > MAX_LINES
                                                          else ""), thinned(part, MAX_LINES))
            for data, part in sizes.groupby("data", sort=False)]
        for title, part in parts:
            panels.append((title, [
                (m, r, f"{humanize(p)} {d}" if several and len(parts) == 1 else humanize(p), colours[m],
                 "-" if d == STANDARD else "--")
                for m, r, p, d in zip(part["model"], part["revision"], part["params"], part["data"])]))
        covered |= set(sizes["model"])
    for model in dynamics:
        steps = thinned(dynamics_rows(rows, [model], methods).drop_duplicates("revision"), MAX_LINES)
        if steps.empty:
            continue
        shades = plt.get_cmap("viridis")(np.linspace(0.05, 0.9, len(steps)))
        panels.append((f"{model} along training", [
            (model, r, f"step {int(s):,}", tuple(c), "-")
            for r, s, c in zip(steps["revision"], steps["step"], shades)]))
        covered.add(model)
    if alignment:
        aligned = alignment_rows(rows, alignment, methods).drop_duplicates(["model", "revision"])
        first = next(iter(alignment))
        aligned = aligned[(aligned["model"] == first)
                          | ~aligned.duplicated("model", keep="last")]  # the base, then each last epoch
        colours = alignment_variant_colours(ordered_unique(aligned["variant"]))
        panels.append(("alignment (last epoch)", [
            (m, r, v if pd.isna(e) else f"{v} e{int(e)}", colours[v], "-" if m == first else "--")
            for m, r, v, e in zip(aligned["model"], aligned["revision"], aligned["variant"], aligned["epoch"])]))
        covered |= set(alignment)
    rest = natural_order(rows[~rows["model"].isin(covered)].drop_duplicates(["model", "revision"]))
    families = rest["family"].astype(object).where(rest["family"].notna(), "other models").astype(str)
    palette = plt.get_cmap("tab10").colors
    for family in ordered_unique(families):
        members = rest[families == family]
        for start in range(0, len(members), MAX_LINES):
            chunk = members.iloc[start:start + MAX_LINES]
            panels.append((family, [(m, r, model_label(m, r), palette[k % len(palette)], "-")
                                    for k, (m, r) in enumerate(zip(chunk["model"], chunk["revision"]))]))
    return panels


def risk_coverage_figure(summary: pd.DataFrame, curves: pd.DataFrame, task: str, suites: list[str],
                         dynamics: list[str], alignment: dict[str, list[str]], methods: dict[str, str]):
    """Risk (error rate of the answered items) against coverage (the share answered, most confident
    first) for `task`'s primary method and raw confidences, one line per run with its AURC in the
    legend, in the panels of risk_coverage_panels; panels without curves are left out."""
    summary = select_rows(summary)
    rows = primary_method_rows(task_rows(summary, task), methods)
    method = rows["method"].iloc[0]
    curves = select_rows(curves)
    curves = curves[(curves["task"] == task) & (curves["method"] == method) & (curves["curve"] == "risk_coverage")]
    lines = {key: group.sort_values("x") for key, group in curves.groupby(["model", "revision"], sort=False)}
    aurc = rows.drop_duplicates(["model", "revision"]).set_index(["model", "revision"])["aurc"]
    panels = [(title, [e for e in entries if (e[0], e[1]) in lines])
              for title, entries in risk_coverage_panels(rows, suites, dynamics, alignment, methods)]
    panels = [(title, entries) for title, entries in panels if entries]
    if not panels:
        raise ValueError(f"no risk-coverage curves of task {task!r} ({method}) in the curves table")
    n_cols = min(len(panels), 2 if len(panels) <= 4 else 3)
    n_rows = -(-len(panels) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, layout="constrained",
                             figsize=(0.4 + 5.0 * n_cols, 0.5 + 2.7 * n_rows))
    beyond = curves.loc[curves["x"] >= MIN_COVERAGE, "y"]  # risks over the first few items are noise
    top = min(1.0, max(0.05, 1.1 * float((beyond if not beyond.empty else curves["y"]).max())))
    for ax, (title, entries) in zip(axes.flat, panels):
        for model, revision, label, colour, ls in entries:
            line = lines[(model, revision)]
            ax.plot(line["x"], line["y"], color=colour, ls=ls, lw=1.2,
                    label=f"{label} (AURC {format_number(aurc[(model, revision)])})")
        ax.set(xlim=(0, 1), ylim=(0, top), xticks=TICKS)
        ax.set_title(title, fontsize=FONT["title"] + 1)
        ax.set_xlabel("coverage", fontsize=FONT["label"])
        style_axis(ax, "risk (error rate)")
        ax.legend(fontsize=FONT["tick"] - 0.5, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    for ax in list(axes.flat)[len(panels):]:
        ax.remove()
    fig.suptitle(f"Risk-coverage: {task} ({method})", fontsize=FONT["title"] + 2)
    return fig


def plot_risk_coverage(summary_path, curves_path, task: str, suites: list[str], dynamics: list[str],
                       alignment: dict[str, list[str]], methods: dict[str, str], png_out, pdf_out) -> None:
    """The risk-coverage figure of `task` (see risk_coverage_figure) as PNG and PDF."""
    fig = risk_coverage_figure(read_table(summary_path), read_table(curves_path), task, suites, dynamics,
                               alignment, methods)
    save_figure(fig, png_out, pdf_out)


def metric_pair(comparisons: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """The comparisons where both `first` and `second` differences are known, with `x`, `y` (the
    differences), `agree` (the same sign; a zero difference is a sign of its own) and `flip` (they
    disagree and at least one of the two has q < SIGNIFICANCE)."""
    if f"{first}_diff" not in comparisons.columns or f"{second}_diff" not in comparisons.columns:
        return comparisons.iloc[:0].assign(x=[], y=[], agree=[], flip=[])
    rows = comparisons[comparisons[f"{first}_diff"].notna() & comparisons[f"{second}_diff"].notna()]
    agree = np.sign(rows[f"{first}_diff"]) == np.sign(rows[f"{second}_diff"])
    significant = (rows[f"{first}_q"] < SIGNIFICANCE) | (rows[f"{second}_q"] < SIGNIFICANCE)
    return rows.assign(x=rows[f"{first}_diff"], y=rows[f"{second}_diff"], agree=agree,
                       flip=~agree & significant)


def comparison_kinds(comparisons: pd.DataFrame) -> list[str]:
    """The comparison kinds present: the known ones in COMPARISON_KINDS order, then any others."""
    present = ordered_unique(comparisons["comparison"])
    return [k for k in COMPARISON_KINDS if k in present] + [k for k in present if k not in COMPARISON_KINDS]


def sign_agreement(comparisons: pd.DataFrame) -> pd.DataFrame:
    """Per comparison kind and metric pair with any comparison where both differences are known:
    n, agree, disagree and flips (see metric_pair)."""
    out = []
    for kind in comparison_kinds(comparisons):
        rows = comparisons[comparisons["comparison"] == kind]
        for first, second in METRIC_PAIRS:
            pair = metric_pair(rows, first, second)
            if not pair.empty:
                out.append(dict(comparison=kind, first=first, second=second, n=len(pair),
                                agree=int(pair["agree"].sum()), disagree=int((~pair["agree"]).sum()),
                                flips=int(pair["flip"].sum())))
    return pd.DataFrame(out, columns=["comparison", "first", "second", "n", "agree", "disagree", "flips"])


def _comparison_label(row: pd.Series) -> str:
    """'kind, task (method): a -> b' of one comparison."""
    a, b = model_label(row["model_a"], row["revision_a"]), model_label(row["model_b"], row["revision_b"])
    if row["comparison"] == "recalibration":
        return (f"{row['comparison']}, {row['task']} ({row['method']}), {b}: "
                f"{row['recalibration_a']} -> {row['recalibration_b']}")
    return f"{row['comparison']}, {row['task']} ({row['method']}): {a} -> {b}"


def flipped_comparisons(comparisons: pd.DataFrame) -> list[str]:
    """One line per comparison where two metrics' differences have opposite signs and at least one
    of them has q < SIGNIFICANCE: its label and every metric's difference (* where q < 0.05); the
    comparison kinds in order, then by the smallest q."""
    flips = pd.concat([metric_pair(comparisons, a, b)["flip"] for a, b in METRIC_PAIRS])
    flipped = comparisons.loc[sorted(set(flips.index[flips]))]
    qs = [f"{m}_q" for m in METRIC_LABELS if f"{m}_q" in flipped.columns]
    order = {k: i for i, k in enumerate(comparison_kinds(comparisons))}
    flipped = flipped.assign(_kind=flipped["comparison"].map(order), _q=flipped[qs].min(axis=1))
    lines = []
    for _, row in flipped.sort_values(["_kind", "_q"], kind="stable").iterrows():
        diffs = [f"\u0394{name} {row[f'{m}_diff']:+.3f}{'*' if row[f'{m}_q'] < SIGNIFICANCE else ''}"
                 for m, name in METRIC_LABELS.items() if f"{m}_diff" in row and pd.notna(row[f"{m}_diff"])]
        lines.append(f"{_comparison_label(row)}: {', '.join(diffs)}")
    return lines


def metric_agreement_figure(comparisons: pd.DataFrame):
    """For each comparison kind (rows) and pair of metrics (columns; SCE only where known), the
    differences (b - a) of one metric against the other's, one point per comparison (filled where
    either has q < 0.05, one colour per task), the quadrants of opposite signs shaded and the share
    that agrees in the title; below, the comparisons whose sign flips with a significant difference."""
    if comparisons.empty:
        raise ValueError("the comparisons table has no rows")
    kinds = comparison_kinds(comparisons)
    pairs = [p for p in METRIC_PAIRS if not metric_pair(comparisons, *p).empty]
    counts = sign_agreement(comparisons).set_index(["comparison", "first", "second"])
    colours = task_colours(comparisons["task"])
    flipped = flipped_comparisons(comparisons)
    width = 1.3 + 2.45 * max(2, len(pairs))
    head = (f"{len(flipped)} comparisons whose metrics disagree in sign with a difference at q < {SIGNIFICANCE} "
            f"(* marks q < {SIGNIFICANCE}):" if flipped else
            f"No comparison's metrics disagree in sign where a difference has q < {SIGNIFICANCE}.")
    listed = flipped[:MAX_LISTED] + ([f"... and {len(flipped) - MAX_LISTED} more"] if len(flipped) > MAX_LISTED else [])
    characters = int(0.95 * width * 72 / (0.62 * FONT["note"]))  # monospace: 0.6 em a character
    lines = [head] + [part for line in listed for part in textwrap.wrap(line, characters, subsequent_indent="    ")]
    text_height = 0.25 + len(lines) * 1.3 * FONT["note"] / 72
    panels_height = 0.9 + 2.45 * len(kinds)
    fig = plt.figure(layout="constrained", figsize=(width, panels_height + text_height))
    top, bottom = fig.subfigures(2, 1, height_ratios=[panels_height, text_height])
    grid = top.add_gridspec(len(kinds), len(pairs))
    tasks_drawn = []
    for i, kind in enumerate(kinds):
        rows = comparisons[comparisons["comparison"] == kind]
        first_drawn = True
        for j, (first, second) in enumerate(pairs):
            pair = metric_pair(rows, first, second)
            if pair.empty:
                continue
            ax = top.add_subplot(grid[i, j])
            lim = 1.15 * max(1e-3, float(np.nanmax(np.abs(pair[["x", "y"]].to_numpy()))))
            ax.fill_between([-lim, 0], 0, lim, color=GAP_COLOUR, alpha=0.08, lw=0)
            ax.fill_between([0, lim], -lim, 0, color=GAP_COLOUR, alpha=0.08, lw=0)
            ax.axhline(0, color="0.5", lw=0.7)
            ax.axvline(0, color="0.5", lw=0.7)
            significant = (pair[f"{first}_q"] < SIGNIFICANCE) | (pair[f"{second}_q"] < SIGNIFICANCE)
            for task, sub in pair.groupby("task", sort=False):
                on = significant[sub.index]
                ax.scatter(sub["x"][on], sub["y"][on], s=14, color=colours[task], linewidths=0, zorder=3)
                ax.scatter(sub["x"][~on], sub["y"][~on], s=14, facecolors="none", edgecolors=colours[task],
                           linewidths=0.8, zorder=3)
                tasks_drawn.append(task)
            ax.set(xlim=(-lim, lim), ylim=(-lim, lim), box_aspect=1)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4, symmetric=True))
            ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4, symmetric=True))
            count = counts.loc[(kind, first, second)]
            ax.set_title(f"agree {count['agree']}/{count['n']} ({100 * count['agree'] / count['n']:.0f}%)\n"
                         f"{count['flips']} significant flip{'' if count['flips'] == 1 else 's'}",
                         fontsize=FONT["note"])
            ax.set_xlabel(f"\u0394{METRIC_LABELS[first]}", fontsize=FONT["label"])
            ax.set_ylabel(f"\u0394{METRIC_LABELS[second]}", fontsize=FONT["label"])
            ax.tick_params(labelsize=FONT["tick"] - 1)
            if first_drawn:
                ax.annotate(kind.replace("_", " "), xy=(0, 0.5), xycoords=ax.yaxis.label, xytext=(-4, 0),
                            textcoords="offset points", ha="right", va="center", rotation=90,
                            fontsize=FONT["title"] + 1, fontweight="bold")
                first_drawn = False
    bottom.text(0.02, 1 - 0.1 / text_height, "\n".join(lines), va="top", ha="left", fontsize=FONT["note"],
                family="monospace", transform=bottom.transSubfigure)  # 0.1 inch below the panels' axis labels
    present = ordered_unique(tasks_drawn)
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", ms=4, color=colours[t], label=t) for t in present]
    handles += [matplotlib.lines.Line2D([], [], ls="", marker="o", ms=4, color="0.4", label="q < 0.05 (either metric)"),
                matplotlib.lines.Line2D([], [], ls="", marker="o", ms=4, mfc="none", color="0.4",
                                        label="q \u2265 0.05"),
                matplotlib.patches.Patch(color=GAP_COLOUR, alpha=0.15, label="opposite signs")]
    fig.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 4), fontsize=FONT["label"],
               frameon=False, title="Do ECE, SCE and smECE agree on the sign of each difference (b - a)?",
               title_fontsize=FONT["title"] + 2)
    return fig


def plot_metric_agreement(comparisons_path, png_out, pdf_out) -> None:
    """The metric-agreement figure (see metric_agreement_figure) as PNG and PDF."""
    save_figure(metric_agreement_figure(read_comparisons(comparisons_path)), png_out, pdf_out)
