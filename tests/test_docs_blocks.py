"""Every ```python block of README.md and docs/*.md runs as written: each in a fresh Python process, offline, with
a time limit, from a folder that shows the repository root's files (so `assets/models/shakespeare` is found) and
keeps whatever the block writes (`save_pretrained("my-model")`) out of the repository. A block whose first line is
a `# not run: <why>` comment is left out; that is for blocks that need the network (the Hub, a running
playground) or a GPU. Other code blocks (```bash, ```) are not Python and are not run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
NOT_RUN = re.compile(r"#\s*not run:\s*(\S.*)")
TIME_LIMIT = 180  # seconds per block: a guard against a hang; the blocks together take well under a minute


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks() -> list[tuple[str, str]]:
    """(where, code) for each python block: where is `path:line` of its opening fence."""
    found = []
    for path in documents():
        text = path.read_text()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{path.relative_to(ROOT)}:{line}", match.group(1)))
    return found


def reason_not_to_run(code: str) -> str | None:
    first = code.lstrip("\n").splitlines()[0] if code.strip() else ""
    match = NOT_RUN.fullmatch(first.strip())
    return match.group(1) if match else None


BLOCKS = blocks()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A folder holding links to the repository root's files and folders: paths relative to the root resolve
    as they do there, and new files land in the folder, not in the repository."""
    folder = tmp_path_factory.mktemp("docs-cwd")
    for entry in ROOT.iterdir():
        if not entry.name.startswith("."):
            (folder / entry.name).symlink_to(entry)
    return folder


@pytest.mark.parametrize("where,code", BLOCKS, ids=[where for where, _ in BLOCKS])
def test_the_block_runs_as_written(where, code, workspace, tmp_path):
    reason = reason_not_to_run(code)
    if reason is not None:
        pytest.skip(f"{where}: {reason}")
    script = tmp_path / "block.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False")
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=workspace, env=env, capture_output=True, text=True,
                              timeout=TIME_LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{where} ran past {TIME_LIMIT} s: make its sizes smaller")
    assert done.returncode == 0, f"{where} failed:\n{done.stderr[-3000:]}"


def test_the_blocks_are_found_and_the_ones_left_out_say_why():
    wheres = [where for where, _ in BLOCKS]
    assert any(w.startswith("README.md:") for w in wheres)
    assert any(w.startswith("docs/decoding.md:") for w in wheres)
    # every document in docs/ is read, whoever adds it
    assert {p.name for p in documents()} >= {p.name for p in (ROOT / "docs").glob("*.md")}
    for where, code in BLOCKS:
        first = code.lstrip("\n").splitlines()[0] if code.strip() else ""
        if re.match(r"#\s*not run", first.strip()):
            assert reason_not_to_run(code), f"{where}: say why the block is not run (# not run: <why>)"
    # fences are found at any indentation-free start, and only python ones
    sample = "```bash\nrm -rf /\n```\n\n```python\nprint(1)\n```\n"
    assert BLOCK.findall(sample) == ["print(1)\n"]
