"""The scoring and Parquet benchmarks run (--quick) and write their Markdown sections."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the benchmarks run end to end: the full suite's tier

ROOT = Path(__file__).resolve().parents[1]


def table_rows(markdown: str) -> list[list[str]]:
    """Body rows of every Markdown table (the lines after a |---| separator)."""
    rows, in_table = [], False
    for line in markdown.splitlines():
        if re.match(r"^\|(\s*:?-+:?\s*\|)+$", line):
            in_table = True
            continue
        if in_table and line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        else:
            in_table = False
    return rows


@pytest.mark.parametrize(
    "name, heading, expected_rows",
    [("scoring", "## Scoring", 4 + 4 + 1), ("parquet", "## Parquet logits", 4 + 4)],
)
def test_benchmark_writes_its_section(tmp_path, name, heading, expected_rows):
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"bench_{name}.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    markdown = (tmp_path / f"{name}.md").read_text()
    assert markdown.startswith(heading) and "Machine: " in markdown and "numpy " in markdown
    rows = table_rows(markdown)
    assert len(rows) == expected_rows
    numbers = [cell for row in rows for cell in row if re.fullmatch(r"[\d,.]+x?", cell)]
    assert numbers and all(float(n.rstrip("x").replace(",", "")) >= 0 for n in numbers)
    if name == "scoring":
        assert "speed-up" in markdown and "| 4 LiRA variants |" in markdown
        speedup = float(rows[-1][2].rstrip("x"))
        assert speedup > 10  # the block engine against the per-sample loop, measured in the same run
    else:
        assert "| `pandas.read_parquet` |" in markdown and "ZSTD" in markdown
