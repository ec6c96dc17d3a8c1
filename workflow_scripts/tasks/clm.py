"""The clm dataset formats: documents, (item id, text) pairs, from text files, JSON lines or Parquet, and
Python's own help texts."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from ..kinds import CLM
from ..tables import DatasetError, expand_files
from .files import BLANK_LINES, column_values, is_null, read_text, record_file, require, short_names, short_repr
from .format import Format

# A WikiText article's title line, ` = Title = ` (a level-1 heading; ` = = Section = = ` is not one).
ARTICLE_TITLE = re.compile(r"[ \t]*= (?!=)[^\n]*?(?<!=) =[ \t]*")


def wikitext_articles(text: str) -> list[str]:
    """WikiText's articles: the text cut before each title line (ARTICLE_TITLE), which heads its article;
    any text before the first title is one more."""
    articles, lines = [], []
    for line in text.splitlines():
        if lines and ARTICLE_TITLE.fullmatch(line):
            articles.append("\n".join(lines))
            lines = []
        lines.append(line)
    return articles + ["\n".join(lines)]


# The documents of the text format, by its `split` (the first is the default).
TEXT_SPLITS = {"paragraph": BLANK_LINES.split, "line": str.splitlines, "file": lambda text: [text],
               "wikitext": wikitext_articles}


def load_text(ds: dict, read: dict) -> Iterator[tuple[str, str]]:
    """Plain text files split (`split`) into paragraphs (blank-line separated; the default), lines, whole
    files or WikiText articles (cut before each ` = Title = ` line)."""
    split = ds.get("split", next(iter(TEXT_SPLITS)))
    if split not in TEXT_SPLITS:
        raise DatasetError(f"unknown split {split!r} for format 'text'; known: {', '.join(TEXT_SPLITS)}")
    for path, name in short_names(expand_files(require(ds, "path"))).items():
        docs = (doc.strip() for doc in TEXT_SPLITS[split](read_text(record_file(path, read))))
        for k, doc in enumerate(doc for doc in docs if doc):
            yield f"{name}/{k}", doc


def load_documents(ds: dict, read: dict) -> Iterator[tuple[str, str]]:
    """One document per row of JSON-lines (.gz, .bz2, .xz, .zst read) or Parquet files (`text_column`,
    default "text")."""
    column = ds.get("text_column", "text")
    for path, name in short_names(expand_files(require(ds, "path"))).items():
        for n, text in column_values(record_file(path, read), column):
            if not (is_null(text) or isinstance(text, str)):
                raise DatasetError(f"{path}: row {n}: {column} must be text, found {short_repr(text)}")
            if text and text.strip():  # empty documents are skipped
                yield f"{name}/{n - 1}", text


def pydoc_files() -> list[str]:
    """The file of Python's help texts (pydoc_data.topics)."""
    from pydoc_data import topics

    return [topics.__file__]


def pydoc_prose(ds: dict, read: dict) -> Iterator[tuple[str, str]]:
    """Prose paragraphs of Python's own help texts (pydoc_data.topics), one line each, of at least
    `min_chars` characters (default 200)."""
    from pydoc_data import topics

    if ds.get("format") == "pydoc_topics":  # a task's dataset; build_corpus's call ({}) records nothing
        for path in pydoc_files():
            record_file(Path(path), read)
    min_chars = ds.get("min_chars", 200)
    for topic in sorted(topics.topics):
        for k, paragraph in enumerate(BLANK_LINES.split(topics.topics[topic])):
            lines = paragraph.strip("\n").splitlines()
            if not lines or any(_not_prose(line) for line in lines):
                continue
            text = " ".join(line.strip() for line in lines)
            if len(text) >= min_chars:
                yield f"pydoc/{topic}/{k}", text


def _not_prose(line: str) -> bool:
    """Indented (code, grammar, quoted blocks), blank, or a heading underline such as '*****'."""
    return not line.strip() or line[0].isspace() or re.fullmatch(r"[*=~^#+-]{3,}", line.strip()) is not None


FORMATS = (
    Format(CLM, "text", load_text, keys=("path", "split"), file_keys=("path",)),
    Format(CLM, "jsonl", load_documents, keys=("path", "text_column"), file_keys=("path",)),
    Format(CLM, "parquet", load_documents, keys=("path", "text_column"), file_keys=("path",)),
    Format(CLM, "pydoc_topics", pydoc_prose, keys=("min_chars",), package_files=pydoc_files),
)
