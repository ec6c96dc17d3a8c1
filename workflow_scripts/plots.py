"""The plot stage: reliability diagrams per task, a summary of accuracy and ECE across tasks, the
study's figures against scale, training step and alignment (plus the alignment tables), and the
analysis figures: recalibration, risk-coverage curves and the agreement of calibration metrics."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

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
TICKS = [0, 0.25, 0.5, 0.75, 1]
STRIP = 0.22  # height of the bin-count strip relative to the (square) reliability panel
SMOOTH_COLOUR = "black"  # the smooth reliability curve over the bars
SIGNIFICANCE = 0.05  # q-value below which a difference is marked
STAR = {"marker": "*", "s": 70, "edgecolors": "black", "linewidths": 0.5, "zorder": 6, "gid": "significant"}


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


COMPARISON_KINDS = ("aligned_vs_base", "consecutive_checkpoints", "consecutive_sizes", "recalibration")
COMPARISON_COLUMNS = ("comparison", "task", "method", "model_a", "revision_a", "model_b", "revision_b",
                      "ece_diff", "ece_q")


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


def _marked(rows: pd.DataFrame, marks: set) -> pd.Series:
    """Whether each summary row's (task, method, model, revision) is in `marks`."""
    keys = zip(rows["task"], rows["method"], rows["model"], rows["revision"].astype(str))
    return pd.Series([key in marks for key in keys], index=rows.index, dtype=bool)


def _star_handle(label: str):
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


def ordered_unique(values) -> list:
    """The distinct values in order of first appearance."""
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------------------------------------
# The natural order of runs: every figure and table orders its models and revisions by run_keys.

STAGES = ("base", "sft", "dpo", "rlhf")  # the order of training stages; a run without a stage is a base model
COUNT_UNITS = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}


def _missing(value) -> bool:
    return value is None or (not isinstance(value, (str, tuple, list)) and pd.isna(value))


def natural_key(text) -> tuple:
    """A sort key of text with its digit runs as numbers ('step4' < 'step16', 'm-9' < 'm-10'), case
    folded; missing values (None, NaN) last."""
    if _missing(text):
        return (1,)
    parts = re.split(r"(\d+)", str(text).casefold())
    return (0, *[int(p) if i % 2 else p for i, p in enumerate(parts)])


def parameter_count(params, size=None) -> float:
    """A model's parameter count: `params` where it is a number, else a count label in `params` or
    `size` such as '1.4b' or '160M'; NaN where neither gives one."""
    for value in (params, size):
        if _missing(value):
            continue
        number = pd.to_numeric(value, errors="coerce")
        if pd.notna(number):
            return float(number)
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmbt])\s*", str(value), flags=re.IGNORECASE)
        if match:
            return float(match.group(1)) * COUNT_UNITS[match.group(2).lower()]
    return float("nan")


def stage_rank(stage) -> tuple:
    """Sort key of a stage: base (or none), sft, dpo, rlhf, then any other by name."""
    stage = "base" if _missing(stage) else str(stage).casefold()
    return (STAGES.index(stage),) if stage in STAGES else (len(STAGES), natural_key(stage))


def _number_key(value) -> float:
    value = pd.to_numeric(value, errors="coerce")
    return float("inf") if pd.isna(value) else float(value)


def run_keys(table: pd.DataFrame) -> dict[tuple[str, str], tuple]:
    """(model, revision) -> its sort key in the natural order of runs, from the label columns of
    `table` (those missing count as unknown): by family (runs without one last), then data (within a
    family the data variants of its base models come first, 'standard' before the others, then those
    of the tuned stages; a run without `data` has 'standard'), then parameter count (`params`, else a
    `size` like '1.4b'; unknown last), then stage (base, sft, dpo, rlhf), tuning, model name, then the
    revision by step, epoch (unknown last) and name (digits as numbers: step4 before step16)."""
    columns = ("family", "data", "stage", "tuning", "size", "params", "step", "epoch")
    runs = table.drop_duplicates(["model", "revision"])
    runs = runs.assign(**{c: np.nan for c in columns if c not in runs.columns})
    data = runs["data"].astype(object).where(runs["data"].notna(), STANDARD).astype(str)
    families = runs["family"].map(natural_key)
    first_stage = {}  # (family, data) -> the earliest stage that uses it
    for family, variant, stage in zip(families, data, runs["stage"]):
        first_stage[(family, variant)] = min(first_stage.get((family, variant), (len(STAGES) + 1,)), stage_rank(stage))
    keys = {}
    for (_, run), family, variant in zip(runs.iterrows(), families, data):
        keys[(run["model"], run["revision"])] = (
            family, first_stage[(family, variant)], variant != STANDARD, natural_key(variant),
            _number_key(parameter_count(run["params"], run["size"])), stage_rank(run["stage"]),
            natural_key(run["tuning"]), natural_key(run["model"]),
            _number_key(run["step"]), _number_key(run["epoch"]), natural_key(run["revision"]))
    return keys


def natural_runs(table: pd.DataFrame) -> list[tuple[str, str]]:
    """The distinct (model, revision) of `table` in natural order (see run_keys)."""
    keys = run_keys(table)
    return sorted(keys, key=keys.get)


