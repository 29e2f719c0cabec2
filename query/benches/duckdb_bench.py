#!/usr/bin/env python3
"""The DuckDB side of the query benchmark (issue 5; `benches/query.rs` runs it).

    python3 duckdb_bench.py TABLES_LOCATION QUERIES_FILE [--runs N] [--only a,b]

Creates one DuckDB view per pathflow table over exactly the table's current
Parquet files (Delta keeps removed files on disk until a vacuum, so the list
comes from the Delta log: the `deltalake` package's `DeltaTable.file_uris()`
when it is installed, else the log read here: the newest checkpoint, then the
JSON commits after it), with the hive partition column typed as in the Delta
schema. Then runs each query of the file (`-- name: <name>` sections) once to
warm up and N times more, and prints JSON to stdout:

    {"<name>": {"median_ms": ..., "p99_ms": ..., "rows": ...}, ...}

p99 is the nearest-rank 99th percentile of the N runs. Progress and what was
read go to stderr.

Install: python3 -m pip install --user duckdb "deltalake==1.6.6" pyarrow
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
import urllib.parse

import duckdb

# Every pathflow table and its partition column (DATE in every case).
TABLES = {
    "events": "event_date",
    "referrals": "anchor_week",
    "appointments": "anchor_week",
    "followups": "anchor_week",
    "advice": "anchor_week",
    "demand_weekly": "week",
    "capacity_weekly": "week",
    "waits_weekly": "week",
    "followups_weekly": "week",
}


def log(msg):
    print(f"duckdb bench: {msg}", file=sys.stderr, flush=True)


def local_path(table_dir, uri):
    """A file of the Delta log (relative, or an absolute URI) as a local path."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme == "":
        path = urllib.parse.unquote(uri)
        return path if os.path.isabs(path) else os.path.join(table_dir, path)
    raise SystemExit(f"{table_dir}: file {uri} is not on the local filesystem")


def files_from_log(con, table_dir):
    """The current data files of a Delta table, from its log."""
    log_dir = os.path.join(table_dir, "_delta_log")
    live = set()
    after = -1
    last = os.path.join(log_dir, "_last_checkpoint")
    if os.path.exists(last):
        with open(last) as f:
            checkpoint = json.load(f)
        after = checkpoint["version"]
        parts = checkpoint.get("parts")
        if parts:
            names = [f"{after:020}.checkpoint.{i:010}.{parts:010}.parquet" for i in range(1, parts + 1)]
        else:
            names = [f"{after:020}.checkpoint.parquet"]
        paths = [os.path.join(log_dir, n) for n in names]
        # A checkpoint holds the reconciled state: its adds are the live files.
        rows = con.execute(
            "SELECT add.path FROM read_parquet(?) WHERE add IS NOT NULL", [paths]
        ).fetchall()
        live.update(r[0] for r in rows)
    commits = sorted(
        int(n[:20])
        for n in os.listdir(log_dir)
        if n.endswith(".json") and n[:20].isdigit() and int(n[:20]) > after
    )
    for version in commits:
        with open(os.path.join(log_dir, f"{version:020}.json")) as f:
            for line in f:
                if not line.strip():
                    continue
                action = json.loads(line)
                if "add" in action:
                    live.add(action["add"]["path"])
                elif "remove" in action:
                    live.discard(action["remove"]["path"])
    return sorted(live)


def current_files(con, table_dir):
    """(local paths of the table's current data files, how they were listed)."""
    try:
        import deltalake
    except ImportError:
        return [local_path(table_dir, p) for p in files_from_log(con, table_dir)], "delta log"
    uris = deltalake.DeltaTable(table_dir).file_uris()
    return [local_path(table_dir, u) for u in uris], f"deltalake {deltalake.__version__}"


def sql_string(s):
    return "'" + s.replace("'", "''") + "'"


def create_views(con, location):
    for table, partition in TABLES.items():
        table_dir = os.path.join(location, table)
        if not os.path.isdir(os.path.join(table_dir, "_delta_log")):
            log(f"{table}: no Delta table at {table_dir}; skipped")
            continue
        files, how = current_files(con, table_dir)
        if not files:
            log(f"{table}: no data files; skipped")
            continue
        missing = [f for f in files if not os.path.exists(f)]
        if missing:
            raise SystemExit(f"{table}: {len(missing)} listed files are missing, e.g. {missing[0]}")
        size = sum(os.path.getsize(f) for f in files)
        listing = ", ".join(sql_string(f) for f in files)
        con.execute(
            f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listing}], "
            f"hive_partitioning = true, hive_types = {{'{partition}': DATE}}, "
            f"hive_types_autocast = false)"
        )
        log(f"{table}: {len(files)} files, {size / 2**20:.1f} MiB (listed by {how})")


def parse_queries(text):
    """[(name, sql)] of `-- name: <name>` sections; a trailing `;` dropped."""
    queries = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("-- name:"):
            queries.append([stripped[len("-- name:"):].strip(), []])
        elif queries:
            queries[-1][1].append(line)
    return [(name, "\n".join(lines).strip().rstrip(";").rstrip()) for name, lines in queries]


def timing(samples, rows):
    ordered = sorted(samples)
    rank = min(max(math.ceil(0.99 * len(ordered)), 1), len(ordered))
    return {
        "median_ms": statistics.median(ordered) * 1e3,
        "p99_ms": ordered[rank - 1] * 1e3,
        "rows": rows,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("location", help="the tables location (one directory per table)")
    parser.add_argument("queries", help="the query file")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per query, after one warm-up")
    parser.add_argument("--only", help="comma-separated query names to run")
    args = parser.parse_args()

    con = duckdb.connect()
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    log(f"duckdb {duckdb.__version__}, {threads} threads")
    create_views(con, args.location)

    with open(args.queries) as f:
        queries = parse_queries(f.read())
    if args.only:
        wanted = {n.strip() for n in args.only.split(",")}
        queries = [q for q in queries if q[0] in wanted]

    out = {}
    for name, sql in queries:
        rows = len(con.execute(sql).fetchall())
        samples = []
        for _ in range(max(args.runs, 1)):
            started = time.perf_counter()
            con.execute(sql).fetchall()
            samples.append(time.perf_counter() - started)
        out[name] = timing(samples, rows)
        t = out[name]
        log(f"{name:<40} median {t['median_ms']:8.2f} ms, p99 {t['p99_ms']:8.2f} ms, {rows} rows")
    print(json.dumps(out, indent=1))
    sys.stdout.flush()
    # deltalake's native threads can abort the interpreter's own shutdown: leave at once.
    os._exit(0)


if __name__ == "__main__":
    main()
