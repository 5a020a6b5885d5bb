//! Seeing the fleet: `/metrics` under the standard workload, every Grafana
//! panel and alert rule against a real Prometheus scraping a real dbmux, the
//! status page in headless Chromium, the alert rules under promtool, the
//! dashboards against Grafana's types, compose.yaml against the Compose spec.

use crate::support::dbmux::{free_port, Dbmux, BOTH};
use crate::support::observe::{http_get, node, proxy_section, proxy_traffic, screenshot_dir, Prometheus};
use crate::support::{repo_root, unique_name, wait_for, workload};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// dbmux with both replicas and the proxy, capturing a fresh database.
async fn fleet(prefix: &str) -> (Dbmux, String, u16) {
    let db = unique_name(prefix);
    workload::create_database(&db).await;
    let port = free_port();
    let mut dbmux = Dbmux::new(&db, BOTH, &proxy_section(port));
    dbmux.start();
    dbmux.wait_capturing().await;
    (dbmux, db, port)
}

/// The standard workload on the master (in rounds, until stopped) and
/// clients through the proxy, in the background.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Load {
    fn start(db: &str, proxy_port: u16) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(AtomicU64::new(0));
        let master = {
            let (db, stop, progress) = (db.to_string(), stop.clone(), progress.clone());
            tokio::spawn(async move {
                // Rounds of 20 transactions with a pause: a steady pace the
                // debug build's appliers keep up with, so the proxy can read
                // from a caught-up replica. Seeds 100.. give each round its
                // own keys (the workload keys rows by seed % 200).
                let mut rows = 0;
                for seed in 100..200 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    rows += workload::run(&db, 20, seed, progress.clone()).await.row_changes;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                rows
            })
        };
        let clients = tokio::spawn(proxy_traffic(proxy_port, db.to_string(), stop.clone()));
        Load {
            stop,
            tasks: vec![master, clients],
        }
    }

    async fn stop(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.unwrap());
        }
        out
    }
}

/// One sample line of the exposition: name, labels, value.
type SampleLine = (String, BTreeMap<String, String>, String);

/// Parses OpenMetrics text into its `# TYPE` families and its samples.
fn parse_exposition(text: &str) -> (Vec<(String, String)>, Vec<SampleLine>) {
    let mut families = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            families.push((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample value");
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect("closing brace")),
            None => (series, ""),
        };
        let mut map = BTreeMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once("=\"").expect("label=\"value\"");
            assert!(
                map.insert(k.to_string(), v.trim_end_matches('"').to_string())
                    .is_none(),
                "label {k} twice in {line}"
            );
        }
        samples.push((name.to_string(), map, value.to_string()));
    }
    (families, samples)
}

/// Checks one scrape: every family once, every series once, every sample in
/// a declared family, every label from a closed set. Returns the series count.
fn assert_exposition_well_formed(text: &str, replicas: &[&str], backends: &[&str]) -> usize {
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let (families, samples) = parse_exposition(text);
    let mut seen = BTreeSet::new();
    for (name, _) in &families {
        assert!(
            seen.insert(name.clone()),
            "metric family {name} appears twice:\n{text}"
        );
    }
    let kinds: HashMap<&str, &str> = families.iter().map(|(n, k)| (n.as_str(), k.as_str())).collect();
    let mut series = BTreeSet::new();
    for (name, labels, value) in &samples {
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| kinds.contains_key(f)))
            .unwrap_or(name);
        assert!(
            kinds.contains_key(family),
            "sample {name} belongs to no declared family"
        );
        assert!(
            name.starts_with("dbmux_"),
            "{name}: every metric is named dbmux_…"
        );
        assert!(
            value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN",
            "{name}: bad value {value}"
        );
        let key = format!("{name}{labels:?}");
        assert!(series.insert(key.clone()), "series {key} appears twice");
        for (label, v) in labels {
            let bounded = match label.as_str() {
                "replica" => replicas.contains(&v.as_str()),
                "backend" => backends.contains(&v.as_str()),
                "route" => connectors::proxy::metrics::ROUTES.contains(&v.as_str()),
                "outcome" => connectors::proxy::metrics::OUTCOMES.contains(&v.as_str()),
                "component" => pipeline::metrics::COMPONENTS.contains(&v.as_str()),
                "class" => pipeline::metrics::ERROR_CLASSES.contains(&v.as_str()),
                "le" => v == "+Inf" || v.parse::<f64>().is_ok(),
                "version" => v == env!("CARGO_PKG_VERSION"),
                "state" => pipeline::metrics::SNAPSHOT_STATES.contains(&v.as_str()),
                _ => false,
            };
            assert!(
                bounded,
                "{name}: label {label}=\"{v}\" is not from a closed set (no per-query, per-table or per-row labels)"
            );
        }
    }
    series.len()
}