def natural_order(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a summary-like table in natural order: by task (by name, digits as numbers), run
    (run_keys), method (by name), recalibration ('none' first, see recalibration_order), aggregation
    (micro first); rows equal in all of these keep their order. Columns it lacks are left out of the key."""
    if table.empty:
        return table
    ranks = {}
    if "task" in table.columns:
        tasks = sorted(ordered_unique(table["task"]), key=natural_key)
        ranks["task"] = table["task"].map({t: i for i, t in enumerate(tasks)})
    if {"model", "revision"} <= set(table.columns):
        runs = {run: i for i, run in enumerate(natural_runs(table))}
        ranks["run"] = pd.Series([runs[key] for key in zip(table["model"], table["revision"])], index=table.index)
    if "method" in table.columns:
        methods = sorted(ordered_unique(table["method"]), key=natural_key)
        ranks["method"] = table["method"].map({m: i for i, m in enumerate(methods)})
    if "recalibration" in table.columns:
        ranks["recalibration"] = table["recalibration"].map(
            {r: i for i, r in enumerate(recalibration_order(table["recalibration"]))})
    if "aggregation" in table.columns:
        ranks["aggregation"] = table["aggregation"].map({"micro": 0, "macro": 1}).fillna(2)
    if not ranks:
        return table
    order = pd.DataFrame({name: rank.to_numpy() for name, rank in ranks.items()})
    return table.iloc[order.sort_values(list(ranks), kind="stable").index.to_numpy()]


def method_colours(summary: pd.DataFrame) -> dict[str, tuple]:
    """One colour per method across all tasks, in natural order (see natural_order), so figures agree
    whatever the order of the rows; never the gap's red, nor grey (the count strip's) or brown (dark
    under the red gap)."""
    unused = {matplotlib.colors.to_rgb(c) for c in (GAP_COLOUR, "tab:gray", "tab:brown")}
    palette = [c for c in plt.get_cmap("tab10").colors if c not in unused]
    return {m: palette[i % len(palette)] for i, m in enumerate(ordered_unique(natural_order(summary)["method"]))}


def task_rows(summary: pd.DataFrame, task: str) -> pd.DataFrame:
    """The summary rows of `task`; ValueError naming the task and the tasks present if none."""
    rows = summary[summary["task"] == task]
    if rows.empty:
        present = ", ".join(map(str, ordered_unique(summary["task"]))) or "none"
        raise ValueError(f"task {task!r} has no rows in the summary (tasks present: {present})")
    return rows


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


def _fmt(x: float, digits: int = 3) -> str:
    """`x` with `digits` decimals, or 'n/a'."""
    return "n/a" if pd.isna(x) else f"{x:.{digits}f}"


def _panel_note(stats: pd.Series) -> str:
    """Panel title: ECE with its bootstrap CI, smooth ECE (where known) and accuracy."""
    ci = f" [{_fmt(stats['ece_ci_low'])}, {_fmt(stats['ece_ci_high'])}]"
    if pd.isna(stats["ece_ci_low"]) and pd.isna(stats["ece_ci_high"]):
        ci = ""
    smooth = f"smECE {_fmt(stats['smece'])}, " if pd.notna(stats.get("smece", np.nan)) else ""
    return f"ECE {_fmt(stats['ece'])}{ci}\n{smooth}acc {_fmt(stats['accuracy'])}"


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


def _draw_reliability(ax, strip, bins: pd.DataFrame, colour, smooth: pd.DataFrame | None = None) -> None:
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
    shared_prefix; a single run in full."""
    models = ordered_unique(str(m) for m, _ in runs)
    if len(runs) > 1 and len(models) == 1:
        return models[0], [str(r) for _, r in runs]
    prefix = shared_prefix(models)
    return prefix, [model_label(m, r)[len(prefix):] for m, r in runs]


def _prefix_note(prefix: str, runs) -> str:
    """What column_labels left out, for a title: 'model <name>' or 'models <prefix>…'."""
    return f"model {prefix}" if prefix in {str(m) for m, _ in runs} else f"models {prefix}\u2026"


