"""The job's paths, checked before anything runs: an input folder means its Parquet files, and every output must be
creatable (a file where a folder should be, a missing bucket or no permission fails the launch, not the last step).

Outputs are file prefixes: `--output out/predictions/part` writes `out/predictions/part-00000-of-00001.parquet`
(batch) and `out/predictions/part-<window>-...-of-<n>.parquet` (streaming); a folder (an existing one, or a path
ending in '/') means the prefix `<folder>/part`. After a run, `written_files` lists what a prefix got.
Local paths and any filesystem Beam knows (gs://) alike.
"""

from __future__ import annotations

import os
import re
import uuid

GLOB = re.compile(r"[*?\[]")
PARQUET = "*.parquet"
PART = "part"  # the file prefix inside an output folder


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


def output_prefix(path: str) -> str:
    """An output flag's value as a file prefix: a folder (an existing local one, or any path ending in '/') becomes
    `<folder>/part`; anything else is a prefix already."""
    if path.endswith("/") or (not _is_remote(path) and os.path.isdir(path)):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.join(path.rstrip("/"), PART)
    return path


def files_pattern(prefix: str) -> str:
    return f"{prefix}-*.parquet"


def written_files(prefix: str, since: float | None = None) -> list[str]:
    """The Parquet files under an output prefix, written (or renamed into place) at or after `since` (Unix time;
    files of earlier runs with the same prefix are left out); sorted. Raises what listing the storage raises."""
    from apache_beam.io.filesystems import FileSystems

    found = FileSystems.match([files_pattern(prefix)])[0].metadata_list
    return sorted(f.path for f in found
                  if since is None or (getattr(f, "last_updated_in_seconds", 0) or since) >= since - 2)
