"""The trajectory page in headless Chromium: token spans, shading buckets, step marks with d_k / w_k, filters,
lazy rendering, hover, and no console errors or network requests.

Needs Debian's ``chromium`` (scripts/setup.sh installs it when run as root with apt) and websocket-client.
"""

from __future__ import annotations

import json

import pytest

from sod_trainer.viewer import shading_bucket, write_page
from sod_trainer.viewer.headless import ChromiumUnavailable, HeadlessPage, find_chromium
from sod_trainer.viewer.page import CHUNK_TOKENS
from viewer_batch import GAP_CYCLE, long_trajectory, scripted_view

try:
    import websocket  # noqa: F401

    _WEBSOCKET = True
except ImportError:
    _WEBSOCKET = False

pytestmark = [
    pytest.mark.skipif(find_chromium() is None, reason="no Chromium: run scripts/setup.sh as root (apt-get install "
                       "chromium) or set SOD_CHROMIUM to a Chrome/Chromium binary"),
    pytest.mark.skipif(not _WEBSOCKET, reason="websocket-client is not installed (pip install websocket-client)"),
]


@pytest.fixture(scope="module")
def browser():
    try:
        with HeadlessPage(width=1280, height=900) as page:
            yield page
    except ChromiumUnavailable as error:  # found, but it cannot start here
        pytest.skip(f"Chromium cannot start: {error}")


@pytest.fixture(scope="module")
def scripted(tokenizer, tmp_path_factory):
    records = scripted_view(tokenizer).records(tokenizer, step=7, mode="train")
    path = write_page(records, tmp_path_factory.mktemp("page") / "train_step_000007.html")
    return records, path


def _load(browser, path):
    browser.errors.clear()
    browser.requests.clear()
    browser.goto(str(path))


def _shown(browser) -> list[int]:
    return browser.evaluate("Array.from(document.querySelectorAll('section.traj')).map(s => Number(s.dataset.index))")


def _set(browser, selector: str, value) -> None:
    """Set an input as a user would (value or checkbox state) and fire its events."""
    prop = "checked" if isinstance(value, bool) else "value"
    js_value = json.dumps(value if isinstance(value, bool) else str(value))
    browser.evaluate("(() => { const e = document.querySelector(%s); e.%s = %s; "
                     "e.dispatchEvent(new Event('input', {bubbles: true})); "
                     "e.dispatchEvent(new Event('change', {bubbles: true})); })()" % (json.dumps(selector), prop, js_value))


def test_token_spans_buckets_and_step_marks(browser, scripted):
    records, path = scripted
    _load(browser, path)
    assert _shown(browser) == [0, 1, 2]
    for record in records:
        if record["index"]:  # the first card opens by itself
            browser.evaluate(f"document.querySelector('section.traj[data-index=\"{record['index']}\"] .traj-head')"
                             ".click()")
        card = f"section.traj[data-index=\"{record['index']}\"]"
        spans = browser.evaluate(f"Array.from(document.querySelectorAll('{card} span.t')).map(s => "
                                 "[Number(s.dataset.i), s.textContent, s.className])")
        tokens = record["tokens"]
        model = [t for t, m in enumerate(tokens["mask"]) if m]
        assert [i for i, _, _ in spans] == model  # one span per model token, in order, none for observations
        assert [text for _, text, _ in spans] == [tokens["text"][t] for t in model]
        assert [cls for _, _, cls in spans] == ["t " + shading_bucket(tokens["s"][t], tokens["q"][t]) for t in model]
        marks = browser.evaluate(f"Array.from(document.querySelectorAll('{card} .stepmark')).map(m => [Number("
                                 "m.dataset.k), Number(m.nextElementSibling.dataset.i), m.textContent, m.className])")
        assert [(k, first) for k, first, _, _ in marks] == [(s["k"], s["start"]) for s in record["steps"]]
        for (_, _, text, cls), step in zip(marks, record["steps"]):
            assert text == f"step {step['k'] + 1} · d {step['d']:.3f} · w {step['w']:.2f}"
            assert ("low" in cls.split()) == (step["w"] < 0.8)
            assert ("err" in cls.split()) == (step["k"] == record["first_error_step"])
    # the stable trajectory's tokens go through every bucket, in the order of GAP_CYCLE
    classes = browser.evaluate("Array.from(document.querySelectorAll('section.traj[data-index=\"2\"] span.t'))"
                               ".map(s => s.className)")
    assert classes[:6] == [f"t b{i}" for i in range(len(GAP_CYCLE))]
    observations = browser.evaluate("Array.from(document.querySelectorAll('section.traj[data-index=\"0\"] .run.obs'))"
                                    ".map(o => [o.className, o.textContent])")
    assert [cls for cls, _ in observations] == ["run obs error", "run obs"]
    assert "NameError" in observations[0][1] and observations[0][1].startswith("tool ▸ error")
    assert browser.errors == [] and all(url.startswith("file://") for url in browser.requests)


