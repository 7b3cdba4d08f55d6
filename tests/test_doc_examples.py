"""Every Python block in README.md and docs/ runs, offline, as written, unless it says why it cannot.

Convention: a ```` ```python ```` block is executed by this test, the blocks of one page in order in one
fresh interpreter (a later block may use what an earlier one defined), with the page's folder of a temporary
copy as working directory. A block that cannot run offline on a CPU carries, on the line right above its
fence, ``<!-- docs-test: skip (REASON) -->`` with REASON one of :data:`REASONS` (rendered pages do not show
the comment). ``docs/quickstart.md``'s offline example trains ``SODTrainer`` on the toy world end to end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
REASONS = ("needs the Hub", "needs a GPU", "fragment")
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((.+?)\)\s*-->\s*$")
# training on the toy world; math-verify's start-up; toy rollouts scored by both models (minutes on a busy CPU)
SLOW_PAGES = {"docs/quickstart.md", "docs/evaluation.md", "docs/viewer.md"}


@dataclass
class Block:
    page: str
    line: int
    code: str
    skip: str | None


def python_blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced ```python blocks of a Markdown file (fences inside other fences are text, not blocks)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks, fence, start, language = [], None, 0, ""
    for number, line in enumerate(lines):
        stripped = line.strip()
        if fence is None:
            match = re.match(r"^( {0,3})(`{3,})(\w*)", line)
            if match:
                fence, start, language = match.group(2), number, match.group(3)
        elif stripped == fence and len(line) - len(line.lstrip()) <= 3:
            if language == "python":
                above = lines[start - 1].strip() if start else ""
                reason = SKIP.match(above)
                blocks.append(Block(str(path.relative_to(root)), start + 1, "\n".join(lines[start + 1:number]),
                                    reason.group(1) if reason else None))
            fence = None
    return blocks


ALL = [block for page in PAGES for block in python_blocks(page)]
RUN_PAGES = sorted({block.page for block in ALL if block.skip is None})


def test_skip_markers_give_a_known_reason_and_most_blocks_run():
    for block in ALL:
        if block.skip is not None:
            assert block.skip.split(":")[0].split(";")[0].strip() in REASONS, (block.page, block.line, block.skip)
    assert sum(block.skip is None for block in ALL) >= 9
    assert "docs/quickstart.md" in RUN_PAGES  # the offline end-to-end example


def test_markdown_fences_are_parsed_like_a_renderer_would(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```text\n    ```python\n    not code\n    ```\n```\n\n<!-- docs-test: skip (fragment) -->\n"
                    "```python\nx = 1\n```\n\n```python\nprint('```python')\n```\n")
    blocks = [(b.code, b.skip) for b in python_blocks(page, root=tmp_path)]
    assert blocks == [("x = 1", "fragment"), ("print('```python')", None)]


@pytest.mark.parametrize("page", [pytest.param(p, marks=pytest.mark.slow) if p in SLOW_PAGES else p
                                  for p in RUN_PAGES])
def test_python_blocks_of_the_page_run(page, tmp_path):
    blocks = [block for block in ALL if block.page == page and block.skip is None]
    script = "\n\n".join(f"# ---- {page}:{block.line}\n{block.code}" for block in blocks)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    completed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=900)
    assert completed.returncode == 0, f"{page}: a block failed\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}"
