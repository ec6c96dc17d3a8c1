"""The confidence stage: turn raw log-probabilities into (confidence, correct) per method.

Each method is a function of one inference table and the task table (methods that take a
``match`` keyword also get the task's alias rule); the registry ``METHODS`` maps a task kind to
its methods. To add a method, write a function here, register it, and list it under the task's
``methods`` in the config: only this stage and the ones after it rerun.
"""
from __future__ import annotations

import inspect
import re
import string

import numpy as np
import pandas as pd

from .kinds import CLM, GENERATION, KINDS, MULTIPLE_CHOICE, SCORINGS
from .metrics import option_indices
from .tables import read_provenance, read_table, write_table

MATCH_RULES = ("exact", "prefix")
# Which multiple-choice methods apply to a task of each scoring (kinds.SCORINGS; the first: the primary one,
# the figures' method).
MC_METHODS_BY_SCORING = {
    "letters": ("option_softmax",),
    "continuation": ("continuation_sum", "continuation_norm_chars", "continuation_norm_tokens", "continuation_min"),
}
# Columns a multiple-choice method reads beyond the raw_columns / data_columns of its kind (kinds.KINDS).
METHOD_RAW_COLUMNS = {"continuation_norm_tokens": ["option_token_counts"],
                      "continuation_min": ["option_min_logprobs"]}
METHOD_DATA_COLUMNS = {"continuation_norm_chars": ["item_id", "choices"]}
# Inference-table columns of log-probabilities (a number per row, or a list of them per row): each value is <= 0,
# -inf (probability 0) included; NaN or a positive value (+inf) is a damaged table, never a confidence.
LOGPROB_COLUMNS = ("max_logprob", "token_logprobs", "option_logprobs", "option_min_logprobs")


def clm_max_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Per token: confidence = largest next-token probability; correct = argmax is the true token."""
    return pd.DataFrame({"item_id": raw["item_id"], "position": raw["position"],
                         "confidence": np.exp(raw["max_logprob"].to_numpy()),
                         "correct": (raw["argmax_id"] == raw["target_id"]).to_numpy()})


def _task_values(raw: pd.DataFrame, data: pd.DataFrame, column: str) -> np.ndarray:
    """`column` of the task table for each row of the inference table, matched on item_id."""
    values = data.set_index("item_id")[column]
    unknown = raw["item_id"][~raw["item_id"].isin(values.index)]
    if len(unknown):
        raise ValueError(f"{len(unknown)} item_id(s) of the inference table are not in the task table "
                         f"(e.g. {unknown.iloc[0]!r})")
    return values.loc[raw["item_id"]].to_numpy()


def _facts_table(raw: pd.DataFrame, data: pd.DataFrame, confidence, correct) -> pd.DataFrame:
    return pd.DataFrame({"item_id": raw["item_id"], "relation": _task_values(raw, data, "relation"),
                         "confidence": np.asarray(confidence, dtype=np.float64),
                         "correct": np.asarray(correct, dtype=bool)})


def _answer_correct(raw: pd.DataFrame, data: pd.DataFrame, match: str) -> list[bool]:
    aliases = _task_values(raw, data, "aliases")
    return [answer_matches(answer, al, match) for answer, al in zip(raw["answer_text"], aliases)]


def facts_first_token_prob(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """The study's method, on the answer's first token that carries text (index ``first_text``).

    Correct = that token is the first text token of an alias (``gold_first_ids``); confidence = the
    probability of the answer's tokens up to and including it, i.e. that the answer starts with that
    text (a digit-splitting tokenizer writes " 1945" as "▁", "1", ...). A ``first_text`` past the
    answer's tokens stands for its last token.
    """
    confidence, correct = [], []
    for item, ids, logprobs, first, gold in zip(raw["item_id"], raw["token_ids"], raw["token_logprobs"],
                                                raw["first_text"], raw["gold_first_ids"]):
        if len(ids) == 0 or len(ids) != len(logprobs):
            raise ValueError(f"item {item!r}: token_ids and token_logprobs must hold the same number of tokens, "
                             f"at least one; got {len(ids)} and {len(logprobs)}")
        if pd.isna(first) or first < 0:
            raise ValueError(f"item {item!r}: first_text must be a token index >= 0, got {first!r}")
        last = min(int(first), len(ids) - 1)
        confidence.append(np.exp(np.sum(logprobs[:last + 1])))
        correct.append(ids[last] in set(gold))
    return _facts_table(raw, data, confidence, correct)


def facts_seq_prob(raw: pd.DataFrame, data: pd.DataFrame, *, match: str) -> pd.DataFrame:
    """Probability of the whole generated answer; correct = the answer matches an alias (``match`` rule)."""
    confidence = [np.exp(np.sum(lps)) for lps in raw["token_logprobs"]]
    return _facts_table(raw, data, confidence, _answer_correct(raw, data, match))


def facts_mean_token_prob(raw: pd.DataFrame, data: pd.DataFrame, *, match: str) -> pd.DataFrame:
    """Mean probability of the answer's tokens; correct = the answer matches an alias (``match`` rule)."""
    confidence = [np.mean(np.exp(lps)) for lps in raw["token_logprobs"]]
    return _facts_table(raw, data, confidence, _answer_correct(raw, data, match))


