"""``embedlab export``: one row per image (id, label, class, split, e0 … e{D-1}) as CSV, TSV or Parquet.

The embeddings matrix is memory-mapped and written a block of rows at a time, so exporting a file of any size
holds one block in memory, never the whole matrix twice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from embedlab.core.errors import UserError, require_output
from embedlab.core.files import atomic_file
from embedlab.core.layout import Layout
from embedlab.embed.embeddings import EmbeddingSet, producing_stage

FORMATS = ("csv", "tsv", "parquet")


def _frames(emb: EmbeddingSet, rows_per_block: int):
    columns = [f"e{i}" for i in range(emb.embeddings.shape[1])]
    names = np.asarray(emb.class_names)
    for start in range(0, len(emb.ids), rows_per_block):
        block = slice(start, start + rows_per_block)
        meta = pd.DataFrame(
            {
                "id": emb.ids[block],
                "label": emb.labels[block],
                "class": names[emb.labels[block]],
                "split": emb.splits[block],
            }
        )
        values = pd.DataFrame(np.asarray(emb.embeddings[block], np.float32), columns=columns)
        yield pd.concat([meta, values], axis=1)


def export_embeddings(
    model: str, fmt: str, out: str | Path | None = None, *, layout: Layout, rows_per_block: int = 10_000
) -> Path:
    """Write ``model``'s embeddings to ``out`` (default ``<model>.<fmt>``); return the path written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    emb = EmbeddingSet.load(require_output(layout.embeddings(model), producing_stage(model)), mmap=True)
    out = Path(out or f"{model}.{fmt}")
    if fmt == "parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError('--format parquet needs pyarrow: pip install -e ".[parquet]"') from None

        with atomic_file(out, "wb") as handle:
            writer = None
            for frame in _frames(emb, rows_per_block):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(handle, table.schema)
                writer.write_table(table)
            if writer is not None:
                writer.close()
        return out
    with atomic_file(out, "w") as handle:
        for number, frame in enumerate(_frames(emb, rows_per_block)):
            frame.to_csv(
                handle,
                sep="\t" if fmt == "tsv" else ",",
                header=number == 0,
                index=False,
                float_format="%.9g",
                lineterminator="\n",
            )
    return out
