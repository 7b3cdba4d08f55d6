"""Benchmark: how fast a trajectory viewer page with 20,000-token trajectories loads in headless Chromium.

Pages (built from the same scripted 20k-token trajectory as tests/test_viewer_browser.py, half model tokens,
half tool output, 20 turns, one step per turn):

  1 x 20k     one trajectory of 20,000 completion tokens
  16 x 20k    a batch of 16 such trajectories (320,000 tokens in one page)

Measured per page, over ``--rounds`` loads in one headless Chromium (the first round is a warm-up, dropped):

  load (s)          Page.navigate until the page is interactive (the first card's first chunk drawn), wall clock
  in page (ms)      the same, as the page sees it: performance.now() when its script finished
  render all (ms)   drawing every token of the first trajectory (sodViewer.renderAll), layout included
  filter (ms)       re-applying the filters and redrawing the list, layout included
  build (s)         Python: records from the batch view + render_page (context; not in the browser)
  size (MB)         the HTML file

    python benchmarks/bench_viewer.py --quick   # 3 rounds
    python benchmarks/bench_viewer.py           # 8 rounds

Needs Chromium (Debian: apt-get install chromium) and websocket-client.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the scripted trajectory builder
import common as C  # noqa: E402

TOKENS = 20_000
TARGET_S = 3.0  # the issue: "loads within a few seconds"


def build_page(tok, trajectories: int, folder: Path) -> tuple[Path, float]:
    from viewer_batch import long_trajectory, scripted_view

    from sod_trainer.viewer import render_page

    trajectory, gaps = long_trajectory(tok, tokens=TOKENS, turns=20)
    started = time.perf_counter()
    view = scripted_view(tok, trajectories=[trajectory] * trajectories, gaps=[gaps] * trajectories,
                         rewards=[float(i % 2) for i in range(trajectories)])
    page = render_page(view.records(tok, step=1, mode="train"))
    seconds = time.perf_counter() - started
    path = folder / f"bench_{trajectories}x{TOKENS}.html"
    path.write_text(page, encoding="utf-8")
    return path, seconds


def measure(browser, path: Path) -> dict[str, float]:
    load = browser.goto(str(path))
    in_page = browser.evaluate("window.sodViewerReadyMs")
    render_all = browser.evaluate("(() => { const t = performance.now(); sodViewer.renderAll(0); "
                                  "document.body.offsetHeight; return performance.now() - t; })()")
    spans = browser.evaluate("document.querySelectorAll('#list span.t').length")
    filter_ms = browser.evaluate("(() => { const t = performance.now(); sodViewer.apply(); "
                                 "document.body.offsetHeight; return performance.now() - t; })()")
    return {"load_s": load, "in_page_ms": in_page, "render_all_ms": render_all, "filter_ms": filter_ms,
            "spans_after_render_all": spans}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)

    from sod_trainer.viewer.headless import HeadlessPage, find_chromium

    if find_chromium() is None:
        print("No Chromium: install Debian's chromium (apt-get install chromium) or set SOD_CHROMIUM.")
        return 2
    tok = C.tokenizer()
    results = {}
    with tempfile.TemporaryDirectory() as folder, HeadlessPage(width=1280, height=900) as browser:
        for count in (1, 16):
            path, build_s = build_page(tok, count, Path(folder))
            samples = []
            for r in range(rounds + 1):  # round 0 warms the browser up
                sample = measure(browser, path)
                if browser.errors:
                    raise RuntimeError(f"console errors: {browser.errors}")
                if r:
                    samples.append(sample)
                print(f"  {count} x {TOKENS}: round {r}/{rounds} " + ", ".join(
                    f"{k} {v:.3f}" for k, v in sample.items()) + (" (warm-up)" if not r else ""))
            results[f"{count}x{TOKENS}"] = {
                "trajectories": count, "tokens_per_trajectory": TOKENS, "build_s": build_s,
                "size_mb": path.stat().st_size / 1e6,
                **{key: C.summary([s[key] for s in samples]) for key in samples[0]},
            }
    rows = [[name, f"{r['load_s']['median']:.2f} [{r['load_s']['q1']:.2f}, {r['load_s']['q3']:.2f}]",
             f"{r['in_page_ms']['median']:.0f}", f"{r['render_all_ms']['median']:.0f}",
             f"{r['filter_ms']['median']:.1f}", f"{r['build_s']:.2f}", f"{r['size_mb']:.1f}"]
            for name, r in results.items()]
    headers = ["page", "load (s), median [IQR]", "in page (ms)", "render all 20k (ms)", "filter (ms)",
               "build (s)", "size (MB)"]
    text = C.table(rows, headers)
    print(text)
    worst = max(r["load_s"]["median"] for r in results.values())
    verdict = f"target: load <= {TARGET_S:.0f} s; worst median {worst:.2f} s: {'met' if worst <= TARGET_S else 'MISSED'}"
    print(verdict)
    C.save("bench_viewer", {"rounds": rounds, "target_load_s": TARGET_S, "results": results, "table": text}, args.quick)
    if not args.quick:
        machine = C.machine_info()
        note = (f"\n\nHeadless Chromium, {rounds} loads per page after a warm-up, medians; "
                f"{machine['cpu_count']} shared CPU cores (load average "
                f"{', '.join(f'{x:.1f}' for x in machine['load_average_at_save'] or ())}), "
                f"{machine['time']}. `python benchmarks/bench_viewer.py` reproduces it.\n")
        (C.RESULTS_DIR / "viewer.md").write_text(text + "\n\n" + verdict + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
