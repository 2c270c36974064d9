"""Trace files on disk: sniff the container and columns, read whole or in record batches, write Parquet atomically.

Containers are recognised by content: Parquet by its magic bytes, JSON Lines by a leading `{`, anything else is
read as CSV. Compressed CSV/JSONL (`.gz`, `.bz2`, `.zst`) is decompressed by extension, as pyarrow does.
CSV columns are read as strings so that `columns.convert` owns every parse and every error message.

Errors about one row name it in the file's own terms (`row_place`): a JSON Lines file by its 1-based line, a CSV
file by its 1-based data row with the header not counted, a Parquet file by its 1-based row.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tokenjoule.traces.schema import Trace, TraceFormatError, TraceRowError

ProgressFn = Callable[[int, int], None]  # (done, total) in rows (Parquet) or bytes (CSV, JSONL)
_SNIFF_BYTES = 1 << 16
_CSV_BLOCK_BYTES = 1 << 24


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What a file holds, from its first bytes.

    Attributes:
        path: the file.
        container: "csv", "jsonl" or "parquet".
        columns: header names (CSV), keys of the first object (JSONL) or schema names (Parquet).
        first_row: the first data row's fields as text (CSV only; empty otherwise), for format detection.
    """

    path: Path
    container: str
    columns: tuple[str, ...]
    first_row: tuple[str, ...] = ()


def sniff(path: Path) -> Sniffed:
    """Identify the container and the column names of a trace file.

    Args:
        path: the file.

    Returns:
        What was found.

    Raises:
        TraceFormatError: the file is empty or has no header.
        FileNotFoundError: no such file.
    """
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
    with open(path, "rb") as raw:
        if raw.read(4) == b"PAR1":
            return Sniffed(path, "parquet", tuple(pq.read_schema(path).names))
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(_SNIFF_BYTES).decode("utf-8", errors="replace").lstrip("\ufeff")
    if not head.strip():
        raise TraceFormatError(f"{path}: empty file (no header, no requests)")
    lines = head.lstrip().splitlines()
    first = lines[0]
    if first.startswith("{"):
        try:
            keys = tuple(json.loads(first))
        except ValueError as err:
            line = head[:len(head) - len(head.lstrip())].count("\n") + 1
            raise TraceFormatError(f"{path}: line {line}: not a JSON object ({err})") from err
        return Sniffed(path, "jsonl", keys)
    rows = list(csv.reader(io.StringIO("\n".join(lines[:2]))))
    return Sniffed(path, "csv", tuple(rows[0]), tuple(rows[1]) if len(rows) > 1 else ())


def read_table(sniffed: Sniffed, columns: tuple[str, ...]) -> pa.Table:
    """Read the named columns of the whole file (CSV as strings).

    Args:
        sniffed: the sniffed file.
        columns: source columns to read (already checked present).

    Returns:
        The raw table.

    Raises:
        TraceFormatError: the file cannot be parsed, or holds no rows.
    """
    table = pa.concat_tables([batch for batch, _, _ in iter_batches(sniffed, columns)] or [_empty(columns)])
    if table.num_rows == 0:
        raise TraceFormatError(f"{sniffed.path}: no requests (the file has a header but no rows)")
    return table


def iter_batches(sniffed: Sniffed, columns: tuple[str, ...], batch_rows: int = 1 << 20,
                 block_bytes: int = _CSV_BLOCK_BYTES) -> Iterator[tuple[pa.Table, int, int]]:
    """Stream the named columns in blocks, holding one block in memory.

    Args:
        sniffed: the sniffed file.
        columns: source columns to read.
        batch_rows: rows per Parquet batch.
        block_bytes: bytes per CSV/JSONL block.

    Yields:
        (block as a table, progress done, progress total); progress counts rows for Parquet and bytes otherwise.

    Raises:
        TraceFormatError: a parse error in the file.
    """
    path = str(sniffed.path)
    rows = 0
    try:
        if sniffed.container == "parquet":
            parquet = pq.ParquetFile(path, pre_buffer=False)  # pre-buffering caches every row group read
            total, done = parquet.metadata.num_rows, 0
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(columns)):
                done += batch.num_rows
                yield pa.Table.from_batches([batch]), done, total
            return
        total = os.path.getsize(path)
        with pa.input_stream(path, compression="detect") as stream:
            reader = _open_text(sniffed, columns, stream, block_bytes)
            for batch in reader:
                rows += batch.num_rows
                yield pa.Table.from_batches([batch]), min(_tell(stream, total), total), total
    except pa.ArrowInvalid as err:
        raise _parse_error(sniffed, _first_line(err), rows) from err


def _open_text(sniffed: Sniffed, columns: tuple[str, ...], stream: pa.NativeFile, block_bytes: int):
    if sniffed.container == "jsonl":
        return pajson.open_json(stream, read_options=pajson.ReadOptions(block_size=block_bytes))
    convert = pacsv.ConvertOptions(include_columns=list(columns), column_types={c: pa.string() for c in columns},
                                   strings_can_be_null=False)
    return pacsv.open_csv(stream, read_options=pacsv.ReadOptions(block_size=block_bytes), convert_options=convert)


