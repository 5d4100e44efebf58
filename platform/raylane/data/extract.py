"""Raw file bytes -> documents (text with metadata), or failures that say what went wrong where.

One function per format; :func:`extract` picks by suffix. Nothing here raises on bad input: an empty,
binary, non-UTF-8, truncated or corrupt file (or one bad JSONL line) becomes a :class:`Failure`
row for the pipeline's errors table, and the rest of the file still counts.

Example:
    >>> [d.text for d in extract("a.jsonl", b'{"text": "one"}\\n{"text": "two"}\\n')]
    ['one', 'two']
    >>> extract("b.txt", b"\\xff\\xfe oops")[0].reason
    'not UTF-8 text (invalid byte at offset 0)'
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import PurePosixPath

CORPUS_SUFFIXES = (".txt", ".md", ".jsonl", ".parquet")
DOCUMENT_SUFFIXES = (".html", ".htm", ".md", ".markdown", ".txt", ".pdf")


@dataclass(frozen=True)
class Document:
    """Text from one place in one file: a line of JSONL, a parquet row, a PDF page, a whole file."""

    path: str
    part: int  # JSONL line number, parquet row or PDF page (1-based); 0 for a whole file
    title: str
    text: str


@dataclass(frozen=True)
class Failure:
    """Why a file (part 0) or one of its parts could not become a document."""

    path: str
    part: int
    stage: str  # read | decode | parse | extract
    reason: str


Extracted = Document | Failure


def extract(path: str, data: bytes, *, text_field: str = "text") -> list[Extracted]:
    """Documents and failures from one file's bytes, by the file's suffix."""
    suffix = PurePosixPath(path).suffix.lower()
    if not data.strip():
        return [Failure(path, 0, "read", "empty file")]
    if suffix == ".pdf":
        return _pdf(path, data)
    if suffix == ".parquet":
        return _parquet(path, data, text_field)
    try:
        text = decode_text(data)
    except ValueError as exc:
        return [Failure(path, 0, "decode", str(exc))]
    if suffix == ".jsonl":
        return _jsonl(path, text, text_field)
    if suffix in (".html", ".htm"):
        return _html(path, text)
    return [Document(path, 0, _markdown_title(text) or PurePosixPath(path).stem, text)]


def decode_text(data: bytes) -> str:
    """Strict UTF-8 (a BOM is dropped); binary data is refused rather than decoded into garbage."""
    if b"\x00" in data[:65536]:
        raise ValueError("binary file (NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (invalid byte at offset {exc.start})") from None


def _jsonl(path: str, text: str, text_field: str) -> list[Extracted]:
    out: list[Extracted] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(Failure(path, number, "parse", f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        value = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(value, str):
            out.append(Failure(path, number, "parse", f"no string field {text_field!r}"))
            continue
        title = record.get("title") if isinstance(record.get("title"), str) else ""
        out.append(Document(path, number, title, value))
    return out


def _parquet(path: str, data: bytes, text_field: str) -> list[Extracted]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        return [Failure(path, 0, "parse", f"corrupt parquet: {str(exc).splitlines()[0][:200]}")]
    if text_field not in table.column_names:
        return [Failure(path, 0, "parse", f"no column {text_field!r} (columns: {table.column_names})")]
    out: list[Extracted] = []
    for row, value in enumerate(table.column(text_field).to_pylist(), start=1):
        if isinstance(value, str):
            out.append(Document(path, row, "", value))
        else:
            out.append(Failure(path, row, "parse", f"{text_field!r} is not a string"))
    return out


def _pdf(path: str, data: bytes) -> list[Extracted]:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    # pypdf logs every repair it makes on a damaged file; the errors table already says what failed.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        title = (reader.metadata.title if reader.metadata else None) or PurePosixPath(path).stem
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        return [Failure(path, 0, "parse", f"corrupt PDF: {type(exc).__name__}: {str(exc)[:200]}")]
    docs: list[Extracted] = [
        Document(path, number, str(title), text) for number, text in enumerate(pages, 1) if text.strip()
    ]
    return docs or [Failure(path, 0, "extract", "PDF has no extractable text (scanned images?)")]


def _markdown_title(text: str) -> str:
    for line in text.split("\n", 50)[:50]:
        if line.startswith("# "):
            return line[2:].strip()
    return ""


class _HTMLText(HTMLParser):
    """Visible text of an HTML page, one line per block element; the <title> kept apart."""

    SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "dt", "dd",
                       "pre", "section", "article", "table", "blockquote", "hr"})  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIP:
            self._skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skipping:
            self.parts.append(data)


def _html(path: str, text: str) -> list[Extracted]:
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    body = "".join(parser.parts)
    if not body.strip():
        return [Failure(path, 0, "extract", "HTML page has no visible text")]
    return [Document(path, 0, " ".join("".join(parser.title).split()) or PurePosixPath(path).stem, body)]
