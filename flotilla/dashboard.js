// The Flotilla dashboard: polls /api/fleet every second and fills the tables.
// Read-only. Every value is written with textContent (never as HTML), so nothing the fleet
// reports, however odd, can become markup or script.
"use strict";

(() => {
  const POLL_MS = 1000;
  const TIMEOUT_MS = 5000;
  const STALE_AFTER_MS = 5000; // data older than this (collector stuck, store down) is stale
  const STATES = ["ACTIVE", "REDUCING", "PAUSED", "HALTED", "EMERGENCY"];
  let lastOk = null;

  const byId = (id) => document.getElementById(id);

  function text(value) {
    return value === null || value === undefined || value === "" ? "-" : String(value);
  }

  function setText(id, value) {
    const el = byId(id);
    if (el) el.textContent = text(value);
  }

  function total(counts) {
    return Object.values(counts || {}).reduce((a, b) => a + Number(b), 0);
  }

  function micros(ns) {
    return ns === null || ns === undefined ? "-" : (ns / 1000).toFixed(0);
  }

  // Replace a tbody's rows: one row per item, one cell per value, each written as text.
  function fillRows(id, items, cells, emptyText) {
    const body = byId(id);
    if (!body) return;
    const rows = items.map((item) => {
      const tr = document.createElement("tr");
      for (const value of cells(item)) {
        const td = document.createElement("td");
        td.textContent = text(value);
        tr.appendChild(td);
      }
      return tr;
    });
    if (rows.length === 0) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.className = "muted";
      td.colSpan = 99;
      td.textContent = emptyText;
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function renderTrading(t) {
    const badge = byId("state");
    const state = STATES.includes(t.state) ? t.state : "UNKNOWN";
    badge.textContent = t.state ? String(t.state) : "UNKNOWN";
    badge.className = "badge state-" + state.toLowerCase();
    setText("seq", t.seq);
    setText("reason", t.reason);
    setText("source", t.source);
    setText("operator", t.operator);
    setText("changed", t.changed_utc);
    const halted = Object.entries(t.halted_strategies || {}).map(([s, why]) => s + ": " + why);
    setText("halted", halted.length ? halted.join("; ") : "none");
    setText("triggers", (t.hard_triggers || []).length ? t.hard_triggers.join(", ") : "none");
    setText(
      "heard",
      t.heard_s_ago === null || t.heard_s_ago === undefined
        ? "not heard (state from the store)"
        : t.heard_s_ago.toFixed(1) + " s ago",
    );
  }

  function renderCounters(s) {
    setText("c-ticks-published", total(s.ticks_published));
    setText("c-ticks-received", total(s.ticks_received));
    setText("c-signals", s.signals);
    setText("c-orders", s.orders_submitted);
    setText("c-fills", s.fills);
    setText("c-rejected", total(s.orders_rejected));
    setText("c-timeouts", s.order_timeouts);
    setText("c-working", s.working_orders);
    setText("c-gaps", s.sequence_gaps);
    setText("c-decode-errors", s.decode_errors);
    const lat = s.tick_to_order_latency || {};
    setText("c-latency", micros(lat.p50_ns) + " / " + micros(lat.p99_ns));
    setText("pnl-realized", s.realized_pnl);
    setText("pnl-unrealized", s.unrealized_pnl);
    setText("pnl-fees", s.fees);
    const positions = s.positions || {};
    fillRows(
      "positions-body",
      Object.keys(positions).sort(),
      (sym) => [sym, positions[sym], (s.avg_prices || {})[sym], (s.marks || {})[sym]],
      "no positions",
    );
    fillRows(
      "rejections-body",
      Object.entries(s.orders_rejected || {}),
      ([reason, n]) => [reason, n],
      "none",
    );
  }

  function instances(service) {
    return service.instances
      .map((i) => {
        const age = i.age_s === null ? "?" : i.age_s.toFixed(1) + " s ago";
        return i.instance + " (" + age + (i.drained ? ", drained" : "") + ")";
      })
      .join(", ");
  }

  function renderServices(fleet) {
    fillRows(
      "services-body",
      fleet.services || [],
      (svc) => {
        const up = svc.endpoints.filter((e) => e.up).length;
        return [
          svc.service,
          svc.health,
          svc.obeys,
          up + "/" + svc.endpoints.length + " up",
          instances(svc),
          svc.note,
        ];
      },
      "no service has reported yet",
    );
    fillRows(
      "acks-body",
      Object.entries(fleet.acks || {}).sort(),
      ([instance, seq]) => [instance, seq],
      "none yet",
    );
  }

  function renderEvents(fleet) {
    fillRows(
      "orders-body",
      fleet.recent_orders || [],
      (o) => [
        o.time_utc, o.client_order_id, o.strategy, o.symbol, o.side, o.order_type, o.status,
        o.qty, o.filled_qty, o.avg_px, o.reason,
      ],
      "no orders seen yet",
    );
    fillRows(
      "fills-body",
      fleet.recent_fills || [],
      (f) => [
        f.fill_seq, f.time_utc, f.client_order_id, f.symbol, f.side, f.qty, f.price, f.fee,
        f.liquidity,
      ],
      "no fills seen yet",
    );
  }

  function render(fleet) {
    renderTrading(fleet.trading || {});
    renderCounters(fleet.summary || {});
    renderServices(fleet);
    renderEvents(fleet);
    setText("generated", fleet.generated_utc);
  }

  function markLive() {
    lastOk = new Date();
    document.body.dataset.status = "live";
    setText("conn", "live: updated " + lastOk.toLocaleTimeString());
  }

  function markStale(why) {
    document.body.dataset.status = "stale";
    const since = lastOk ? "; last good update " + lastOk.toLocaleTimeString() : "";
    setText("conn", "STALE: " + why + since);
  }

  async function poll() {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      const resp = await fetch("/api/fleet", {
        cache: "no-store",
        headers: { Accept: "application/json" },
        signal: abort.signal,
      });
      const body = await resp.json();
      if (!resp.ok || !body.fleet) throw new Error(body.error || "HTTP " + resp.status);
      render(body.fleet);
      if (body.age_ms > STALE_AFTER_MS || body.error) {
        markStale(body.error || "data is " + (body.age_ms / 1000).toFixed(0) + " s old");
      } else {
        markLive();
      }
    } catch (err) {
      markStale(err.name === "AbortError" ? "no answer within 5 s" : String(err.message || err));
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  poll();
})();
