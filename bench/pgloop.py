"""The bare psycopg loops the fleet section compares snapstore with, each in
one Python process, with nothing around it.

Usage: python pgloop.py insert DSN TABLE FILE...
       python pgloop.py query DSN QUERIES_JSON

insert: read each FILE, compress it (zlib, level 6, as the fleet stores
contents), and insert (name, size, compressed) into TABLE, one transaction
per 100 files. No record, no digest, no outbox, no acknowledgement.
query: run each [sql, params] of the JSON list and fetch every row; nothing
is formatted or compared.

Prints {"seconds": in-process time, connect included, "rows"} as JSON. It
imports nothing from snapstore, so the baseline does not move when
snapstore's code does.
"""
from __future__ import annotations

import json
import sys
import time
import zlib
from pathlib import Path

import psycopg

BATCH = 100


def insert(dsn: str, table: str, files: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        for start in range(0, len(files), BATCH):
            rows = []
            for name in files[start:start + BATCH]:
                data = Path(name).read_bytes()
                rows.append((Path(name).name, len(data), zlib.compress(data, 6)))
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(f"INSERT INTO {table} (name, size, compressed) VALUES (%s, %s, %s)", rows)
    return len(files)


def query(dsn: str, queries: list[tuple[str, object]]) -> int:
    fetched = 0
    with psycopg.connect(dsn) as conn:
        for sql, params in queries:
            fetched += len(conn.execute(sql, params).fetchall())
    return fetched


def main(argv: list[str]) -> int:
    started = time.perf_counter()
    if argv[0] == "insert":
        rows = insert(argv[1], argv[2], argv[3:])
    else:
        rows = query(argv[1], json.loads(Path(argv[2]).read_text()))
    print(json.dumps({"seconds": time.perf_counter() - started, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
