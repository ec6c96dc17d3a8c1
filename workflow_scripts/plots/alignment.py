"""Calibration along alignment (Zhu et al. 2023, Figure 5, Table 3 and Figure 6): accuracy and ECE of the
base, supervised, DPO and RLHF runs, preference optimisation per epoch as a table, and the diversity of the
instruction sets."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..order import natural_runs, ordered_unique
from ..tables import atomic_path, read_table
from .style import (
    FONT,
    STAR,
    ece_ylim,
    figure_title,
    format_number,
    marked_mask,
    primary_method_rows,
    read_comparisons,
    read_summary,
    save_figure,
    select_rows,
    shades,
    significant_runs,
    star_handle,
    style_axis,
    with_labels,
)

STAGE_COLOURS = {"base": "0.45", "dpo": "tab:purple", "rlhf": "tab:red"}
SFT_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
RLHF_COLUMNS = ["task", "stage", "model", "revision", "epoch", "method", "n", "accuracy", "mean_confidence",
                "ece", "ece_ci_low", "ece_ci_high", "brier"]


def alignment_rows(summary: pd.DataFrame, models: dict[str, list[str]], methods) -> pd.DataFrame:
    """The rows of ``models`` (model -> revisions; the first model is the base) for each task's
    primary method, run by run: the base first, then the others in natural order (see run_keys), with
    a ``variant`` per bar group (base, <data> <tuning>, dpo, rlhf) and ``epoch``. ValueError naming
    any (model, revision) without rows."""
    summary = with_labels(primary_method_rows(summary, methods))
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


def alignment_variant_colours(variants: list[str]) -> dict[str, str]:
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
    colours = alignment_variant_colours(variants)
    shade = {}
    for variant in variants:
        members = [b for b in bars if variant_of[b] == variant]
        for bar, colour in zip(members, shades(colours[variant], len(members))):
            shade[bar] = colour
    starred = False
    fig, axes = plt.subplots(2, len(tasks), squeeze=False, layout="constrained",
                             figsize=(max(2.5, 0.9 + 0.22 * len(bars)) * len(tasks), 5.2))
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
            style_axis(ax, name)
            ax.grid(axis="x", visible=False)
            if metric == "accuracy":
                ax.set_ylim(0, 1.05 * max(0.05, float(sub["accuracy"].max())))
                ax.set_title(task, fontsize=FONT["title"] + 1)
            else:
                ece_ylim(ax, sub)
                top = np.fmax(sub["ece"], sub["ece_ci_high"]).to_numpy()
                on = marked_mask(sub.reset_index().assign(task=task), marks).to_numpy()
                if on.any():
                    lift = 0.05 * ax.get_ylim()[1]
                    ax.scatter(np.asarray(x)[on], top[on] + lift, color="0.6", **STAR)
                    ax.set_ylim(0, max(ax.get_ylim()[1], float(np.nanmax(top[on])) + 2.5 * lift))
                    starred = True
            ax.set_xticks(x, labels if i == 1 else [], rotation=60, ha="right", rotation_mode="anchor",
                          fontsize=FONT["tick"] - 1)
    handles = [matplotlib.patches.Patch(color=colours[v], label=v) for v in variants]
    if starred:
        handles.append(star_handle("ECE differs\nfrom the base\n(q < 0.05)"))
    axes[0, -1].legend(handles=handles, fontsize=FONT["tick"], title="variant", title_fontsize=FONT["tick"],
                       loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    figure_title(fig, "Calibration along alignment (bars: epochs; primary confidence method per task)")
    return fig


def plot_alignment(summary_path, alignment: dict[str, list[str]], methods: dict[str, str], png_out, pdf_out,
                   comparisons_path=None) -> None:
    """The alignment figure of the models `alignment` (see alignment_figure) as PNG and PDF; significance
    stars from `comparisons_path` where given."""
    comparisons = read_comparisons(comparisons_path) if comparisons_path else None
    save_figure(alignment_figure(read_table(summary_path), alignment, methods, comparisons), png_out, pdf_out)


def write_rlhf_table(summary_path, alignment: dict[str, list[str]], methods: dict[str, str], csv_out) -> None:
    """Preference optimisation per epoch (CSV) of the models `alignment`: the policy it started from as
    epoch 0 (the last supervised epoch of the same data and tuning), then every epoch of DPO and RLHF."""
    rows = alignment_rows(read_summary(summary_path), alignment, methods)
    preference = rows[rows["variant"].isin(["dpo", "rlhf"])]
    if preference.empty:
        raise ValueError("no DPO or RLHF rows in the summary")
    first = preference.iloc[0]
    sft = rows[(rows["stage"] == "sft") & (rows["data"] == first["data"]) & (rows["tuning"] == first["tuning"])]
    policy = sft[sft["epoch"] == sft["epoch"].max()].assign(epoch=0)
    table = pd.concat([policy, preference], ignore_index=True)
    table["epoch"] = table["epoch"].astype(int)
    with atomic_path(csv_out, suffix=".csv") as tmp:
        table[RLHF_COLUMNS].to_csv(tmp, index=False)


def diversity_figure(points: pd.DataFrame, stats: pd.DataFrame):
    """The 2-D map of the instruction sets' responses (``dataset, x, y``; diversity.diversity), one colour per set;
    the legend gives each set's mean pairwise cosine distance (``stats``: diversity.csv's ``dataset,
    mean_cosine_distance``)."""
    stats = stats.set_index("dataset")
    fig, ax = plt.subplots(figsize=(5.2, 4.4), layout="constrained")
    for i, (name, group) in enumerate(points.groupby("dataset", sort=False)):
        distance = stats.loc[name, "mean_cosine_distance"] if name in stats.index else float("nan")
        ax.scatter(group["x"], group["y"], s=6, alpha=0.6, color=SFT_COLOURS[i % len(SFT_COLOURS)], linewidths=0,
                   label=f"{name} (n={len(group)}, diversity {format_number(distance)})")
    ax.set(xticks=[], yticks=[], xlabel="t-SNE 1", ylabel="t-SNE 2")
    ax.set_title("Instruction responses (all-MiniLM-L6-v2 embeddings)", fontsize=FONT["title"] + 1)
    ax.legend(fontsize=FONT["tick"], markerscale=2, frameon=False, loc="best")
    return fig


def plot_diversity(diversity_map_path, diversity_path, png_out, pdf_out) -> None:
    """The map of the instruction sets (see diversity_figure) as PNG and PDF."""
    save_figure(diversity_figure(read_table(diversity_map_path), pd.read_csv(diversity_path)), png_out, pdf_out)
