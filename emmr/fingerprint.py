"""A fingerprint of training data: which files, their SHA-256, and how many records."""

from __future__ import annotations

import hashlib
import os

from emmr.batch import parquet_files


def fingerprint(path: str, records: int) -> dict:
    files = []
    for f in parquet_files(path):
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        files.append({"path": os.path.relpath(f, path) if os.path.isdir(path) else f, "sha256": h.hexdigest(),
                      "bytes": os.path.getsize(f)})
    combined = hashlib.sha256("".join(x["sha256"] for x in files).encode()).hexdigest()
    return {"source": os.path.abspath(path), "records": records, "files": files, "sha256": combined}