def check_logprobs(table: pd.DataFrame, columns) -> None:
    """ValueError naming the row (counted from 1), its item (and position) and the column of the first
    log-probability of ``columns`` that is NaN or positive (+inf included); a row's None list is skipped."""
    for column in columns:
        values = table[column]
        if values.dtype == object:  # one list per row: flattened, each value keeping its row
            lists = [np.asarray([] if v is None else v, dtype=np.float64) for v in values]
            flat = np.concatenate(lists) if lists else np.empty(0)
            rows = np.repeat(np.arange(len(lists)), [len(v) for v in lists])
        else:
            flat, rows = values.to_numpy(dtype=np.float64), np.arange(len(values))
        bad = np.flatnonzero(~(flat <= 0))
        if len(bad):
            row = int(rows[bad[0]])
            where = f"item {table['item_id'].iloc[row]!r}"
            if "position" in table:
                where += f", position {table['position'].iloc[row]}"
            raise ValueError(f"row {row + 1} ({where}): {column} holds {flat[bad[0]]}: a log-probability is <= 0 "
                             "(or -inf), never NaN or positive; the table is damaged: delete it and rerun its job")


def _per_item(raw: pd.DataFrame, column: str, lengths=None) -> list[np.ndarray]:
    """`column` of the inference table as one float64 vector per item (items keep their own option count)."""
    vectors = []
    for i, (item, value) in enumerate(zip(raw["item_id"], raw[column])):
        vector = np.asarray(value if value is not None else [], dtype=np.float64)
        if vector.ndim != 1 or len(vector) == 0:
            raise ValueError(f"item {item!r}: {column} must hold one value per option, at least one; "
                             f"got shape {vector.shape}")
        if lengths is not None and len(vector) != lengths[i]:
            raise ValueError(f"item {item!r}: {column} holds {len(vector)} values for {lengths[i]} options")
        vectors.append(vector)
    return vectors


def _option_softmax_table(raw: pd.DataFrame, scores: list[np.ndarray], **extra) -> pd.DataFrame:
    """Softmax over each item's option scores; confidence = the top option's share, correct = it is gold.

    The prediction (``pred``) is the argmax of the scores themselves, the first on ties (numpy's rule, as the
    harness's ``acc``/``acc_norm``), so near-equal scores that the softmax rounds together stay apart. Items
    with the same number of options are computed together; ``option_probs`` keeps each item's own length.
    """
    n = len(scores)
    gold = raw["gold"].to_numpy()
    confidence, pred, probs = np.empty(n), np.empty(n, dtype=np.int64), [None] * n
    lengths = np.array([len(s) for s in scores], dtype=np.int64)
    for length in np.unique(lengths):
        rows = np.flatnonzero(lengths == length)
        block = np.stack([scores[i] for i in rows])
        bad = np.isnan(block).any(axis=1) | (block == np.inf).any(axis=1) | ~np.isfinite(block).any(axis=1)
        if bad.any():
            i = rows[np.flatnonzero(bad)[0]]
            raise ValueError(f"item {raw['item_id'].iloc[i]!r}: option scores must be log-probabilities, not NaN "
                             f"or +inf, at least one finite; got {scores[i].tolist()}")
        top = block.argmax(axis=1)
        p = np.exp(block - block[np.arange(len(rows)), top][:, None])
        p /= p.sum(axis=1, keepdims=True)
        confidence[rows], pred[rows] = p[np.arange(len(rows)), top], top
        for j, i in enumerate(rows):
            probs[i] = p[j]
    gold, invalid = option_indices(gold, lengths)
    if invalid.any():
        i = int(np.flatnonzero(invalid)[0])
        raise ValueError(f"item {raw['item_id'].iloc[i]!r}: gold must be an option index within "
                         f"[0, {lengths[i]}), got {raw['gold'].iloc[i:i + 1].tolist()[0]!r}")
    table = pd.DataFrame({"item_id": raw["item_id"].to_numpy(), "subject": raw["subject"].to_numpy(),
                          "confidence": confidence, "correct": pred == gold, "option_probs": probs, "gold": gold,
                          "pred": pred})
    for name, values in extra.items():
        table[name] = values
    return table


