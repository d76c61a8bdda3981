"""Every ``raypriv ...`` command the README and docs/*.md show parses with the current command line.

A command is a line of a fenced shell block (```bash, ```sh, ```shell,
```console or a plain ```), starting with ``raypriv `` or ``$ raypriv ``, or
a ``raypriv ...`` segment after ``&&`` (``pip install ... && raypriv audit``).
Lines ending in a backslash are joined first.  Output blocks are fenced as
```text and are not read.  Each command is split with ``shlex`` and given,
without its leading ``raypriv``, to ``raypriv.cli.build_parser()``; argparse's
exit on a bad flag becomes a failure naming the file, line and command.

Also: README.md stays a newcomer's page (at most 15 KB), with the install
and first-audit commands on its first screen, and it keeps the exact test
command, ``pip install -e ".[dev,llm]" && pytest``, that CI (``.ci/run``)
follows.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from raypriv.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_FENCES = {"", "bash", "sh", "shell", "console"}
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
MAX_README_BYTES = 15 * 1024
FIRST_SCREEN_LINES = 60
MIN_COMMANDS_README = 4
MIN_COMMANDS_ALL = 12
CI_TEST_COMMAND = 'pip install -e ".[dev,llm]" && pytest'


def doc_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines(path: Path) -> list[tuple[int, str, str]]:
    """(line number, fence language, logical line) of every line inside a fenced block of ``path``."""
    lines: list[tuple[int, str, str]] = []
    fence: str | None = None
    language = ""
    pending: tuple[int, str] | None = None  # a line continued with a backslash
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(raw)
        if fence is None:
            if match:
                fence, language = match.group(1), match.group(2).lower()
            continue
        if match and raw.strip().startswith(fence[0] * 3) and not match.group(2):
            fence, pending = None, None
            continue
        text = raw.rstrip()
        if pending is not None:
            start, head = pending
            number, text = start, f"{head} {text.strip()}"
        if text.endswith("\\"):
            pending = (number, text[:-1].rstrip())
            continue
        pending = None
        lines.append((number, language, text))
    return lines


def raypriv_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command) of every ``raypriv ...`` command in the shell blocks of ``path``."""
    commands = []
    for number, language, text in shell_lines(path):
        if language not in SHELL_FENCES:
            continue
        line = text.strip()
        if language == "console":  # a transcript: only the prompt lines are commands
            if not line.startswith("$ "):
                continue
        line = line.removeprefix("$ ").strip()
        for segment in line.split("&&"):
            segment = segment.strip().removeprefix("$ ").strip()
            if segment == "raypriv" or segment.startswith("raypriv "):
                commands.append((number, segment))
    return commands


def all_commands() -> list[tuple[str, int, str]]:
    return [(path.relative_to(ROOT).as_posix(), number, command)
            for path in doc_files() for number, command in raypriv_commands(path)]


COMMANDS = all_commands()


@pytest.mark.parametrize(("where", "number", "command"), COMMANDS,
                         ids=[f"{where}:{number}" for where, number, _ in COMMANDS])
def test_every_documented_command_parses(where: str, number: int, command: str) -> None:
    args = shlex.split(command, comments=True)
    assert args[0] == "raypriv", f"{where}:{number}: not a raypriv command: {command!r}"
    parser = build_parser()
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(args[1:])
    except SystemExit as exc:
        pytest.fail(f"{where}:{number}: `{command}` does not parse with the current CLI "
                    f"(exit {exc.code}): {stderr.getvalue().strip()}")


def test_the_docs_show_commands_at_all() -> None:
    readme = [c for c in COMMANDS if c[0] == "README.md"]
    assert len(readme) >= MIN_COMMANDS_README, f"README.md shows only {len(readme)} raypriv commands: {readme}"
    assert len(COMMANDS) >= MIN_COMMANDS_ALL, f"README.md and docs/*.md show only {len(COMMANDS)} raypriv commands"
    assert {"audit", "report", "status", "paradigms"} <= {shlex.split(c)[1] for _, _, c in COMMANDS}


def test_the_readme_is_a_first_page() -> None:
    size = README.stat().st_size
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; keep it at most {MAX_README_BYTES} (move detail to docs/)"
    commands = [(number, line) for number, language, line in shell_lines(README) if language in SHELL_FENCES]
    for what in ("pip install", "raypriv audit"):
        first = next((number for number, line in commands if what in line), None)
        assert first is not None, f"README.md shows no `{what}` command"
        assert first <= FIRST_SCREEN_LINES, (
            f"README.md's first `{what}` command is on line {first}; put it within the first {FIRST_SCREEN_LINES} lines")


def test_the_readme_keeps_the_ci_test_command() -> None:
    # .ci/run installs and tests as the README says, so a reader runs what CI runs.
    commands = [line.strip() for _, language, line in shell_lines(README) if language in SHELL_FENCES]
    assert CI_TEST_COMMAND in commands, f"README.md must show the test command `{CI_TEST_COMMAND}` in a shell block"


def test_the_extractor_finds_chained_and_prompted_commands(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        'pip install -e ".[dev]" && raypriv audit --models 8\n'
        "raypriv report runs/a \\\n  --attack rmia   # a comment\n"
        "```\n"
        "```console\n$ raypriv paradigms\nraypriv audit 'digits-quick': an output line\n```\n"
        "```text\nraypriv audit [--config FILE]\n```\n"
        "```python\nraypriv.audit()\n```\n",
        encoding="utf-8",
    )
    assert raypriv_commands(page) == [
        (2, "raypriv audit --models 8"),
        (3, "raypriv report runs/a --attack rmia   # a comment"),
        (7, "raypriv paradigms"),
    ]
    with pytest.raises(SystemExit):
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(shlex.split("audit --no-such-flag"))
