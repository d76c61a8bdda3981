"""The run directory's lifecycle: create or resume, the manifest, the stored split, completed models, status.

:class:`RunDirectory` is the one reader of a run's own records: ``run.json``
(the manifest), ``config.yaml``, ``keep.npy`` and ``audit.parquet``, and the
one rule for which models are complete (:meth:`RunDirectory.completed`).  The
audit, ``raypriv status`` and the report all go through it.  The file
formats themselves are defined in :mod:`raypriv.run.store`.

A run directory belongs to one protocol (:func:`raypriv.run.fingerprints.protocol_hash`):
a rerun of the same config resumes, a different protocol is refused with
the fields that differ, and every model row carries its paradigm's recipe
hash, so models of changed paradigm options are never mixed in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raypriv import __version__
from raypriv.config import ExperimentConfig, dump_config, from_dict, load_yaml
from raypriv.data import Dataset
from raypriv.errors import RayprivError
from raypriv.run.fingerprints import Fingerprints, differences, protocol_definition
from raypriv.run.format import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, audit_table, logits_path, row_digest
from raypriv.run.lease import LOCK_FILE, RunLease
from raypriv.run.store import RunStore
from raypriv.split import AuditSplit, keep_digest
from raypriv.synth import plugin_identity

log = logging.getLogger("raypriv")

def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of run.json's fields other than ``manifest_sha256`` (canonical JSON)."""
    fields = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


MANIFEST_KEYS = ("schema_version", "protocol_hash")
# Every top-level name raypriv writes in a run directory (raypriv.run.format); anything else is the user's.
RUN_ENTRIES = frozenset({
    "run.json", "config.yaml", "keep.npy", "audit.parquet", "models", "logits", "synthetic", "models.parquet",
    "scores.parquet", "metrics.json", "metrics.csv", "roc.png", "summary.txt", "report", LOCK_FILE,
    "sequential.json",
})  # what every run.json holds, whatever its version
# An until-decided audit's schedule, decisions and looks (raypriv.sequential).  Rebuilt by every rerun from the
# stored models, never read back by the audit; ``status`` reads it to tell a stopped paradigm from a missing one.
SEQUENTIAL_FILE = "sequential.json"
# The outputs run.json checks by sha256 once scoring wrote them (keep.npy has its own keep_sha256).
CHECKED_OUTPUTS = ("audit.parquet", "scores.parquet", "metrics.json")

MODEL_ROW_NAME = re.compile(r"model-(\d{6,})\.parquet")  # run.format.model_row_path's file name


@dataclass
class CompletedScan:
    """What :meth:`RunDirectory.completed` found for one paradigm."""

    complete: dict[int, dict[str, Any]]  # model_id -> its row
    discarded: list[str]  # why some stored files were not accepted
    other_recipe: int = 0  # rows of another recipe (counted only by a read-only scan)


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for i, value in enumerate(ids):
        if start is None:
            start = value
        if i + 1 == len(ids) or ids[i + 1] != value + 1:
            parts.append(f"{start}" if start == value else f"{start}-{value}")
            start = None
    return ", ".join(parts)


def _stored_plugin(row: dict[str, Any]) -> str | None:
    """The plugin class and version a stored model row records (see ShadowTrainer._context), if any."""
    try:
        return json.loads(row.get("info") or "{}").get("plugin")
    except (ValueError, AttributeError):
        return None


