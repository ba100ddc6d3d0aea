"""Images stored inside Parquet shards, the way large sets ship (Community Forensics:
``image_data`` bytes beside ``model_name`` and ``label``; Hugging Face exports such as OpenFake: an
``image`` struct ``{bytes, path}`` beside a text ``label`` and ``model``).

Discovery reads only the small columns (label, generator, ...), one row group at a time. An image
is read by its reference (pipeline.imageio.member_ref: shard, row, column) from its row group's
image column, which stays in a small per-process cache, so that a partition's consecutive rows
decode one row group once. The bytes then go through the same decoder and checks as a file's.
"""

from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict

import pyarrow as pa
import pyarrow.parquet as pq

from .imageio import ImageRejected

CACHE_BYTES = 256 << 20  # image-column bytes of recent row groups kept per process
_lock = threading.Lock()
_groups: OrderedDict = OrderedDict()  # (file, size, mtime_ns, group, column) -> list of bytes
_held = 0
_offsets: dict = {}  # (file, size, mtime_ns) -> first row of each row group (+ total)


def image_columns(schema: pa.Schema) -> list[str]:
    """Top-level columns that hold image bytes: binary, or a struct with a binary ``bytes`` field
    (the Hugging Face ``Image`` feature)."""
    out = []
    for f in schema:
        t = f.type
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            out.append(f.name)
        elif pa.types.is_struct(t):
            idx = t.get_field_index("bytes")
            if idx >= 0 and (
                pa.types.is_binary(t.field(idx).type) or pa.types.is_large_binary(t.field(idx).type)
            ):
                out.append(f.name)
    return out


def shard_schema(path: str | bytes) -> pa.Schema | None:
    """The Parquet schema of ``path``, or None when it is not a readable Parquet file."""
    try:
        return pq.read_schema(os.fsdecode(path))
    except (pa.ArrowException, OSError):
        return None


def is_image_shard(path: str | bytes) -> bool:
    schema = shard_schema(path)
    return schema is not None and bool(image_columns(schema))


def iter_columns(path: str | bytes, columns: list[str]):
    """(first row, pyarrow Table of ``columns``) per row group: never the whole file at once."""
    pf = pq.ParquetFile(os.fsdecode(path))
    start = 0
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g, columns=columns) if columns else None
        n = pf.metadata.row_group(g).num_rows
        yield start, n, table
        start += n


def _as_bytes_list(column: pa.ChunkedArray) -> list:
    if pa.types.is_struct(column.type):  # {bytes, path}; a null struct has no bytes
        return [cell["bytes"] if cell else None for cell in column.to_pylist()]
    return column.to_pylist()


def read_member(file: bytes, row: int, column: str) -> bytes:
    """The bytes of the image in ``column`` at ``row`` of the shard ``file``; ImageRejected when
    the shard or the row is gone, or the cell holds no bytes."""
    global _held
    name = os.fsdecode(file)
    try:
        st = os.stat(file)
    except FileNotFoundError as e:
        raise ImageRejected("Parquet shard vanished before it could be read") from e
    except OSError as e:
        raise ImageRejected(f"cannot stat Parquet shard: {e.strerror}") from e
    stamp = (file, st.st_size, st.st_mtime_ns)
    try:
        with _lock:
            starts = _offsets.get(stamp)
        if starts is None:
            meta = pq.ParquetFile(name).metadata
            starts = [0]
            for g in range(meta.num_row_groups):
                starts.append(starts[-1] + meta.row_group(g).num_rows)
            with _lock:
                _offsets[stamp] = starts
        if not 0 <= row < starts[-1]:
            raise ImageRejected(f"row {row} is not in the shard (it has {starts[-1]} rows)")
        g = bisect.bisect_right(starts, row) - 1
        key = (*stamp, g, column)
        with _lock:
            cells = _groups.get(key)
            if cells is not None:
                _groups.move_to_end(key)
        if cells is None:
            table = pq.ParquetFile(name).read_row_group(g, columns=[column])
            cells = _as_bytes_list(table.column(0))
            size = sum(len(c) for c in cells if c)
            with _lock:
                _groups[key] = cells
                _held += size
                while _held > CACHE_BYTES and len(_groups) > 1:
                    _, old = _groups.popitem(last=False)
                    _held -= sum(len(c) for c in old if c)
    except ImageRejected:
        raise
    except (pa.ArrowException, OSError, KeyError) as e:
        raise ImageRejected(f"unreadable Parquet shard: {type(e).__name__}: {e}") from e
    data = cells[row - starts[g]]
    if not data:
        raise ImageRejected("no image bytes in this row (empty or null cell)")
    return bytes(data)


def clear_cache() -> None:
    global _held
    with _lock:
        _groups.clear()
        _offsets.clear()
        _held = 0
