// @ts-check
// The Grafana dashboards, as code: `node grafana/dashboards.mjs` writes
// grafana/dashboards/*.json (committed, provisioned by grafana/provisioning);
// `--check` fails when the committed files differ from what this writes.
//
// Type-checked against Grafana's own dashboard types (@grafana/schema) by
// `tsc -p tests/web` (the test `grafana_dashboards_type_check`), and every
// query below is run against a real Prometheus scraping a real dbmux by the
// integration test `observe::dashboards_and_alerts_query_real_prometheus`.
//
// Adding a panel: one line in a dashboard below, with a metric name from the
// spec in docs/operations.md. Use `$__rate_interval` for rate windows and
// `$replica` / `$backend` for the dashboard variables.

import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

/** @typedef {import("@grafana/schema").Dashboard} Dashboard */
/** @typedef {import("@grafana/schema").Panel} Panel */
/** @typedef {import("@grafana/schema").RowPanel} RowPanel */
/** @typedef {import("@grafana/schema").VariableModel} VariableModel */
/** @typedef {import("@grafana/schema").DataSourceRef} DataSourceRef */
/** @typedef {import("@grafana/schema").FieldConfigSource} FieldConfigSource */
/** @typedef {import("@grafana/schema").ThresholdsConfig} ThresholdsConfig */

/** @typedef {{ expr: string, legend?: string }} Query */
/** @typedef {{ w?: number, h?: number, description?: string, min?: number, max?: number, stack?: boolean,
 *              thresholds?: Array<[number | null, string]>, mappings?: Array<[number, string, string]> }} Opts */

/** The Prometheus data source, chosen by the `datasource` variable. */
/** @type {DataSourceRef} */
const DS = { type: "prometheus", uid: "${datasource}" };

/** Grafana's enums are TypeScript enums; their JSON values are these strings. */
const ABSOLUTE = /** @type {import("@grafana/schema").ThresholdsMode} */ (/** @type {unknown} */ ("absolute"));
/** @param {string} mode */
const colorMode = (mode) => /** @type {import("@grafana/schema").FieldColorModeId} */ (/** @type {unknown} */ (mode));
const VALUE_MAP = /** @type {import("@grafana/schema").MappingType.ValueToText} */ (/** @type {unknown} */ ("value"));

/** @param {Array<[number | null, string]>} steps @returns {ThresholdsConfig} */
function thresholds(steps) {
  return { mode: ABSOLUTE, steps: steps.map(([value, color]) => ({ value, color })) };
}

/**
 * Lays panels out left to right in rows of 24 columns.
 */
class Layout {
  constructor() { this.x = 0; this.y = 0; this.rowH = 0; this.id = 1; }
  /** @param {number} w @param {number} h */
  place(w, h) {
    if (this.x + w > 24) { this.x = 0; this.y += this.rowH; this.rowH = 0; }
    const pos = { x: this.x, y: this.y, w, h };
    this.x += w; this.rowH = Math.max(this.rowH, h);
    return pos;
  }
  /** @param {string} title @returns {RowPanel} */
  row(title) {
    if (this.x > 0) { this.x = 0; this.y += this.rowH; this.rowH = 0; }
    const p = { type: /** @type {"row"} */ ("row"), id: this.id++, title, collapsed: false, panels: [],
      gridPos: { x: 0, y: this.y, w: 24, h: 1 } };
    this.y += 1;
    return p;
  }
  /** @param {Query[]} queries */
  targets(queries) {
    return queries.map((q, i) => ({
      refId: String.fromCharCode(65 + i), datasource: DS, expr: q.expr,
      legendFormat: q.legend ?? "__auto", range: true, instant: false,
    }));
  }
  /** @param {string} unit @param {Opts} o @returns {FieldConfigSource} */
  fieldConfig(unit, o, custom = {}) {
    return {
      defaults: {
        unit, min: o.min, max: o.max, custom,
        thresholds: thresholds(o.thresholds ?? [[null, "green"]]),
        mappings: (o.mappings ?? []).map(([value, text, color]) => ({
          type: VALUE_MAP, options: { [String(value)]: { text, color, index: 0 } },
        })),
        color: { mode: colorMode(o.thresholds ? "thresholds" : "palette-classic") },
      },
      overrides: [],
    };
  }
  /** A time series chart. @param {string} title @param {string} unit @param {Query[]} queries @param {Opts} [o] @returns {Panel} */
  chart(title, unit, queries, o = {}) {
    return {
      type: "timeseries", id: this.id++, title, description: o.description, datasource: DS,
      gridPos: this.place(o.w ?? 12, o.h ?? 8),
      targets: this.targets(queries),
      fieldConfig: this.fieldConfig(unit, o, {
        drawStyle: "line", lineWidth: 1, fillOpacity: o.stack ? 30 : 10, showPoints: "never", spanNulls: true,
        stacking: { mode: o.stack ? "normal" : "none", group: "A" },
      }),
      options: { legend: { displayMode: "list", placement: "bottom", showLegend: true },
        tooltip: { mode: "multi", sort: "desc" } },
    };
  }
  /** A single figure. @param {string} title @param {string} unit @param {Query[]} queries @param {Opts} [o] @returns {Panel} */
  stat(title, unit, queries, o = {}) {
    return {
      type: "stat", id: this.id++, title, description: o.description, datasource: DS,
      gridPos: this.place(o.w ?? 4, o.h ?? 4),
      targets: this.targets(queries),
      fieldConfig: this.fieldConfig(unit, o),
      options: { reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false },
        colorMode: "background", graphMode: "area", textMode: "auto", justifyMode: "auto", orientation: "auto" },
    };
  }
  /** A table of current values. @param {string} title @param {string} unit @param {Query[]} queries @param {Opts} [o] @returns {Panel} */
  table(title, unit, queries, o = {}) {
    return {
      type: "table", id: this.id++, title, description: o.description, datasource: DS,
      gridPos: this.place(o.w ?? 12, o.h ?? 6),
      targets: this.targets(queries).map((t) => ({ ...t, format: "table", instant: true, range: false })),
      fieldConfig: this.fieldConfig(unit, o),
      options: { showHeader: true },
      transformations: [{ id: "merge", options: {} }],
    };
  }
}