def reliability_figure(summary: pd.DataFrame, reliability: pd.DataFrame, curves: pd.DataFrame,
                       task: str, runs=None, methods: dict[str, str] | None = None, group: str | None = None):
    """Reliability diagrams of `task`'s raw confidences: one column per run ((model, revision), only
    those of `runs` where given) in natural order, wrapped into blocks of at most MAX_COLUMNS; one row
    per method (the primary one of `methods` first); the smooth reliability curve over the bars.
    Columns are labelled by column_labels, the title naming `group` and what the labels leave out."""
    summary = select_rows(summary)
    primary = primary_methods(task_rows(summary, task), methods).get(task)
    columns, methods = panel_grid(summary, task, runs, primary)
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
        _draw_reliability(ax, strip, panels.get(key, empty), colours[method], smooth.get(key))
        ax.set_title(_panel_note(stats.loc[key]) if key in stats.index else "no data",
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
    if prefix and len(columns) > 1:
        title += f"\n{_prefix_note(prefix, columns)}"
    fig.suptitle(title, fontsize=FONT["title"] + 2)
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
    rows = _primary_only(task_rows(summary, task), methods)
    method = rows["method"].iloc[0]
    given, groups = groups, ordered_groups(rows, groups)
    if not groups:
        raise ValueError(f"no run of the groups {', '.join(map(str, given)) or '(none)'} has rows in task {task!r}")
    smooth = smooth_curves(curves, task)
    ece = rows.drop_duplicates(["model", "revision"]).set_index(["model", "revision"])["ece"]
    n_cols = min(len(groups), 3)
    n_rows = -(-len(groups) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, squeeze=False, layout="constrained",
                             figsize=(0.3 + 4.4 * n_cols, 0.6 + 2.75 * n_rows))
    for ax, (name, runs) in zip(axes.flat, groups.items()):
        shown = _thinned(pd.DataFrame({"run": runs}), MAX_LINES)["run"].tolist()
        prefix, labels = column_labels(shown)
        one_model = len({m for m, _ in shown}) == 1 and len(shown) > 1
        colours = (plt.get_cmap("viridis")(np.linspace(0.05, 0.85, len(shown))) if one_model
                   else [plt.get_cmap("tab10").colors[k % 10] for k in range(len(shown))])
        handles = []
        for run, label, colour in zip(shown, labels, colours):
            curve = smooth.get((*run, method))
            if curve is not None:
                _draw_smooth(ax, curve, colour=colour, gid="index", width=1.2)
            handles.append(matplotlib.lines.Line2D([], [], color=colour, lw=1.6,
                                                   label=f"{label}: ECE {_fmt(ece.get(run, np.nan))}"))
        ax.plot([0, 1], [0, 1], ls="--", color="0.4", lw=0.8, zorder=1)
        ax.set(xlim=(0, 1), ylim=(0, 1), xticks=TICKS, yticks=TICKS, box_aspect=1)
        ax.set_xlabel("confidence", fontsize=FONT["label"])
        _style_axis(ax, "accuracy")
        more = f", {len(shown)} of {len(runs)} runs" if len(shown) < len(runs) else ""
        ax.set_title(f"{name}{more}" + (f"\n{_prefix_note(prefix, shown)}" if prefix and len(shown) > 1 else ""),
                     fontsize=FONT["title"], loc="left")
        ax.legend(handles=handles, fontsize=FONT["tick"] - 0.5, loc="upper left", bbox_to_anchor=(1.02, 1),
                  frameon=False, handlelength=1.4)
    for ax in list(axes.flat)[len(groups):]:
        ax.remove()
    fig.suptitle(f"Smooth reliability curves: {task} ({method}); one figure of reliability diagrams per group",
                 fontsize=FONT["title"] + 2)
    return fig


def plot_reliability_index(summary_path, curves_path, task: str, groups: dict[str, list],
                           methods: dict[str, str] | None, png_out, pdf_out) -> None:
    """The index of `task`'s reliability diagrams (see reliability_index_figure) as PNG and PDF."""
    fig = reliability_index_figure(read_table(summary_path), read_table(curves_path), task, groups, methods)
    save_figure(fig, png_out, pdf_out)


# ---------------------------------------------------------------------------------------------
# The overview: accuracy and ECE of every run and task in one heatmap whose size follows its content.

ROW_HEIGHT = 0.2  # inches per heatmap row (a run or a family header): 14.4 pt for 7 pt text
CELL_WIDTH = 0.42  # inches per heatmap column (a task's method): '0.123' at FONT['value'] fits
STAGE_FILLS = {"base": "0.88", "sft": "#c6dbef", "dpo": "#dadaeb", "rlhf": "#fcbba1"}
SEPARATORS = "-_/.@ "


def shared_prefix(names) -> str:
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


def short_label(model: str, revision: str, family=None) -> str:
    """model_label without the family's name in front ('geo-neox-l-standard' of family 'geo-neox':
    'l-standard'), where the model name starts with it and a separator."""
    label = model_label(model, revision)
    if not _missing(family) and len(str(model)) > len(str(family)) + 1:
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
    primary = primary_methods(rows, methods)
    grid_rows, family = [], object()
    info = rows.drop_duplicates(["model", "revision"]).set_index(["model", "revision"])
    for model, revision in natural_runs(rows):
        labels = info.loc[(model, revision)]
        if _missing(labels["family"]) is not _missing(family) or (
                not _missing(family) and labels["family"] != family):
            family = labels["family"]
            grid_rows.append({"kind": "family", "label": "other models" if _missing(family) else str(family)})
        stage = "base" if _missing(labels["stage"]) else str(labels["stage"])
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
    for metric, ax, width, header in blocks:
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
    for metric, ax, width, header in blocks:
        left = place[ax][0]
        header.set_position(((left + width / 2) / total_width, header_y / height))
    bar_y = header_y + header_height + 0.08
    for metric, (left, right) in spans.items():
        cmap, norm, name = scales[metric]
        cax = fig.add_axes((left / total_width, bar_y / height, (right - left) / total_width, bar_height / height))
        bar = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), cax=cax, orientation="horizontal")
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


