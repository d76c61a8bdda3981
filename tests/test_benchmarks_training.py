"""The training and Ray benchmarks run end to end at quick sizes and write their sections."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmarks run end to end: the full suite's tier

ROOT = Path(__file__).resolve().parent.parent


def _run(script, out, *extra):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def test_training_benchmark_reports_engines_against_the_loop(tmp_path):
    _run("bench_training.py", tmp_path)
    text = (tmp_path / "training.md").read_text()
    assert "## Shadow-training throughput" in text and "Matmul ceiling measured in this run" in text
    rows = [line for line in text.splitlines() if line.startswith("| cnn_small") or line.startswith("| mlp")]
    assert len(rows) == 6  # loop, G=1, G=4 for each arch
    assert all("x |" in row for row in rows)  # the ratio column is filled
    assert "the 3x target at G=64 is not met" in text  # quick mode never runs G=64


def test_cifar_recipe_benchmark_runs_its_code_path_on_cpu(tmp_path):
    _run("bench_training.py", tmp_path, "--recipe", "cifar10")
    text = (tmp_path / "training-cpu-cifar10.md").read_text()
    assert "resnet18 (cifar10-real recipe, quick sizes)" in text and "vs airbench94" in text


@pytest.mark.slow
def test_ray_overhead_benchmark_gets_identical_metrics(tmp_path):
    _run("bench_ray.py", tmp_path)
    text = (tmp_path / "ray.md").read_text()
    assert "identical attack metrics" in text
    assert text.count("| Ray,") == 3


def test_run_all_assembles_sections_and_notes_missing_gpu(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "training.md").write_text("## Shadow-training throughput\n\nrow\n")
    out = tmp_path / "RESULTS.md"
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run_all
    finally:
        sys.path.pop(0)
    code = run_all.main(["--only", "training-cuda", "--out", str(results), "--results", str(out)])
    text = out.read_text()
    assert code == 0 and "## Shadow-training throughput" in text
    if not run_all.cuda_available():
        assert "`training-cuda`: not run, no CUDA device" in text
