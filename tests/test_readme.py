"""The README's quickstart runs as written and finds the backdoor it plants."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: A fenced Python block right after this marker is executed by this test, as written.
MARKER = "<!-- test: quickstart -->"


def runnable_blocks(text: str) -> list[str]:
    """The Python blocks that directly follow the marker (blank lines allowed in between)."""
    pattern = re.escape(MARKER) + r"\s*\n```python\n(.*?)\n```"
    return re.findall(pattern, text, flags=re.DOTALL)


def test_the_marker_finds_exactly_the_marked_blocks() -> None:
    text = f"x\n{MARKER}\n```python\nprint(1)\n```\n```python\nprint(2)\n```\n"
    assert runnable_blocks(text) == ["print(1)"]
    assert runnable_blocks("```python\nprint(3)\n```\n") == []


def test_the_readme_marks_a_quickstart_that_calls_scan() -> None:
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert blocks, f"no fenced python block after {MARKER!r} in README.md"
    assert any("nc.scan(" in block for block in blocks)


def test_the_quickstart_runs_as_written_and_prints_the_verdict(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")  # the digits it trains on (the demo extra)
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    script = tmp_path / "quickstart.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    # a fresh interpreter in an empty folder: nothing from the test session leaks in
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    # the verdict names the planted target, label 7, and nothing else
    assert any("BACKDOOR" in line and "[7]" in line for line in lines), done.stdout
    assert "[7]" in lines, done.stdout
