"""The on-disk format of a run directory (schema version 2): its files, their schemas and paths.

This module is the one place the format is defined; :mod:`raypriv.run.store`
reads and writes the files, atomically.  A run directory holds:

``run.json``
    ``{"schema_version", "protocol_hash", "config_hash", "raypriv_version",
    "created_at", "queries", "n_models", "n_audit", "num_classes",
    "keep_sha256"}`` (hashes: see :mod:`raypriv.run.fingerprints`; the protocol hash
    binds the directory; ``keep_sha256``, absent in older runs, checks keep.npy).
``raypriv.lock``
    While an audit runs: its lease, ``{"host", "pid", "token", "acquired_at",
    "heartbeat"}`` (:class:`raypriv.run.lease.RunLease`).
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
    ``rmia``), higher meaning "more likely IN"; then one per release attack
    (``release_*``, :mod:`raypriv.release`; null for a paradigm that releases
    no synthetic set).  The schema's metadata ``raypriv_threat_models`` maps
    each attack column to its threat model (``model`` or ``release``).  Written in row groups of whole
    target models (about a million rows each), so it can be read back a group
    or a column at a time (``pyarrow.parquet.ParquetFile(...).iter_batches``).
``metrics.json``, ``metrics.csv``, ``roc.png``, ``summary.txt``
    The attack metrics (see the README for the ``metrics.json`` keys).

Schema history: version 1 stored the attack columns of ``scores.parquet`` as
float64 in one row group; version 2 stores them as float32 (what the streaming
scorer computes; see :mod:`raypriv.attacks`) in row groups.  Nothing else
changed, and readers that select ``scores.parquet`` columns by name read both.
``raypriv audit`` refuses to resume a run directory of another version.

Every file is written to a temporary name and then renamed
(:class:`raypriv.run.store.RunStore`), so a killed worker never leaves a
half-written file under a final name.
"""


from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
        # sha256 of the row itself (every other field, :func:`row_digest`): a flipped bit in test_acc or
        # recipe_hash is caught, not reported.  Null in rows written before it existed (unchecked).
        ("row_sha256", pa.string()),
    ]
)


def row_digest(row: dict[str, Any]) -> str:
    """sha256 of a model row's fields other than ``row_sha256``, as read back from Parquet (``to_pylist``)."""
    fields = {name: row.get(name) for name in MODEL_SCHEMA.names if name != "row_sha256"}
    canonical = json.dumps(fields, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def model_row_table(row: dict[str, Any]) -> pa.Table:
    """One model's row as the one-row table written to ``models/<name>/model-<id>.parquet``, its checksum filled in."""
    table = pa.Table.from_pylist([{**row, "row_sha256": None}], schema=MODEL_SCHEMA)
    digest = row_digest(table.to_pylist()[0])  # the values exactly as a reader will see them
    return table.set_column(MODEL_SCHEMA.get_field_index("row_sha256"), "row_sha256", pa.array([digest], pa.string()))


def logits_schema(num_classes: int, population: bool = False) -> pa.Schema:
    """The logits files' schema; ``population`` adds the flag column of runs with a population set."""
    fields = [("model_id", pa.int32()), ("sample_id", pa.int64()), ("query_id", pa.int8()), ("label", pa.int64()),
              ("logits", pa.list_(pa.float32(), num_classes))]
    return pa.schema(fields + [("population", pa.bool_())] if population else fields)


def threat_model_of(attack: str) -> str:
    """An attack column's threat model: ``release`` for the release attacks (named ``release_*``), else ``model``."""
    return "release" if attack.startswith("release_") else "model"


def scores_schema(attacks: list[str]) -> pa.Schema:
    """``scores.parquet``'s schema for these attack columns; its metadata maps each to its threat model."""
    fields = [
        ("paradigm", pa.string()),
        ("model_id", pa.int32()),
        ("sample_id", pa.int64()),
        ("is_in", pa.bool_()),
    ]
    metadata = {b"raypriv_threat_models": json.dumps({a: threat_model_of(a) for a in attacks}).encode()}
    return pa.schema(fields + [(attack, pa.float32()) for attack in attacks], metadata=metadata)


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


def scores_table(paradigm: str, first_model: int, is_in: np.ndarray, scores: dict[str, np.ndarray],
                 columns: list[str] | None = None) -> pa.Table:
    """Rows of ``scores.parquet`` for targets ``first_model, first_model + 1, ...``.

    ``is_in`` and each ``scores[attack]`` are ``(n_targets, n_audit)``.
    ``columns``: the file's attack columns (default: ``scores``' own); one
    without scores here is null (a release attack on a paradigm that
    releases no synthetic set).
    """
    columns = list(scores) if columns is None else columns
    n_targets, n_audit = is_in.shape
    fixed = [
        pa.array(np.full(n_targets * n_audit, paradigm, dtype=object), pa.string()),
        pa.array(np.repeat(np.arange(first_model, first_model + n_targets, dtype=np.int32), n_audit)),
        pa.array(np.tile(np.arange(n_audit, dtype=np.int64), n_targets)),
        pa.array(np.ascontiguousarray(is_in).ravel()),
    ]
    arrays = [pa.array(np.ascontiguousarray(scores[name], dtype=np.float32).ravel()) if name in scores
              else pa.nulls(n_targets * n_audit, pa.float32()) for name in columns]
    return pa.table(fixed + arrays, schema=scores_schema(columns))


def logits_path(paradigm: str, model_id: int) -> str:
    return f"logits/paradigm={paradigm}/model-{model_id:06d}.parquet"


def model_row_path(paradigm: str, model_id: int) -> str:
    return f"models/{paradigm}/model-{model_id:06d}.parquet"


def synthetic_path(paradigm: str, model_id: int) -> str:
    return f"synthetic/{paradigm}/model-{model_id:06d}.npz"


def synthetic_record_path(paradigm: str, model_id: int) -> str:
    """JSON written after the synthetic set: marks it complete and keeps its timing and info."""
    return f"synthetic/{paradigm}/model-{model_id:06d}.json"


def versioned_metadata(schema: pa.Schema) -> dict:
    """``schema``'s metadata with the store's schema version added."""
    metadata = dict(schema.metadata or {})
    metadata[b"raypriv_schema_version"] = str(SCHEMA_VERSION).encode()
    return metadata


def versioned_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` with the store's version in its metadata, as every table the store writes carries it."""
    return schema.with_metadata(versioned_metadata(schema))


def parquet_bytes(table: pa.Table, **parquet_options: Any) -> bytes:
    """``table`` as a Parquet file in memory, stamped with the schema version."""
    buffer = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(versioned_metadata(table.schema)), buffer, **parquet_options)
    return buffer.getvalue()


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