class RunDirectory:
    """One run directory (a local path or a pyarrow-filesystem URI)."""

    def __init__(self, uri: str):
        self.store = RunStore(str(uri))
        self.uri = self.store.uri

    # ------------------------------------------------------------ reading

    def exists(self) -> bool:
        return self.store.exists("run.json")

    def require_run(self, what: str = "an audit") -> None:
        if not self.exists():
            raise RayprivError(f"{self.uri} holds no raypriv run (no run.json); give the --out of {what}")

    def manifest(self) -> dict[str, Any]:
        """run.json, checked for its shape; a damaged one is a RayprivError that names the rebuild (``audit`` does it)."""
        try:
            manifest = self.store.read_json("run.json")
            problem = None if isinstance(manifest, dict) else f"it holds {type(manifest).__name__}, not a mapping"
        except RayprivError as exc:
            manifest, problem = None, str(exc).split("; ")[0]
        if problem is None and not all(key in manifest for key in MANIFEST_KEYS):
            problem = f"it lacks {[key for key in MANIFEST_KEYS if key not in manifest]}"
        if problem is None and "manifest_sha256" in manifest and manifest_digest(manifest) != manifest["manifest_sha256"]:
            problem = "its own sha256 differs from the one it records"
        if problem is not None:
            raise RayprivError(
                f"{self.store.path('run.json')} is damaged ({problem}); rerun `raypriv audit --config "
                f"{self.store.path('config.yaml')} --out {self.uri}`: it rebuilds run.json from config.yaml and the stored models"
            )
        return manifest

    def stored_config_raw(self) -> dict[str, Any]:
        """The mapping in the run's config.yaml, else the copy run.json keeps ({} if neither exists).

        An empty, missing or damaged config.yaml is read from run.json's copy
        with a warning (``audit`` then writes config.yaml again).
        """
        problem = "it is missing"
        if self.store.exists("config.yaml"):
            try:
                raw = load_yaml(self.store.read_bytes("config.yaml"), self.store.path("config.yaml"))
                if raw:
                    return raw
                problem = "it is empty"
            except RayprivError as exc:
                problem = str(exc)
        copy = None
        with contextlib.suppress(RayprivError):
            copy = self.manifest().get("config") if self.exists() else None
        if isinstance(copy, dict) and copy:
            log.warning("%s: %s; read the copy in run.json instead", self.store.path("config.yaml"), problem)
            return copy
        if problem == "it is missing" and not self.exists():
            return {}
        raise RayprivError(
            f"{self.store.path('config.yaml')}: {problem}, and run.json keeps no copy (a run from before copies); rerun "
            f"`raypriv audit --config YOUR.yaml --out {self.uri}` with the config that made it to rewrite it"
        )

    def stored_config(self) -> ExperimentConfig:
        return from_dict(self.stored_config_raw())

    def keep(self) -> np.ndarray:
        """keep.npy, checked against the hash run.json records (runs made before the hash: unchecked)."""
        recorded = self.manifest().get("keep_sha256") if self.exists() else None
        try:
            keep = self.store.read_npy("keep.npy")
            intact = recorded is None or keep_digest(keep) == recorded
        except RayprivError:
            intact = False
        if not intact:
            raise RayprivError(
                f"{self.store.path('keep.npy')} is corrupt (it does not match the hash in run.json). It is drawn "
                f"from the seed: rerun `raypriv audit --config {self.store.path('config.yaml')} --out {self.uri}` "
                "to rebuild it"
            )
        return keep

    def lease(self, force: bool = False) -> RunLease:
        """Take the run's exclusive lease (see :mod:`raypriv.lease`); ``force`` breaks another holder's."""
        return RunLease(self.store, force).acquire()

    def audit(self) -> pd.DataFrame:
        """audit.parquet in sample_id order."""
        return self.store.read_table("audit.parquet").to_pandas().sort_values("sample_id").reset_index(drop=True)

    # ------------------------------------------------------ create or resume

    def check_resumable(self, config: ExperimentConfig, fingerprints: Fingerprints) -> None:
        """Refuse a directory that holds another protocol, another schema, or files that are not a run.

        ``fingerprints``: the config's, computed once by the driver.
        """
        store = self.store
        if self.exists():
            try:
                manifest = self.manifest()
            except RayprivError as exc:  # rebuilt by record() if what the run holds is this config's
                manifest = self._rebuildable_manifest(config, fingerprints, exc)
            if manifest.get("schema_version") not in READABLE_SCHEMA_VERSIONS:
                raise RayprivError(
                    f"{store.uri} was written with store schema {manifest.get('schema_version')}, this raypriv "
                    f"writes schema {SCHEMA_VERSION}; use a new --out"
                )
            digest = fingerprints.protocol
            if manifest.get("protocol_hash") != digest:
                stored = self.stored_config_raw()
                found = differences(protocol_definition(from_dict(stored)), protocol_definition(config)) if stored else []
                detail = "; ".join(found[:8]) or "the stored config could not be read"
                raise RayprivError(
                    f"{store.uri} holds a run of a different config (protocol {manifest.get('protocol_hash')}, this "
                    f"config is {digest}; differences: {detail}). Use a new --out, or delete that directory to start over"
                )
        elif not store.is_empty(ignore=(LOCK_FILE,)):
            raise RayprivError(f"{store.uri} is not empty and holds no raypriv run (no run.json); choose a new or empty --out")

    def _rebuildable_manifest(self, config: ExperimentConfig, fingerprints: Fingerprints, damage: RayprivError
                              ) -> dict[str, Any]:
        """For a damaged run.json: the manifest to check against, if the run's config.yaml is this config's protocol.

        The stored models are then still checked one by one (recipe hash,
        checksums) and keep.npy against the seed's draw, so a rebuilt run.json
        can only describe what the directory really holds.
        """
        try:
            stored = self.stored_config_raw()
            same = bool(stored) and Fingerprints.of(from_dict(stored)).protocol == fingerprints.protocol
        except RayprivError:
            same = False
        if not same:
            raise damage
        log.warning("%s is damaged; rebuilding it from config.yaml (the same protocol as this config)",
                    self.store.path("run.json"))
        return {"schema_version": SCHEMA_VERSION, "protocol_hash": fingerprints.protocol}

    def record(self, config: ExperimentConfig, fingerprints: Fingerprints, dataset: Dataset, split: AuditSplit) -> None:
        """Write (or refresh) the manifest and config, and store the split; check a stored split is this one."""
        store = self.store
        manifest = {}
        if self.exists():
            with contextlib.suppress(RayprivError):  # damaged: check_resumable allowed the rebuild
                manifest = self.manifest()
        rebuild = False
        if store.exists("keep.npy"):
            recorded = manifest.get("keep_sha256")
            try:
                matches = np.array_equal(store.read_npy("keep.npy"), split.keep)
            except RayprivError:
                matches = False
            if not matches and recorded == keep_digest(split.keep):
                # The file is corrupt but the seed redraws the very matrix run.json recorded.
                log.warning("%s is corrupt; rebuilt from the seed (it matches the recorded hash)", store.path("keep.npy"))
                rebuild = True
            elif not matches:
                raise RayprivError(
                    f"{store.path('keep.npy')} differs from the membership matrix this config draws "
                    "(corrupt, or made by another raypriv version, and run.json records no hash to rebuild it "
                    "from); use a new --out"
                )
        created = manifest.get("created_at")
        for relative in store.temporaries():  # left by a writer killed mid-write; we hold the lease, so none is live
            if not relative.endswith(LOCK_FILE):  # but our own heartbeat's may be
                store.delete(relative)
        store.write_bytes("config.yaml", dump_config(config).encode())
        self.write_manifest(
            {
                "schema_version": SCHEMA_VERSION,
                "protocol_hash": fingerprints.protocol,
                "config_hash": fingerprints.config,
                "raypriv_version": __version__,
                "created_at": created or datetime.now(timezone.utc).isoformat(),
                "queries": list(config.queries),
                "n_models": config.n_models,
                "n_audit": config.audit.n_audit,
                "num_classes": dataset.num_classes,
                "keep_sha256": keep_digest(split.keep),
                "config": config.to_dict(),  # config.yaml's copy: each of the two rebuilds the other
            },
        )
        if rebuild or not store.exists("keep.npy"):
            store.write_npy("keep.npy", split.keep)
        expected_audit = audit_table(split.audit_index, split.true_labels, split.audit_labels)
        intact = False
        if store.exists("audit.parquet"):
            with contextlib.suppress(RayprivError, KeyError, pa.ArrowException):
                intact = store.read_table("audit.parquet").select(expected_audit.column_names).equals(expected_audit)
            if not intact:  # damaged, or another run's: the seed redraws it
                log.warning("%s is damaged or another run's; rebuilt from the seed", store.path("audit.parquet"))
        if not intact:
            store.write_table("audit.parquet", expected_audit)

    # ------------------------------------------------------ the outputs' checksums

    def record_outputs(self) -> None:
        """Add the sha256 of every finished output (:data:`CHECKED_OUTPUTS`) to run.json, written last, atomically.

        Called once scoring has written them; :meth:`damaged_outputs` checks
        them before anything is read back (``report``, ``load_run``, ``status``).
        """
        store = self.store
        manifest = self.manifest()
        manifest["outputs_sha256"] = {name: store.sha256(name) for name in CHECKED_OUTPUTS if store.exists(name)}
        self.write_manifest(manifest)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """run.json, atomically, with the sha256 of its own other fields (``manifest_sha256``), so a flipped bit in
        it is damage that audit rebuilds, not another run's protocol that it refuses."""
        self.store.write_json("run.json", {**manifest, "manifest_sha256": manifest_digest(manifest)})

    def damaged_outputs(self) -> list[str]:
        """The outputs whose bytes differ from the sha256 run.json records (unrecorded ones: runs before checksums)."""
        recorded = self.manifest().get("outputs_sha256")
        if not isinstance(recorded, dict):
            return []
        return [name for name, digest in recorded.items()
                if name in CHECKED_OUTPUTS and (not self.store.exists(name) or self.store.sha256(name) != digest)]

    # ------------------------------------------------------ completed models

    def scan(self, paradigm: str, recipe: str, expected_rows: int, repair: bool = True) -> CompletedScan:
        """The models of ``paradigm`` already complete for ``recipe``: the one rule for "complete".

        A model counts as complete when its row exists, names ``recipe``, and
        its logits file matches the sha256 the row records (rows written
        before checksums: decodes in full) with the expected number of rows.  With
        ``repair`` (the audit), broken files are deleted so the model is
        retrained, and a model of another recipe (the paradigm's options
        changed) is an error: mixing recipes would corrupt the attack, and
        deleting them silently would lose work.  Without it (``status``)
        nothing is changed and other recipes are counted.
        """
        store = self.store
        complete: dict[int, dict[str, Any]] = {}
        discarded: list[str] = []
        other = 0
        for relative in store.list_files(f"models/{paradigm}", ".parquet"):
            name = MODEL_ROW_NAME.fullmatch(relative.rsplit("/", 1)[-1])
            if name is None:  # a copy made by hand ("model-000003 (1).parquet"), an editor's backup, ...
                log.warning("ignoring %s: not a file raypriv writes (model rows are named model-NNNNNN.parquet)",
                            store.path(relative))
                continue
            model_id = int(name.group(1))
            culprit = relative
            try:
                row = store.read_table(relative).to_pylist()[0]
                if row.get("row_sha256") and row_digest(row) != row["row_sha256"]:
                    raise RayprivError("the row's own sha256 differs from the one it records (damaged)")
                if row.get("paradigm") != paradigm or row.get("model_id") != model_id:
                    raise RayprivError(
                        f"the row names {row.get('paradigm')!r} model {row.get('model_id')!r}, not its own file's "
                        f"{paradigm!r} model {model_id} (damaged)"
                    )
                culprit = logits_path(paradigm, model_id)
                if not store.exists(culprit):
                    raise RayprivError("the logits file is missing")
                data = store.read_bytes(culprit)
                if row.get("logits_sha256"):
                    if hashlib.sha256(data).hexdigest() != row["logits_sha256"]:
                        raise RayprivError("its sha256 differs from the one its model row records (corrupt or replaced)")
                    rows = pq.read_metadata(pa.BufferReader(data)).num_rows
                else:  # a row from before checksums: decode every page instead
                    rows = pq.read_table(pa.BufferReader(data)).num_rows
                if rows != expected_rows:
                    raise RayprivError(f"it has {rows} rows, expected {expected_rows}")
            except (RayprivError, pa.ArrowException, OSError, IndexError, KeyError) as exc:
                if not repair:
                    continue  # a broken row is retrained on resume; it is not complete
                reason = str(exc).split("; delete it")[0]
                discarded.append(f"{store.path(culprit)}: {reason}; model {model_id} of {paradigm} will be retrained")
                store.delete(relative)
                store.delete(logits_path(paradigm, model_id))
                continue
            if row["recipe_hash"] != recipe:
                if not repair:
                    other += 1
                    continue
                raise self._other_recipe(paradigm, row["recipe_hash"], recipe)
            complete[int(row["model_id"])] = row
        return CompletedScan(complete, discarded, other)

    def _other_recipe(self, paradigm: str, found: str, recipe: str, stored_plugin: str | None = None) -> RayprivError:
        store = self.store
        plugin = plugin_identity(paradigm)
        cause = "its paradigm_options changed"
        if plugin is not None:  # a plugin's class and version are part of its recipe
            now = " ".join(filter(None, (plugin["class"], plugin["distribution"], plugin["version"])))
            cause = (
                "its paradigm_options or its plugin changed "
                f"(the stored models were made by {stored_plugin or 'another version'}, "
                f"this config runs {now}; models of two plugin versions are never mixed)"
            )
        return RayprivError(
            f"{store.uri} holds {paradigm} models of another recipe ({found}, this config gives "
            f"{recipe}): {cause}. Use a new --out, or delete "
            f"{store.path('models/' + paradigm)} and {store.path('logits/paradigm=' + paradigm)} to retrain it"
        )

    def check_recipes(self, fingerprints: Fingerprints) -> None:
        """Refuse, before anything is written, a run holding models of another recipe of a paradigm of the config."""
        for paradigm, recipe in fingerprints.recipes.items():
            for relative in self.store.list_files(f"models/{paradigm}", ".parquet"):
                try:
                    row = self.store.read_table(relative).to_pylist()[0]
                    found = row["recipe_hash"]
                except (RayprivError, pa.ArrowException, KeyError, IndexError):
                    continue  # a broken row is discarded and retrained later
                if row.get("row_sha256") and row_digest(row) != row["row_sha256"]:
                    continue  # a damaged row (its recipe hash may be the damage): retrained, not blamed on the options
                if found != recipe:
                    raise self._other_recipe(paradigm, found, recipe, _stored_plugin(row))

    def unknown_entries(self) -> list[str]:
        """Top-level names in the run directory that raypriv never writes (ignored by every reader, never deleted)."""
        import pyarrow.fs as pafs

        entries = self.store.fs.get_file_info(pafs.FileSelector(self.store.root, recursive=False))
        return sorted(entry.base_name for entry in entries
                      if entry.base_name not in RUN_ENTRIES and not entry.base_name.startswith(".tmp-"))

    def completed(self, config: ExperimentConfig, fingerprints: Fingerprints, repair: bool = True
                  ) -> tuple[dict[tuple[str, int], dict[str, Any]], list[str]]:
        """Rows of the models already stored for this config, keyed (paradigm, model id), and what was discarded.

        Unknown files in the run directory are ignored, with a warning (:meth:`unknown_entries`)."""
        if repair:
            for name in self.unknown_entries():
                log.warning("ignoring %s: not a file raypriv writes", self.store.path(name))
        expected_rows = (config.audit.n_audit + config.audit.n_population) * len(config.queries)
        complete: dict[tuple[str, int], dict[str, Any]] = {}
        discarded: list[str] = []
        for paradigm in config.paradigms:
            found = self.scan(paradigm, fingerprints.recipes[paradigm], expected_rows, repair)
            discarded += found.discarded
            complete.update({(paradigm, m): row for m, row in found.complete.items() if m < config.n_models})
        return complete, discarded

    # ------------------------------------------------------------ status

    def sequential_stops(self) -> dict[str, tuple[int, str]]:
        """``{paradigm: (models used, decision)}`` of an until-decided audit's decided paradigms, from
        ``sequential.json``; empty for a fixed budget, or when the file is absent or unreadable (a rerun rebuilds it)."""
        if not self.store.exists(SEQUENTIAL_FILE):
            return {}
        try:
            paradigms = self.store.read_json(SEQUENTIAL_FILE)["paradigms"]
            return {name: (int(entry["models"]), str(entry["state"])) for name, entry in paradigms.items()
                    if entry["state"] != "open"}
        except (RayprivError, KeyError, TypeError, ValueError, AttributeError):
            return {}

    def status(self, config: ExperimentConfig | None = None) -> str:
        """What the directory holds: complete and missing models, and whether ``config`` matches it."""
        self.require_run()
        manifest = self.manifest()
        stored = self.stored_config()
        lines = [
            f"run {self.uri}: created {manifest.get('created_at')}, schema {manifest.get('schema_version')}, "
            f"protocol {manifest.get('protocol_hash')}",
        ]
        holder = RunLease(self.store).holder()
        if holder is not None:
            age = time.time() - float(holder.get("heartbeat", 0))
            lines.append(f"lease: held by {holder.get('host', '?')} pid {holder.get('pid', '?')} (heartbeat {age:.0f}s ago; "
                         f"an audit is running, or was killed: a stale lease is taken over when rerun)")
        if config is None:
            config = stored
            lines.append("config: the stored config.yaml (pass --config to check another)")
        elif Fingerprints.of(config).protocol != manifest.get("protocol_hash"):
            found = "; ".join(differences(protocol_definition(stored), protocol_definition(config))[:8])
            lines.append(
                f"config: DOES NOT MATCH this run (differences: {found}); `raypriv audit` will refuse it. "
                "The run's own config.yaml holds:"
            )
            config = stored
        else:
            lines.append("config: matches this run's protocol")
        total_missing = 0
        name_width = max(10, *map(len, config.paradigms))
        expected_rows = (config.audit.n_audit + config.audit.n_population) * len(config.queries)
        recipes = Fingerprints.of(config).recipes
        stopped = self.sequential_stops()
        for paradigm in config.paradigms:
            found = self.scan(paradigm, recipes[paradigm], expected_rows, repair=False)
            done = sorted(m for m in found.complete if m < config.n_models)
            used, state = stopped.get(paradigm, (config.n_models, ""))
            missing = sorted(set(range(used)) - set(done))
            total_missing += len(missing)
            note = f"; {found.other_recipe} models of another recipe (options changed)" if found.other_recipe else ""
            if state and not missing:
                note += f"; stopped after {used} models: {state} (until-decided, sequential.json)"
            lines.append(
                f"  {paradigm:<{name_width}} {len(done):>5}/{config.n_models} complete"
                + (f"; missing: {_ranges(missing)}" if missing else "")
                + note
            )
        if total_missing:
            lines.append(
                f"{total_missing} models missing: rerun `raypriv audit --config {self.store.path('config.yaml')} "
                f"--out {self.uri}` to finish"
            )
        else:
            damaged = self.damaged_outputs()
            if damaged:
                state = (f"but {', '.join(damaged)} differ from the sha256 run.json records (damaged): rerun "
                         "`raypriv audit` with this run's config and --out to rebuild them from the stored models")
            elif not self.store.exists("metrics.json"):
                state = "attacks not yet computed: rerun `raypriv audit` to score"
            else:
                state = "metrics.json is written"
            lines.append("all models complete; " + state)
        return "\n".join(lines) + "\n"
