"""``raylane datasets`` and ``raylane docs``: published datasets, and search over document indexes.

Example:
    $ raylane datasets list
    $ raylane docs search "how do I parse CSV?" --dataset docs -k 3
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from raylane.artifacts.refs import DATASETS_PREFIX, dataset_path, published_ref
from raylane.cli.common import ConfigOption, JsonOption, fmt_time, load, out

datasets_app = typer.Typer(help="Datasets published by the ETL lane.", no_args_is_help=True)
docs_app = typer.Typer(help="Search document indexes built by jobs/docs.yaml.", no_args_is_help=True)


@datasets_app.command("list")
def datasets_list(config_path: ConfigOption = None, as_json: JsonOption = False) -> None:
    """Every published dataset version: kind, counts, when."""
    from raylane.storage import Storage  # (pyarrow: loaded by the commands that read storage)

    store = Storage.from_config(load(config_path))
    names = sorted(
        {p.split("/")[1] for p in store.list(DATASETS_PREFIX, recursive=True) if p.count("/") >= 2}
    )
    rows = []
    for name in names:
        for version in store.versions(dataset_path(name)):
            manifest = store.read_manifest(dataset_path(name), version)
            rows.append({"name": name, "ref": published_ref(name, version), "version": version,
                         "kind": manifest.get("kind"),
                         "counts": manifest.get("counts", {}), "published_at": manifest["published_at"],
                         "uri": store.uri(manifest["data_prefix"])})  # fmt: skip
    if as_json:
        out.print_json(data=rows)
        return
    table = Table("dataset", "kind", "size", "published", box=None, pad_edge=False)
    for row in rows:
        table.add_row(row["ref"], str(row["kind"]), _size(row["counts"]),
                      fmt_time(row["published_at"]))  # fmt: skip
    out.print(table)


def _size(counts: dict) -> str:
    if "chunks" in counts:
        return f"{counts['chunks']} chunks from {counts['input_files']} files"
    if "train_tokens" in counts:
        return (
            f"{counts['documents_kept']} docs, {counts['train_tokens'] + counts['validation_tokens']} tokens"
        )
    return "-"


@docs_app.command("search")
def docs_search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Index name (NAME or NAME@vN).")] = "docs",
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many chunks to return.")] = 5,
    config_path: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The chunks nearest to QUERY, best first, with their source, page and score."""
    from raylane.data.search import search
    from raylane.storage import Storage

    hits = search(Storage.from_config(load(config_path)), dataset, query, k=k)
    if as_json:
        out.print_json(data=hits)
        return
    for hit in hits:
        where = hit["source"] + (f" p.{hit['page']}" if hit["page"] else "")
        out.print(f"{hit['rank']}. [{hit['score']:.3f}] {hit['title']} — {where}")
        out.print("   " + " ".join(hit["text"].split())[:300], soft_wrap=True)