# ---------------------------------------------------------------------------------------------
# Calibration against scale and along training (Zhu et al. 2023, Figures 3 and 4).

STANDARD = "standard"  # the data variant of a model without a `data` label
VARIANT_COLOURS = {"standard": "tab:blue", "deduped": "tab:orange"}
FAMILY_STYLES = [("o", "-"), ("s", "--"), ("^", ":"), ("D", "-.")]  # marker, line per family
BAND_ALPHA = 0.18
MIN_TICK_GAP = 0.12  # size ticks closer than this (in decades) to a kept one are dropped


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


def primary_methods(summary: pd.DataFrame, methods: dict[str, str] | None) -> dict[str, str]:
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


def _primary_only(summary: pd.DataFrame, methods) -> pd.DataFrame:
    primary = primary_methods(summary, methods)
    return summary[summary["method"] == summary["task"].map(primary)]


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
    rows = _primary_only(rows, methods)
    rows = rows[rows["params"] > 0]
    return natural_order(rows).reset_index(drop=True)


def dynamics_rows(summary: pd.DataFrame, models: list[str], methods: dict[str, str]) -> pd.DataFrame:
    """The rows of `models` at every revision naming a step > 0 (step 0 cannot sit on the log
    axis and is dropped), for the primary method of each task; in natural order (task, then model and
    step, see run_keys)."""
    summary = with_labels(summary)
    rows = summary[summary["model"].isin(list(models)) & (summary["step"] > 0)]
    rows = _primary_only(rows, methods)
    return natural_order(rows).reset_index(drop=True)


def variant_colours(data_values) -> dict[str, str | tuple]:
    """One colour per data variant: standard blue, deduped orange, others (by name) from tab10,
    never the gap's red."""
    taken = {matplotlib.colors.to_rgb(c) for c in (*VARIANT_COLOURS.values(), GAP_COLOUR)}
    palette = [c for c in plt.get_cmap("tab10").colors if c not in taken]
    others = sorted(set(map(str, data_values)) - set(VARIANT_COLOURS))
    return {**VARIANT_COLOURS, **{d: palette[i % len(palette)] for i, d in enumerate(others)}}


def _shades(colour, n: int) -> list[tuple]:
    """`n` shades of `colour` from light to dark (the colour itself when n == 1)."""
    base = np.array(matplotlib.colors.to_rgb(colour))
    if n == 1:
        return [tuple(base)]
    out = []
    for t in np.linspace(-0.5, 0.45, n):  # <0 mixes with white, >0 with black
        out.append(tuple(base + (1 - base) * -t if t < 0 else base * (1 - t)))
    return out


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


def _style_axis(ax, ylabel: str) -> None:
    ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])
    ax.grid(color="0.9", which="major")
    ax.set_axisbelow(True)


def _ece_ylim(ax, rows: pd.DataFrame) -> None:
    top = np.nanmax([rows["ece"].max(), rows["ece_ci_high"].max(), 0.01])
    ax.set_ylim(0, 1.1 * top)


def _size_ticks(ax, params) -> None:
    """Major ticks at the parameter counts, labelled by size; near-coincident ones thinned out."""
    kept = []
    for p in sorted(set(float(v) for v in params if v > 0)):
        if not kept or np.log10(p) - np.log10(kept[-1]) >= MIN_TICK_GAP:
            kept.append(p)
    ax.set_xticks(kept, [humanize(p) for p in kept])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
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
            starred = line[_marked(line, marks)]
            if not starred.empty:
                axes[i, 1].scatter(starred["params"], starred["ece"], color=colours[data], **STAR)
                handles.setdefault("star", _star_handle("ECE differs from the next smaller size (q < 0.05)"))
        axes[i, 0].set_title(f"{task}: accuracy", fontsize=FONT["title"] + 1)
        axes[i, 1].set_title(f"{task}: ECE ({method})", fontsize=FONT["title"] + 1)
        _style_axis(axes[i, 0], "accuracy")
        _style_axis(axes[i, 1], "ECE")
        _ece_ylim(axes[i, 1], task_rows_)
    for ax in axes.flat:
        ax.set_xscale("log")
    _size_ticks(axes[0, 0], rows["params"])
    for ax in axes[-1]:
        ax.set_xlabel("parameters", fontsize=FONT["label"])
        ax.tick_params(axis="x", labelrotation=45 if axes[0, 0].get_xticks().size > 6 else 0)
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


def _step_formatter():
    return matplotlib.ticker.FuncFormatter(lambda x, _: humanize(x))


