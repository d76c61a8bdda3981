"""Reliability against a hostile environment (part 5 of "Nothing silently wrong"): one test per probe.

Each test reproduces one failure and fails without its fix: a dead
``RAY_ADDRESS``, SIGTERM in Ray mode, a Ray temporary folder left by kill -9,
a YAML alias bomb, a full ``TMPDIR``, an experiment ``name`` that is huge or
holds mathtext, an external command flooding stdout, and a run directory
that ships a plugin module.  Tiny digits audits, without Ray except where Ray
is the point; ``finished`` is the session's one finished run, copied by the
tests that change it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from raypriv.cli import main
from raypriv.config import from_dict as config_from_dict
from raypriv.driver import run_audit
from raypriv.run.store import RunStore
from tests.conftest import cli_error, tiny_config_dict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(tiny_run):
    """One finished tiny run (the session's ``tiny_run``): (its directory, its raw config)."""
    return tiny_run.path, tiny_run.raw


def _copy(finished, destination: Path) -> tuple[Path, dict]:
    source, raw = finished
    shutil.copytree(source, destination)
    return destination, {**raw, "out_dir": str(destination)}


def _write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


# 1. A dead RAY_ADDRESS: one error line within 30 s, not a retry every 41 s.


def test_a_dead_ray_address_is_one_error_line_within_30s(tmp_path):
    config = _write_config(tmp_path / "c.yaml", tiny_config_dict(tmp_path / "run"))
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "raypriv.cli", "audit", "--config", str(config), "--quiet"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env(RAY_ADDRESS=address))
    except subprocess.TimeoutExpired:
        pytest.fail("the audit hung on a dead RAY_ADDRESS")
    elapsed = time.monotonic() - start
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert elapsed < 30, elapsed
    assert address in errors[0] and "RAY_ADDRESS" in errors[0] and "unset RAY_ADDRESS" in errors[0]


# 2. SIGTERM in Ray mode: a clean stop (143), finished models kept, and a rerun resumes.