def _tell(stream: pa.NativeFile, total: int) -> int:
    try:
        return stream.tell()
    except (OSError, pa.ArrowNotImplementedError):  # compressed streams may not know their position
        return total


def _empty(columns: tuple[str, ...]) -> pa.Table:
    return pa.table({c: pa.array([], pa.string()) for c in columns})


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0]


def _parse_error(sniffed: Sniffed, message: str, rows_before: int) -> TraceFormatError:
    """A parser's message with the row it failed on, in the file's terms, where the row can be found.

    pyarrow's JSON reader names the row within the failing block ("in row 3"), after `rows_before` rows; its CSV
    reader names no row for a row with the wrong number of fields, so the file is read again to find it (only
    on this error path).
    """
    place = None
    block_row = re.search(r" in row (\d+)$", message)
    if sniffed.container == "jsonl" and block_row:
        place = row_place(sniffed, rows_before + int(block_row.group(1)) + 1)
        message = re.sub(r"Column\(/([^)]*)\)", r"field '\1'", message[:block_row.start()])
    elif sniffed.container == "csv" and "columns, got" in message:
        row = _first_ragged_csv_row(sniffed.path)
        place = row_place(sniffed, row) if row is not None else None
    return TraceFormatError(f"{sniffed.path}: {place + ': ' if place else ''}{message}")


def row_place(sniffed: Sniffed, row: int) -> str:
    """Where 1-based data row `row` of the file is, in the file's terms ("line 7", "row 6 (header not counted)").

    Args:
        sniffed: the file.
        row: 1-based among the data rows (what pyarrow reads; blank lines are not rows).

    Returns:
        "line L" for JSON Lines (blank lines counted, as an editor counts them), "row N (header not counted)" for
        CSV, "row N" for Parquet.
    """
    if sniffed.container == "jsonl":
        line = _jsonl_line(sniffed.path, row)
        return f"line {line}" if line is not None else f"row {row}"
    if sniffed.container == "csv":
        return f"row {row} (header not counted)"
    return f"row {row}"


@contextmanager
def located_rows(sniffed: Sniffed) -> Iterator[None]:
    """Turn a `TraceRowError` raised inside into the same message with the row named in the file's terms."""
    try:
        yield
    except TraceRowError as err:
        raise TraceFormatError(f"{err.source}: {row_place(sniffed, err.row)}: {err.detail}") from err


def _text_lines(path: Path) -> Iterator[str]:
    with pa.input_stream(str(path), compression="detect") as stream:
        yield from io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")


def _jsonl_line(path: Path, row: int) -> int | None:
    """The 1-based line of the `row`-th object of a JSON Lines file (blank lines hold none)."""
    seen = 0
    for line_no, line in enumerate(_text_lines(path), start=1):
        seen += bool(line.strip())
        if seen == row:
            return line_no
    return None


def _first_ragged_csv_row(path: Path) -> int | None:
    """The first data row (1-based, header not counted, blank lines skipped) whose field count differs."""
    rows = (r for r in csv.reader(_text_lines(path)) if r)
    header = next(rows, None)
    for n, fields in enumerate(rows, start=1):
        if header is not None and len(fields) != len(header):
            return n
    return None


# Rows per Parquet row group of a written trace (readers stream a file a row group at a time).
ROW_GROUP_ROWS = 1 << 20


def save_trace(trace: Trace, path: Path) -> Path:
    """Write a trace as Parquet, atomically (temp file in the same folder, then rename).

    Args:
        trace: the trace.
        path: destination `.parquet` file.

    Returns:
        The path written.
    """
    write_atomic(path, lambda tmp: pq.write_table(trace.table, tmp, row_group_size=ROW_GROUP_ROWS))
    return path


def save_blocks(blocks: Iterable[pa.Table], path: Path) -> Path:
    """Write a trace given as consecutive blocks of rows as Parquet, a block at a time, atomically.

    With blocks of `ROW_GROUP_ROWS` rows (the last one shorter) the file is the one `save_trace` writes for their
    concatenation, but only a block is in memory at once.

    Args:
        blocks: tables of the trace's columns, in order (at least one).
        path: destination `.parquet` file.

    Returns:
        The path written.
    """
    def write(tmp: str) -> None:
        writer = None
        try:
            for block in blocks:
                writer = writer or pq.ParquetWriter(tmp, block.schema)
                writer.write_table(block, row_group_size=ROW_GROUP_ROWS)
        finally:
            if writer is not None:
                writer.close()

    write_atomic(path, write)
    return path


def write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temp file beside `path`, then rename it into place; on failure leave nothing.

    The file gets the usual permissions (0666 less the umask), not the temp file's 0600.

    Args:
        path: the destination.
        write: writes the whole file to the path it is given.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