def mc_option_softmax(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Letters scoring: softmax over the option letters' log-probabilities; confidence = the top option's share,
    correct = it is gold.

    Keeps every option's probability (``option_probs``), the ``gold`` index (for the multi-class Brier score),
    the chosen option (``pred``) and ``letter_mass``, the full-vocabulary probability of the option letters at
    the answer position (NaN where the inference table has none).
    """
    letter_mass = (raw["letter_mass"].to_numpy(dtype=np.float64) if "letter_mass" in raw
                   else np.full(len(raw), np.nan))
    return _option_softmax_table(raw, _per_item(raw, "option_logprobs"), letter_mass=letter_mass)


def mc_continuation_sum(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Continuation scoring: softmax over the options' summed log-likelihoods (argmax: the harness's ``acc``)."""
    return _option_softmax_table(raw, _per_item(raw, "option_logprobs"))


def mc_continuation_norm_chars(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Softmax over log-likelihood / characters of the option text (``len(choices[k])``, the delimiter
    excluded): the harness's ``acc_norm`` (``np.argmax(lls / completion_len)``)."""
    choices = _task_values(raw, data, "choices")
    lengths = [len(c) for c in choices]
    logprobs = _per_item(raw, "option_logprobs", lengths)
    scores = []
    for item, lp, texts in zip(raw["item_id"], logprobs, choices):
        chars = np.array([float(len(text)) for text in texts])
        if (chars == 0).any():
            raise ValueError(f"item {item!r}: an option text is empty, so it has no length to normalise by")
        scores.append(lp / chars)
    return _option_softmax_table(raw, scores)


def mc_continuation_norm_tokens(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Softmax over the per-token log-likelihood: option_logprobs / option_token_counts."""
    logprobs = _per_item(raw, "option_logprobs")
    counts = _per_item(raw, "option_token_counts", [len(lp) for lp in logprobs])
    for item, count in zip(raw["item_id"], counts):
        if not ((count >= 1) & (count == np.round(count))).all():
            raise ValueError(f"item {item!r}: option_token_counts must be whole numbers >= 1, got {count.tolist()}")
    return _option_softmax_table(raw, [lp / count for lp, count in zip(logprobs, counts)])


def mc_continuation_min(raw: pd.DataFrame, data: pd.DataFrame) -> pd.DataFrame:
    """Oh & Hwang (2024)'s continuation-min: each option is scored by its least likely token's log-probability
    (``option_min_logprobs``); softmax over those scores."""
    lengths = [len(lp) for lp in _per_item(raw, "option_logprobs")]
    return _option_softmax_table(raw, _per_item(raw, "option_min_logprobs", lengths))


METHODS = {
    CLM: {"max_prob": clm_max_prob},
    GENERATION: {"first_token_prob": facts_first_token_prob, "seq_prob": facts_seq_prob,
                 "mean_token_prob": facts_mean_token_prob},
    MULTIPLE_CHOICE: {"option_softmax": mc_option_softmax, "continuation_sum": mc_continuation_sum,
                      "continuation_norm_chars": mc_continuation_norm_chars,
                      "continuation_norm_tokens": mc_continuation_norm_tokens,
                      "continuation_min": mc_continuation_min},
}


# Confidence the model states about its own answer, read from the second inference pass (self_eval.py), for the
# kinds whose KINDS entry has self_eval; the task-table columns they read. Their rows follow the first pass's
# answers (``proposals``).
SELF_EVAL_METHODS = ("p_true", "verbalized")
SELF_EVAL_DATA_COLUMNS = {GENERATION: ["item_id", "aliases", "relation"],
                          MULTIPLE_CHOICE: ["item_id", "choices", "gold"]}
VERBALIZED_PROBABILITY = re.compile(r"probability\s*:\s*\**\s*(\d+(?:\.\d*)?|\.\d+)\s*(%?)", re.IGNORECASE)
VERBALIZED_GUESS = re.compile(r"guess\s*:\**[ \t]*(.*?)[ \t]*(?:\**[ \t]*probability\s*:|\n|$)", re.IGNORECASE)
OPTION_LETTER = re.compile(r"^\(?([A-Z])(?:[.):]|$)")  # "B", "B.", "B)", "(B) Paris", "B: Paris"


def default_methods(kind: str, scoring: str | None = None) -> list[str]:
    """The confidence methods that apply to a task: for multiple choice those of its scoring (``letters``,
    also when None: ``["option_softmax"]``; ``continuation``: the four continuation_* methods,
    ``continuation_sum`` first as the primary); for the other kinds all of theirs (scoring is not read)."""
    if kind not in METHODS:
        raise ValueError(f"unknown task kind {kind!r}; known: {sorted(METHODS)}")
    if kind != MULTIPLE_CHOICE:
        return list(METHODS[kind])
    return list(MC_METHODS_BY_SCORING[_check_scoring(scoring or "letters")])


def _check_scoring(scoring) -> str:
    if scoring not in SCORINGS:
        raise ValueError(f"multiple-choice scoring must be one of {list(SCORINGS)}, got {scoring!r}")
    return scoring


def table_scoring(data: pd.DataFrame, data_path="the task table") -> str:
    """The scoring of a multiple-choice task table (its ``scoring`` column, one value for all rows)."""
    if "scoring" not in data.columns:
        raise ValueError(f"{data_path}: no scoring column (a multiple-choice task table of an older version: "
                         "rerun its prepare_task)")
    values = pd.unique(data["scoring"])
    if len(values) != 1:
        raise ValueError(f"{data_path}: the scoring column must hold one value for all rows, got {list(values)}")
    try:
        return _check_scoring(values[0])
    except ValueError as error:
        raise ValueError(f"{data_path}: {error}") from None


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation and articles, collapse white space (SQuAD's normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION))
    return " ".join(text.split())


def _check_match(match: str) -> None:
    if match not in MATCH_RULES:
        raise ValueError(f"match must be one of {list(MATCH_RULES)}, got {match!r}")


def answer_matches(answer: str, aliases, match: str) -> bool:
    """Whether the normalised answer equals a normalised alias, or (``prefix``, not ``exact``) starts
    with one followed by a space and more words."""
    _check_match(match)
    got = normalize_answer(answer)
    for alias in aliases:
        want = normalize_answer(alias)
        if want and (got == want or (match == "prefix" and got.startswith(want + " "))):
            return True
    return False


def check_methods(kind: str, scoring: str | None, methods: list[str]) -> None:
    """ValueError naming the methods that are unknown for ``kind`` or, for multiple choice, do not apply
    to its ``scoring`` (the token methods of MC_METHODS_BY_SCORING; the SELF_EVAL_METHODS apply to any)."""
    _check_known(kind, methods)
    if kind == MULTIPLE_CHOICE:
        scoring = _check_scoring(scoring)
        misfits = [m for m in token_methods(methods) if m not in MC_METHODS_BY_SCORING[scoring]]
        if misfits:
            raise ValueError(f"confidence method(s) {misfits} do not apply to scoring {scoring!r}, whose methods "
                             f"are {list(MC_METHODS_BY_SCORING[scoring])}")


def _check_known(kind: str, methods: list[str]) -> None:
    if kind not in METHODS:
        raise ValueError(f"unknown task kind {kind!r}; known: {sorted(METHODS)}")
    known = [*METHODS[kind], *(SELF_EVAL_METHODS if KINDS[kind].self_eval else ())]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"unknown confidence method(s) {unknown} for task kind {kind!r}; known: {sorted(known)}")


def token_methods(methods: list[str]) -> list[str]:
    """The methods of ``methods`` that read the first pass's token probabilities (not SELF_EVAL_METHODS)."""
    return [m for m in methods if m not in SELF_EVAL_METHODS]


def proposal_method(kind: str, methods: list[str], scoring: str | None) -> str | None:
    """The method whose top option is a multiple-choice item's answer for the self-evaluation methods: the
    task's first token method, else its scoring's primary one; None for the other kinds (the greedy answer)."""
    if kind != MULTIPLE_CHOICE:
        return None
    return (token_methods(methods) or default_methods(kind, scoring))[0]


def proposals(kind: str, raw: pd.DataFrame, data: pd.DataFrame, *, methods: list[str], match: str) -> pd.DataFrame:
    """The first pass's answer to every item (``item_id, proposed, correct`` and the item's ``relation`` or
    ``subject``): for facts the greedy answer (``answer_text``, correct by the alias rule ``match``); for
    multiple choice the text of the top option of ``proposal_method`` (correct when it is gold)."""
    if kind == GENERATION:
        return pd.DataFrame({"item_id": raw["item_id"].to_numpy(), "proposed": raw["answer_text"].to_numpy(),
                             "correct": _answer_correct(raw, data, match),
                             "relation": _task_values(raw, data, "relation")})
    if kind != MULTIPLE_CHOICE:
        raise ValueError(f"the self-evaluation methods {list(SELF_EVAL_METHODS)} apply to "
                         f"{[name for name, facts in KINDS.items() if facts.self_eval]} "
                         f"tasks, not {kind!r}")
    top = METHODS[kind][proposal_method(kind, methods, table_scoring(data))](raw, data)
    choices = _task_values(top, data, "choices")
    return pd.DataFrame({"item_id": top["item_id"].to_numpy(),
                         "proposed": [list(c)[p] for c, p in zip(choices, top["pred"])],
                         "correct": top["correct"].to_numpy(),
                         "subject": top["subject"].to_numpy()})


def p_true(proposed: pd.DataFrame, judged: pd.DataFrame) -> pd.DataFrame:
    """P(True): confidence = the probability of " True" renormalised over " True" and " False" (the
    ``option_logprobs`` of the second pass, in that order); correct = the first pass's answer is right."""
    logprobs = _per_item(judged, "option_logprobs", [2] * len(judged))
    share = pd.Series([1.0 / (1.0 + np.exp(lp[1] - lp[0])) for lp in logprobs], index=judged["item_id"].to_numpy())
    table = _matched(proposed, share, "the P(True) table")
    return table.assign(confidence=share.loc[table["item_id"]].to_numpy())


def parse_verbalized(reply) -> tuple[str, float] | None:
    """(guess, probability) from a reply with a line "Guess: ..." and a "Probability: ..." (a number in [0, 1],
    or a percentage with its % sign); None where either is missing, the guess is empty, the probability is
    a word, a bare number above 1, or out of range."""
    if not isinstance(reply, str):
        return None
    guess, probability = VERBALIZED_GUESS.search(reply), VERBALIZED_PROBABILITY.search(reply)
    if not guess or not probability:
        return None
    text = guess.group(1).strip().strip("*").strip()
    value = float(probability.group(1)) / (100.0 if probability.group(2) else 1.0)
    if not text or not 0.0 <= value <= 1.0:
        return None
    return text, value


def guess_option(guess: str, choices) -> int:
    """The option a multiple-choice guess names: its text (normalised), else its letter alone or marked ("B",
    "B.", "B)", "(B) Paris", "B: Paris"; not the article of "A city"); -1 where it names none."""
    texts = [normalize_answer(c) for c in choices]
    if normalize_answer(guess) in texts:
        return texts.index(normalize_answer(guess))
    letter = OPTION_LETTER.match(guess.strip())
    return ord(letter.group(1)) - ord("A") if letter and ord(letter.group(1)) - ord("A") < len(texts) else -1


def verbalized(kind: str, proposed: pd.DataFrame, replies: pd.DataFrame, data: pd.DataFrame, *,
               match: str) -> pd.DataFrame:
    """Verbalized confidence: the reply's probability (``parse_verbalized``), correct = its guess is right by the
    task's rule (the alias rule ``match``; the gold option). A reply that does not parse keeps its row:
    ``parsed`` false, no confidence, not correct."""
    parsed = pd.Series([parse_verbalized(r) for r in replies["generated"]], index=replies["item_id"].to_numpy(),
                       dtype=object)
    table = _matched(proposed, parsed, "the verbalized table")[["item_id", *KINDS[kind].strata]]
    found = parsed.loc[table["item_id"]].to_list()
    guesses = [f[0] if f else None for f in found]
    if kind == GENERATION:
        aliases = _task_values(table, data, "aliases")
        correct = [g is not None and answer_matches(g, a, match) for g, a in zip(guesses, aliases)]
    else:
        choices, gold = _task_values(table, data, "choices"), _task_values(table, data, "gold")
        correct = [g is not None and guess_option(g, c) == int(k) for g, c, k in zip(guesses, choices, gold)]
    return table.assign(confidence=[f[1] if f else np.nan for f in found], correct=correct,
                        parsed=[f is not None for f in found], guess=guesses)


def _matched(proposed: pd.DataFrame, values: pd.Series, what: str) -> pd.DataFrame:
    """The proposals of the items ``values`` holds (by item_id), or ValueError where they differ."""
    if not proposed["item_id"].is_unique or not values.index.is_unique:
        raise ValueError(f"{what} and the first pass must hold each item once")
    if set(values.index) != set(proposed["item_id"]):
        other = sorted(set(values.index) ^ set(proposed["item_id"]))
        raise ValueError(f"{what} and the first pass hold different items (e.g. {other[:3]}): rerun the second pass")
    return proposed.reset_index(drop=True)


def extract_confidence(kind: str, inference_path, data_path, out_path, *, methods: list[str],
                       match: str = "prefix", self_eval: dict | None = None) -> None:
    """Apply each configured method to one inference table; write ``item_id, method, confidence, correct``
    and the methods' other columns. Methods taking a ``match`` keyword get the alias rule. A multiple-choice
    token method must apply to the task table's ``scoring`` (MC_METHODS_BY_SCORING, default_methods). The
    SELF_EVAL_METHODS read their second-pass table, ``self_eval[method]``, beside the first pass's answers; a
    table without rows (a model that has no chat template, for ``verbalized``) gives the method no rows.
    Where a method has a ``parsed`` column, every row gets one (true for the other methods)."""
    _check_known(kind, methods)
    missing_tables = [m for m in methods if m in SELF_EVAL_METHODS and m not in (self_eval or {})]
    if missing_tables:
        raise ValueError(f"method(s) {missing_tables} need their second-pass table (self_eval)")
    _check_match(match)
    raw, data = read_table(inference_path), read_table(data_path)
    scoring = None
    if kind == MULTIPLE_CHOICE:
        scoring = table_scoring(data, data_path)
        try:
            check_methods(kind, scoring, methods)
        except ValueError as error:
            raise ValueError(f"{data_path}: {error}") from None
    reading = token_methods(methods)  # and, for the self-evaluation methods, the proposals' method
    if len(reading) < len(methods) and kind == MULTIPLE_CHOICE:
        reading = [*reading, proposal_method(kind, methods, scoring)]
    raw_columns = [*KINDS[kind].raw_columns, *(c for m in reading for c in METHOD_RAW_COLUMNS.get(m, []))]
    data_columns = [*KINDS[kind].data_columns, *(c for m in reading for c in METHOD_DATA_COLUMNS.get(m, []))]
    if len(reading) < len(methods):
        data_columns += SELF_EVAL_DATA_COLUMNS[kind]
    for path, table, columns in ((inference_path, raw, raw_columns), (data_path, data, data_columns)):
        missing = [column for column in dict.fromkeys(columns) if column not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (needed by the {kind} confidence methods)")
    try:
        check_logprobs(raw, [column for column in LOGPROB_COLUMNS if column in raw_columns])
    except ValueError as error:
        raise ValueError(f"{inference_path}: {error}") from None
    frames, second_pass = [], {}
    for method in methods:
        try:
            if method in SELF_EVAL_METHODS:
                judged = read_table(self_eval[method])
                second_pass[method] = read_provenance(self_eval[method])
                check_logprobs(judged, ["option_logprobs"] if method == "p_true" else [])
                if judged.empty:
                    continue
                proposed = proposals(kind, raw, data, methods=methods, match=match)
                table = (p_true(proposed, judged) if method == "p_true"
                         else verbalized(kind, proposed, judged, data, match=match))
            else:
                function = METHODS[kind][method]
                options = {"match": match} if "match" in inspect.signature(function).parameters else {}
                table = function(raw, data, **options)
        except ValueError as error:
            raise ValueError(f"{self_eval[method] if method in SELF_EVAL_METHODS else inference_path}, method "
                             f"{method!r}: {error}") from error
        table.insert(1, "method", method)
        frames.append(table)
    if not frames:
        raise ValueError(f"{inference_path}: no method gave rows (methods {methods}; verbalized has none for a "
                         "model without a chat template)")
    result = pd.concat(frames, ignore_index=True)
    if "parsed" in result:
        result["parsed"] = result["parsed"].fillna(True).astype(bool)
    first = ["item_id", "method", "confidence", "correct"]
    result = result[first + [c for c in result.columns if c not in first]]
    write_table(result, out_path, provenance={"stage": "extract_confidence", "kind": kind, "methods": methods,
                                              "scoring": scoring, "match": match,
                                              "inference": read_provenance(inference_path),
                                              **({"self_eval": second_pass} if second_pass else {})})
