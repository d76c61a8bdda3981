"""A run's logits as a ``ray.data.Dataset``, for analysis at cluster scale (``Run.logits_dataset``).

The scoring backends read the logits model by model with their own checks
(:func:`raypriv.scoring.read.reduce_model`); this is the plain table, for a user's
own per-sample statistics on the cluster's workers
(``analysis/cluster_canary_confidence.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raypriv.cluster import connect
from raypriv.errors import RayprivError
from raypriv.run.store import RunStore

if TYPE_CHECKING:
    import ray.data


def logits_dataset(run_dir: str, paradigm: str | None = None) -> "ray.data.Dataset":
    """A ``ray.data.Dataset`` over a run's logits, one row per (model, sample, query), with the ``paradigm`` partition.

    Columns: ``paradigm`` (from the ``logits/paradigm=<p>/`` folders),
    ``model_id``, ``sample_id``, ``query_id``, ``label``, ``logits`` (float32
    per class) and, in runs with a population set, ``population``.  Join
    ``keep.npy`` and ``audit.parquet`` on ``model_id``/``sample_id`` for
    membership and canaries (``analysis/cluster_canary_confidence.py``).
    ``paradigm``: read only that paradigm's folder.  Starts a local Ray if
    none is running (never a stale cluster that ``/tmp/ray`` still records).
    """
    import ray
    import ray.data

    connect()  # when Ray is not running: RAY_ADDRESS if set, else a fresh local instance
    store = RunStore(run_dir)
    folders = [f"logits/paradigm={paradigm}"] if paradigm is not None else ["logits"]
    files = [store.path(f) for folder in folders for f in store.list_files(folder, ".parquet")]  # no temporaries
    if not files:
        raise RayprivError(f"{store.path(folders[0])} holds no logits files; give the run directory of a `raypriv audit`")
    from ray.data.datasource import Partitioning

    hive = Partitioning("hive", base_dir=store.path("logits"), filesystem=store.fs)  # paradigm=<p> folders
    return ray.data.read_parquet(files, filesystem=store.fs, partitioning=hive)
