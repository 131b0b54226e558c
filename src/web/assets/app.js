// The labaid incident room: renders the broker's snapshots (server-sent events on /events) and
// runs the coordinator's actions. Written by hand, no framework: the page must work on a closed
// hospital network. Data is written with textContent only, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let csrf = "";
  let lastNow = 0;
  let source = null;
  let retryTimer = null;

  // --- Times: relative and absolute, always both. ---
  const pad = (n) => String(n).padStart(2, "0");
  function clock(ms) {
    const d = new Date(ms);
    return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function span(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return s + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min";
    const h = Math.floor(m / 60);
    return h + " h " + (m % 60) + " min";
  }
  function ago(ms, now) {
    return span((now - ms) / 1000) + " ago (" + clock(ms) + ")";
  }
  function left(ms, now) {
    const s = (ms - now) / 1000;
    return s >= 0 ? span(s) + " left (" + clock(ms) + ")" : "passed " + span(-s) + " ago (" + clock(ms) + ")";
  }

  // --- DOM helpers. ---
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function badge(text, kind) {
    return el("span", text, "badge " + kind);
  }
  function row(cells) {
    const tr = document.createElement("tr");
    cells.forEach((c, i) => {
      const td = el(i === 0 ? "th" : "td");
      if (i === 0) td.scope = "row";
      if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    });
    return tr;
  }
  // Rows are kept by id and only their changed cells rewritten, so that a button under the
  // pointer (or holding focus) is the same element a second later.
  function sync(o, n) {
    if (o.cells.length !== n.cells.length) return n;
    o.className = n.className;
    Object.keys(n.dataset).forEach((k) => { o.dataset[k] = n.dataset[k]; });
    for (let i = 0; i < n.cells.length; i++) {
      const oc = o.cells[i], nc = n.cells[i];
      if (oc.querySelector("button") && nc.querySelector("button")) continue;
      if (oc.innerHTML !== nc.innerHTML) oc.replaceChildren(...nc.childNodes);
    }
    return o;
  }
  function fill(table, rows, empty) {
    const body = table.tBodies[0];
    const focused = document.activeElement && document.activeElement.id;
    const old = new Map();
    Array.from(body.rows).forEach((tr) => { if (tr.id) old.set(tr.id, tr); });
    let next = rows.map((tr) => (tr.id && old.has(tr.id) ? sync(old.get(tr.id), tr) : tr));
    if (next.length === 0) {
      const tr = document.createElement("tr");
      const td = el("td", empty, "empty");
      td.colSpan = table.tHead.rows[0].cells.length;
      tr.appendChild(td);
      next = [tr];
      const current = body.rows[0];
      if (body.rows.length === 1 && current && !current.id && current.textContent === empty) return;
    }
    const same = next.length === body.rows.length && next.every((tr, i) => body.rows[i] === tr);
    if (!same) body.replaceChildren(...next);
    if (focused && $(focused) && document.activeElement !== $(focused)) $(focused).focus();
  }
  // The random tail of an id: the head of a version 7 UUID is its time, the same for a burst.
  const shortId = (id) => id.slice(-8);
  function idCell(id) {
    const c = el("span", shortId(id), "id");
    c.title = id;
    c.dataset.id = id;
    return c;
  }

  // --- Rendering. ---
  let latest = null;
  function render(s) {
    latest = s;
    const now = s.now_ms;
    lastNow = now;
    $("now").textContent = clock(now);
    $("now").dateTime = new Date(now).toISOString();
    $("offers-open").textContent = s.offers_open;

    fill($("queues"), s.queues.map((q) => {
      const state = q.breached ? badge("TARGET BREACHED", "bad")
        : q.waiting > 0 ? badge("waiting", "warn") : badge("clear", "ok");
      const tr = row([q.priority, String(q.waiting),
        q.waiting > 0 ? span(q.oldest_wait_s) : "–", span(q.target_s), state]);
      tr.id = "queue-" + q.priority;
      if (q.breached) tr.className = "breached";
      return tr;
    }), "No priorities.");

    fill($("labs"), s.labs.map((l) => {
      const name = el("span");
      name.appendChild(el("strong", l.ods));
      name.appendChild(document.createTextNode(" " + l.name));
      const kind = l.status === "online" ? "ok" : l.status === "draining" ? "warn" : "bad";
      const tests = el("span", l.tests.map((t) => t.test + " " + t.in_flight + "/" + t.capacity).join(" · "), "tests");
      const util = el("span");
      const meter = el("meter");
      meter.min = 0; meter.max = 1; meter.low = 0.7; meter.high = 0.9; meter.optimum = 0;
      meter.value = Math.min(1, l.utilisation);
      meter.setAttribute("aria-label", "utilisation of " + l.ods);
      util.appendChild(meter);
      util.appendChild(document.createTextNode("\u00a0" + Math.round(l.utilisation * 100) + "\u00a0%"));
      util.className = "nowrap";
      const seen = l.watching ? "watching now" : l.last_seen_ms ? ago(l.last_seen_ms, now) : "not since the broker started";
      const button = el("button", "Change status…");
      button.type = "button";
      button.id = "lab-" + l.ods + "-status";
      button.appendChild(el("span", " of " + l.ods + " " + l.name, "sr-only"));
      button.dataset.action = "lab";
      button.dataset.ods = l.ods;
      const tr = row([name, badge(l.status.toUpperCase(), kind), tests, util, seen, button]);
      tr.id = "lab-" + l.ods;
      return tr;
    }), "No labs.");

    fill($("deadlines"), s.deadlines.map((r) => {
      const t = (r.deadline_ms - now) / 1000;
      const tl = el("span", left(r.deadline_ms, now), t < 3600 ? "soon" : "");
      if (t < 3600) tl.prepend(badge("UNDER 1 H", "bad"));
      const tr = row([idCell(r.id), r.trust, r.tests.join(", "), r.state + (r.lab ? " at " + r.lab : ""), tl]);
      tr.id = "deadline-" + r.id;
      return tr;
    }), "Nothing waiting for a lab.");

    setTotal("expired", s.expired.total);
    fill($("expired"), s.expired.rows.map((r) => {
      const tr = row([idCell(r.id), r.trust, r.tests.join(", "), ago(r.since_ms, now)]);
      tr.id = "expired-" + r.id;
      return tr;
    }), "None in the last hour.");

    setTotal("awaiting", s.awaiting_sample.total);
    fill($("awaiting"), s.awaiting_sample.rows.map((r) => {
      const lab = el("span", r.lab || "");
      if (r.lab_status && r.lab_status !== "online") lab.appendChild(badge(r.lab_status.toUpperCase(), "bad"));
      const button = el("button", "Reassign…");
      button.type = "button";
      button.id = "reassign-" + r.id;
      button.appendChild(el("span", " job " + shortId(r.id) + " from " + r.lab, "sr-only"));
      button.dataset.action = "reassign";
      button.dataset.id = r.id;
      const tr = row([idCell(r.id), r.trust, lab, r.priority, r.tests.join(", "), ago(r.since_ms, now), button]);
      tr.id = "awaiting-" + r.id;
      return tr;
    }), "No accepted job is waiting for its sample.");

    setTotal("offers", s.offers.total);
    fill($("offers"), s.offers.rows.map((r) => {
      const tr = row([idCell(r.id), r.trust, r.lab || "", r.priority, r.tests.join(", "),
        r.lease_expires_ms ? left(r.lease_expires_ms, now) : "–"]);
      tr.id = "offer-" + r.id;
      tr.dataset.lab = r.lab || "";
      return tr;
    }), "No open offers.");

    charts(s.charts);
  }

  function setTotal(table, n) {
    const t = $(table).querySelector("caption .total");
    if (t) t.textContent = n;
  }

  // --- Charts: small inline SVGs, each with a text equivalent. ---
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach((k) => e.setAttribute(k, attrs[k]));
    return e;
  }
  function charts(c) {
    const box = $("charts");
    box.replaceChildren();
    c.series.forEach((s) => {
      const total = s.results.reduce((a, b) => a + b, 0);
      const tat = s.turnaround_s.filter((x) => x !== null);
      const mean = tat.length ? tat.reduce((a, b) => a + b, 0) / tat.length : null;
      const fig = el("figure", null, "chart");
      const w = 240, h = 64;
      const maxR = Math.max(1, ...s.results);
      const maxT = Math.max(s.target_s, ...tat);
      const pic = svg("svg", { viewBox: "0 0 " + w + " " + h, role: "img", width: w, height: h });
      const summary = s.priority + ": " + total + " results in the last hour" +
        (mean === null ? "" : ", mean time to result " + span(mean)) + "; target " + span(s.target_s);
      pic.setAttribute("aria-label", summary);
      const bw = w / s.results.length;
      s.results.forEach((n, i) => {
        if (n > 0) {
          const bh = (n / maxR) * (h - 4);
          pic.appendChild(svg("rect", { x: i * bw, y: h - bh, width: Math.max(1, bw - 1), height: bh, class: "bar" }));
        }
      });
      const ty = h - (s.target_s / maxT) * (h - 4);
      pic.appendChild(svg("line", { x1: 0, x2: w, y1: ty, y2: ty, class: "target" }));
      let d = "";
      s.turnaround_s.forEach((t, i) => {
        if (t === null) return;
        const x = (i * bw + bw / 2).toFixed(1), y = (h - (t / maxT) * (h - 4)).toFixed(1);
        d += (d ? " L" : "M") + x + " " + y;
        pic.appendChild(svg("circle", { cx: x, cy: y, r: 2.5, class: "tat-point" }));
      });
      if (d) pic.appendChild(svg("path", { d: d, class: "tat" }));
      fig.appendChild(pic);
      fig.appendChild(el("figcaption", summary));
      box.appendChild(fig);
    });
  }

  // --- The live feed, reconnecting by itself. ---
  function feed(state, text) {
    const f = $("feed-status");
    f.className = "feed " + state;
    f.textContent = text;
  }
  function connect() {
    if (source) source.close();
    source = new EventSource("/events");
    source.addEventListener("snapshot", (e) => {
      feed("live", "Live");
      render(JSON.parse(e.data));
    });
    source.onerror = () => {
      feed("down", "Connection lost: reconnecting…");
      // The browser retries by itself unless the server refused the stream (signed out, or the
      // broker restarted): then check the session and start again.
      if (source.readyState === EventSource.CLOSED) {
        clearTimeout(retryTimer);
        retryTimer = setTimeout(start, 2000);
      }
    };
  }
  async function start() {
    try {
      const r = await fetch("/api/session", { credentials: "same-origin" });
      if (r.status === 401) { window.location.assign("/signin"); return; }
      if (!r.ok) throw new Error("HTTP " + r.status);
      const s = await r.json();
      csrf = s.csrf;
      $("signout-csrf").value = csrf;
      $("who").textContent = "Signed in: " + s.org + " (coordinator)";
      connect();
    } catch (e) {
      feed("down", "Broker unreachable: retrying…");
      clearTimeout(retryTimer);
      retryTimer = setTimeout(start, 2000);
    }
  }

  // --- Actions: a dialog that confirms and asks for a reason. ---
  let pending = null;
  let opener = null;
  function openDialog(title, what, withStatus, run) {
    opener = document.activeElement;
    $("action-title").textContent = title;
    $("action-what").textContent = what;
    $("action-status-field").hidden = !withStatus;
    $("action-reason").value = "";
    $("action-error").hidden = true;
    pending = run;
    $("action").showModal();
    (withStatus ? $("action-status") : $("action-reason")).focus();
  }
  function closeDialog() {
    $("action").close();
    pending = null;
    if (opener && document.body.contains(opener)) opener.focus();
  }
  function openLab(l) {
    openDialog("Change the status of " + l.ods, l.ods + " " + l.name + " is " + l.status +
      ". Offline withdraws its open offers and routes them to other labs; draining keeps its work and takes no new offers.", true,
      (reason) => post("/api/labs/" + encodeURIComponent(l.ods) + "/status", { status: $("action-status").value, reason: reason }));
    $("action-status").value = l.status === "online" ? "offline" : "online";
  }
  function openReassign(r) {
    openDialog("Reassign job " + shortId(r.id), "Take job " + r.id + " (" + r.tests.join(", ") + " for " + r.trust +
      ") from " + r.lab + " and route it to another lab. Only possible before its sample arrives.", false,
      (reason) => post("/api/jobs/" + encodeURIComponent(r.id) + "/reassign", { reason: reason }));
  }
  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    });
    const answer = await r.json().catch(() => ({ error: "HTTP " + r.status }));
    if (!r.ok) throw new Error(answer.error || ("HTTP " + r.status));
    return answer;
  }
  function wire() {
    $("action-cancel").addEventListener("click", closeDialog);
    $("action-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const reason = $("action-reason").value.trim();
      const err = $("action-error");
      if (!reason) {
        err.textContent = "A reason is required.";
        err.hidden = false;
        $("action-reason").focus();
        return;
      }
      try {
        await pending(reason);
        closeDialog();
      } catch (x) {
        err.textContent = "Not done: " + x.message;
        err.hidden = false;
      }
    });
    $("action").addEventListener("cancel", () => { pending = null; });
    // One listener for the rows' buttons, reading the latest snapshot when clicked.
    document.addEventListener("click", (e) => {
      const b = e.target.closest && e.target.closest("button[data-action]");
      if (!b || !latest) return;
      if (b.dataset.action === "lab") {
        const l = latest.labs.find((x) => x.ods === b.dataset.ods);
        if (l) openLab(l);
      } else if (b.dataset.action === "reassign") {
        const r = latest.awaiting_sample.rows.find((x) => x.id === b.dataset.id);
        if (r) openReassign(r);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => { wire(); start(); });
})();
