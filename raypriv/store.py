"""The run directory and its Parquet schemas (schema version 2).

This module is the one place the on-disk format is defined.  A run directory
holds:

``run.json``
    ``{"schema_version", "protocol_hash", "config_hash", "raypriv_version",
    "created_at", "queries", "n_models", "n_audit", "num_classes",
    "keep_sha256"}`` (hashes: see :mod:`raypriv.experiment`; the protocol hash
    binds the directory; ``keep_sha256``, absent in older runs, checks keep.npy).
``raypriv.lock``
    While an audit runs: its lease, ``{"host", "pid", "token", "acquired_at",
    "heartbeat"}`` (:class:`raypriv.rundir.RunLease`).
``config.yaml``
    The fully resolved config of the latest invocation (defaults and
    command-line flags applied).
``keep.npy``
    ``bool[n_models, n_audit]``: ``keep[m, i]`` is True when audit sample
    ``i`` is in model ``m``'s private training set.
``audit.parquet``  (:data:`AUDIT_SCHEMA`)
    One row per audit sample: ``sample_id`` (0..n_audit-1, the column index
    of ``keep``), ``dataset_index`` (row in the dataset's training split),
    ``true_label``, ``label`` (the label models train on: a wrong one for
    mislabeled canaries), ``canary`` (label != true_label).
``logits/paradigm=<name>/model-<id>.parquet``  (:func:`logits_schema`)
    One row per (audit sample, query) of one model: ``model_id``,
    ``sample_id``, ``query_id`` (index into ``run.json["queries"]``),
    ``label`` and ``logits`` (``float32[num_classes]``, eval mode); with
    ``audit.n_population > 0``, then the population set's rows, flagged by a
    ``population`` column (absent otherwise: audit rows only).  The
    ``paradigm=`` folder is a Hive partition: ``pandas.read_parquet(RUN/"logits")``
    returns it as a ``paradigm`` column.  zstd-compressed, the logits
    byte-stream-split (:data:`LOGITS_WRITE_OPTIONS`); read in row batches by
    :func:`iter_logits`.
``models/<name>/model-<id>.parquet``  (:data:`MODEL_SCHEMA`)
    One row per trained model, written *after* its logits file, whose sha256
    it records (``logits_sha256``; null in rows of older runs): a model is
    complete exactly when this row exists and names its logits file's bytes.  ``models.parquet`` gathers all
    rows once training ends (``pandas.read_parquet(RUN/"models")`` reads
    them while a run is still going).  ``recipe_hash`` fingerprints the
    protocol plus the paradigm's options; ``info`` is a JSON object of facts
    the paradigm reported (e.g. ``{"epsilon": 1.0, "delta": 1e-5}``).
``synthetic/<name>/model-<id>.npz``
    The training set a synthesis paradigm made for that model: ``x`` (uint8
    or float32 images in pixel scale 0..1, or features) and ``y`` (class ids,
    or class probabilities for soft labels).  Not written for paradigms that
    train on the private set itself (``real``).  ``model-<id>.json`` beside it,
    written after it, marks the set complete: ``{"recipe_hash",
    "synth_seconds", "private_size", "info"}``; a shadow-model actor trains
    from the pair when a separate synthesis pool made it.
``scores.parquet``  (:func:`scores_schema`)
    One row per (paradigm, target model, audit sample), in that order:
    ``paradigm``, ``model_id`` (the target), ``sample_id``, ``is_in`` and one
    float32 column per attack of the config (e.g. ``loss``, ``lira_online``,
    ``rmia``), higher meaning "more likely IN".  Written in row groups of whole
    target models (about a million rows each), so it can be read back a group
    or a column at a time (``pyarrow.parquet.ParquetFile(...).iter_batches``).
``metrics.json``, ``metrics.csv``, ``roc.png``, ``summary.txt``
    The attack metrics (see the README for the ``metrics.json`` keys).

Schema history: version 1 stored the attack columns of ``scores.parquet`` as
float64 in one row group; version 2 stores them as float32 (what the streaming
scorer computes; see :mod:`raypriv.attacks`) in row groups.  Nothing else
changed, and readers that select ``scores.parquet`` columns by name read both.
``raypriv audit`` refuses to resume a run directory of another version.

Every file is written to a temporary name and then renamed, so a killed
worker never leaves a half-written file under a final name.  All I/O goes
through ``pyarrow.fs``, so the run directory may be a local path or a URI
that pyarrow understands.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raypriv.errors import RayprivError, write_error

SCHEMA_VERSION = 2
# Version 1 differs only in scores.parquet (float64, one row group), which every scoring
# rewrites, so a version-1 run resumes and is upgraded in place.
READABLE_SCHEMA_VERSIONS = (1, 2)

AUDIT_SCHEMA = pa.schema(
    [
        ("sample_id", pa.int64()),
        ("dataset_index", pa.int64()),
        ("true_label", pa.int64()),
        ("label", pa.int64()),
        ("canary", pa.bool_()),
    ]
)

MODEL_SCHEMA = pa.schema(
    [
        ("paradigm", pa.string()),
        ("model_id", pa.int32()),
        ("seed", pa.int64()),
        ("recipe_hash", pa.string()),
        ("in_count", pa.int32()),  # audit samples IN for this model
        ("private_size", pa.int64()),  # samples in its private set
        ("synthetic_size", pa.int64()),  # samples the audited model trained on
        ("test_acc", pa.float64()),
        ("synth_seconds", pa.float64()),
        ("train_seconds", pa.float64()),
        ("device", pa.string()),
        ("info", pa.string()),  # JSON
        ("status", pa.string()),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        # sha256 of the model's logits file, written in the same row that commits the model; null in rows
        # written before it existed (those are checked by footer and a full read instead).
        ("logits_sha256", pa.string()),
    ]
)


def logits_schema(num_classes: int, population: bool = False) -> pa.Schema:
    """The logits files' schema; ``population`` adds the flag column of runs with a population set."""
    fields = [("model_id", pa.int32()), ("sample_id", pa.int64()), ("query_id", pa.int8()), ("label", pa.int64()),
              ("logits", pa.list_(pa.float32(), num_classes))]
    return pa.schema(fields + [("population", pa.bool_())] if population else fields)