@pytest.mark.slow
def test_sigterm_in_ray_mode_stops_cleanly_with_143_and_the_rerun_resumes(tmp_path, own_ray):
    out = tmp_path / "run"
    raw = tiny_config_dict(out, **{"train.epochs": 30, "ray.num_actors": 1})
    config = _write_config(tmp_path / "c.yaml", raw)
    audit = subprocess.Popen([sys.executable, "-m", "raypriv.cli", "audit", "--config", str(config), "--quiet"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 240
    while not list((out / "models" / "real").glob("model-*.parquet")) and audit.poll() is None:
        assert time.monotonic() < deadline, "no model finished in 240 s"
        time.sleep(0.2)
    assert audit.poll() is None, "the audit finished before it could be stopped; make it slower"
    audit.send_signal(signal.SIGTERM)
    _, stderr = audit.communicate(timeout=120)
    assert audit.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and "*** SIG" not in stderr and "Stack trace" not in stderr, stderr[-3000:]
    assert "raypriv: terminated; rerun the same command to resume" in stderr.splitlines()
    kept = len(list((out / "models" / "real").glob("model-*.parquet")))
    assert 1 <= kept < 8
    rerun = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)  # resumes: trains only the rest
    assert rerun.trained_now == 8 - kept


# 3. The Ray backend's temporary scores folder, left by kill -9, is removed by the rerun.


def test_a_leftover_temporary_scores_folder_is_removed_on_rerun(finished, tmp_path):
    out, raw = _copy(finished, tmp_path / "run")
    left = out / ".tmp-0123456789abcdef0123456789abcdef-scores.parquet"  # what dataset_writing makes
    left.mkdir()
    (left / "part-000-000000-x.parquet").write_bytes(b"half a file")
    (out / "models" / ".tmp-feedface-model-1.parquet").write_bytes(b"half")
    store = RunStore(str(out))
    assert sorted(store.temporaries()) == [left.name, "models/.tmp-feedface-model-1.parquet"]  # not the folder's files
    result = run_audit(config_from_dict(raw), use_ray=False, show_progress=False)
    assert result.trained_now == 0
    assert not left.exists() and not list(out.rglob(".tmp-*"))


# 4. A YAML alias bomb is refused at once, without expanding it.


def test_a_yaml_alias_bomb_is_refused_fast_with_one_line(tmp_path, capsys):
    rows = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    rows += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\nname: *i\n")
    assert len(bomb.read_bytes()) < 500
    start = time.monotonic()
    line = cli_error(capsys, ["audit", "--config", str(bomb)])
    assert time.monotonic() - start < 2
    assert "YAML anchors and aliases (&, *) are not supported" in line and "write the values out" in line
    assert len(line) < 500
    plain = tmp_path / "anchor.yaml"  # an anchor alone is refused too: nothing it could name is expanded
    plain.write_text("train: &t {epochs: 2}\n")
    assert "anchors and aliases" in cli_error(capsys, ["audit", "--config", str(plain)])


# 5. A full TMPDIR on the Ray path: one error line, not a traceback after 30 s.


def _full_filesystem(tmp_path: Path, monkeypatch) -> Path:
    """A folder on a full file system: a 1 MiB tmpfs filled up where this process may mount one, else a folder
    whose free space ``shutil.disk_usage`` reports as 0."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if mounted:
        with open(folder / "fill", "wb") as fill:
            try:
                while True:
                    fill.write(b"\0" * 65536)
                    fill.flush()
            except OSError:
                pass
        return folder
    real = shutil.disk_usage

    def disk_usage(path):
        usage = real(path)
        return usage._replace(free=0) if str(path).startswith(str(folder)) else usage

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    return folder


def test_a_full_tmpdir_on_the_ray_path_is_one_error_line(tmp_path, capsys, monkeypatch, own_ray):
    config = _write_config(tmp_path / "c.yaml", tiny_config_dict(tmp_path / "run"))
    full = _full_filesystem(tmp_path, monkeypatch)
    try:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        monkeypatch.delenv("RAY_TMPDIR", raising=False)
        monkeypatch.setenv("TMPDIR", str(full))
        start = time.monotonic()
        line = cli_error(capsys, ["audit", "--config", str(config), "--quiet"])
        assert time.monotonic() - start < 25
        assert str(full) in line and "MiB free" in line and "TMPDIR" in line
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)


# 6. The experiment's name: bounded and printable; one holding "$" plots as written.


def test_a_huge_or_unprintable_name_is_refused(tmp_path, capsys):
    for name, message in (("x" * 1_000_000, "has 1000000 characters; give a name of at most 200"),
                          ("two\nlines", "non-printable characters")):
        config = _write_config(tmp_path / "c.yaml", {**tiny_config_dict(tmp_path / "run"), "name": name})
        line = cli_error(capsys, ["audit", "--config", str(config), "--no-ray", "--quiet"])
        assert message in line and len(line) < 400


def test_a_name_holding_mathtext_still_draws_roc_png(finished, tmp_path, capsys):
    out, raw = _copy(finished, tmp_path / "run")  # name is no part of the protocol: the rerun only scores
    (out / "roc.png").unlink()
    config = _write_config(tmp_path / "c.yaml", {**raw, "name": r"$\frac{1}{$"})
    assert main(["audit", "--config", str(config), "--no-ray", "--quiet"]) == 0, capsys.readouterr().err
    assert (out / "roc.png").read_bytes().startswith(b"\x89PNG")


# 7. An external command flooding stdout: its output is kept as a bounded tail, not in memory.

def test_an_external_command_flooding_stdout_holds_bounded_memory(tmp_path):
    from raypriv.errors import ModelFailed
    from raypriv.synth.external import ExternalCommand
    from raypriv.synth.options import ExternalOptions

    flood = [sys.executable, "-c", "import sys\nb = b'x' * (1 << 20)\nfor _ in range(50): sys.stdout.buffer.write(b)\n"
             "sys.stderr.write('e' * 300000 + 'END')\nsys.exit(3)"]  # 50 MiB to stdout, 300 kB to stderr
    paradigm = ExternalCommand(ExternalOptions(command=flood, timeout_s=120))
    tracemalloc.start()  # every Python allocation, the pipe readers' too: communicate() would hold all 50 MiB
    try:
        with pytest.raises(ModelFailed, match="exited with status 3") as failed:
            paradigm._run(flood, str(tmp_path), "external model 0")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB held"
    message = str(failed.value)
    assert message.endswith("END") and len(message) < 3000


# 8. status and report in an untrusted run directory import no plugin module it ships.


def test_status_and_report_import_no_plugin_module_without_trust_plugins(finished, tmp_path):
    out, _ = _copy(finished, tmp_path / "run")
    marker, shadow = tmp_path / "plugin-imported", tmp_path / "yaml-shadowed"
    (out / "evilplugin.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    (out / "yaml.py").write_text(f"open({str(shadow)!r}, 'w').write('imported')\n")  # named like a library
    stored = yaml.safe_load((out / "config.yaml").read_text())
    (out / "config.yaml").write_text(yaml.safe_dump({**stored, "paradigms": ["evilplugin:Evil"]}, sort_keys=False))

    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "raypriv.cli", *argv], cwd=out, capture_output=True, text=True,
                              timeout=120, env=_env())

    for argv in (["status", "."], ["report", ".", "--bootstrap", "100"]):
        done = cli(*argv)
        assert done.returncode == 2 and "--trust-plugins" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert not marker.exists() and not shadow.exists(), argv
    (out / "yaml.py").unlink()  # trusted, the working directory stays on sys.path: it would shadow PyYAML
    cli("status", ".", "--trust-plugins")  # trusted: the module is imported (it defines no paradigm, so it fails)
    assert marker.read_text() == "imported"
