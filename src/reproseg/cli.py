"""The project's own commands: `reproseg audit`, `verify`, `crate`, `fingerprint` and `learning`."""
from __future__ import annotations

import argparse
import json
import sys

import pyarrow.parquet as pq

from .audit import RecordIndex, chain, format_chain, verify
from .fingerprint import fingerprint
from .learning import find_logs, format_trends, trends


def cell(table_path: str, row: str, column: str):
    """One number of a Parquet table: `row` is a row index or the value of the first column."""
    table = pq.read_table(table_path)
    if column not in table.column_names:
        raise SystemExit(f"{table_path}: no column {column!r}; columns: {table.column_names}")
    first = [str(v) for v in table.column(0).to_pylist()]
    index = first.index(row) if row in first else int(row) if row.isdigit() else None
    if index is None or index >= table.num_rows:
        raise SystemExit(f"{table_path}: no row {row!r}; rows: {first}")
    return table.column(column)[index].as_py()


def _audit(args) -> int:
    idx = RecordIndex.load(args.results, args.workdir)
    records = chain(idx, args.artifact)
    if not records:
        print(f"no provenance record lists {args.artifact} as an output", file=sys.stderr)
        return 1
    value = cell(args.artifact, args.row, args.column) if args.row is not None else None
    if args.json:
        print(json.dumps({"value": value, "chain": records} if args.row is not None else records,
                         indent=2, sort_keys=True, default=str))
    else:
        if args.row is not None:
            print(f"{args.artifact} [{args.row}, {args.column}] = {value}")
        print(format_chain(records))
    return 0


def _verify(args) -> int:
    idx = RecordIndex.load(args.results, args.workdir)
    findings = verify(idx)
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{f.problem:13s} {f.path}  (record {f.record})")
        print(f"{len(idx.records)} records checked, {len(findings)} problem(s)")
    return 1 if findings else 0


def _crate(args) -> int:
    from .crate import export_crate   # lazy: ro-crate-py loads for this subcommand only, not for --help or audit

    print(export_crate(args.results, args.workdir))
    return 0


def _fingerprint(args) -> int:
    print(json.dumps(fingerprint(args.script), indent=2, sort_keys=True))
    return 0


def _learning(args) -> int:
    logs = find_logs(args.results)
    if not logs:
        print(f"no training log under {args.results}", file=sys.stderr)
        return 1
    rows = [t for path in logs for t in trends(path, args.fraction)]
    if args.json:
        print(json.dumps([{**r.__dict__, "improved": r.improved} for r in rows], indent=2))
    else:
        print(format_trends(rows))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="reproseg", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("audit", help="print the chain of jobs, inputs, code and environment behind an artifact")
    a.add_argument("artifact")
    a.add_argument("--row", help="for a Parquet table: a row index or the value of its first column")
    a.add_argument("--column", help="for a Parquet table: the column of the number to audit")
    v = sub.add_parser("verify", help="re-hash every recorded artifact; non-zero exit if any differs or is missing")
    for p in (a, v):
        p.add_argument("--results", default="results")
        p.add_argument("--workdir", default=".", help="folder the recorded paths are relative to")
        p.add_argument("--json", action="store_true")
    a.set_defaults(func=_audit)
    v.set_defaults(func=_verify)
    c = sub.add_parser("crate", help="write the run's provenance as a Workflow Run RO-Crate (ro-crate-metadata.json)")
    c.add_argument("--results", default="results")
    c.add_argument("--workdir", default=".", help="the run's folder: the crate root")
    c.set_defaults(func=_crate)
    f = sub.add_parser("fingerprint", help="code fingerprint of a workflow script and the modules it imports")
    f.add_argument("script")
    f.set_defaults(func=_fingerprint)
    lg = sub.add_parser("learning", help="first and last means of every training log's rewards and losses")
    lg.add_argument("--results", default="results")
    lg.add_argument("--fraction", type=float, default=0.25, help="share of a log's finite points in each mean")
    lg.add_argument("--json", action="store_true")
    lg.set_defaults(func=_learning)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