/// `/metrics` scraped while the standard workload and proxy clients run: no
/// family or series twice, labels only from closed sets, and the number of
/// series does not grow with the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_during_the_standard_workload_list_each_family_once_with_bounded_labels() {
    let (mut dbmux, db, port) = fleet("obsm").await;
    let load = Load::start(&db, port);
    let replicas = ["mariadb", "postgres"];
    let backends = ["master", "mariadb"];
    let mut counts = Vec::new();
    // Until both replicas applied a good part of the workload and the proxy
    // served reads from the replica.
    let started = Instant::now();
    let last = loop {
        let text = dbmux.admin_get("/metrics").await.expect("/metrics");
        counts.push(assert_exposition_well_formed(&text, &replicas, &backends));
        let (_, samples) = parse_exposition(&text);
        // The sum over every series of `name` with `label` = `v`.
        let value = |name: &str, label: &str, v: &str| -> f64 {
            samples
                .iter()
                .filter(|(n, l, _)| n == name && l.get(label).map(String::as_str) == Some(v))
                .map(|(_, _, x)| x.parse::<f64>().unwrap())
                .sum()
        };
        if value("dbmux_apply_events_total", "replica", "postgres") > 2000.0
            && value("dbmux_apply_events_total", "replica", "mariadb") > 2000.0
            && value("dbmux_proxy_queries_total", "route", "replica") > 20.0
            && counts.len() >= 5
        {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the workload made too little progress: applied {} / {}, replica reads {}, replica up {}:\n{text}",
            value("dbmux_apply_events_total", "replica", "mariadb"),
            value("dbmux_apply_events_total", "replica", "postgres"),
            value("dbmux_proxy_queries_total", "route", "replica"),
            value("dbmux_proxy_backend_up", "backend", "mariadb"),
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    };
    let sent = load.stop().await;
    let (_, samples) = parse_exposition(&last);
    let get = |name: &str, labels: &[(&str, &str)]| {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, x)| x.parse::<f64>().unwrap())
            .unwrap_or_else(|| panic!("no {name}{labels:?} in\n{last}"))
    };
    // Every outcome the clients produced is counted where it ran.
    assert!(
        get(
            "dbmux_proxy_queries_total",
            &[("route", "replica"), ("outcome", "ok")]
        ) > 0.0
    );
    assert!(
        get(
            "dbmux_proxy_queries_total",
            &[("route", "master"), ("outcome", "ok")]
        ) > 0.0
    );
    assert!(
        get(
            "dbmux_proxy_queries_total",
            &[("outcome", "error"), ("route", "replica")]
        ) > 0.0
    );
    assert!(
        get(
            "dbmux_proxy_queries_total",
            &[("route", "session"), ("outcome", "ok")]
        ) > 0.0
    );
    assert!(
        get(
            "dbmux_proxy_queries_total",
            &[("route", "local"), ("outcome", "ok")]
        ) > 0.0
    );
    assert!(get("dbmux_proxy_backend_up", &[("backend", "mariadb")]) == 1.0);
    assert!(get("dbmux_proxy_backend_connects_total", &[("backend", "master")]) >= 1.0);
    assert!(get("dbmux_apply_batch_events_count", &[("replica", "postgres")]) > 0.0);
    assert!(get("dbmux_log_disk_bytes", &[]) > 0.0);
    assert!(get("dbmux_capture_position_offset_bytes", &[]) > 0.0);
    assert_eq!(get("dbmux_capture_connected", &[]), 1.0);
    // Thousands more events and statements added no series.
    let n = counts.len();
    assert_eq!(
        counts[n - 1],
        counts[n - 2],
        "series count grew with traffic: {counts:?}"
    );
    println!(
        "/metrics under the workload: {} scrapes, {} series each, {} row changes and {} proxy statements sent",
        n,
        counts[n - 1],
        sent[0],
        sent[1]
    );
    assert!(dbmux.stop().success());
}

/// Every PromQL expression of a Grafana dashboard, with Grafana's variables
/// replaced as Grafana would for "All" and a 1 s scrape interval.
fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let dir = repo_root().join("grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "overview, pipeline, proxy: {files:?}");
    for f in files {
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("every target has a PromQL expr");
                out.push((
                    name.clone(),
                    p["title"].as_str().unwrap().to_string(),
                    expr.to_string(),
                ));
            }
        }
    }
    out
}

fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "10s")
        .replace("$__interval", "1s")
        .replace("$replica", ".*")
        .replace("$backend", ".*")
}

/// `dbmux_…` names in a text (PromQL or YAML).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("dbmux_") {
        let start = i + at;
        let prev_ok = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_') {
            end += 1;
        }
        if prev_ok {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Grafana's panels and the alert rules against a real Prometheus (Debian's)
/// scraping a real dbmux under the standard workload: every panel query
/// parses and returns data, the variables list the replicas and backends,
/// every metric name the dashboards and rules use exists in `/metrics`, the
/// rules load and evaluate and none fires on a healthy fleet. Leaves a
/// screenshot of a chart Prometheus drew from the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alert_rules_query_a_real_prometheus() {
    let (mut dbmux, db, port) = fleet("obsp").await;
    let rules = repo_root().join("grafana/alerts/dbmux.rules.yml");
    let prom = Prometheus::start(&dbmux.admin, &[&rules]);
    let load = Load::start(&db, port);
    prom.wait_scraping().await;

    // Names first: every name a dashboard or rule uses is exported.
    let queries = dashboard_queries();
    let exported: BTreeSet<String> = parse_exposition(&dbmux.admin_get("/metrics").await.unwrap())
        .1
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    let mut used = metric_names(&std::fs::read_to_string(&rules).unwrap());
    for (_, _, e) in &queries {
        used.extend(metric_names(e));
    }
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by dashboards or alerts but not exported: {missing:?}"
    );

    // Then the data: poll until every query returns something.
    let mut pending: Vec<_> = queries.clone();
    let started = Instant::now();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (file, title, expr) in pending {
            match prom.query(&substitute(&expr)).await {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => still.push((file, title, expr)),
                Err(e) => panic!("{file} / {title}: `{expr}` does not run: {e}"),
            }
        }
        pending = still;
        if !pending.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no data for: {pending:#?}\n/metrics:\n{}",
                dbmux.admin_get("/metrics").await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    // The dashboards' variables: label_values(metric, label).
    for (metric, label, want) in [
        ("dbmux_apply_last_seq", "replica", ["mariadb", "postgres"]),
        ("dbmux_proxy_backend_up", "backend", ["master", "mariadb"]),
    ] {
        let v = prom
            .api(&format!("/api/v1/label/{label}/values?match[]={metric}"))
            .await
            .unwrap();
        for w in want {
            assert!(
                v["data"].as_array().unwrap().iter().any(|x| x == w),
                "variable {label}: {v}"
            );
        }
    }
    // The rules loaded, evaluate without error, and none fires.
    let rules_state = wait_for(
        "the alert rules to be evaluated",
        Duration::from_secs(30),
        || async {
            let v = prom.api("/api/v1/rules").await?;
            let rules: Vec<serde_json::Value> = v["data"]["groups"]
                .as_array()?
                .iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            });
            (rules.len() == 7 && evaluated).then_some(rules)
        },
    )
    .await;
    for r in &rules_state {
        assert_eq!(
            r["health"], "ok",
            "rule {} fails to evaluate: {}",
            r["name"], r["lastError"]
        );
        assert_ne!(
            r["state"], "firing",
            "rule {} fires on a healthy fleet: {r}",
            r["name"]
        );
    }
    // A chart Prometheus draws from the data (its own graph page), once it
    // has some 20 seconds of it.
    wait_for(
        "20 s of samples in Prometheus",
        Duration::from_secs(60),
        || async {
            let r = prom
                .query("count_over_time(dbmux_apply_events_total{replica=\"mariadb\"}[30s]) >= 20")
                .await
                .ok()?;
            (!r.is_empty()).then_some(())
        },
    )
    .await;
    let expr: String =
        url::form_urlencoded::byte_serialize(b"sum by (replica) (rate(dbmux_apply_events_total[10s]))")
            .collect();
    let shot = screenshot_dir().join("prometheus-applied-rows.png");
    node(
        "screenshot.mjs",
        &[
            "--url",
            &format!(
                "http://{}/graph?g0.expr={expr}&g0.tab=0&g0.range_input=2m",
                prom.addr
            ),
            "--out",
            shot.to_str().unwrap(),
            "--wait",
            ".graph_area svg path",
            "--width",
            "1200",
            "--height",
            "860",
        ],
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "an empty screenshot"
    );
    load.stop().await;
    println!(
        "{} dashboard queries returned data from Prometheus; 7 alert rules healthy",
        queries.len()
    );
    assert!(dbmux.stop().success());
}