/** @returns {VariableModel} */
function datasourceVariable() {
  return { type: "datasource", name: "datasource", label: "Prometheus", query: "prometheus",
    current: { text: "Prometheus", value: "prometheus" }, hide: 0, refresh: 1, options: [] };
}

/** A multi-value variable over one label of one metric. @param {string} name @param {string} metric @returns {VariableModel} */
function labelVariable(name, metric) {
  return {
    type: "query", name, label: name, datasource: DS, query: { query: `label_values(${metric}, ${name})`, refId: "var" },
    includeAll: true, multi: true, allValue: ".*",
    current: { text: "All", value: "$__all" }, refresh: 2, hide: 0, options: [], sort: 1,
  };
}

/** @param {string} uid @param {string} title @param {string} description @param {Array<Panel | RowPanel>} panels @param {VariableModel[]} vars @returns {Dashboard} */
function dashboard(uid, title, description, panels, vars = []) {
  return {
    uid, title, description, tags: ["dbmux"], editable: true, graphTooltip: 1, schemaVersion: 39, version: 1,
    refresh: "10s", time: { from: "now-1h", to: "now" }, timezone: "browser", fiscalYearStartMonth: 0,
    liveNow: false, weekStart: "",
    links: [{ title: "dbmux", type: "dashboards", tags: ["dbmux"], asDropdown: true, icon: "external link",
      includeVars: false, keepTime: true, targetBlank: false, tooltip: "", url: "" }],
    templating: { list: [datasourceVariable(), ...vars] },
    annotations: { list: [] },
    panels,
  };
}

const R = "$__rate_interval";