def model_colours(rows: pd.DataFrame, colours_by_variant: dict) -> dict[str, tuple]:
    """model -> colour: its data variant's hue, lighter for smaller models within the variant."""
    out = {}
    info = rows.drop_duplicates("model")[["model", "data", "params"]]
    for data, group in info.groupby("data", sort=False):
        group = group.sort_values("params", kind="stable", na_position="last")
        for model, shade in zip(group["model"], _shades(colours_by_variant[data], len(group))):
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
            starred = line[_marked(line, marks)]
            if not starred.empty:
                axes[i, 1].scatter(starred["step"], starred["ece"], color=colours[model], **STAR)
                handles.setdefault("star", _star_handle("ECE differs from the previous checkpoint (q < 0.05)"))
        axes[i, 0].set_title(f"{task}: accuracy", fontsize=FONT["title"] + 1)
        axes[i, 1].set_title(f"{task}: ECE ({method})", fontsize=FONT["title"] + 1)
        _style_axis(axes[i, 0], "accuracy")
        _style_axis(axes[i, 1], "ECE")
        _ece_ylim(axes[i, 1], task_rows_)
    steps = rows["step"].astype(float)
    narrow = np.log10(steps.max() / steps.min()) < 1.5  # too few decades for 10^k ticks alone
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5) if narrow else (1,)))
        ax.xaxis.set_major_formatter(_step_formatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if steps.nunique() == 1:
        axes[0, 0].set_xticks([steps.iloc[0]])
        axes[0, 0].set_xlim(steps.iloc[0] / 2, steps.iloc[0] * 2)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=FONT["label"])
    _figure_legend(fig, handles)
    return fig


def plot_dynamics(summary_path, models: list[str], methods: dict[str, str], png_out, pdf_out,
                  comparisons_path=None) -> None:
    """The training-dynamics figure (see dynamics_figure) as PNG and PDF; significance stars from
    `comparisons_path` where given."""
    comparisons = read_comparisons(comparisons_path) if comparisons_path else None
    save_figure(dynamics_figure(read_table(summary_path), models, methods, comparisons), png_out, pdf_out)


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
    count (ascending), one row per (family, data) variant, each model at its final revision; the
    smooth reliability curve over the bars."""
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
    sizes = list(rows.sort_values("params", kind="stable")["size"].drop_duplicates())
    variants = ordered_unique(zip(rows["family"], rows["data"]))
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
            _draw_reliability(ax, strip, panels.get(key, empty), colours[variant[1]], smooth.get(key))
        ax.set_title(_panel_note(stats) if stats is not None else "no model",
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
    fig.suptitle(f"Reliability across scale: {task} ({method})", fontsize=FONT["title"] + 2)
    return fig


def plot_reliability_scale(summary_path, reliability_path, curves_path, task: str, suites: list[str],
                           methods: dict[str, str], png_out, pdf_out) -> None:
    """The reliability diagrams of `task` across sizes (see reliability_scale_figure) as PNG and PDF."""
    fig = reliability_scale_figure(read_table(summary_path), read_table(reliability_path),
                                   read_table(curves_path), task, suites, methods)
    save_figure(fig, png_out, pdf_out)


def plot_pretrain_loss(model_dirs, variants: dict[str, str], table_out, png_out, pdf_out) -> None:
    """Training loss of the suite trained here: the table (``model, step, loss, lr, tokens``) and its figure
    (dashed: the models whose data variant, in ``variants``, is not the standard one)."""
    frames = [read_table(Path(d) / "loss.parquet").assign(model=Path(d).name) for d in model_dirs]
    if not frames:
        raise ValueError("no trained models: the config has no `pretrain` suite")
    losses = pd.concat(frames, ignore_index=True)[["model", "step", "loss", "lr", "tokens"]]
    with atomic_path(table_out, suffix=".csv") as tmp:
        losses.to_csv(tmp, index=False)
    models = ordered_unique(losses["model"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(models)))
    for model, colour in zip(models, colours):
        rows = losses[losses["model"] == model]
        ax.plot(rows["step"], rows["loss"], color=colour, lw=1.4, label=model,
                ls="-" if variants[model] == STANDARD else "--")
    ax.set_xscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, frameon=False)
    ax.set_title("Pretraining loss of the suite trained here")
    fig.tight_layout()
    save_figure(fig, png_out, pdf_out)


# ---------------------------------------------------------------------------------------------
# Calibration along alignment (Zhu et al. 2023, Figure 5, Table 3 and Figure 6).

STAGE_COLOURS = {"base": "0.45", "dpo": "tab:purple", "rlhf": "tab:red"}
SFT_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
RLHF_COLUMNS = ["task", "stage", "model", "revision", "epoch", "method", "n", "accuracy", "mean_confidence",
                "ece", "ece_ci_low", "ece_ci_high", "brier"]


def alignment_rows(summary: pd.DataFrame, models: dict[str, list[str]], methods) -> pd.DataFrame:
    """The rows of ``models`` (model -> revisions; the first model is the base) for each task's
    primary method, run by run: the base first, then the others in natural order (see run_keys), with
    a ``variant`` per bar group (base, <data> <tuning>, dpo, rlhf) and ``epoch``. ValueError naming
    any (model, revision) without rows."""
    summary = with_labels(_primary_only(summary, methods))
    wanted = [(m, r) for m, revs in models.items() for r in revs]
    present = set(zip(summary["model"], summary["revision"]))
    missing = [f"{m}@{r}" for m, r in wanted if (m, r) not in present]
    if missing:
        raise ValueError(f"no summary rows for {', '.join(missing)}")
    rows = summary[[(m, r) in set(wanted) for m, r in zip(summary["model"], summary["revision"])]].copy()
    first = next(iter(models))
    runs = sorted(natural_runs(rows), key=lambda run: run[0] != first)  # stable: the base first
    order = {run: i for i, run in enumerate(runs)}
    rows["_order"] = [order[(m, r)] for m, r in zip(rows["model"], rows["revision"])]
    stage = rows["stage"].astype(object).where(rows["stage"].notna(), "base").astype(str)
    tuning = rows["tuning"].astype(str) if "tuning" in rows else ""
    rows["variant"] = np.where(stage == "sft", rows["data"].astype(str) + " " + tuning, stage)
    rows.loc[rows["model"] == first, "variant"] = "base"
    return rows.sort_values(["_order", "task"], kind="stable").drop(columns="_order")


def _variant_colours(variants: list[str]) -> dict[str, str]:
    sft = [v for v in variants if v not in STAGE_COLOURS]
    colours = {v: SFT_COLOURS[i % len(SFT_COLOURS)] for i, v in enumerate(sft)}
    return {v: STAGE_COLOURS.get(v, colours.get(v)) for v in variants}


def alignment_axis(rows: pd.DataFrame) -> tuple[list[tuple[str, str]], list[float], list[str], dict]:
    """The (model, revision) bars of alignment rows in order, their x positions (a gap between
    variants), their tick labels ('<variant> e<epoch>') and each bar's variant."""
    bars = ordered_unique(zip(rows["model"], rows["revision"]))
    variant_of = dict(zip(zip(rows["model"], rows["revision"]), rows["variant"]))
    x, position, previous = [], 0.0, None
    for bar in bars:
        position += 1.0 if previous in (None, variant_of[bar]) else 1.6  # a gap between variants
        previous = variant_of[bar]
        x.append(position)
    epochs = dict(zip(zip(rows["model"], rows["revision"]), rows["epoch"]))
    labels = [variant_of[b] if pd.isna(epochs[b]) else f"{variant_of[b]} e{int(epochs[b])}" for b in bars]
    return bars, x, labels, variant_of


