"""The retrospective regions' table: its schema and the merge of its shards (rule
merge_region_shards). Apart from reproseg.finers.retrospective, which needs the policy,
so that the merge job imports pyarrow only (no torch: about 10 s less on the DAG's
critical path)."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ..io_atomic import write_parquet

SCHEMA = pa.schema([
    ("id", pa.string()), ("candidate", pa.int64()), ("kind", pa.string()),
    ("crop", pa.list_(pa.float64())), ("region_gse", pa.list_(pa.float64())),
    ("completion", pa.string()), ("lpr_box", pa.list_(pa.float64())), ("iou", pa.float64()),
    ("chosen", pa.bool_()),
])


def merge_region_shards(shards: list[str], out: str) -> None:
    """One table of all shards; every sample must have exactly one chosen region."""
    table = pa.concat_tables([pq.read_table(s, schema=SCHEMA) for s in shards]).sort_by([("id", "ascending"),
                                                                                          ("candidate", "ascending")])
    chosen: dict[str, int] = {}
    for rid, c in zip(table.column("id").to_pylist(), table.column("chosen").to_pylist()):
        chosen[rid] = chosen.get(rid, 0) + int(c)
    bad = [rid for rid, n in chosen.items() if n != 1]
    if bad:
        raise ValueError(f"region shards {shards}: samples without exactly one chosen region, e.g. {bad[:5]}")
    write_parquet(out, table)
