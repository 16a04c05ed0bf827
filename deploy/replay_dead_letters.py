"""Turn dead letters back into input records, to score them again once their cause is fixed.

    python deploy/replay_dead_letters.py --dead-letters 'gs://bucket/dead-letters/2026-01-01/part-*.parquet' \\
        --kind inference_error --out replay/part-00000.parquet
    python deploy/replay_dead_letters.py --dead-letters dead.jsonl --out replay/part-00000.parquet

Input: dead letter v1 Parquet files (a glob, local or gs://), or JSON lines of the dead-letter messages that a
streaming job publishes (one JSON object per line, payload in base64; beam_pipeline/dead_letters.to_messages).
Each dead letter's payload is its record as an Arrow IPC stream of one input v1 row (a Parquet row as read, or
a Pub/Sub message's data as received); those rows are written to --out as input v1 Parquet, which a batch run
scores (deploy/launch.sh batch with INPUT=...) or `emmr publish` sends to the streaming job's topic.

What cannot be replayed is reported, not dropped silently: dead letters without a payload (unreadable_file:
fix or re-export the file named in `source` and re-run on it), and payloads that do not decode (truncated at
4 MiB, schemas/arrow.MAX_PAYLOAD_BYTES, or corrupt as received: go back to `source`, file#row=N). Exit
status: 0 when every selected dead letter was written, 1 when some were not, 2 for bad arguments or no input.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import glob
import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow import fs

log = logging.getLogger("replay_dead_letters")


@dataclass
class Replay:
    records: list[pa.Table] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few ids or sources

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(where)


def read_dead_letters(path: str) -> list[dict]:
    """Dead letter v1 rows as dicts (payload as bytes) from Parquet files or JSON lines."""
    if path.endswith((".jsonl", ".json")):
        rows = []
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    row["payload"] = None if row.get("payload") is None else base64.b64decode(row["payload"])
                    rows.append(row)
        return rows
    filesystem, pattern = fs.FileSystem.from_uri(path) if "://" in path else (fs.LocalFileSystem(), path)
    if isinstance(filesystem, fs.LocalFileSystem):
        files = sorted(glob.glob(pattern))
    else:
        base = pattern.rsplit("/", 1)[0]
        files = sorted(i.path for i in filesystem.get_file_info(fs.FileSelector(base, recursive=False))
                       if fnmatch.fnmatch(i.path, pattern))
    if not files:
        return []
    return ds.dataset(files, format="parquet", filesystem=filesystem).to_table().to_pylist()


def replay(rows: list[dict], kinds: set[str] | None = None) -> Replay:
    out = Replay()
    for row in rows:
        if kinds and row.get("error_kind") not in kinds:
            continue
        where = f"{row.get('id')!r} ({row.get('error_kind')}, {row.get('source')})"
        payload = row.get("payload")
        if not payload:
            out.skip("no payload (fix the file named in source and re-run on it)", where)
            continue
        try:
            table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
            table.validate(full=True)
        except (pa.ArrowException, OSError) as e:
            out.skip(f"payload does not decode (truncated or corrupt: {type(e).__name__}); go back to source", where)
            continue
        if table.num_rows != 1 or "id" not in table.schema.names:
            out.skip("payload is not one input v1 record", where)
            continue
        out.records.append(table.replace_schema_metadata(None))
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dead-letters", required=True, help="dead letter v1 Parquet glob (local or gs://), or a .jsonl file")
    p.add_argument("--kind", action="append", help="only these error kinds (repeatable; default: all)")
    p.add_argument("--out", required=True, help="input v1 Parquet file to write")
    args = p.parse_args(argv)
    rows = read_dead_letters(args.dead_letters)
    if not rows:
        log.error("no dead letters at %s", args.dead_letters)
        return 2
    result = replay(rows, set(args.kind) if args.kind else None)
    for reason, n in result.skipped.items():
        log.warning("%d not replayable: %s; e.g. %s", n, reason, "; ".join(result.examples[reason]))
    if not result.records:
        log.error("nothing to replay among %d dead letters", len(rows))
        return 1
    table = pa.concat_tables(result.records, promote_options="default")
    pq.write_table(table, args.out)
    log.info("wrote %d records to %s (of %d dead letters read)", table.num_rows, args.out, len(rows))
    return 1 if result.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
