"""The models of a study, built from its (validated) config: each model's name, source, revisions (each
with the training step or epoch it holds), labels, the model and revision it was trained from, and where
it comes from.

The names of the models trained here are made here and nowhere else: the suite's
``<family>-<size>-<data>`` at revisions ``step<N>``, the align stage's ``<base>-sft-<set>-<tuning>``,
``<base>-rlhf`` and ``<base>-dpo`` at revisions ``epoch<N>``. The rules pass these fields on (to the
tables among others); no module reads them back out of a name. The only names read are the revisions a
config gives: ``step<N>`` (Pythia's hub branches) names a step, ``epoch<N>`` an epoch.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

LABELS = ("family", "data", "stage", "size", "tuning")  # in the order of the tables' label columns
ALIGNED = ("tune", "rlhf", "dpo")  # the origins of the align stage


@dataclass(frozen=True)
class Revision:
    """A revision of a model, with the training step or epoch it holds (None where unknown)."""
    name: str
    step: int | None = None
    epoch: int | None = None


@dataclass(frozen=True)
class Model:
    """A model to evaluate. ``origin``: the config section (``config``: models, ``imports``) or the rule
    (``pretrain``, ``tune``, ``rlhf``, ``dpo``) it comes from; ``folder``: the output of that rule, which
    its ``local:`` source reads (None for models not trained here); ``parent`` and ``parent_revision``:
    the model it was trained from (aligned models only); ``trust_remote_code``: whether code that its checkpoint
    brings may run (config models only)."""
    name: str
    source: str
    revisions: tuple[Revision, ...]
    origin: str
    labels: dict = field(default_factory=dict)
    folder: str | None = None
    parent: str | None = None
    parent_revision: str | None = None
    inference: dict = field(default_factory=dict)
    resources: dict = field(default_factory=dict)
    trust_remote_code: bool = False

    @property
    def revision_names(self) -> list[str]:
        return [r.name for r in self.revisions]

    def revision(self, name: str) -> Revision:
        for revision in self.revisions:
            if revision.name == name:
                return revision
        raise KeyError(f"model {self.name!r} has no revision {name!r} (revisions: {', '.join(self.revision_names)})")

    def ordered_revisions(self) -> list[str]:
        """The revisions by step, else epoch, where every one has one (step4 before step16), else as listed."""
        numbers = [r.step if r.step is not None else r.epoch for r in self.revisions]
        if None in numbers:
            return self.revision_names
        return [name for _, name in sorted(zip(numbers, self.revision_names))]


@dataclass(frozen=True)
class Registry:
    """Every model by name: those of ``models``, the pretrain suite, the aligned models, then ``imports``."""
    models: dict[str, Model]

    def of(self, *origins: str) -> dict[str, Model]:
        """The models of these origins, in registry order."""
        return {name: model for name, model in self.models.items() if model.origin in origins}

    def base_of(self, name: str) -> tuple[str, str]:
        """(model, revision) that an aligned model's training started from, through its parents."""
        model = self.models[name]
        if model.parent is None:
            raise ValueError(f"model {name!r} was not trained from another model")
        while self.models[model.parent].parent is not None:
            model = self.models[model.parent]
        return model.parent, model.parent_revision


def build_registry(config: dict) -> Registry:
    """The registry of a config validated against config/schema.yaml (its defaults filled in). Names
    that clash and an align section that names no model or revision are ValueErrors naming the keys."""
    models = {name: _config_model(name, entry) for name, entry in config["models"].items()}
    suite = _suite(config["pretrain"]) if "pretrain" in config else {}
    _check_clash(suite, models, "config: models {} are also names of the pretrain suite; rename them")
    models.update(suite)
    aligned = _aligned(config["align"], models) if config.get("align") else {}
    _check_clash(aligned, models, "config: models {} are also names of aligned models; rename them")
    models.update(aligned)
    imported = {name: _imported(name, run) for name, run in config["imports"].items()}
    _check_clash(imported, models, "config: imports: {} are also names of models; rename them")
    models.update(imported)
    return Registry(models)


