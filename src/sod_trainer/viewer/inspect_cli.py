"""``sod inspect PATH``: render saved rollouts to the trajectory page; prints the page's path, opens nothing.

PATH is a run's output directory (its ``trajectories/*.jsonl``, written when ``log_completions`` is on), a
folder of ``.jsonl`` files, or one ``.jsonl`` file of trajectory records. Each ``.jsonl`` becomes the page
beside it (``--output`` puts a single one elsewhere); a folder also gets an ``index.html`` linking its pages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .page import write_index, write_page
from .records import read_jsonl

__all__ = ["main", "find_record_files", "render_path"]


def find_record_files(path: Path) -> list[Path]:
    """The ``.jsonl`` files ``sod inspect`` renders for ``path`` (a file, a run's output dir, or a folder)."""
    if path.is_file():
        return [path]
    for folder in (path / "trajectories", path):
        files = sorted(folder.glob("*.jsonl")) if folder.is_dir() else []
        if files:
            return files
    return []


def render_path(path: str | Path, output: str | Path | None = None, title: str | None = None) -> list[Path]:
    """Render every record file of ``path``; returns the written pages (and a folder's ``index.html`` last)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a run's output directory or a .jsonl of trajectories.")
    files = find_record_files(path)
    if not files:
        raise FileNotFoundError(f"No .jsonl trajectory records in {path} or {path / 'trajectories'}: they are "
                                "written there when training runs with log_completions=True.")
    if output is not None and len(files) > 1:
        raise ValueError(f"--output names one page but {path} holds {len(files)} record files; "
                         "give one .jsonl file, or leave --output out to write each page beside its file.")
    pages = []
    for file in files:
        records = read_jsonl(file)
        target = Path(output) if output is not None else file.with_suffix(".html")
        pages.append(write_page(records, target, title=title))
    if len(pages) > 1:
        pages.append(write_index(pages[0].parent))
    return pages


def main(argv: list[str] | None = None) -> int:
    """``sod inspect PATH [--output FILE] [--title TEXT]``"""
    parser = argparse.ArgumentParser(prog="sod inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", help="a run's output_dir, a folder of .jsonl files, or one .jsonl of trajectories")
    parser.add_argument("--output", default=None, help="where to write the page (one .jsonl only)")
    parser.add_argument("--title", default=None, help="the page's title")
    args = parser.parse_args(argv)
    try:
        pages = render_path(args.path, args.output, args.title)
    except (FileNotFoundError, ValueError) as error:
        print(f"sod inspect: error: {error}", file=sys.stderr)
        return 2
    for page in pages:
        print(page.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
