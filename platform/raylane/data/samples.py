"""Sample inputs built from text every machine has: the installed Python standard library.

No download is ever needed: the sample corpus is the standard library's docstrings (read with
``ast``, nothing imported), and the sample documents render a few stdlib modules as Markdown, HTML
(``pydoc``), plain text and a small PDF (written by :func:`text_pdf`).

Example:
    >>> pdf = text_pdf(["Hello (PDF) world"], title="Demo")
    >>> pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    True
"""

from __future__ import annotations

import ast
import json
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

from raylane.storage import Storage

# Modules the sample documents describe (all pure-Python, present in every CPython).
DOCUMENT_MODULES = ("json", "csv", "heapq", "textwrap", "fractions", "shlex", "bisect", "statistics")


def stdlib_docstrings(limit_chars: int = 1_000_000, *, recursive: bool = False) -> Iterator[tuple[str, str]]:
    """``(qualified name, docstring)`` pairs from the installed standard library's sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(stdlib.rglob("*.py") if recursive else stdlib.glob("*.py"))
    seen = 0
    for source in sources:
        if recursive and any(part in ("test", "tests", "idlelib", "site-packages") for part in source.parts):
            continue
        try:
            tree = ast.parse(source.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        module = ".".join(source.relative_to(stdlib).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
                    seen += len(doc)
                    yield name, doc
                    if seen >= limit_chars:
                        return


def write_sample_corpus(store: Storage, folder: str, *, limit_chars: int = 6_000_000) -> int:
    """Write the standard library's docstrings under ``folder`` as JSONL shards; returns documents."""
    records = [{"title": name, "text": doc} for name, doc in stdlib_docstrings(limit_chars, recursive=True)]
    shard = 2000
    for index in range(0, len(records), shard):
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records[index : index + shard])
        store.write_bytes(f"{folder}/stdlib-{index // shard:04d}.jsonl", lines.encode())
    return len(records)


def module_markdown(module: str) -> str:
    """A Markdown page for a stdlib module: its docstring, then one section per documented function."""
    docs = dict(_module_docs(module))
    lines = [f"# The {module} module", "", docs.pop(module, "")]
    for name, doc in docs.items():
        lines += ["", f"## {name}", "", doc]
    return "\n".join(lines) + "\n"


def _module_docs(module: str) -> Iterator[tuple[str, str]]:
    source = Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"
    if not source.exists():
        source = source.with_suffix("") / "__init__.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    if doc := ast.get_docstring(tree):
        yield module, doc
    for node in tree.body:
        if not isinstance(node, ast.ClassDef | ast.FunctionDef) or node.name.startswith("_"):
            continue
        if doc := ast.get_docstring(node):
            yield f"{module}.{node.name}", doc


def write_sample_documents(store: Storage, folder: str) -> list[str]:
    """Markdown, HTML, text and PDF pages about a few stdlib modules under ``folder``; their paths."""
    import importlib
    import pydoc

    written = []
    for index, module in enumerate(DOCUMENT_MODULES):
        markdown = module_markdown(module)
        kind = index % 4
        if kind == 0:
            path, data = f"{folder}/{module}.md", markdown.encode()
        elif kind == 1:
            obj = importlib.import_module(module)
            html = pydoc.html.page(pydoc.describe(obj), pydoc.html.document(obj, module))
            path, data = f"{folder}/{module}.html", html.encode()
        elif kind == 2:
            path, data = f"{folder}/{module}.txt", markdown.replace("#", "").encode()
        else:
            pages = _paginate(markdown, lines_per_page=55)
            path, data = f"{folder}/{module}.pdf", text_pdf(pages, title=f"The {module} module")
        store.write_bytes(path, data)
        written.append(path)
    return written


def _paginate(text: str, *, lines_per_page: int, width: int = 95) -> list[str]:
    lines = [wrapped for line in text.split("\n") for wrapped in (textwrap.wrap(line, width) or [""])]
    return ["\n".join(lines[i : i + lines_per_page]) for i in range(0, len(lines), lines_per_page)]