/** Is everything healthy, how far behind is each replica, how much flows. */
function overview() {
  const l = new Layout();
  return dashboard("dbmux-overview", "dbmux / Overview",
    "Is everything healthy, how far behind is each replica, how much flows through.", [
      l.stat("Capture", "none", [{ expr: "min(dbmux_capture_connected)" }],
        { thresholds: [[null, "red"], [1, "green"]], mappings: [[0, "disconnected", "red"], [1, "streaming", "green"]],
          description: "1 while capture streams the master's binlog." }),
      l.stat("Most events behind", "none", [{ expr: "max(dbmux_apply_lag_events)" }],
        { thresholds: [[null, "green"], [1000, "orange"], [100000, "red"]], description: "The replica furthest behind, in log events." }),
      l.stat("Worst replica lag", "s", [{ expr: "max(dbmux_apply_lag_seconds)" }],
        { thresholds: [[null, "green"], [10, "orange"], [60, "red"]], description: "Source commit to replica commit of the last applied batch." }),
      l.stat("Errors (15 min)", "none", [{ expr: "sum(increase(dbmux_errors_total[15m]))" }],
        { thresholds: [[null, "green"], [1, "orange"]], description: "Transient errors are retried; definite ones stop dbmux." }),
      l.stat("Proxy backends up", "none", [{ expr: "sum(dbmux_proxy_backend_up)" }],
        { thresholds: [[null, "red"], [1, "green"]], description: "Backends that answered their last ping." }),
      l.stat("Proxy queries/s", "reqps", [{ expr: `sum(rate(dbmux_proxy_queries_total[${R}]))` }]),
      l.chart("Replica lag (events behind)", "none", [{ expr: "dbmux_apply_lag_events", legend: "{{replica}}" }],
        { description: "Log events not yet applied by each replica." }),
      l.chart("Replica lag (seconds)", "s", [{ expr: "dbmux_apply_lag_seconds", legend: "{{replica}}" }],
        { description: "Source commit to replica commit of each replica's last batch." }),
      l.chart("Throughput", "ops", [
        { expr: `sum(rate(dbmux_capture_events_total[${R}]))`, legend: "captured" },
        { expr: `sum by (replica) (rate(dbmux_apply_events_total[${R}]))`, legend: "applied to {{replica}}" },
      ], { description: "Row changes per second, captured from the master and applied to each replica." }),
      l.chart("Proxy queries by route", "reqps", [
        { expr: `sum by (route) (rate(dbmux_proxy_queries_total[${R}]))`, legend: "{{route}}" },
      ], { stack: true }),
      l.table("Running", "none", [{ expr: "dbmux_build_info", legend: "{{version}}" }], { w: 24, h: 4 }),
    ]);
}

/** Capture, the log and every applier. */
function pipeline() {
  const l = new Layout();
  const sel = 'replica=~"$replica"';
  return dashboard("dbmux-pipeline", "dbmux / Pipeline", "Capture from the master, the change log, and each replica's applier.", [
    l.row("Capture"),
    l.chart("Captured", "ops", [
      { expr: `rate(dbmux_capture_events_total[${R}])`, legend: "row changes/s" },
      { expr: `rate(dbmux_capture_transactions_total[${R}])`, legend: "transactions/s" },
    ], { w: 8 }),
    l.chart("Binlog written since the newest captured change", "bytes", [
      { expr: "dbmux_capture_binlog_bytes_behind", legend: "bytes" },
    ], { w: 8, description: "Includes writes to databases dbmux does not capture: a high flat value while the master is busy elsewhere is normal." }),
    l.chart("Since the newest captured commit", "s", [
      { expr: "time() - dbmux_capture_last_commit_timestamp_seconds", legend: "seconds" },
    ], { w: 8, description: "Grows while the captured databases are quiet." }),
    l.chart("Capture connected", "none", [{ expr: "dbmux_capture_connected", legend: "connected" }], { w: 8, min: 0, max: 1 }),
    l.chart("Capture position", "none", [
      { expr: "dbmux_capture_position_file", legend: "binlog file number" },
    ], { w: 8 }),
    l.chart("Capture offset in the binlog file", "bytes", [
      { expr: "dbmux_capture_position_offset_bytes", legend: "offset" },
    ], { w: 8 }),
    l.row("Log"),
    l.chart("Log seq", "none", [
      { expr: "dbmux_log_last_seq", legend: "newest" },
      { expr: "dbmux_log_first_seq", legend: "oldest (truncation)" },
    ], { w: 8 }),
    l.chart("Log size", "bytes", [
      { expr: "dbmux_log_disk_bytes", legend: "on disk" },
      { expr: `rate(dbmux_log_appended_bytes_total[${R}])`, legend: "appended/s" },
    ], { w: 8 }),
    l.chart("Log append latency (incl. fsync)", "s", [
      { expr: `histogram_quantile(0.5, sum by (le) (rate(dbmux_log_append_seconds_bucket[${R}])))`, legend: "p50" },
      { expr: `histogram_quantile(0.99, sum by (le) (rate(dbmux_log_append_seconds_bucket[${R}])))`, legend: "p99" },
    ], { w: 8 }),
    l.row("Apply"),
    l.chart("Applied rows/s", "ops", [{ expr: `rate(dbmux_apply_events_total{${sel}}[${R}])`, legend: "{{replica}}" }], { w: 8 }),
    l.chart("Events behind", "none", [{ expr: `dbmux_apply_lag_events{${sel}}`, legend: "{{replica}}" }], { w: 8 }),
    l.chart("Lag (seconds)", "s", [{ expr: `dbmux_apply_lag_seconds{${sel}}`, legend: "{{replica}}" }], { w: 8 }),
    l.chart("Batch apply latency", "s", [
      { expr: `histogram_quantile(0.5, sum by (le, replica) (rate(dbmux_apply_batch_seconds_bucket{${sel}}[${R}])))`, legend: "p50 {{replica}}" },
      { expr: `histogram_quantile(0.99, sum by (le, replica) (rate(dbmux_apply_batch_seconds_bucket{${sel}}[${R}])))`, legend: "p99 {{replica}}" },
    ], { w: 8 }),
    l.chart("Batch size (events)", "none", [
      { expr: `rate(dbmux_apply_batch_events_sum{${sel}}[${R}]) / rate(dbmux_apply_batch_events_count{${sel}}[${R}])`, legend: "mean {{replica}}" },
      { expr: `histogram_quantile(0.99, sum by (le, replica) (rate(dbmux_apply_batch_events_bucket{${sel}}[${R}])))`, legend: "p99 {{replica}}" },
    ], { w: 8 }),
    l.chart("Batches/s", "ops", [{ expr: `rate(dbmux_apply_batches_total{${sel}}[${R}])`, legend: "{{replica}}" }], { w: 8 }),
    l.chart("Applied seq", "none", [
      { expr: `dbmux_apply_last_seq{${sel}}`, legend: "{{replica}}" },
      { expr: "dbmux_log_last_seq", legend: "log" },
    ], { w: 12 }),
    l.chart("Errors", "ops", [
      { expr: `sum by (component, class) (rate(dbmux_errors_total[${R}]))`, legend: "{{component}} {{class}}" },
    ], { w: 12, description: "transient: retried with backoff; definite: dbmux stops and says why." }),
  ], [labelVariable("replica", "dbmux_apply_last_seq")]);
}