/// The status page in headless Chromium during the workload: a row per
/// replica with its figures, figures that move without a reload, a ping line
/// per proxy backend, no request leaving dbmux. Leaves a screenshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_replicas_and_moving_figures_in_headless_chromium() {
    let (mut dbmux, db, port) = fleet("obss").await;
    let (status, html) = http_get(&dbmux.admin, "/").await.expect("GET /");
    assert_eq!(status, 200);
    // Works offline: nothing referenced outside the page (the SVG namespace is a name, not a fetch).
    let outside: Vec<&str> = html
        .match_indices("http")
        .map(|(i, _)| &html[i..(i + 40).min(html.len())])
        .filter(|s| !s.starts_with("http://www.w3.org/2000/svg"))
        .collect();
    assert!(outside.is_empty(), "the page refers to other sites: {outside:?}");
    let load = Load::start(&db, port);
    // Some history first, so the chart has lines when the page opens.
    wait_for("5 s of status history", Duration::from_secs(30), || async {
        let h: serde_json::Value = serde_json::from_str(&dbmux.admin_get("/status/history").await?).ok()?;
        (h["samples"].as_array()?.len() >= 5).then_some(())
    })
    .await;
    let shot = screenshot_dir().join("status-page.png");
    let seen = node(
        "status-page.mjs",
        &[
            "--url",
            &format!("http://{}/", dbmux.admin),
            "--replicas",
            "mariadb,postgres",
            "--backends",
            "master,mariadb",
            "--out",
            shot.to_str().unwrap(),
        ],
    );
    load.stop().await;
    let seen: serde_json::Value = serde_json::from_str(seen.trim()).expect("the script's JSON");
    for r in ["mariadb", "postgres"] {
        let applied: u64 = seen["replicas"][r]["applied_seq"]
            .as_str()
            .unwrap()
            .replace(',', "")
            .parse()
            .unwrap();
        assert!(applied > 0, "replica {r} shows applied seq {applied}");
    }
    assert!(seen["last_seq"].as_array().unwrap().len() >= 3, "{seen}");
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    println!("status page in Chromium: {seen}");
    assert!(dbmux.stop().success());
}

/// `promtool check rules` and `promtool test rules` on grafana/alerts.
#[test]
fn alert_rules_pass_promtool() {
    let dir = repo_root().join("grafana/alerts");
    for args in [
        vec!["check", "rules", "dbmux.rules.yml"],
        vec!["test", "rules", "dbmux.rules.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian package `prometheus`, installed by scripts/services)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = std::process::Command::new("promtool")
        .args(["check", "config", "grafana/prometheus.yml"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

/// The dashboards type-check against Grafana's own types (@grafana/schema),
/// the committed JSON is what grafana/dashboards.mjs writes, and the layout
/// is sane (unique panel ids, 24 columns, the datasource variable).
#[test]
fn grafana_dashboards_type_check_and_are_up_to_date() {
    node("node_modules/typescript/bin/tsc", &["-p", "."]);
    node("../../grafana/dashboards.mjs", &["--check"]);
    for name in ["overview", "pipeline", "proxy"] {
        let path = repo_root().join(format!("grafana/dashboards/{name}.json"));
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(d["uid"], format!("dbmux-{name}"));
        let mut ids = BTreeSet::new();
        for p in d["panels"].as_array().unwrap() {
            assert!(ids.insert(p["id"].as_u64().unwrap()), "{name}: panel id twice");
            let g = &p["gridPos"];
            assert!(
                g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24,
                "{name}: {p}"
            );
            if p["type"] != "row" {
                assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}: {}", p["title"]);
            }
        }
    }
}

/// compose.yaml against the Compose specification's JSON schema, every file
/// it mounts present, and the dbmux configuration it mounts valid.
#[test]
fn compose_file_matches_the_compose_spec_and_its_files_exist() {
    let out = node("compose-check.mjs", &["../../compose.yaml"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let services: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for s in [
        "mariadb",
        "mariadb-replica",
        "postgres",
        "redis",
        "kafka",
        "dbmux",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains(&s), "compose.yaml has no {s}");
    }
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_dbmux"))
        .args(["check-config", "deploy/dbmux.compose.toml"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
