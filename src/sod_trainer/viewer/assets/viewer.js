// sod-trainer trajectory viewer: filters, sorting, paging and lazy token rendering (no network, no libraries).
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("sod-data").textContent);
  var RECORDS = DATA.records;
  var EDGES = DATA.buckets;           // |s - q| bucket edges: b0 < EDGES[0] <= b1 < EDGES[1] ...
  var THRESHOLD = DATA.pattern_threshold;
  var PAGE_SIZE = DATA.page_size;     // trajectories per page
  var CHUNK = DATA.chunk_tokens;      // tokens rendered at a time inside a trajectory
  var state = { page: 0, view: [] };
  var openCards = {};                 // record position -> rendering state of an opened card
  var observer = "IntersectionObserver" in window ? new IntersectionObserver(onVisible, { rootMargin: "400px" }) : null;

  function esc(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function fmt(value, digits) {
    return value === null || value === undefined ? "–" : Number(value).toFixed(digits === undefined ? 3 : digits);
  }
  function bucket(s, q) {
    if (s === null || q === null) return "bn";
    var gap = Math.abs(s - q);
    for (var i = 0; i < EDGES.length; i++) if (gap < EDGES[i]) return "b" + i;
    return "b" + EDGES.length;
  }
  function maxD(record) {
    var best = null;
    record.steps.forEach(function (step) { if (step.d !== null && (best === null || step.d > best)) best = step.d; });
    return best;
  }
  function numberOr(value, fallback) { return value === null || value === undefined ? fallback : value; }

  // ------------------------------------------------------------------ filters, sorting, paging
  function readFilters() {
    var patterns = {};
    document.querySelectorAll("input.pattern-filter").forEach(function (box) { patterns[box.value] = box.checked; });
    function num(id) { var v = document.getElementById(id).value; return v === "" ? null : Number(v); }
    return { patterns: patterns, rewardMin: num("reward-min"), rewardMax: num("reward-max"),
             minwMin: num("minw-min"), minwMax: num("minw-max"), sort: document.getElementById("sort").value };
  }
  function applyFilters() {
    var f = readFilters();
    var view = [];
    RECORDS.forEach(function (record, position) {
      if (f.patterns[record.pattern] === false) return;
      var reward = numberOr(record.reward, NaN), minw = record.min_weight;
      if (f.rewardMin !== null && !(reward >= f.rewardMin)) return;
      if (f.rewardMax !== null && !(reward <= f.rewardMax)) return;
      if (f.minwMin !== null && !(minw !== null && minw >= f.minwMin)) return;
      if (f.minwMax !== null && !(minw !== null && minw <= f.minwMax)) return;
      view.push(position);
    });
    var keys = {
      "index": function (p) { return p; },
      "reward-desc": function (p) { return -numberOr(RECORDS[p].reward, -Infinity); },
      "reward-asc": function (p) { return numberOr(RECORDS[p].reward, Infinity); },
      "minw-asc": function (p) { return numberOr(RECORDS[p].min_weight, Infinity); },
      "maxd-desc": function (p) { return -numberOr(maxD(RECORDS[p]), -Infinity); },
      "length-desc": function (p) { return -RECORDS[p].tokens.ids.length; }
    };
    var key = keys[f.sort] || keys.index;
    view.sort(function (a, b) { return (key(a) - key(b)) || (a - b); });
    state.view = view;
    state.page = 0;
    renderList();
  }

  function renderList() {
    var list = document.getElementById("list");
    var pages = Math.max(1, Math.ceil(state.view.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages - 1);
    if (observer) observer.disconnect();
    openCards = {};
    var shown = state.view.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
    document.getElementById("count").textContent = state.view.length + " of " + RECORDS.length + " trajectories";
    document.getElementById("page").textContent = "page " + (state.page + 1) + " / " + pages;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages - 1;
    if (!shown.length) {
      list.innerHTML = '<p class="empty-list">No trajectory matches these filters.</p>';
      return;
    }
    list.innerHTML = shown.map(cardHtml).join("");
    if (state.page === 0 && shown.length) toggle(list.querySelector("section.traj"), true);
  }

  function cardHtml(position) {
    var r = RECORDS[position];
    var spark = r.steps.map(function (step) {
      var w = numberOr(step.w, 0), h = Math.max(2, Math.min(18, Math.round(w / 1.25 * 18)));
      return '<i class="' + (w < THRESHOLD ? "low" : "") + '" style="height:' + h + 'px" title="w_' + (step.k + 1) +
        " = " + fmt(step.w) + '"></i>';
    }).join("");
    var error = r.first_error_step >= 0 ? "first error: step " + (r.first_error_step + 1) : "no tool error";
    return '<section class="traj" data-pos="' + position + '" data-index="' + r.index + '" data-pattern="' +
      esc(r.pattern) + '">' +
      '<div class="traj-head" role="button" tabindex="0"><span class="idx">#' + r.index + "</span>" +
      '<span class="badge pattern ' + esc(r.pattern) + '">' + esc(r.pattern) + "</span>" +
      '<span>reward <b class="reward">' + fmt(r.reward, 2) + "</b></span>" +
      '<span>min w <b class="minw">' + fmt(r.min_weight, 2) + "</b></span>" +
      '<span class="first-error">' + error + "</span>" +
      "<span>" + r.steps.length + " steps · " + r.tokens.ids.length + " tokens" +
      (r.stop_reason ? " · stop " + esc(r.stop_reason) : "") + (r.truncated ? " · truncated" : "") + "</span>" +
      '<span class="spark">' + spark + "</span></div>" +
      '<div class="traj-body" hidden></div></section>';
  }

  // ------------------------------------------------------------------ one trajectory, rendered in chunks
  function toggle(card, open) {
    if (!card) return;
    var body = card.querySelector(".traj-body");
    var position = Number(card.dataset.pos);
    if (open === undefined) open = body.hidden;
    body.hidden = !open;
    if (open && !openCards[position]) startCard(card, position);
  }

  function startCard(card, position) {
    var r = RECORDS[position];
    var body = card.querySelector(".traj-body");
    var errorAfter = {};   // observation starting at a turn's end -> that turn's tool call failed
    r.turns.forEach(function (turn) { errorAfter[turn.end] = turn.tool_called ? (turn.tool_error ? "error" : "ok") : "none"; });
    var stepsById = {};
    r.steps.forEach(function (step) { stepsById[step.k] = step; });
    var rendering = { record: r, next: 0, body: body, errorAfter: errorAfter, steps: stepsById, sentinel: null };
    openCards[position] = rendering;
    body.innerHTML = '<details class="prompt"><summary>prompt</summary><pre></pre></details>';
    body.querySelector("pre").textContent = r.prompt;
    renderChunk(rendering);
  }

  function stepMark(rendering, k) {
    var step = rendering.steps[k] || { d: null, w: null };
    var cls = "stepmark" + (step.w !== null && step.w < THRESHOLD ? " low" : "") +
      (k === rendering.record.first_error_step ? " err" : "");
    return '<span class="' + cls + '" data-k="' + k + '" data-d="' + numberOr(step.d, "") + '" data-w="' +
      numberOr(step.w, "") + '">step ' + (k + 1) + " · d " + fmt(step.d) + " · w " + fmt(step.w, 2) + "</span>";
  }

  function renderChunk(rendering) {
    var r = rendering.record, tokens = r.tokens, n = tokens.ids.length;
    var start = rendering.next, end = Math.min(n, start + CHUNK);
    var html = [], t = start;
    while (t < end) {
      var model = tokens.mask[t] === 1;
      var runEnd = t;
      while (runEnd < end && (tokens.mask[runEnd] === 1) === model) runEnd++;
      if (model) {
        var parts = [];
        for (var i = t; i < runEnd; i++) {
          var k = tokens.step[i];
          if (k >= 0 && (i === 0 || tokens.step[i - 1] !== k)) parts.push(stepMark(rendering, k));
          parts.push('<span class="t ' + bucket(tokens.s[i], tokens.q[i]) + '" data-i="' + i + '">' +
                     esc(tokens.text[i]) + "</span>");
        }
        html.push('<div class="run model">' + parts.join("") + "</div>");
      } else {
        var runStart = t;
        while (runStart > 0 && tokens.mask[runStart - 1] !== 1) runStart--;  // a run continued from the last chunk
        var kind = rendering.errorAfter[runStart] || "none";
        var label = kind === "error" ? "tool ▸ error" : kind === "ok" ? "tool ▸ output" : "context (not sampled)";
        html.push('<div class="run obs' + (kind === "error" ? " error" : "") + '" data-start="' + t + '">' +
                  (runStart === t ? '<span class="obs-label">' + label + "</span>" : "") +
                  esc(tokens.text.slice(t, runEnd).join("")) + "</div>");
      }
      t = runEnd;
    }
    if (rendering.sentinel) rendering.sentinel.remove();
    rendering.body.insertAdjacentHTML("beforeend", html.join(""));
    rendering.next = end;
    if (end < n) {
      var more = document.createElement("div");
      more.className = "more";
      more.innerHTML = (n - end) + ' more tokens <button type="button" class="render-more">render next ' +
        Math.min(CHUNK, n - end) + '</button> <button type="button" class="render-all">render all</button>';
      rendering.body.appendChild(more);
      rendering.sentinel = more;
      if (observer) observer.observe(more);
    } else {
      rendering.sentinel = null;
    }
  }

  function renderAll(rendering) {
    while (rendering.next < rendering.record.tokens.ids.length) renderChunk(rendering);
  }

  function renderingOf(element) {
    var card = element.closest("section.traj");
    return card ? openCards[Number(card.dataset.pos)] : null;
  }

  function onVisible(entries) {
    entries.forEach(function (entry) {
      if (!entry.isIntersecting) return;
      observer.unobserve(entry.target);
      var rendering = renderingOf(entry.target);
      if (rendering && rendering.sentinel === entry.target) renderChunk(rendering);
    });
  }

  // ------------------------------------------------------------------ hover: token, s_t, q_t, step
  var tip = document.getElementById("tip");
  function showTip(event) {
    var span = event.target;
    if (!span.classList || !span.classList.contains("t") || span.dataset.i === undefined) return;
    var rendering = renderingOf(span);
    if (!rendering) return;
    var r = rendering.record, i = Number(span.dataset.i), k = r.tokens.step[i];
    var s = r.tokens.s[i], q = r.tokens.q[i], step = rendering.steps[k];
    tip.textContent = "token " + JSON.stringify(r.tokens.text[i]) + "  (id " + r.tokens.ids[i] + ", position " + i + ")\n" +
      "s_t " + fmt(s, 4) + "   q_t " + fmt(q, 4) + "   |s_t − q_t| " + (s === null || q === null ? "–" : fmt(Math.abs(s - q), 4)) + "\n" +
      (k >= 0 ? "step " + (k + 1) + ":  d " + fmt(step ? step.d : null, 4) + "   w " + fmt(step ? step.w : null, 3) : "no step");
    tip.hidden = false;
    moveTip(event);
  }
  function moveTip(event) {
    if (tip.hidden) return;
    tip.style.left = Math.min(window.innerWidth - 430, event.clientX + 12) + "px";
    tip.style.top = (event.clientY + 16) + "px";
  }

  // ------------------------------------------------------------------ wiring
  var list = document.getElementById("list");
  list.addEventListener("click", function (event) {
    var target = event.target;
    if (target.classList.contains("render-more")) { renderChunk(renderingOf(target)); return; }
    if (target.classList.contains("render-all")) { renderAll(renderingOf(target)); return; }
    var head = target.closest(".traj-head");
    if (head) toggle(head.parentElement);
  });
  list.addEventListener("keydown", function (event) {
    var head = event.target.closest && event.target.closest(".traj-head");
    if (head && (event.key === "Enter" || event.key === " ")) { event.preventDefault(); toggle(head.parentElement); }
  });
  list.addEventListener("mouseover", showTip);
  list.addEventListener("mousemove", moveTip);
  list.addEventListener("mouseout", function (event) { if (event.target.classList.contains("t")) tip.hidden = true; });
  document.getElementById("controls").addEventListener("input", applyFilters);
  document.getElementById("controls").addEventListener("change", applyFilters);
  document.getElementById("prev").addEventListener("click", function () { state.page--; renderList(); });
  document.getElementById("next").addEventListener("click", function () { state.page++; renderList(); });

  // a small API for scripts and tests: sodViewer.open(index), sodViewer.renderAll(index)
  window.sodViewer = {
    open: function (index) {
      var card = document.querySelector('section.traj[data-index="' + index + '"]');
      toggle(card, true);
      return card;
    },
    renderAll: function (index) {
      var card = window.sodViewer.open(index);
      if (card) renderAll(openCards[Number(card.dataset.pos)]);
      return card;
    },
    apply: applyFilters
  };
  applyFilters();
  window.sodViewerReadyMs = performance.now();  // since navigation started: what the benchmark reads
  document.body.dataset.ready = "1";
})();
