-- The dashboard's script (binduq.dashboard), plain ES2017 for current browsers, no library.
-- Everything that comes from the server is put in the page as text (textContent, text
-- nodes, input values): never as HTML, so hostile task ids or reasons stay text.
return [==[
"use strict";
(function () {
  var meta = function (n) { var m = document.querySelector('meta[name="' + n + '"]'); return m ? m.content : ""; };
  var CSRF = meta("bq-csrf"), READ_ONLY = meta("bq-read-only") === "1", STORAGE = meta("bq-storage") === "1";
  var main = document.getElementById("main");
  var state = { overview: null, page: "", deadQueue: "", filter: {}, offset: 0 };

  // h("td", {class: "num"}, "text", node, ...): an element; strings become text nodes.
  function h(tag, props) {
    var el = document.createElement(tag);
    Object.keys(props || {}).forEach(function (k) {
      var v = props[k];
      if (v === undefined || v === null || v === false) return;
      if (k.slice(0, 2) === "on") el.addEventListener(k.slice(2), v);
      else if (k === "class") el.className = v;
      else if (k === "value") el.value = v;
      else el.setAttribute(k, v === true ? "" : String(v));
    });
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  function add(el, c) {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) { c.forEach(function (x) { add(el, x); }); return; }
    el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }
  function show() { clear(main); for (var i = 0; i < arguments.length; i++) add(main, arguments[i]); }

  function hex(obj) {
    var bytes = new TextEncoder().encode(JSON.stringify(obj)), out = "";
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return out;
  }
  function answer(r) {
    return r.text().then(function (t) {
      var doc;
      try { doc = JSON.parse(t); } catch (e) { doc = { error: t || r.statusText }; }
      if (!r.ok) throw new Error(doc.error || ("HTTP " + r.status));
      return doc;
    });
  }
  function get(path, params) {
    return fetch(path + (params ? "/" + hex(params) : ""), { credentials: "same-origin" }).then(answer);
  }
  function post(path, body) {
    body.csrf = CSRF;
    return fetch(path, { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
                         body: JSON.stringify(body) }).then(answer);
  }

  var toastTimer;
  function toast(text, bad) {
    var t = document.getElementById("toast");
    t.textContent = text;
    t.className = "show" + (bad ? " bad" : "");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { t.className = ""; }, 4000);
  }
  function failed(e) { toast(String(e && e.message || e), true); }

  // A confirmation in the page (a <dialog>, not window.confirm, so it can be styled and tested).
  function confirmBox(text, verb) {
    return new Promise(function (resolve) {
      var d = h("dialog", { id: "confirm" },
        h("p", {}, text),
        h("div", { class: "actions" },
          h("button", { class: "danger", "data-act": "confirm", onclick: function () { d.close(); d.remove(); resolve(true); } }, verb),
          h("button", { "data-act": "cancel-confirm", onclick: function () { d.close(); d.remove(); resolve(false); } }, "Cancel")));
      document.body.appendChild(d);
      d.showModal();
    });
  }

  function fmtTime(t) {
    if (typeof t === "string") return t;
    if (typeof t !== "number") return "-";
    return new Date(t * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }
  function fmtNum(n) { return typeof n === "number" ? n.toLocaleString("en") : "-"; }
  function queues() { return (state.overview && state.overview.queues || []).map(function (q) { return q.queue; }); }
  function queueSelect(value, onchange) {
    var qs = queues();
    if (value && qs.indexOf(value) < 0) qs.unshift(value);
    return h("select", { name: "queue", onchange: onchange },
      qs.map(function (q) { return h("option", { value: q, selected: q === value }, q); }));
  }
  function link(text, hash) { return h("a", { href: hash }, text); }
  function taskLink(id, queue) {
    return link(id, "#/task?" + new URLSearchParams({ id: id, queue: queue || "" }).toString());
  }
  function table(head, rows, empty) {
    if (!rows.length) return h("p", { class: "muted" }, empty);
    return h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, head.map(function (c) {
        return typeof c === "string" ? h("th", {}, c) : h("th", { class: c[1] }, c[0]);
      }))),
      h("tbody", {}, rows)));
  }

  // ---- overview and workers (live from the event stream) ----------------------------------
  var SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    var el = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (k) { el.setAttribute(k, String(attrs[k])); });
    for (var i = 2; i < arguments.length; i++) add(el, arguments[i]);
    return el;
  }
  // The last hour per minute: processed (up) and failed (down) as bars, drawn in SVG.
  function chart(hist) {
    var pts = hist && hist.points || [], W = 600, H = 140, mid = 90, max = 1;
    pts.forEach(function (p) { max = Math.max(max, p.done, p.failed); });
    var bw = W / Math.max(1, pts.length);
    var bars = pts.map(function (p, i) {
      var up = (p.done / max) * (mid - 12), down = (p.failed / max) * (H - mid - 12);
      var label = new Date(p.t * 1000).toISOString().slice(11, 16) + "Z: " + p.done + " processed, " + p.failed + " failed";
      return svg("g", { "data-minute": i },
        svg("title", {}, label),
        svg("rect", { x: i * bw + 1, y: mid - up, width: Math.max(1, bw - 2), height: up, class: "bar-ok" }),
        svg("rect", { x: i * bw + 1, y: mid, width: Math.max(1, bw - 2), height: down, class: "bar-bad" }));
    });
    return h("figure", { class: "chart" },
      svg("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none", role: "img",
                   "aria-label": "processed and failed per minute, the last hour" },
        svg("line", { x1: 0, y1: mid, x2: W, y2: mid, class: "axis" }), bars),
      h("figcaption", { class: "muted" },
        "processed (up) and failed (down) per minute, the last hour; highest minute " + max +
        (hist && hist.from ? "; counted by the workers in Redis since " + fmtTime(hist.from) : "; no task finished in the hour")));
  }

  function renderOverview() {
    var o = state.overview;
    if (!o) return show(h("p", { class: "muted" }, "loading..."));
    var tot = { ready: 0, delayed: 0, inflight: 0, dead: 0, workers: 0 };
    o.queues.forEach(function (q) { Object.keys(tot).forEach(function (k) { tot[k] += q[k] || 0; }); });
    var labels = { ready: "ready", delayed: "delayed", inflight: "in flight", dead: "dead", workers: "live workers" };
    show(h("h1", {}, "Overview"),
      h("div", { class: "cards" }, Object.keys(tot).map(function (k) {
        return h("div", { class: "card", "data-stat": k }, h("div", { class: "n" }, fmtNum(tot[k])), h("div", { class: "l" }, labels[k]));
      })),
      h("h2", {}, "Processed and failed"),
      chart(o.history),
      h("h2", {}, "Queues"),
      table(["queue", ["ready", "num"], ["delayed", "num"], ["in flight", "num"], ["dead", "num"], ["workers", "num"],
             ["processed/min", "num"], ["failed/min", "num"]],
        o.queues.map(function (q) {
          return h("tr", { "data-queue": q.queue },
            h("td", { class: "id" }, q.queue, q.seen === false ? h("span", { class: "muted" }, " (no keys)") : null),
            h("td", { class: "num" }, fmtNum(q.ready)), h("td", { class: "num" }, fmtNum(q.delayed)),
            h("td", { class: "num" }, fmtNum(q.inflight)),
            h("td", { class: "num" }, q.dead ? link(fmtNum(q.dead), "#/dead?" + new URLSearchParams({ queue: q.queue })) : "0"),
            h("td", { class: "num" }, fmtNum(q.workers)),
            h("td", { class: "num ok" }, fmtNum(q.processed_per_min)),
            h("td", { class: "num" + (q.failed_per_min ? " bad" : "") }, fmtNum(q.failed_per_min)));
        }), "no queue"),
      h("p", { class: "muted" }, "updated " + fmtTime(o.time)));
  }

  function renderWorkers() {
    var o = state.overview;
    if (!o) return show(h("p", { class: "muted" }, "loading..."));
    show(h("h1", {}, "Workers"),
      table(["worker", "host", "queue", ["concurrency", "num"], ["lease left", "num"], ["in flight", "num"],
             ["done", "num"], ["failed", "num"], "started", "current tasks"],
        o.workers.map(function (w) {
          var gone = w.lease_left < 0, ids = w.current_ids || (w.current ? [w.current] : []);
          var conc = typeof w.concurrency === "number"
            ? String(w.concurrency) + (w.per_slot > 1 ? " x " + w.per_slot : "") : "-";
          return h("tr", { "data-worker": w.id },
            h("td", { class: "id" }, w.id), h("td", { class: "id" }, w.host || String(w.id).split(":")[0]),
            h("td", { class: "id" }, w.queue),
            h("td", { class: "num", "data-col": "concurrency" }, conc),
            h("td", { class: "num" + (gone ? " bad" : "") }, gone ? "gone" : w.lease_left.toFixed(1) + " s"),
            h("td", { class: "num" }, fmtNum(w.inflight)),
            h("td", { class: "num" }, fmtNum(w.completed)), h("td", { class: "num" }, fmtNum(w.failed)),
            h("td", {}, fmtTime(w.started)),
            h("td", { class: "id", "data-col": "current" }, ids.length ? ids.map(function (id, i) {
              return [i ? " " : null, taskLink(id, w.queue)];
            }) : "-"));
        }), "no worker has a lease record"),
      h("p", { class: "muted" }, "concurrency: handler threads (x tasks each state runs at once); done and failed: since " +
        "the worker started, as it reported them (every 5 s); current tasks: what its in-flight list holds (at most 50)"));
  }

  // ---- dead letters ------------------------------------------------------------------------
  var FILTERS = [["task_id", "task id"], ["type", "type"], ["code", "error code"], ["reason", "reason contains"],
                 ["worker", "worker"]];

  function deadParams(extra) {
    var p = { queue: state.deadQueue, filter: state.filter };
    Object.keys(extra || {}).forEach(function (k) { p[k] = extra[k]; });
    return p;
  }
  function hasFilter() { return Object.keys(state.filter).some(function (k) { return state.filter[k]; }); }

  function renderDead(params) {
    state.deadQueue = params.get("queue") || state.deadQueue || queues()[0] || "";
    var inputs = {};
    var form = h("form", { class: "filters", onsubmit: function (ev) {
      ev.preventDefault();
      state.filter = {};
      FILTERS.forEach(function (f) { if (inputs[f[0]].value) state.filter[f[0]] = inputs[f[0]].value; });
      state.offset = 0;
      loadDead();
    } },
      h("label", {}, "queue", queueSelect(state.deadQueue, function (ev) {
        state.deadQueue = ev.target.value; state.offset = 0; loadDead();
      })),
      FILTERS.map(function (f) {
        inputs[f[0]] = h("input", { name: f[0], value: state.filter[f[0]] || "", size: 14 });
        return h("label", {}, f[1], inputs[f[0]]);
      }),
      h("button", { class: "primary", type: "submit", "data-act": "search" }, "Filter"));
    var box = h("div", { id: "dead-list" }, h("p", { class: "muted" }, "loading..."));
    show(h("h1", {}, "Dead letters"), form, box);
    loadDead();
  }

  function loadDead() {
    var box = document.getElementById("dead-list");
    if (!box) return;
    get("api/dead", deadParams({ offset: state.offset, limit: 50 })).then(function (d) {
      var checks = [];
      var rows = d.entries.map(function (e) {
        var cb = h("input", { type: "checkbox", "aria-label": "select", "data-fp": e.fp });
        checks.push(cb);
        return h("tr", { "data-fp": e.fp },
          READ_ONLY ? null : h("td", {}, cb),
          h("td", { class: "id" }, e.task_id ? taskLink(e.task_id, d.queue) : h("span", { class: "muted" }, "(none)")),
          h("td", { class: "id hide-sm" }, e.type || "-"), h("td", { class: "id" }, e.code || "-"),
          h("td", { class: "wrap" }, e.reason || "-"), h("td", { class: "hide-sm" }, fmtTime(e.failed_at)),
          h("td", {}, h("div", { class: "actions" },
            h("a", { href: "#/dead-entry?" + new URLSearchParams({ queue: d.queue, fp: e.fp }), "data-act": "view" }, "view"),
            READ_ONLY ? null : h("button", { "data-act": "requeue", disabled: e.truncated,
              onclick: function () { one("requeue", e); } }, "requeue"),
            READ_ONLY ? null : h("button", { class: "danger", "data-act": "delete",
              onclick: function () { one("delete", e); } }, "delete"))));
      });
      var head = ["task id", ["type", "hide-sm"], "code", "reason", ["failed at", "hide-sm"], ""];
      if (!READ_ONLY) head.unshift("");
      var progress = h("span", { id: "progress", class: "muted" });
      var bulk = READ_ONLY ? null : h("div", { class: "actions" },
        h("button", { "data-act": "requeue-selected", onclick: function () { selected("requeue", checks, progress); } },
          "requeue selected"),
        h("button", { class: "danger", "data-act": "delete-selected", onclick: function () { selected("delete", checks, progress); } },
          "delete selected"),
        h("button", { "data-act": "requeue-matching", onclick: function () { matching("requeue", d); } },
          hasFilter() ? "requeue all matching" : "requeue all"),
        h("button", { class: "danger", "data-act": "delete-matching", onclick: function () { matching("delete", d); } },
          hasFilter() ? "delete all matching" : "delete all"),
        progress);
      var pager = h("div", { class: "actions" },
        h("button", { disabled: state.offset === 0, onclick: function () {
          state.offset = Math.max(0, state.offset - 50); loadDead();
        } }, "newer"),
        h("span", { class: "muted" }, d.matched ? (state.offset + 1) + "-" + (state.offset + d.entries.length) + " of " + d.matched : ""),
        h("button", { disabled: state.offset + d.entries.length >= d.matched,
          onclick: function () { state.offset += 50; loadDead(); } }, "older"));
      clear(box);
      add(box, [h("p", { class: "muted" }, d.total + " entries in " + d.queue + (hasFilter() ? ", " + d.matched + " matching" : "") +
                 (d.looked >= d.scan_max ? " (the newest " + d.scan_max + " looked at)" : "")),
                bulk, table(head, rows, "no dead-letter entry" + (hasFilter() ? " matches" : "")), pager]);
    }).catch(failed);
  }

  function one(verb, e) {
    confirmBox(verb + " the dead-letter entry of task " + (e.task_id || "(none)") + "?", verb).then(function (yes) {
      if (!yes) return;
      post("api/dead/" + verb, { queue: state.deadQueue, fp: e.fp }).then(function (r) {
        toast(verb + "d " + r.done + " entry");
        loadDead();
      }).catch(failed);
    });
  }

  function selected(verb, checks, progress) {
    var fps = checks.filter(function (c) { return c.checked; }).map(function (c) { return c.getAttribute("data-fp"); });
    if (!fps.length) return toast("select entries first", true);
    confirmBox(verb + " " + fps.length + " selected entries?", verb).then(function (yes) {
      if (!yes) return;
      var done = 0, i = 0;
      (function next() {
        if (i >= fps.length) { toast(verb + "d " + done + " of " + fps.length); return loadDead(); }
        progress.textContent = verb + " " + (i + 1) + " of " + fps.length + "...";
        post("api/dead/" + verb, { queue: state.deadQueue, fp: fps[i++] }).then(function (r) {
          done += r.done; next();
        }).catch(function (e) { failed(e); next(); });
      })();
    });
  }

  function matching(verb, d) {
    var what = hasFilter() ? "every entry matching the filter (" + d.matched + " of the newest looked at)"
                           : "every entry (" + d.total + ")";
    confirmBox(verb + " " + what + " in " + d.queue + "?", verb).then(function (yes) {
      if (!yes) return;
      var p = deadParams(hasFilter() ? {} : { all: true });
      var bar = document.getElementById("progress");
      bar.textContent = verb + "...";
      post("api/dead/" + verb, p).then(function (r) {
        if (!r.job) { toast(verb + "d " + r.done + " entries"); return loadDead(); }
        // A job on the server: follow it until it ends.
        (function poll() {
          get("api/job", { id: r.job }).then(function (j) {
            bar.textContent = verb + "d " + fmtNum(j.done) + ", looked at " + fmtNum(j.seen) + " of " + fmtNum(j.total) +
              (j.finished ? "" : "...");
            if (!j.finished) return setTimeout(poll, 300);
            if (j.error) failed(new Error(j.error)); else toast(verb + "d " + j.done + " entries");
            loadDead();
          }).catch(failed);
        })();
      }).catch(failed);
    });
  }

  function kv(pairs) {
    return h("dl", { class: "kv" }, pairs.filter(function (p) { return p[1] !== undefined && p[1] !== null; }).map(function (p) {
      var v = typeof p[1] === "object" && !(p[1] instanceof Node) ? JSON.stringify(p[1]) : p[1];
      return [h("dt", {}, p[0]), h("dd", { class: "mono" }, v)];
    }));
  }

  function renderDeadEntry(params) {
    var q = params.get("queue"), fp = params.get("fp");
    show(h("p", { class: "muted" }, "loading..."));
    get("api/dead-entry", { queue: q, fp: fp }).then(function (e) {
      var err = e.error && typeof e.error === "object" ? e.error : {};
      show(h("h1", {}, "Dead-letter entry"),
        h("p", {}, link("back to the list", "#/dead?" + new URLSearchParams({ queue: q }))),
        READ_ONLY ? null : h("div", { class: "actions" },
          h("button", { "data-act": "requeue", disabled: e.truncated, onclick: function () {
            state.deadQueue = q; confirmBox("requeue this entry?", "requeue").then(function (y) {
              if (y) post("api/dead/requeue", { queue: q, fp: fp }).then(function () {
                toast("requeued"); location.hash = "#/dead";
              }).catch(failed);
            });
          } }, "requeue"),
          h("button", { class: "danger", "data-act": "delete", onclick: function () {
            confirmBox("delete this entry?", "delete").then(function (y) {
              if (y) post("api/dead/delete", { queue: q, fp: fp }).then(function () {
                toast("deleted"); location.hash = "#/dead";
              }).catch(failed);
            });
          } }, "delete")),
        kv([["task id", e.task_id ? taskLink(e.task_id, q) : null], ["type", e.type], ["queue", e.queue || q], ["worker", e.worker],
            ["attempts", e.attempts], ["failed at", fmtTime(e.failed_at)], ["reason", e.reason], ["error code", err.code],
            ["error", err.message], ["retryable", err.retryable === undefined ? null : String(err.retryable)],
            ["size", e.size + " bytes" + (e.truncated ? " (truncated: cannot be requeued)" : "")]]),
        err.traceback ? [h("h2", {}, "traceback"), h("pre", {}, err.traceback)] : null,
        h("h2", {}, "message (escaped: control bytes and invalid UTF-8 as \\xNN)"), h("pre", { id: "message" }, e.message),
        h("h2", {}, "raw entry"), h("pre", { id: "raw" }, e.raw));
    }).catch(function (e) { show(h("h1", {}, "Dead-letter entry"), h("p", { class: "bad" }, String(e.message))); });
  }

  // ---- tasks -------------------------------------------------------------------------------
  function renderTasks(params) {
    var id = h("input", { name: "id", size: 36, value: params.get("id") || "", placeholder: "task id" });
    var sel = queueSelect(params.get("queue") || queues()[0] || "");
    var st = h("select", { name: "state" }, ["", "submitted", "working", "input-required", "auth-required", "paused", "completed",
      "failed", "canceled", "rejected"].map(function (s) { return h("option", { value: s }, s || "any state"); }));
    var ctx = h("input", { name: "context", size: 20, placeholder: "context id" });
    var box = h("div", { id: "task-list" });
    // One page of the list (newest first), with buttons to the newer and older pages.
    function listPage(offset) {
      get("api/tasks", { queue: sel.value, state: st.value, context: ctx.value, offset: offset }).then(function (d) {
        clear(box);
        add(box, table(["task id", "state", ["attempts", "num"], "worker", "updated"], d.tasks.map(function (t) {
          return h("tr", {}, h("td", { class: "id" }, taskLink(t.task_id, t.queue)), h("td", {}, t.state),
            h("td", { class: "num" }, t.attempts), h("td", { class: "id" }, t.worker || "-"), h("td", {}, fmtTime(t.updated_at)));
        }), "no task"));
        add(box, h("div", { class: "pager" },
          h("button", { "data-act": "newer", disabled: d.offset === 0,
                        onclick: function () { listPage(Math.max(0, d.offset - d.limit)); } }, "newer"),
          h("span", { class: "muted" }, d.tasks.length ? " " + (d.offset + 1) + "-" + (d.offset + d.tasks.length) + " " : " "),
          h("button", { "data-act": "older", disabled: !d.more, onclick: function () { listPage(d.offset + d.limit); } }, "older")));
      }).catch(failed);
    }
    show(h("h1", {}, "Tasks"),
      h("form", { class: "filters", onsubmit: function (ev) {
        ev.preventDefault();
        location.hash = "#/task?" + new URLSearchParams({ id: id.value, queue: sel.value });
      } }, h("label", {}, "look up by id", id), h("label", {}, "queue", sel),
        h("button", { class: "primary", type: "submit", "data-act": "lookup" }, "Look up")),
      STORAGE ? h("form", { class: "filters", onsubmit: function (ev) {
        ev.preventDefault();
        listPage(0);
      } }, h("label", {}, "state", st), h("label", {}, "context", ctx), h("button", { type: "submit" }, "List"))
        : h("p", { class: "muted" }, "Listing tasks needs the task storage (start the dashboard with --database-url)."),
      box);
  }

  // ---- recurring schedules and delayed operations -----------------------------------------
  function renderScheduled(params) {
    var q = params.get("queue") || queues()[0] || "";
    var offset = Number(params.get("offset") || 0);
    function go(o) { location.hash = "#/scheduled?" + new URLSearchParams({ queue: q, offset: String(o) }); }
    get("api/schedules", { queue: q, offset: offset }).then(function (d) {
      var ds = d.delayed;
      show(h("h1", {}, "Scheduled"),
        h("div", { class: "filters" }, h("label", {}, "queue", queueSelect(q, function (ev) {
          location.hash = "#/scheduled?" + new URLSearchParams({ queue: ev.target.value });
        }))),
        h("h2", {}, "Recurring schedules"),
        table(["name", "when", "state", "last tick", "next tick", "missed", ""], d.schedules.map(function (r) {
          var when = r.every ? "every " + r.every + " s" : (r.cron || "-") + (r.tz ? " " + r.tz : "");
          var verb = r.state === "paused" ? "resume" : "pause";
          return h("tr", { "data-schedule": r.name },
            h("td", { class: "id" }, r.name), h("td", { class: "mono" }, when), h("td", { "data-col": "state" }, r.state),
            h("td", {}, fmtTime(r.last)), h("td", {}, fmtTime(r.next)), h("td", {}, r.missed || "-"),
            h("td", {}, READ_ONLY || r.state === "removed" ? null : h("button", { "data-act": verb, onclick: function () {
              post("api/schedule/" + verb, { queue: q, name: r.name }).then(function (x) {
                toast(r.name + ": " + x.state); renderScheduled(params);
              }).catch(failed);
            } }, verb)));
        }), "no recurring schedule on this queue (workers declare them: docs/recurring.md)"),
        h("h2", {}, "Delayed operations (" + fmtNum(ds.total) + "), soonest first"),
        table(["due", "task id", "type", "", ["size", "num"]], ds.entries.map(function (e) {
          return h("tr", {}, h("td", {}, fmtTime(e.due)),
            h("td", { class: "id" }, e.task_id ? taskLink(e.task_id, q) : "-"), h("td", {}, e.type || "-"),
            h("td", { class: "muted" }, e.retry ? "retry" : ""), h("td", { class: "num" }, fmtNum(e.size)));
        }), "nothing delayed"),
        h("div", { class: "pager" },
          h("button", { "data-act": "newer", disabled: offset === 0,
                        onclick: function () { go(Math.max(0, offset - ds.limit)); } }, "sooner"),
          h("span", { class: "muted" }, ds.entries.length ? " " + (offset + 1) + "-" + (offset + ds.entries.length) + " " : " "),
          h("button", { "data-act": "older", disabled: offset + ds.entries.length >= ds.total,
                        onclick: function () { go(offset + ds.limit); } }, "later")));
    }).catch(function (e) { show(h("h1", {}, "Scheduled"), h("p", { class: "bad" }, String(e.message))); });
  }

  var OPS = [["cancel", "danger"], ["pause", ""], ["resume", ""], ["retry", ""]];

  function renderTask(params) {
    var id = params.get("id") || "", q = params.get("queue") || "";
    show(h("p", { class: "muted" }, "loading..."));
    get("api/task", { id: id, queue: q }).then(function (d) {
      var t = d.task, msg = h("input", { name: "message", size: 30, placeholder: "message for resume (optional)" });
      var ops = READ_ONLY ? null : h("div", { class: "actions" }, OPS.map(function (o) {
        return h("button", { class: o[1], "data-act": o[0], onclick: function () {
          confirmBox(o[0] + " task " + id + "?", o[0]).then(function (y) {
            if (!y) return;
            post("api/task/" + o[0], { id: id, queue: d.queue, message: msg.value }).then(function (r) {
              toast(o[0] + ": " + r.result); setTimeout(function () { renderTask(params); }, 600);
            }).catch(failed);
          });
        } }, o[0]);
      }), msg);
      show(h("h1", {}, "Task"), h("p", { class: "mono", id: "task-id" }, id), ops,
        t ? kv([["state", t.state], ["requested", t.requested], ["queue", t.queue], ["context", t.context_id],
                ["attempts", t.attempts], ["worker", t.worker], ["created", fmtTime(t.created_at)], ["updated", fmtTime(t.updated_at)],
                ["error", t.error], ["checkpoint", t.checkpoint]])
          : h("p", { class: "muted" }, d.storage ? "not in the task storage" : "no task storage (--database-url): events only"),
        t ? [h("h2", {}, "history (" + t.history.length + ")"), h("pre", {}, JSON.stringify(t.history, null, 2)),
             h("h2", {}, "artifacts (" + t.artifacts.length + ")"), h("pre", {}, JSON.stringify(t.artifacts, null, 2))] : null,
        h("h2", {}, "events (what the queue's stream keeps)"),
        table(["at", "event", "state", ["attempt", "num"], "worker", "detail"], d.events.map(function (e) {
          var detail = e.reason || (e.error && (e.error.message || e.error.code)) ||
                       (e.progress !== undefined ? JSON.stringify(e.progress) + (e.message ? " " + e.message : "") : "");
          return h("tr", { "data-event": e.event }, h("td", {}, fmtTime(e.at)), h("td", {}, e.event), h("td", {}, e.state || ""),
            h("td", { class: "num" }, e.attempt || ""), h("td", { class: "id" }, e.worker || ""),
            h("td", { class: "wrap" }, String(detail)));
        }), "no event of this task in the stream"));
    }).catch(function (e) { show(h("h1", {}, "Task"), h("p", { class: "bad" }, String(e.message))); });
  }

  // ---- routing and live updates ------------------------------------------------------------
  function route() {
    var hash = location.hash || "#/overview", qi = hash.indexOf("?");
    var page = (qi < 0 ? hash : hash.slice(0, qi)).replace(/^#\//, "");
    var params = new URLSearchParams(qi < 0 ? "" : hash.slice(qi + 1));
    state.page = page;
    document.querySelectorAll("nav a").forEach(function (a) {
      var p = a.getAttribute("data-page");
      a.className = (p === page || (p === "dead" && page === "dead-entry") || (p === "tasks" && page === "task")) ? "on" : "";
    });
    if (page === "workers") renderWorkers();
    else if (page === "dead") renderDead(params);
    else if (page === "dead-entry") renderDeadEntry(params);
    else if (page === "tasks") renderTasks(params);
    else if (page === "task") renderTask(params);
    else if (page === "scheduled") renderScheduled(params);
    else { state.page = "overview"; renderOverview(); }
  }

  function live() {
    var el = document.getElementById("live");
    var es = new EventSource("api/stream");
    es.onmessage = function (ev) {
      state.overview = JSON.parse(ev.data);
      el.textContent = "live"; el.className = "live on";
      if (state.page === "overview") renderOverview();
      else if (state.page === "workers") renderWorkers();
    };
    es.onerror = function () { el.textContent = "reconnecting"; el.className = "live"; };
    // The server is up but cannot read Redis: say so, keep the last figures.
    es.addEventListener("problem", function (ev) {
      var e = {};
      try { e = JSON.parse(ev.data); } catch (x) { /* shown as is */ }
      el.textContent = "not updated: " + (e.error || ev.data); el.className = "live bad";
    });
  }

  window.addEventListener("hashchange", route);
  get("api/overview").then(function (o) { state.overview = o; route(); }).catch(function (e) { route(); failed(e); });
  live();
})();
]==]
