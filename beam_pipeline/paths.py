"""The job's paths, checked before anything runs: an input folder means its Parquet files, and every output must be
creatable (a file where a folder should be, a missing bucket or no permission fails the launch, not the last step).

Local paths and any filesystem Beam knows (gs://) alike.
"""

from __future__ import annotations

import os
import re
import uuid

GLOB = re.compile(r"[*?\[]")
PARQUET = "*.parquet"


def _is_remote(path: str) -> bool:
    return "://" in path


def input_pattern(path: str) -> str:
    """--input as a glob: a folder (local, or a remote prefix ending in '/' or naming no object itself) becomes its
    `*.parquet`; a glob or a file stays as it is."""
    from apache_beam.io.filesystems import FileSystems

    if GLOB.search(path):
        return path
    if path.endswith("/") or (not _is_remote(path) and os.path.isdir(path)):
        return FileSystems.join(path.rstrip("/"), PARQUET)
    if _is_remote(path) and not FileSystems.exists(path):
        inside = FileSystems.join(path, PARQUET)
        if FileSystems.match([inside])[0].metadata_list:
            return inside
    return path


def check_writable(path: str, flag: str, is_prefix: bool = True) -> str | None:
    """None when files can be written at `path` (a file prefix, or with is_prefix=False a file); else the problem.

    Writes and deletes a small probe file in the output's folder (creating the folder, as the job would)."""
    from apache_beam.io.filesystems import FileSystems

    if not _is_remote(path):
        if not is_prefix and os.path.isdir(path):
            return f"{flag} {path!r} is a folder; expected a file path"
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            return f"{flag} {path!r}: {parent!r} is a file, so no folder can be made there"
    folder = FileSystems.split(path)[0] or "."
    probe = FileSystems.join(folder, f".emmr-write-check-{uuid.uuid4().hex[:12]}")
    try:
        with FileSystems.create(probe) as f:
            f.write(b"")
        FileSystems.delete([probe])
    except Exception as e:  # noqa: BLE001 - every reason (a file in the way, no bucket, no permission) is the problem
        reason = " ".join(str(e).split())
        if len(reason) > 300:
            reason = reason[:300] + "..."
        return f"{flag} {path!r}: cannot write there ({type(e).__name__}: {reason})"
    return None