def scores_schema(attacks: list[str]) -> pa.Schema:
    fields = [
        ("paradigm", pa.string()),
        ("model_id", pa.int32()),
        ("sample_id", pa.int64()),
        ("is_in", pa.bool_()),
    ]
    return pa.schema(fields + [(attack, pa.float32()) for attack in attacks])


# Encodings (readers need nothing special): float32 logits and scores look random to a byte compressor, so
# they are byte-stream-split (the bytes of equal significance side by side) before zstd, which stores them in
# about 3.4 bytes instead of pyarrow's default dictionary-then-snappy at 4 to 6.7 (benchmarks/bench_parquet.py).
LOGITS_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["model_id", "query_id", "label"],
    "use_byte_stream_split": ["logits.list.element"],
}


def scores_write_options(attacks: list[str]) -> dict[str, Any]:
    return {"compression": "zstd", "use_dictionary": ["paradigm", "model_id"], "use_byte_stream_split": list(attacks)}


def scores_table(paradigm: str, first_model: int, is_in: np.ndarray, scores: dict[str, np.ndarray]) -> pa.Table:
    """Rows of ``scores.parquet`` for targets ``first_model, first_model + 1, ...``.

    ``is_in`` and each ``scores[attack]`` are ``(n_targets, n_audit)``.
    """
    n_targets, n_audit = is_in.shape
    columns = [
        pa.array(np.full(n_targets * n_audit, paradigm, dtype=object), pa.string()),
        pa.array(np.repeat(np.arange(first_model, first_model + n_targets, dtype=np.int32), n_audit)),
        pa.array(np.tile(np.arange(n_audit, dtype=np.int64), n_targets)),
        pa.array(np.ascontiguousarray(is_in).ravel()),
    ]
    columns += [pa.array(np.ascontiguousarray(score, dtype=np.float32).ravel()) for score in scores.values()]
    return pa.table(columns, schema=scores_schema(list(scores)))


def logits_path(paradigm: str, model_id: int) -> str:
    return f"logits/paradigm={paradigm}/model-{model_id:06d}.parquet"


def model_row_path(paradigm: str, model_id: int) -> str:
    return f"models/{paradigm}/model-{model_id:06d}.parquet"


def synthetic_path(paradigm: str, model_id: int) -> str:
    return f"synthetic/{paradigm}/model-{model_id:06d}.npz"


def synthetic_record_path(paradigm: str, model_id: int) -> str:
    """JSON written after the synthetic set: marks it complete and keeps its timing and info."""
    return f"synthetic/{paradigm}/model-{model_id:06d}.json"