def text_pdf(pages: list[str], *, title: str) -> bytes:
    """A minimal valid PDF 1.4: one page of Helvetica text lines per entry, and a document title.

    Enough for tests and demos to exercise real PDF parsing without a PDF-writing dependency;
    characters outside Latin-1 become ``?``.
    """

    def literal(text: str) -> str:
        text = text.encode("latin-1", "replace").decode("latin-1")
        return "(" + text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ")"

    page_ids = [5 + 2 * i for i in range(len(pages))]
    objects = {
        1: "<< /Type /Catalog /Pages 2 0 R >>",
        2: f"<< /Type /Pages /Kids [{' '.join(f'{p} 0 R' for p in page_ids)}] /Count {len(pages)} >>",
        3: "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: f"<< /Title {literal(title)} /Producer (raylane) >>",
    }
    for page_id, text in zip(page_ids, pages, strict=True):
        shown = " ".join(f"{literal(line)} '" for line in text.split("\n"))
        stream = f"BT /F1 10 Tf 13 TL 50 800 Td {shown} ET"
        objects[page_id] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 842] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {page_id + 1} 0 R >>"
        )
        objects[page_id + 1] = f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream"
    out = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += f"{number} 0 obj\n{objects[number]}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offsets[n]:010d} 00000 n \n" for n in sorted(objects)).encode()
    trailer = f"<< /Size {len(objects) + 1} /Root 1 0 R /Info 4 0 R >>"
    out += f"trailer\n{trailer}\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def synthetic_corpus(documents: int, *, seed: int = 0, exact_copies: float = 0.05, near_copies: float = 0.05):
    """``documents`` texts of 6-12 stdlib docstring sentences, with planted copies, deterministically.

    Returns ``(texts, planted)`` where ``planted`` maps kind (``exact``, ``near``) to the indexes of
    the copies; a near copy changes a few words of its original. For tests and benchmarks.
    """
    import random
    import re

    rng = random.Random(seed)
    docstrings = (" ".join(doc.split()) for _, doc in stdlib_docstrings(3_000_000, recursive=True))
    split = (s.strip() for doc in docstrings for s in re.split(r"(?<=[.!?])\s+", doc))
    sentences = sorted({s for s in split if len(s.split()) >= 6})
    words = [w for s in sentences[:5000] for w in s.split() if w.isalpha()]
    texts: list[str] = []
    planted: dict[str, list[int]] = {"exact": [], "near": []}
    for index in range(documents):
        roll = rng.random()
        if texts and roll < exact_copies:
            texts.append(texts[rng.randrange(len(texts))])
            planted["exact"].append(index)
        elif texts and roll < exact_copies + near_copies:
            tokens = texts[rng.randrange(len(texts))].split()
            position = rng.randrange(len(tokens))  # one word changed: Jaccard ~0.9 over 5-word shingles
            tokens[position] = rng.choice([w for w in words[:50] if w != tokens[position]])
            texts.append(" ".join(tokens))
            planted["near"].append(index)
        else:
            texts.append(" ".join(rng.choice(sentences) for _ in range(rng.randint(6, 12))))
    return texts, planted


def write_jsonl_shards(store: Storage, folder: str, texts: list[str], *, per_shard: int = 5000) -> list[str]:
    """Write ``texts`` as ``{"text": ...}`` JSONL shards under ``folder``; returns their paths."""
    paths = []
    for index in range(0, len(texts), per_shard):
        body = "".join(json.dumps({"text": t}) + "\n" for t in texts[index : index + per_shard])
        path = f"{folder}/part-{index // per_shard:05d}.jsonl"
        store.write_bytes(path, body.encode())
        paths.append(path)
    return paths


def write_sample_digits(store: Storage, folder: str) -> str:
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 images) as ``digits.csv`` under
    ``folder``: columns ``id``, ``label`` and ``pixel_0`` ... ``pixel_63`` (grey levels 0-16).
    Returns the file's root-relative path."""
    import io

    import pandas as pd
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data.astype(int), columns=[f"pixel_{i}" for i in range(64)])
    frame.insert(0, "label", digits.target)
    frame.insert(0, "id", range(len(frame)))
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    path = f"{folder.rstrip('/')}/digits.csv"
    store.write_bytes(path, buffer.getvalue().encode())
    return path