def _check_clash(new: dict, models: dict, message: str) -> None:
    clash = sorted(set(new) & set(models))
    if clash:
        raise ValueError(message.format(clash))


def named_revision(revision: str) -> Revision:
    """A revision a config names, with the step (``step1000``) or epoch (``epoch2``) its name gives."""
    step, epoch = (re.fullmatch(rf"{word}(\d+)", revision) for word in ("step", "epoch"))
    return Revision(revision, step=int(step.group(1)) if step else None, epoch=int(epoch.group(1)) if epoch else None)


def _labels(entry: dict) -> dict:
    return {key: entry[key] for key in LABELS if key in entry}


def _config_model(name: str, entry: dict) -> Model:
    return Model(name, entry["source"], tuple(map(named_revision, entry["revisions"])), "config", _labels(entry),
                 inference=entry.get("inference", {}), resources=entry.get("resources", {}),
                 trust_remote_code=entry.get("trust_remote_code", False))


def _imported(name: str, run: dict) -> Model:
    return Model(name, f"lm_eval:{run['lm_eval']}", (Revision("lm_eval"),), "imports", _labels(run.get("labels", {})))


def _trained(name: str, folder: str, revisions, origin: str, labels: dict, **fields) -> Model:
    return Model(name, f"local:{folder}", tuple(revisions), origin, _labels(labels), folder=folder, **fields)


def _suite(pre: dict) -> dict[str, Model]:
    """The models of the suite trained here: one per size and data variant at its last step, every
    checkpoint for the `dynamics` size of the first data variant."""
    models = {}
    for size in pre["sizes"]:
        for data in pre["data"]:
            name = f"{pre['family']}-{size}-{data}"
            steps = pre["checkpoints"] if size == pre.get("dynamics") and data == pre["data"][0] else [pre["steps"]]
            labels = {"family": pre["family"], "data": data, "stage": "base", "size": size}
            models[name] = _trained(name, f"results/pretrain/models/{name}",
                                    (Revision(f"step{s}", step=s) for s in steps), "pretrain", labels)
    return models


def _epochs(n: int):
    return (Revision(f"epoch{e}", epoch=e) for e in range(1, n + 1))


def _aligned(align: dict, models: dict[str, Model]) -> dict[str, Model]:
    """The models of the align stage: every instruction set with every tuning method from the base,
    then RLHF and DPO from the preference policy at its last epoch."""
    base = align["base"]
    if base not in models:
        raise ValueError(f"config: align.base {base!r} is not a model (models: {', '.join(models)})")
    revisions = models[base].revision_names
    revision = align.get("revision", revisions[-1])
    if revision not in revisions:
        raise ValueError(f"config: align.revision {revision!r} is not a revision of {base!r} "
                         f"({', '.join(revisions)}); add it there so the base is evaluated too")
    inherited = {key: models[base].labels[key] for key in ("family", "size") if key in models[base].labels}
    common = {"inference": models[base].inference, "resources": models[base].resources}
    aligned = {}
    for data in align["instructions"]:
        for tuning in align["tuning"]:
            name = f"{base}-sft-{data}-{tuning}"
            aligned[name] = _trained(name, f"results/align/models/{name}", _epochs(align["epochs"]), "tune",
                                     {**inherited, "stage": "sft", "data": data, "tuning": tuning},
                                     parent=base, parent_revision=revision, **common)
    preference = align.get("preference")
    if preference:
        policy = aligned.get(f"{base}-sft-{preference['policy']}")
        if policy is None:
            known = ", ".join(f"{m.labels['data']}-{m.labels['tuning']}" for m in aligned.values())
            raise ValueError(f"config: align.preference.policy {preference['policy']!r} is not a tuned model "
                             f"({known})")
        for stage in ("rlhf", "dpo"):
            if stage in preference:
                name = f"{base}-{stage}"
                aligned[name] = _trained(name, f"results/align/models/{name}", _epochs(preference[stage]["epochs"]),
                                         stage, {**policy.labels, "stage": stage}, parent=policy.name,
                                         parent_revision=policy.revision_names[-1], **common)
    return aligned