def alignment_figure(summary: pd.DataFrame, models: dict[str, list[str]], methods: dict[str, str],
                     comparisons: pd.DataFrame | None = None):
    """Accuracy (top) and ECE (bottom) per task (columns): one bar per (model, revision) in the
    given order, grouped by variant and shaded by epoch; ECE with its bootstrap CI and a star over
    the bars whose ECE differs from the base at q < 0.05 (aligned_vs_base comparisons)."""
    rows = alignment_rows(select_rows(summary), models, methods)
    marks = significant_runs(comparisons, "aligned_vs_base")
    tasks = ordered_unique(rows["task"])
    bars, x, labels, variant_of = alignment_axis(rows)
    variants = ordered_unique(variant_of[b] for b in bars)
    colours = _variant_colours(variants)
    shade = {}
    for variant in variants:
        members = [b for b in bars if variant_of[b] == variant]
        for bar, colour in zip(members, _shades(colours[variant], len(members))):
            shade[bar] = colour
    starred = False
    fig, axes = plt.subplots(2, len(tasks), squeeze=False, layout="constrained",
                             figsize=(max(4.0, 0.9 + 0.22 * len(bars)) * len(tasks), 5.2))
    for j, task in enumerate(tasks):
        sub = rows[rows["task"] == task].set_index(["model", "revision"]).reindex(bars)
        for i, (metric, name) in enumerate((("accuracy", "accuracy"), ("ece", "ECE"))):
            ax = axes[i, j]
            yerr = None
            if metric == "ece":
                yerr = np.vstack([(sub["ece"] - sub["ece_ci_low"]).clip(lower=0),
                                  (sub["ece_ci_high"] - sub["ece"]).clip(lower=0)])
            ax.bar(x, sub[metric].fillna(0), width=0.85, color=[shade[b] for b in bars], yerr=yerr,
                   error_kw={"elinewidth": 0.7, "capsize": 1.5, "ecolor": "0.2"}, zorder=2)
            _style_axis(ax, name)
            ax.grid(axis="x", visible=False)
            if metric == "accuracy":
                ax.set_ylim(0, 1.05 * max(0.05, float(sub["accuracy"].max())))
                ax.set_title(task, fontsize=FONT["title"] + 1)
            else:
                _ece_ylim(ax, sub)
                top = np.fmax(sub["ece"], sub["ece_ci_high"]).to_numpy()
                on = _marked(sub.reset_index().assign(task=task), marks).to_numpy()
                if on.any():
                    lift = 0.05 * ax.get_ylim()[1]
                    ax.scatter(np.asarray(x)[on], top[on] + lift, color="0.6", **STAR)
                    ax.set_ylim(0, max(ax.get_ylim()[1], float(np.nanmax(top[on])) + 2.5 * lift))
                    starred = True
            ax.set_xticks(x, labels if i == 1 else [], rotation=60, ha="right", rotation_mode="anchor",
                          fontsize=FONT["tick"] - 1)
    handles = [matplotlib.patches.Patch(color=colours[v], label=v) for v in variants]
    if starred:
        handles.append(_star_handle("ECE differs\nfrom the base\n(q < 0.05)"))
    axes[0, -1].legend(handles=handles, fontsize=FONT["tick"], title="variant", title_fontsize=FONT["tick"],
                       loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.suptitle("Calibration along alignment (bars: epochs; primary confidence method per task)",
                 fontsize=FONT["title"] + 2)
    return fig


def plot_alignment(summary_path, models: dict[str, list[str]], methods: dict[str, str], png_out, pdf_out,
                   comparisons_path=None) -> None:
    """The alignment figure (see alignment_figure) as PNG and PDF; significance stars from
    `comparisons_path` where given."""
    comparisons = read_comparisons(comparisons_path) if comparisons_path else None
    save_figure(alignment_figure(read_table(summary_path), models, methods, comparisons), png_out, pdf_out)


def write_rlhf_table(summary_path, models: dict[str, list[str]], methods: dict[str, str], out_csv) -> None:
    """Preference optimisation per epoch (CSV): the policy it started from as epoch 0 (the last
    supervised epoch of the same data and tuning), then every epoch of DPO and RLHF."""
    rows = alignment_rows(read_summary(summary_path), models, methods)
    preference = rows[rows["variant"].isin(["dpo", "rlhf"])]
    if preference.empty:
        raise ValueError("no DPO or RLHF rows in the summary")
    first = preference.iloc[0]
    sft = rows[(rows["stage"] == "sft") & (rows["data"] == first["data"]) & (rows["tuning"] == first["tuning"])]
    policy = sft[sft["epoch"] == sft["epoch"].max()].assign(epoch=0)
    table = pd.concat([policy, preference], ignore_index=True)
    table["epoch"] = table["epoch"].astype(int)
    with atomic_path(out_csv, suffix=".csv") as tmp:
        table[RLHF_COLUMNS].to_csv(tmp, index=False)


def plot_diversity(map_path, summary_csv, png_out, pdf_out) -> None:
    """The 2-D map of the instruction sets' responses, one colour per set; the legend gives each
    set's mean pairwise cosine distance."""
    points = read_table(map_path)
    stats = pd.read_csv(summary_csv).set_index("dataset")
    fig, ax = plt.subplots(figsize=(5.2, 4.4), layout="constrained")
    for i, (name, group) in enumerate(points.groupby("dataset", sort=False)):
        distance = stats.loc[name, "mean_cosine_distance"] if name in stats.index else float("nan")
        ax.scatter(group["x"], group["y"], s=6, alpha=0.6, color=SFT_COLOURS[i % len(SFT_COLOURS)], linewidths=0,
                   label=f"{name} (n={len(group)}, diversity {_fmt(distance)})")
    ax.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.set_title("Instruction responses (all-MiniLM-L6-v2 embeddings)", fontsize=FONT["title"] + 1)
    ax.legend(fontsize=FONT["tick"], markerscale=2, frameon=False, loc="best")
    save_figure(fig, png_out, pdf_out)


# ---------------------------------------------------------------------------------------------
# Analysis figures: recalibration, selective prediction, agreement of the calibration metrics.

RECALIBRATION_STYLES = {"none": ("o", "black"), "temperature": ("s", "tab:blue"), "platt": ("^", "tab:orange"),
                        "isotonic": ("D", "tab:green"), "histogram": ("v", "tab:purple")}
MAX_LINES = 8  # curves per risk-coverage panel (checkpoints are thinned, other models split)
MAX_LISTED = 12  # disagreeing comparisons written out under the agreement panels
MIN_COVERAGE = 0.1  # the risk-coverage axes end at the highest risk from this coverage on
METRIC_PAIRS = (("ece", "sce"), ("ece", "smece"), ("sce", "smece"))
METRIC_LABELS = {"ece": "ECE", "sce": "SCE", "smece": "smECE"}


def recalibration_order(values) -> list[str]:
    """The distinct recalibrations: 'none' first, then the known methods in RECALIBRATION_STYLES
    order, then any others in order of first appearance."""
    present = ordered_unique(values)
    known = [r for r in RECALIBRATION_STYLES if r in present]
    return known + [r for r in present if r not in RECALIBRATION_STYLES]


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
        _size_ticks(ax, rows["params"])
        ax.set_xlabel("parameters", fontsize=FONT["label"])
        ax.set_title("T against size (final step)", fontsize=FONT["title"] + 1)
        what = [variant_label(*g) for g in styles]
    else:
        ax.xaxis.set_major_formatter(_step_formatter())
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
    rows = _primary_only(select_rows(summary, recalibration=None), methods)
    if "recalibration" not in rows.columns or not (rows["recalibration"] != "none").any():
        raise ValueError("the summary has no recalibrated rows (no `recalibration` other than 'none')")
    rows = natural_order(rows)
    tasks = ordered_unique(rows["task"])
    runs = natural_runs(rows)
    order = recalibration_order(rows["recalibration"])
    panels = temperature_panels(summary, suites, dynamics, alignment, methods)
    colours = task_colours(tasks)

    top_height = 1.0 + 0.15 * len(runs)
    widths = [max(1.0, 0.22 * len(alignment_axis(p)[0]) / 2.6) if name == "alignment" else 1.0
              for name, p in panels.items()]
    width = max(1.8 + 2.0 * len(tasks), 0.8 + 2.6 * sum(widths))
    fig = plt.figure(layout="constrained", figsize=(width, top_height + (3.0 if panels else 0)))
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_height, 3.0]) if panels else (fig, None)
    axes = top.subplots(1, len(tasks), sharey=True, squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        task_rows_ = rows[rows["task"] == task]
        _draw_ece_dots(ax, task_rows_, runs, order)
        ax.set_title(f"{task}\nECE ({task_rows_['method'].iloc[0]})", fontsize=FONT["title"] + 1)
        ax.set_xlabel("ECE", fontsize=FONT["label"])
        ax.tick_params(labelsize=FONT["tick"])
        ax.grid(axis="x", color="0.9")
        ax.set_axisbelow(True)
    axes[0].set_yticks(np.arange(len(runs)), [model_label(m, r) for m, r in runs], fontsize=FONT["tick"] - 0.5)
    axes[0].set_ylim(len(runs) - 0.5, -0.5)  # the first run on top
    handles = {}  # every recalibration drawn in any task
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    top.legend([handles[r] for r in order], order, loc="outside upper center", ncol=len(order),
               fontsize=FONT["label"], frameon=False, title_fontsize=FONT["title"] + 2,
               title="ECE before (none) and after each recalibration, on held-out items")
    if panels:
        temperature_axes = bottom.subplots(1, len(panels), squeeze=False, width_ratios=widths)[0]
        for ax, (name, panel) in zip(temperature_axes, panels.items()):
            _draw_temperatures(ax, name, panel, colours)
            _style_axis(ax, "fitted temperature T")
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


def _thinned(rows: pd.DataFrame, n: int) -> pd.DataFrame:
    """At most `n` rows, evenly spread, the first and last kept."""
    if len(rows) <= n:
        return rows
    return rows.iloc[np.unique(np.round(np.linspace(0, len(rows) - 1, n)).astype(int))]


def risk_coverage_panels(rows: pd.DataFrame, suites: list[str], dynamics: list[str],
                         alignment: dict[str, list[str]], methods: dict[str, str]) -> list[tuple[str, list[tuple]]]:
    """The panels of a risk-coverage figure over summary `rows`, as (title, [(model, revision,
    label, colour, line style)]): each suite family's base models at their final revision (by data
    variant, then size), each dynamics model along training (at most MAX_LINES checkpoints, evenly
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
        panels.append((f"{family}: sizes (final step)", [
            (m, r, f"{humanize(p)} {d}" if several else humanize(p), colours[m], "-" if d == STANDARD else "--")
            for m, r, p, d in zip(sizes["model"], sizes["revision"], sizes["params"], sizes["data"])]))
        covered |= set(sizes["model"])
    for model in dynamics:
        steps = _thinned(dynamics_rows(rows, [model], methods).drop_duplicates("revision"), MAX_LINES)
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
        colours = _variant_colours(ordered_unique(aligned["variant"]))
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
    rows = _primary_only(task_rows(summary, task), methods)
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
                    label=f"{label} (AURC {_fmt(aurc[(model, revision)])})")
        ax.set(xlim=(0, 1), ylim=(0, top), xticks=TICKS)
        ax.set_title(title, fontsize=FONT["title"] + 1)
        ax.set_xlabel("coverage", fontsize=FONT["label"])
        _style_axis(ax, "risk (error rate)")
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
    lines = [head] + [wrapped for line in listed
                      for wrapped in textwrap.wrap(line, characters, subsequent_indent="    ")]
    text_height = 0.15 + len(lines) * 1.3 * FONT["note"] / 72
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
    bottom.text(0.02, 0.98, "\n".join(lines), va="top", ha="left", fontsize=FONT["note"], family="monospace",
                transform=bottom.transSubfigure)
    present = ordered_unique(tasks_drawn)
    handles = [matplotlib.lines.Line2D([], [], ls="", marker="o", ms=4, color=colours[t], label=t) for t in present]
    handles += [matplotlib.lines.Line2D([], [], ls="", marker="o", ms=4, color="0.4", label="q < 0.05 (either metric)"),
                matplotlib.lines.Line2D([], [], ls="", marker="o", ms=4, mfc="none", color="0.4",
                                        label="q \u2265 0.05"),
                matplotlib.patches.Patch(color=GAP_COLOUR, alpha=0.15, label="opposite signs")]
    top.legend(handles=handles, loc="outside upper center", ncol=min(len(handles), 4), fontsize=FONT["label"],
               frameon=False, title="Do ECE, SCE and smECE agree on the sign of each difference (b - a)?",
               title_fontsize=FONT["title"] + 2)
    return fig


def plot_metric_agreement(comparisons_path, png_out, pdf_out) -> None:
    """The metric-agreement figure (see metric_agreement_figure) as PNG and PDF."""
    save_figure(metric_agreement_figure(read_comparisons(comparisons_path)), png_out, pdf_out)
