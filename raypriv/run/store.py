"""Atomic reads and writes of one run directory, local or remote; the file layout is :mod:`raypriv.run.format`.

:class:`RunStore` writes every file to a temporary name and then renames it,
so a killed worker never leaves a half-written file under a final name.  All
I/O goes through ``pyarrow.fs``, so the run directory may be a local path or
a URI that pyarrow understands.  :func:`write_model_result` commits one
model (its logits, then the row naming their sha256); :func:`iter_logits`
reads one model's logits back in bounded memory, checking them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raypriv.errors import RayprivError, write_error
from raypriv.run.format import (
    LOGITS_WRITE_OPTIONS,
    logits_path,
    logits_table,
    model_row_path,
    model_row_table,
    parquet_bytes,
    versioned_schema,
)

_REWRITE_HINT = "delete it and rerun `raypriv audit` with the same config and --out to recompute it"

# Called before every write to the run directory of that URI (RunStore.uri): the lease's check, installed
# while this process holds the run's lease (raypriv.run.lease.RunLease.check; it raises RunLocked once lost).
GUARDS: dict[str, Callable[[], None]] = {}


class RunStore:
    """Atomic reads and writes of one run directory, local or remote."""

    def __init__(self, uri: str):
        if "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, ValueError, OSError) as exc:
                raise RayprivError(
                    f"cannot open run directory {uri} ({exc}); give a local path or a URI pyarrow supports"
                ) from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
        self.uri = uri if "://" in uri else self.root

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}" if relative else self.root

    def exists(self, relative: str = "") -> bool:
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def is_empty(self, ignore: tuple[str, ...] = ()) -> bool:
        """True if the directory is missing or holds only names in ``ignore``; a file (or a path under one) there is an error."""
        info = self.fs.get_file_info(self.root)
        if info.type == pafs.FileType.NotFound:
            self._check_parents()
            return True
        if info.type != pafs.FileType.Directory:
            raise RayprivError(f"{self.uri} is a file, not a folder; choose a folder (or a new path) for --out")
        entries = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return all(entry.base_name in ignore for entry in entries)

    def _check_parents(self) -> None:
        """Refuse a missing directory that lies under a file (it could never be created)."""
        parent = self.root.rstrip("/")
        while "/" in parent.strip("/"):
            parent = parent.rsplit("/", 1)[0]
            info = self.fs.get_file_info(parent or "/")
            if info.type == pafs.FileType.File:
                raise RayprivError(f"{self.uri} lies under {parent}, which is a file; choose another --out")
            if info.type == pafs.FileType.Directory:
                return

    def list_files(self, directory: str, suffix: str = "") -> list[str]:
        """Relative paths of finished files under ``directory`` (temporaries skipped)."""
        if not self.exists(directory):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(directory), recursive=True))
        start = len(self.root) + 1
        return sorted(
            info.path[start:]
            for info in infos
            if info.type == pafs.FileType.File and info.path.endswith(suffix) and ".tmp-" not in info.base_name
        )

    def temporaries(self) -> list[str]:
        """Relative paths of the temporaries a killed writer left (``.tmp-*``, never renamed): files, and the
        folders of :meth:`dataset_writing` (the Ray backend's ``.tmp-*-scores.parquet/``), not what lies inside them."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        found = sorted((info.path[len(self.root) + 1:], info.type) for info in infos if info.base_name.startswith(".tmp-")
                       and info.type in (pafs.FileType.File, pafs.FileType.Directory))
        folders = tuple(f"{path}/" for path, kind in found if kind == pafs.FileType.Directory)
        return [path for path, _ in found if not path.startswith(folders)]

    def _guard(self) -> None:
        """Stop before writing if this process held the run's lease and lost it (see :data:`GUARDS`)."""
        guard = GUARDS.get(self.uri)
        if guard is not None:
            guard()

    def delete(self, relative: str) -> None:
        self._guard()
        if self.exists(relative):
            self._remove(self.path(relative))  # a file, or a temporary folder (see temporaries)

    @contextlib.contextmanager
    def _writing(self, relative: str, folder: bool = False, replaces: bool = False) -> Iterator[str]:
        """A temporary path beside ``relative``, renamed to it at the end; on failure deleted, and an OS error
        (full disk, read-only, a file where a folder should be) becomes one RayprivError naming path and fix.
        ``folder``: the temporary is a folder.  ``replaces``: what is at ``relative`` is removed just before
        the rename (``scores.parquet`` is a file from the local scoring backend, a folder from the Ray one)."""
        self._guard()
        final = self.path(relative)
        parent = final.rsplit("/", 1)[0]
        temporary = f"{parent}/.tmp-{uuid.uuid4().hex}-{final.rsplit('/', 1)[1]}"
        try:
            self.fs.create_dir(parent, recursive=True)
            if folder:
                self.fs.create_dir(temporary, recursive=True)
            yield temporary
            if replaces:
                self._remove(final)
            self.fs.move(temporary, final)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                self._remove(temporary)
            if isinstance(exc, OSError):
                raise write_error(final, exc) from None
            raise

    def _remove(self, path: str) -> None:
        kind = self.fs.get_file_info(path).type
        if kind != pafs.FileType.NotFound:
            self.fs.delete_dir(path) if kind == pafs.FileType.Directory else self.fs.delete_file(path)

    @contextlib.contextmanager
    def dataset_writing(self, relative: str) -> Iterator[str]:
        """A temporary folder for a Parquet dataset (Ray Data's ``write_parquet``), renamed to ``relative`` at the
        end, replacing what was there (atomic on a local disk; on object stores a folder "rename" copies files)."""
        with self._writing(relative, folder=True, replaces=True) as temporary:
            yield temporary

    def write_bytes(self, relative: str, data: bytes) -> None:
        with self._writing(relative) as temporary, self.fs.open_output_stream(temporary) as stream:
            stream.write(data)

    def read_bytes(self, relative: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(relative)) as stream:
                return stream.read()
        except FileNotFoundError:
            raise RayprivError(f"{self.path(relative)} is missing from the run directory; {_REWRITE_HINT}") from None

    def write_table(self, relative: str, table: pa.Table, **parquet_options: Any) -> None:
        """Write a Parquet file atomically; ``parquet_options`` go to ``pyarrow.parquet.write_table``."""
        self.write_bytes(relative, parquet_bytes(table, **parquet_options))

    @contextlib.contextmanager
    def table_writer(self, relative: str, schema: pa.Schema, replaces: bool = False,
                     **parquet_options: Any) -> Iterator[pq.ParquetWriter]:
        """A ParquetWriter for a large table written in row groups (``writer.write_table`` per group).

        It streams to a temporary file that is renamed to ``relative`` when
        the block ends, so the table never has to fit in memory and a failure
        leaves no file under the final name.  ``replaces``: see :meth:`_writing`.
        """
        schema = versioned_schema(schema)
        with self._writing(relative, replaces=replaces) as temporary, self.fs.open_output_stream(temporary) as stream, \
                pq.ParquetWriter(stream, schema, **parquet_options) as writer:
            yield writer

    def open_parquet(self, relative: str) -> pq.ParquetFile:
        """A Parquet file opened for reading in row groups or batches (random access, nothing read yet)."""
        try:
            source = self.fs.open_input_file(self.path(relative))
        except FileNotFoundError:
            raise RayprivError(f"{self.path(relative)} is missing from the run directory; {_REWRITE_HINT}") from None
        try:
            return pq.ParquetFile(source)
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            source.close()
            raise RayprivError(f"{self.path(relative)} is corrupt or truncated ({exc}); {_REWRITE_HINT}") from None

    def read_table(self, relative: str) -> pa.Table:
        """Read a Parquet file (or a folder of them), or raise a RayprivError saying which file is bad and what to do."""
        folder = self.fs.get_file_info(self.path(relative)).type == pafs.FileType.Directory  # a Ray Data scores.parquet
        source = self.path(relative) if folder else pa.BufferReader(self.read_bytes(relative))
        try:
            return pq.read_table(source, filesystem=self.fs if folder else None)
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            raise RayprivError(f"{self.path(relative)} is corrupt or truncated ({exc}); {_REWRITE_HINT}") from None

    def write_json(self, relative: str, obj: Any) -> None:
        self.write_bytes(relative, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())

    def read_json(self, relative: str) -> Any:
        try:
            return json.loads(self.read_bytes(relative))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # a flipped bit can break the UTF-8 too
            raise RayprivError(f"{self.path(relative)} is not valid JSON ({exc}); {_REWRITE_HINT}") from None

    def write_npy(self, relative: str, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        self.write_bytes(relative, buffer.getvalue())

    def write_npz(self, relative: str, **arrays: np.ndarray) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        self.write_bytes(relative, buffer.getvalue())

    def read_npz(self, relative: str) -> dict[str, np.ndarray]:
        try:
            return dict(np.load(io.BytesIO(self.read_bytes(relative)), allow_pickle=False))
        except (ValueError, OSError) as exc:
            raise RayprivError(f"{self.path(relative)} is corrupt ({exc}); {_REWRITE_HINT}") from None

    def read_npy(self, relative: str) -> np.ndarray:
        try:
            return np.load(io.BytesIO(self.read_bytes(relative)), allow_pickle=False)
        except (ValueError, EOFError, OSError) as exc:  # truncated or empty: EOFError
            raise RayprivError(f"{self.path(relative)} is corrupt ({exc}); {_REWRITE_HINT}") from None

    def sha256(self, relative: str, chunk: int = 1 << 24) -> str:
        """sha256 of a file, streamed; of a folder (the Ray backend's ``scores.parquet``), of its files' bytes in
        name order.  What run.json records to catch a damaged or swapped output."""
        digest = hashlib.sha256()
        info = self.fs.get_file_info(self.path(relative))
        paths = [relative] if info.type != pafs.FileType.Directory else self.list_files(relative)
        for path in paths:
            with self.fs.open_input_stream(self.path(path)) as stream:
                while block := stream.read(chunk):
                    digest.update(block)
        return digest.hexdigest()


# ------------------------------------------------------------ per-model results


def write_model_result(store: RunStore, row: dict[str, Any], logits: np.ndarray, labels: np.ndarray, population=None) -> None:
    """Write a model's logits, then its row naming their sha256: the row commits the model in one rename.

    A row whose checksum does not match the logits file beside it (a later
    write of another recipe, a flipped byte) is not a complete model.
    """
    paradigm, model_id = row["paradigm"], row["model_id"]
    data = parquet_bytes(logits_table(model_id, logits, labels, population), **LOGITS_WRITE_OPTIONS)
    store.write_bytes(logits_path(paradigm, model_id), data)
    row["logits_sha256"] = hashlib.sha256(data).hexdigest()
    table = model_row_table(row)
    row["row_sha256"] = table.column("row_sha256")[0].as_py()
    store.write_table(model_row_path(paradigm, model_id), table)


def _missing_logits(store: RunStore, paradigm: str, model_id: int) -> RayprivError:
    return RayprivError(
        f"{store.path(logits_path(paradigm, model_id))} is missing: model {model_id} of {paradigm} has no logits; "
        "rerun `raypriv audit` with the same config and --out to train it"
    )


def iter_logits(
    store: RunStore, paradigm: str, model_id: int, n_audit: int, n_queries: int, batch_elements: int = 1 << 22,
    n_population: int = 0, population: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One model's logits in row batches: ``(sample_id, query_id, float32[rows, C])`` per batch.

    Reads only the three columns it needs, about ``batch_elements`` logits at
    a time, so memory stays bounded whatever the model's size.  Checks the
    row count, the id ranges and that every (sample, query) pair appears
    exactly once; a missing, corrupt or incomplete file is a RayprivError
    naming the file and the fix.  ``population``: the population set's rows
    (``n_population`` of them, ids into that set) instead of the audit's.
    """
    relative = logits_path(paradigm, model_id)
    if not store.exists(relative):
        raise _missing_logits(store, paradigm, model_id)
    total_rows = (n_audit + n_population) * n_queries
    n_audit = n_population if population else n_audit  # the rows yielded
    expected = n_audit * n_queries

    def bad(reason: str) -> RayprivError:
        return RayprivError(f"{store.path(relative)} {reason}; {_REWRITE_HINT}")

    parquet = store.open_parquet(relative)
    with contextlib.closing(parquet):
        if parquet.metadata.num_rows != total_rows or "logits" not in parquet.schema_arrow.names:
            raise bad(f"has {parquet.metadata.num_rows} rows, expected {total_rows}")
        flagged = "population" in parquet.schema_arrow.names  # rows of a run with a population set
        field = parquet.schema_arrow.field("logits").type
        width = getattr(field, "list_size", 0) or 1
        seen = np.zeros(expected, dtype=np.int64)
        try:
            batches = parquet.iter_batches(
                batch_size=max(1, batch_elements // width),
                columns=["sample_id", "query_id", "logits"] + (["population"] if flagged else []),
            )
            for batch in batches:
                if flagged:  # only the rows of the set asked for
                    batch = batch.filter(pc.equal(batch.column(3), population)).select([0, 1, 2])
                sample = batch.column(0).to_numpy().astype(np.int64, copy=False)
                query = batch.column(1).to_numpy().astype(np.int64, copy=False)
                column = batch.column(2)
                logits = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
                if len(sample) and (sample.min() < 0 or sample.max() >= n_audit or query.min() < 0 or query.max() >= n_queries):
                    raise bad(f"holds sample or query ids outside 0..{n_audit - 1} and 0..{n_queries - 1}")
                seen += np.bincount(sample * n_queries + query, minlength=expected)
                yield sample, query, logits
        except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
            raise bad(f"is corrupt or truncated ({exc})") from None
        if not (seen == 1).all():
            raise bad("does not hold every (sample, query) pair exactly once")
