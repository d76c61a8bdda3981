"""bench_synthesis.py: its JSON and Markdown at a tiny size, and its --device check."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_synthesis.py"), *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_device_cuda_without_a_gpu_is_one_error_line_and_exit_2():
    result = _bench("--device", "cuda", "--only", "coreset@herding")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --device cuda: torch sees no CUDA device on this host; run with --device auto or cpu"
    )


@pytest.mark.slow
def test_json_and_markdown_of_a_tiny_run(tmp_path):
    """Herding on a CPU packs one by one, so the pack stores the loop's sets bit for bit (max_abs_diff 0)."""
    out = tmp_path / "sections"
    result = _bench("--device", "cpu", "--only", "coreset@herding", "--models", "2", "--packs", "2",
                    "--json", str(tmp_path / "r.json"), "--out", str(out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    entry = json.loads((tmp_path / "r.json").read_text())["coreset@herding"]
    # The format: loop and pack models per hour, the fastest K, the largest pixel difference.
    assert entry["pack"] == 2 and entry["max_abs_diff"] == 0.0 and entry["failed"] == []
    assert entry["loop_models_per_hour"] == pytest.approx(2 / entry["loop_seconds"] * 3600)
    assert entry["pack_models_per_hour"] == pytest.approx(2 / entry["by_pack"]["2"]["seconds"] * 3600)
    section = (out / "synthesis.md").read_text()
    assert section.startswith("## Synthesis packs\n") and ", cpu (" in section
    # The section names the command as it ran, with the options that shape its figures.
    assert "`python benchmarks/bench_synthesis.py --only coreset@herding --device cpu --models 2 --packs 2`" in section
    assert "| coreset@herding | generic (one by one) | " in section
