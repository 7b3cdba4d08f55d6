"""Screenshot of a trajectory viewer page for docs/images/viewer.png (headless Chromium).

    python docs/scripts/viewer_screenshot.py sod-demo/trajectories/before.html [docs/images/viewer.png]

Sorts by min w, opens the first listed trajectory whose first tool call failed (the demo's stale-variable
NameError), hovers the first token of the step after it, and saves the top of the page.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sod_trainer.viewer.headless import HeadlessPage

PICK = """(() => {
  const data = JSON.parse(document.getElementById('sod-data').textContent).records;
  const sort = document.getElementById('sort');
  sort.value = 'minw-asc';  // the most down-weighted trajectories first
  sort.dispatchEvent(new Event('change', {bubbles: true}));
  const shown = Array.from(document.querySelectorAll('section.traj')).map(s => data[Number(s.dataset.pos)]);
  const record = shown.find(r => r.first_error_step === 0 && r.steps.length > 2) || shown[0];
  document.querySelectorAll('.traj-body').forEach(b => { b.hidden = true; });
  const card = sodViewer.open(record.index);
  card.parentElement.prepend(card);
  const step = record.steps[Math.min(1, record.steps.length - 1)];
  const span = card.querySelector('span.t[data-i="' + step.start + '"]');
  const box = span.getBoundingClientRect();
  span.dispatchEvent(new MouseEvent('mouseover', {bubbles: true, clientX: box.left + 4, clientY: box.bottom}));
  return record.index;
})()"""


def main(argv: list[str]) -> int:
    page = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "images" / "viewer.png"
    with HeadlessPage(width=1280, height=1000) as browser:
        browser.goto(str(page))
        index = browser.evaluate(PICK)
        browser.screenshot(out)
        if browser.errors:
            print("console errors:", browser.errors)
            return 1
    print(f"trajectory #{index} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