def _versioned(schema: pa.Schema) -> dict:
    metadata = dict(schema.metadata or {})
    metadata[b"raypriv_schema_version"] = str(SCHEMA_VERSION).encode()
    return metadata


def versioned_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the store's version in its metadata, as every table the store writes carries it."""
    return schema.with_metadata(_versioned(schema))


_REWRITE_HINT = "delete it and rerun `raypriv audit` with the same config and --out to recompute it"


def parquet_bytes(table: pa.Table, **parquet_options: Any) -> bytes:
    """``table`` as a Parquet file in memory, stamped with the schema version."""
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(_versioned(table.schema)), buffer, **parquet_options)
    return buffer.getvalue()


class RunStore:
    """Atomic reads and writes of one run directory, local or remote."""

    def __init__(self, uri: str):
        if "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, ValueError, OSError) as exc:
                raise RayprivError(f"cannot open run directory {uri} ({exc}); give a local path or a URI pyarrow supports") from None
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
        """Relative paths of the temporary files a killed writer left (``.tmp-*``, never renamed)."""
        if not self.exists():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        return [info.path[len(self.root) + 1:] for info in infos
                if info.type == pafs.FileType.File and info.base_name.startswith(".tmp-")]

    def delete(self, relative: str) -> None:
        if self.exists(relative):
            self.fs.delete_file(self.path(relative))

    @contextlib.contextmanager
    def _writing(self, relative: str, folder: bool = False, replaces: bool = False) -> Iterator[str]:
        """A temporary path beside ``relative``, renamed to it at the end; on failure deleted, and an OS error
        (full disk, read-only, a file where a folder should be) becomes one RayprivError naming path and fix.
        ``folder``: the temporary is a folder.  ``replaces``: what is at ``relative`` is removed just before
        the rename (``scores.parquet`` is a file from the local scoring backend, a folder from the Ray one)."""
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
        except json.JSONDecodeError as exc:
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
        except ValueError as exc:
            raise RayprivError(f"{self.path(relative)} is corrupt ({exc}); {_REWRITE_HINT}") from None


# ------------------------------------------------------------ per-model results


def audit_table(audit_index: np.ndarray, true_labels: np.ndarray, labels: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "sample_id": np.arange(len(audit_index), dtype=np.int64),
            "dataset_index": audit_index.astype(np.int64),
            "true_label": true_labels.astype(np.int64),
            "label": labels.astype(np.int64),
            "canary": labels != true_labels,
        },
        schema=AUDIT_SCHEMA,
    )


def logits_table(model_id: int, logits: np.ndarray, labels: np.ndarray, population: tuple | None = None) -> pa.Table:
    """Long-format table of one model's ``(n_audit, n_queries, C)`` logits, then ``population``'s (logits, labels)."""
    n_audit, n_queries, num_classes = logits.shape
    parts = [(logits, labels)] + ([population] if population is not None else [])
    values = np.concatenate([part[0].astype(np.float32).reshape(-1) for part in parts])
    sample_ids = np.concatenate([np.repeat(np.arange(len(part[1]), dtype=np.int64), n_queries) for part in parts])
    columns = [pa.array(np.full(len(sample_ids), model_id, dtype=np.int32)), pa.array(sample_ids),
               pa.array(np.tile(np.arange(n_queries, dtype=np.int8), len(sample_ids) // n_queries)),
               pa.array(np.concatenate([np.repeat(part[1].astype(np.int64), n_queries) for part in parts])),
               pa.FixedSizeListArray.from_arrays(pa.array(values), num_classes)]
    if population is not None:  # the flag column
        columns.append(pa.array(np.arange(len(sample_ids)) >= n_audit * n_queries))
    return pa.table(columns, schema=logits_schema(num_classes, population is not None))


def write_model_result(store: RunStore, row: dict[str, Any], logits: np.ndarray, labels: np.ndarray, population=None) -> None:
    """Write a model's logits, then its row naming their sha256: the row commits the model in one rename.

    A row whose checksum does not match the logits file beside it (a later
    write of another recipe, a flipped byte) is not a complete model.
    """
    paradigm, model_id = row["paradigm"], row["model_id"]
    data = parquet_bytes(logits_table(model_id, logits, labels, population), **LOGITS_WRITE_OPTIONS)
    store.write_bytes(logits_path(paradigm, model_id), data)
    row["logits_sha256"] = hashlib.sha256(data).hexdigest()
    store.write_table(model_row_path(paradigm, model_id), pa.Table.from_pylist([row], schema=MODEL_SCHEMA))


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