/** The front door. */
function proxy() {
  const l = new Layout();
  const sel = 'backend=~"$backend"';
  const q = (/** @type {number} */ p) => `histogram_quantile(${p}, sum by (le, route) (rate(dbmux_proxy_query_duration_seconds_bucket[${R}])))`;
  return dashboard("dbmux-proxy", "dbmux / Proxy", "The MySQL-protocol front door: routes, latency, backends, pools.", [
    l.row("Queries"),
    l.chart("Queries by route", "reqps", [{ expr: `sum by (route) (rate(dbmux_proxy_queries_total[${R}]))`, legend: "{{route}}" }], { w: 8, stack: true }),
    l.chart("Queries by outcome", "reqps", [{ expr: `sum by (outcome) (rate(dbmux_proxy_queries_total[${R}]))`, legend: "{{outcome}}" }], { w: 8, stack: true }),
    l.chart("Share not ok", "percentunit", [
      { expr: `sum(rate(dbmux_proxy_queries_total{outcome!="ok"}[${R}])) / clamp_min(sum(rate(dbmux_proxy_queries_total[${R}])), 1e-9)`, legend: "error + failed" },
    ], { w: 8, min: 0 }),
    l.chart("Latency p50", "s", [{ expr: q(0.5), legend: "{{route}}" }], { w: 8 }),
    l.chart("Latency p99", "s", [{ expr: q(0.99), legend: "{{route}}" }], { w: 8 }),
    l.chart("Mean latency", "s", [
      { expr: `sum by (route) (rate(dbmux_proxy_query_duration_seconds_sum[${R}])) / sum by (route) (rate(dbmux_proxy_query_duration_seconds_count[${R}]))`, legend: "{{route}}" },
    ], { w: 8 }),
    l.row("Sessions"),
    l.chart("Client sessions", "none", [{ expr: "dbmux_proxy_connections", legend: "open" }], { w: 8 }),
    l.chart("Refused and failed logins", "ops", [
      { expr: `rate(dbmux_proxy_refused_total[${R}])`, legend: "refused" },
      { expr: `rate(dbmux_proxy_auth_failures_total[${R}])`, legend: "bad login" },
    ], { w: 8 }),
    l.chart("Read-your-writes and failovers", "ops", [
      { expr: `rate(dbmux_proxy_ryw_master_reads_total[${R}])`, legend: "reads kept on the master" },
      { expr: `rate(dbmux_proxy_replica_failovers_total[${R}])`, legend: "replica failovers" },
    ], { w: 8 }),
    l.chart("Client memory", "bytes", [{ expr: "dbmux_proxy_client_memory_bytes", legend: "held" }], { w: 12, min: 0,
      description: "Client data held under max_memory (big packets, long data, prepared statement texts). At the limit, clients get error 1041." }),
    l.chart("Refused packets, KILLs, panics", "ops", [
      { expr: `rate(dbmux_proxy_packets_refused_total[${R}])`, legend: "packets refused" },
      { expr: `rate(dbmux_proxy_kills_total[${R}])`, legend: "KILLs" },
      { expr: `rate(dbmux_proxy_session_panics_total[${R}])`, legend: "session panics" },
    ], { w: 12, description: "Packets over max_allowed_packet or max_memory; KILL statements carried out; sessions ended by a panic (a bug to report: the process and the other sessions go on)." }),
    l.row("Result cache"),
    l.chart("Cache lookups", "ops", [
      { expr: `rate(dbmux_cache_hits_total[${R}])`, legend: "hits" },
      { expr: `rate(dbmux_cache_misses_total[${R}])`, legend: "misses" },
      { expr: `rate(dbmux_cache_fills_total[${R}])`, legend: "fills" },
    ], { w: 8, description: "Cacheable reads answered from Redis (hits) or by a database (misses, then filled in the background). See docs/cache.md." }),
    l.chart("Stale fills refused, Redis errors", "ops", [
      { expr: `rate(dbmux_cache_fills_refused_stale_total[${R}])`, legend: "fills refused as stale" },
      { expr: `rate(dbmux_cache_redis_errors_total[${R}])`, legend: "Redis errors (proxy)" },
      { expr: `rate(dbmux_cache_invalidator_redis_errors_total[${R}])`, legend: "Redis errors (invalidator)" },
    ], { w: 8, description: "A fill older than a change the invalidator recorded is refused atomically (the race docs/cache.md describes); Redis errors make reads go to the databases." }),
    l.chart("Invalidation lag", "s", [
      { expr: `histogram_quantile(0.5, sum by (le) (rate(dbmux_cache_invalidation_lag_seconds_bucket[${R}])))`, legend: "p50" },
      { expr: `histogram_quantile(0.99, sum by (le) (rate(dbmux_cache_invalidation_lag_seconds_bucket[${R}])))`, legend: "p99" },
      { expr: "dbmux_cache_available", legend: "cache available (0/1)" },
    ], { w: 8, description: "Master commit to the change's tables invalidated in Redis. 'available' is 0 while the proxy does not serve from the cache (Redis down, invalidator silent)." }),
    l.row("Backends"),
    l.chart("Ping latency", "s", [{ expr: `dbmux_proxy_backend_ping_seconds{${sel}}`, legend: "{{backend}}" }], { w: 12 }),
    l.chart("Up", "none", [{ expr: `dbmux_proxy_backend_up{${sel}}`, legend: "{{backend}}" }], { w: 12, min: 0, max: 1 }),
    l.chart("Pool connections", "none", [
      { expr: `dbmux_proxy_backend_connections{${sel}}`, legend: "open {{backend}}" },
      { expr: `dbmux_proxy_pool_idle_connections{${sel}}`, legend: "idle {{backend}}" },
    ], { w: 8 }),
    l.chart("New backend connections", "ops", [{ expr: `rate(dbmux_proxy_backend_connects_total{${sel}}[${R}])`, legend: "{{backend}}" }], { w: 8 }),
    l.chart("Replica applied seq vs log", "none", [
      { expr: `dbmux_proxy_backend_applied_seq{${sel}}`, legend: "{{backend}}" },
      { expr: "dbmux_log_last_seq", legend: "log" },
    ], { w: 8 }),
  ], [labelVariable("backend", "dbmux_proxy_backend_up")]);
}

export const DASHBOARDS = { overview, pipeline, proxy };

const here = dirname(fileURLToPath(import.meta.url));
const out = join(here, "dashboards");
const check = process.argv.includes("--check");
let stale = [];
mkdirSync(out, { recursive: true });
for (const [name, make] of Object.entries(DASHBOARDS)) {
  const file = join(out, `${name}.json`);
  const text = JSON.stringify(make(), null, 2) + "\n";
  if (check) {
    let have = "";
    try { have = readFileSync(file, "utf8"); } catch { /* missing */ }
    if (have !== text) stale.push(file);
  } else {
    writeFileSync(file, text);
  }
}
if (stale.length) {
  console.error(`out of date (run node grafana/dashboards.mjs): ${stale.join(", ")}`);
  process.exit(1);
}