def test_hover_shows_token_s_q_and_step(browser, scripted):
    records, path = scripted
    _load(browser, path)
    record = records[0]
    t = record["steps"][1]["start"]  # first token of step 2 (after the traceback)
    tip = browser.evaluate(f"(() => {{ const s = document.querySelector('section.traj[data-index=\"0\"] "
                           f"span.t[data-i=\"{t}\"]'); s.dispatchEvent(new MouseEvent('mouseover', {{bubbles: true, "
                           "clientX: 10, clientY: 10})); const tip = document.getElementById('tip'); "
                           "return [tip.hidden, tip.textContent]; })()")
    assert tip[0] is False
    assert f"s_t {record['tokens']['s'][t]:.4f}" in tip[1] and f"q_t {record['tokens']['q'][t]:.4f}" in tip[1]
    assert "|s_t − q_t| 1.2000" in tip[1] and "step 2:  d 1.2000   w 0.083" in tip[1]
    assert browser.errors == []


def test_filters_and_sorting(browser, scripted):
    records, path = scripted
    assert 0.75 < records[2]["steps"][0]["d"] < 1.2
    _load(browser, path)
    _set(browser, "input.pattern-filter[value=stable]", False)
    assert _shown(browser) == [0, 1]
    _set(browser, "input.pattern-filter[value=stable]", True)
    _set(browser, "#reward-min", 0)
    assert _shown(browser) == [0, 2]  # rewards 1.0, -1.0, 0.5
    _set(browser, "#reward-max", 0.9)
    assert _shown(browser) == [2]
    _set(browser, "#reward-min", "")
    _set(browser, "#reward-max", "")
    _set(browser, "#minw-max", 0.5)
    assert _shown(browser) == [0, 1]  # min w 0.083, 0.333, 1.0
    _set(browser, "#minw-min", 0.2)
    assert _shown(browser) == [1]
    _set(browser, "#minw-min", "")
    _set(browser, "#minw-max", "")
    _set(browser, "#sort", "minw-asc")
    assert _shown(browser) == [0, 1, 2]
    _set(browser, "#sort", "reward-asc")
    assert _shown(browser) == [1, 2, 0]
    _set(browser, "#sort", "maxd-desc")
    assert _shown(browser) == [0, 2, 1]  # max d: recovery 1.2, stable about 0.85 (the cycle's mean), erroneous 0.75
    assert browser.evaluate("document.getElementById('count').textContent") == "3 of 3 trajectories"
    _set(browser, "input.pattern-filter[value=recovery]", False)
    _set(browser, "input.pattern-filter[value=erroneous]", False)
    _set(browser, "input.pattern-filter[value=stable]", False)
    assert _shown(browser) == [] and "No trajectory" in browser.evaluate("document.getElementById('list').textContent")
    assert browser.errors == []


def test_paging(browser, tokenizer, tmp_path):
    records = scripted_view(tokenizer, repeat=10).records(tokenizer)  # 30 trajectories, 25 per page
    path = write_page(records, tmp_path / "paged.html")
    _load(browser, path)
    assert len(_shown(browser)) == 25
    browser.evaluate("document.getElementById('next').click()")
    assert _shown(browser) == list(range(25, 30))
    assert browser.evaluate("document.getElementById('page').textContent") == "page 2 / 2"
    assert browser.errors == []


def test_a_long_trajectory_renders_lazily(browser, tokenizer, tmp_path):
    trajectory, gaps = long_trajectory(tokenizer, tokens=8000, turns=8)
    view = scripted_view(tokenizer, trajectories=[trajectory], gaps=[gaps], rewards=[0.0])
    [record] = view.records(tokenizer)
    path = write_page([record], tmp_path / "long.html")
    _load(browser, path)
    first = browser.evaluate("document.querySelectorAll('#list span.t').length")
    model_in_first_chunk = sum(record["tokens"]["mask"][:CHUNK_TOKENS])
    assert first == model_in_first_chunk < sum(record["tokens"]["mask"])  # only the first chunk is drawn
    browser.evaluate("window.scrollTo(0, document.body.scrollHeight)")  # scrolling draws the next chunk
    browser.wait_for(f"document.querySelectorAll('#list span.t').length > {first}", timeout=10)
    browser.evaluate("document.querySelector('button.render-all').click()")
    spans = browser.evaluate("Array.from(document.querySelectorAll('#list span.t')).map(s => Number(s.dataset.i))")
    assert spans == [t for t, m in enumerate(record["tokens"]["mask"]) if m]
    marks = browser.evaluate("Array.from(document.querySelectorAll('.stepmark')).map(m => Number(m.dataset.k))")
    assert marks == list(range(8))
    assert browser.errors == []
