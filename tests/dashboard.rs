//! The Grafana dashboard and the Prometheus alert rules in grafana/: well formed, valid PromQL,
//! and referring only to metrics that real sidecars export.
//!
//! `promtool` (Debian: `apt-get install prometheus`) adds `promtool check rules`, the rules' unit
//! tests and a PromQL parse of every dashboard query; the `prometheus` server adds a live run of
//! every panel query and every rule against a leader and a follower. Without them those parts
//! are skipped with a `SKIPPED` line on stderr on a developer's machine; in CI (`CI` set, as CI
//! services do) or with `WALSHIP_REQUIRE_PROMTOOL` set, their absence is a failure.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns: a failed step is a failed test

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;
use support::{free_port, http_get, two_instances, wait_until, Sidecar};

const SCHEMA: &str = "CREATE TABLE t (id int PRIMARY KEY, v text)";

fn grafana_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana").join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(grafana_path(rel)).unwrap_or_else(|e| panic!("grafana/{rel}: {e}"))
}

fn dashboard() -> Json {
    serde_json::from_str(&read("dashboards/walship.json")).expect("walship.json is not valid JSON")
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("grafana/{rel} is not valid YAML: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("no panels") {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// Where it is and the query, for every PromQL query of the dashboard: panel targets, variable
/// queries and annotation queries.
fn dashboard_queries(dashboard: &Json) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", p["title"].as_str().unwrap_or_default()),
                t["expr"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if v["type"] == "query" {
            let q = v["query"].get("query").unwrap_or(&v["query"]);
            out.push((format!("variable {}", v["name"]), q.as_str().unwrap_or_default().to_owned()));
        }
    }
    for a in dashboard["annotations"]["list"].as_array().into_iter().flatten() {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {}", a["name"]), expr.to_owned()));
        }
    }
    out
}

fn rules() -> Vec<Yaml> {
    let doc = yaml("alerts.yaml");
    let groups = doc["groups"].as_sequence().expect("alerts.yaml: no `groups` list");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("alerts.yaml: a group without `rules`").clone())
        .collect()
}

fn rule_exprs() -> Vec<(String, String)> {
    rules()
        .iter()
        .map(|r| (format!("alert {:?}", r["alert"].as_str()), r["expr"].as_str().unwrap_or_default().to_owned()))
        .collect()
}

/// The metric names an expression refers to: identifiers `walship_[a-z0-9_]+` outside quoted
/// strings (label values).
fn referenced_metrics(expr: &str) -> BTreeSet<String> {
    let mut quote = None;
    let mut escaped = false;
    let expr: String = expr
        .chars()
        .map(|c| match quote {
            Some(q) => {
                if !escaped && c == q {
                    quote = None;
                }
                escaped = !escaped && c == '\\';
                ' '
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                ' '
            }
            None => c,
        })
        .collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for (at, _) in expr.match_indices("walship_") {
        if expr[..at].chars().next_back().is_some_and(ident) {
            continue; // inside another identifier
        }
        let name: String =
            expr[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        out.insert(name);
    }
    out
}

/// The metric names in Prometheus text: every sample line's name.
fn exported_metrics(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect()
}

/// A dashboard query as Prometheus itself would get it from Grafana with every instance selected.
fn as_sent(expr: &str) -> String {
    expr.replace("${instance}", ".+").replace("$instance", ".+").replace("$__rate_interval", "5s")
}

/// Variables that make a missing promtool or prometheus a failure: CI services set `CI`.
const REQUIRE_TOOLS_ENV: [&str; 2] = ["CI", "WALSHIP_REQUIRE_PROMTOOL"];

/// The first of `REQUIRE_TOOLS_ENV` that is set (and not to "", "0" or "false").
fn tools_required_by() -> Option<String> {
    REQUIRE_TOOLS_ENV.iter().find_map(|name| {
        let value = std::env::var(name).ok()?;
        let off = ["", "0", "false"].contains(&value.trim().to_ascii_lowercase().as_str());
        (!off).then(|| format!("{name}={value}"))
    })
}

/// The tool to run when it is installed. When it is not: a failure in CI or when required
/// (`REQUIRE_TOOLS_ENV`), else a loud `SKIPPED` line.
fn tool(name: &str, skipping: &str) -> Option<String> {
    let found = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if found.is_ok_and(|s| s.success()) {
        return Some(name.to_owned());
    }
    if let Some(required_by) = tools_required_by() {
        panic!("{name} is not installed (apt-get install prometheus) and {required_by} requires it for {skipping}");
    }
    eprintln!(
        "SKIPPED: {skipping}: {name} is not installed (apt-get install prometheus); \
         CI=true or WALSHIP_REQUIRE_PROMTOOL=1 make this a failure"
    );
    None
}

fn run_tool(program: &str, args: &[&str], dir: &Path) {
    let out = Command::new(program).args(args).current_dir(dir).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {} failed:\n{text}", args.join(" "));
    eprintln!("{program} {}: {}", args.join(" "), text.trim().replace('\n', " | "));
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion {}", d["schemaVersion"]);
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "uid {}", d["uid"]);
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));

    let vars: BTreeMap<&str, &Json> = d["templating"]["list"]
        .as_array()
        .expect("no templating.list")
        .iter()
        .map(|v| (v["name"].as_str().unwrap(), v))
        .collect();
    let ds = vars.get("datasource").expect("no `datasource` variable");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus", "the datasource variable must list Prometheus data sources");
    let instance = vars.get("instance").expect("no `instance` variable");
    assert_eq!(instance["type"], "query");
    assert_eq!(instance["datasource"]["uid"], "${datasource}");
    assert_eq!(instance["includeAll"], true);

    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
    let panels = panels(&d);
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].as_u64().expect("panel without an id")), "duplicate panel id in {title}");
        let g = &p["gridPos"];
        let [x, y, w, h] =
            ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or_else(|| panic!("{title}: gridPos.{k}")));
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: gridPos {g} does not fit 24 columns");
        for (other, [ox, oy, ow, oh]) in &boxes {
            let overlap = x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h;
            assert!(!overlap, "panels {title:?} and {other:?} overlap");
        }
        boxes.push((title.clone(), [x, y, w, h]));
        match p["type"].as_str().unwrap() {
            "row" => continue,
            "timeseries" | "stat" => {}
            other => panic!("{title}: panel type {other}: use timeseries or stat"),
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}: panel datasource");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        let mut ref_ids = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}: target datasource");
            assert!(ref_ids.insert(t["refId"].as_str().unwrap()), "{title}: duplicate refId");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!referenced_metrics(expr).is_empty(), "{title}: {expr:?} reads no walship metric");
        }
    }
    assert!(panels.iter().filter(|p| p["type"] != "row").count() >= 15, "too few panels");

    // The provisioning files: a Prometheus data source and a file provider for the dashboards.
    let sources = yaml("provisioning/datasources/prometheus.yaml");
    assert_eq!(sources["apiVersion"], Yaml::from(1));
    assert_eq!(sources["datasources"][0]["type"], Yaml::from("prometheus"));
    let providers = yaml("provisioning/dashboards/walship.yaml");
    assert_eq!(providers["providers"][0]["type"], Yaml::from("file"));
    let path = providers["providers"][0]["options"]["path"].as_str().expect("provider without options.path");
    assert!(path.starts_with('/'), "the dashboards provider path must be absolute: {path}");
}

#[test]
fn alert_rules_are_well_formed() {
    let rules = rules();
    let mut names = BTreeSet::new();
    for r in &rules {
        let name = r["alert"].as_str().unwrap_or_else(|| panic!("a rule without `alert`: {r:?}"));
        assert!(names.insert(name.to_owned()), "duplicate alert {name}");
        let expr = r["expr"].as_str().unwrap_or_else(|| panic!("{name}: no expr"));
        assert!(!referenced_metrics(expr).is_empty(), "{name}: {expr:?} reads no walship metric");
        let hold = r["for"].as_str().unwrap_or_else(|| panic!("{name}: no `for`"));
        assert!(hold.ends_with(['s', 'm', 'h']), "{name}: for {hold:?}");
        let severity = r["labels"]["severity"].as_str().unwrap_or_else(|| panic!("{name}: no labels.severity"));
        assert!(["warning", "critical"].contains(&severity), "{name}: severity {severity}");
        for key in ["summary", "description"] {
            let text = r["annotations"][key].as_str().unwrap_or_else(|| panic!("{name}: no annotations.{key}"));
            assert!(!text.trim().is_empty(), "{name}: empty annotations.{key}");
        }
    }
    // The conditions an on-call engineer must hear about.
    let exprs: Vec<String> = rules.iter().map(|r| r["expr"].as_str().unwrap().replace(' ', "")).collect();
    let covered = |what: &str, check: &dyn Fn(&str) -> bool| {
        assert!(exprs.iter().any(|e| check(e)), "no alert on {what}");
    };
    covered("applied lag in seconds", &|e| e.starts_with("walship_replication_lag_seconds>"));
    covered("applied lag in bytes", &|e| e.starts_with("walship_replication_lag_bytes>"));
    covered("a disconnected follower", &|e| e == "walship_follower_connected==0");
    covered("no leader", &|e| e.contains("(walship_is_leader)==0"));
    covered("no sidecar scraped", &|e| e == "absent(walship_is_leader)");
    covered("two leaders", &|e| e.contains("(walship_is_leader)>1"));

    if let Some(promtool) = tool("promtool", "promtool check rules and test rules") {
        let dir = grafana_path("");
        run_tool(&promtool, &["check", "rules", "alerts.yaml"], &dir);
        run_tool(&promtool, &["test", "rules", "alerts_test.yaml"], &dir);
    }
}

/// Every dashboard query, as Grafana sends it, parses as PromQL: `promtool check rules` on a file
/// of recording rules made of them.
#[test]
fn dashboard_queries_are_valid_promql() {
    let Some(promtool) = tool("promtool", "the PromQL check of the dashboard queries") else { return };
    let queries = dashboard_queries(&dashboard());
    let mut file = String::from("groups:\n  - name: walship_dashboard\n    rules:\n");
    for (n, (at, expr)) in queries.iter().enumerate() {
        let expr = if at.starts_with("variable") {
            // label_values(METRIC, LABEL) is Grafana's, not PromQL: check its selector.
            let inner = expr.trim_start_matches("label_values(").trim_end_matches(')');
            inner.rsplit_once(',').map_or(inner, |(selector, _)| selector).to_owned()
        } else {
            as_sent(expr)
        };
        file.push_str(&format!(
            "      - record: walship_dashboard:query_{n}\n        expr: {}\n",
            serde_json::json!(expr)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard_rules.yaml"), file).unwrap();
    run_tool(&promtool, &["check", "rules", "dashboard_rules.yaml"], dir.path());
}

/// Polls `check` every 200 ms for up to `timeout`: whether it came to hold.
fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `prometheus` server scraping the sidecars once a second, with the alert rules loaded.
struct Prometheus {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(program: &str, targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: ['{}']\n\
             scrape_configs:\n  - job_name: walship\n    static_configs:\n      - targets: [{}]\n",
            grafana_path("alerts.yaml").display(),
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(program)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let prometheus = Prometheus { port, child, _dir: dir };
        wait_until(Duration::from_secs(30), "prometheus to be ready", || {
            http_get(port, "/-/ready").is_ok_and(|(code, _)| code == 200)
        });
        prometheus
    }

    /// GET on the HTTP API, as HTTP/1.0 so that the answer is never chunked.
    fn api(&self, path: &str) -> Json {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        let answer: Json = serde_json::from_str(body).unwrap_or_else(|e| panic!("GET {path}: {e}: {response}"));
        assert_eq!(answer["status"], "success", "GET {path}: {answer}");
        answer["data"].clone()
    }

    fn query(&self, expr: &str) -> Vec<Json> {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        self.api(&format!("/api/v1/query?query={encoded}"))["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_metric_the_dashboard_and_alerts_read_is_exported() {
    let (leader_pg, follower_pg) = two_instances(SCHEMA);
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, mut b) = Sidecar::pair(dir.path(), &leader_pg, &follower_pg);
    let scrape = |port: u16| {
        let (code, body) = http_get(port, "/metrics").unwrap();
        assert_eq!(code, 200, "{body}");
        body
    };
    leader.start();
    wait_until(Duration::from_secs(30), "the leader's first entries", || {
        http_get(leader.admin_port, "/metrics")
            .is_ok_and(|(_, body)| body.lines().any(|l| l.starts_with("walship_log_last_index ") && !l.ends_with(" 0")))
    });
    b.start();
    leader_pg.psql("postgres", "INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g").unwrap();
    wait_until(Duration::from_secs(30), "the follower to connect and apply the rows", || {
        follower_pg.psql("postgres", "SELECT count(*) FROM t").unwrap().trim() == "100"
            && scrape(leader.admin_port).contains("walship_follower_connected{follower=\"b\"} 1")
            && scrape(b.admin_port).contains("walship_applied_index")
    });

    let (leader_text, follower_text) = (scrape(leader.admin_port), scrape(b.admin_port));
    let exported: BTreeSet<String> =
        exported_metrics(&leader_text).union(&exported_metrics(&follower_text)).cloned().collect();
    let mut missing = Vec::new();
    let queries: Vec<(String, String)> = dashboard_queries(&dashboard()).into_iter().chain(rule_exprs()).collect();
    let mut referenced = BTreeSet::new();
    for (at, expr) in &queries {
        for name in referenced_metrics(expr) {
            if !exported.contains(&name) {
                missing.push(format!("{at}: {name} in {expr:?}"));
            }
            referenced.insert(name);
        }
    }
    assert!(missing.is_empty(), "metrics no sidecar exports:\n{}\nexported: {exported:?}", missing.join("\n"));
    eprintln!("{} queries read {} metrics, all exported: {referenced:?}", queries.len(), referenced.len());
    let unused: Vec<&String> =
        exported.iter().filter(|n| n.starts_with("walship_") && !referenced.contains(*n)).collect();
    if !unused.is_empty() {
        eprintln!("note: exported but on no panel and in no rule: {unused:?}");
    }

    if let Some(promtool) = tool("promtool", "promtool check metrics") {
        for (node, text) in [("leader", &leader_text), ("follower", &follower_text)] {
            let mut child = Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let lint = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            // src/admin/metrics.rs describes every metric at install (`describe`), so a metric
            // without HELP text is one exported without its description there: that fails,
            // like any other finding (naming, units, counters without _total).
            let problems: Vec<&str> = lint.lines().filter(|l| !l.trim().is_empty()).collect();
            assert!(problems.is_empty(), "promtool check metrics on the {node}'s /metrics:\n{lint}\n{text}");
        }
    }

    if let Some(program) = tool("prometheus", "the live run of the dashboard queries and alert rules") {
        let prometheus = Prometheus::start(&program, &[leader.admin_port, b.admin_port]);
        let panel_queries: Vec<&(String, String)> = queries.iter().filter(|(at, _)| at.starts_with("panel")).collect();
        let mut empty = Vec::new();
        let answered = eventually(Duration::from_secs(30), || {
            empty = panel_queries.iter().filter(|(_, expr)| prometheus.query(&as_sent(expr)).is_empty()).collect();
            empty.is_empty()
        });
        assert!(answered, "panel queries with no data after 30 s: {empty:#?}");
        let instances = prometheus.query("count(walship_term)");
        assert_eq!(instances[0]["value"][1], "2", "both sidecars scraped: {instances:?}");

        // Every rule evaluates without error, and none is pending or firing on a healthy pair.
        let mut unhealthy = Vec::new();
        let evaluated = eventually(Duration::from_secs(30), || {
            let groups = prometheus.api("/api/v1/rules")["groups"].clone();
            unhealthy = groups
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["health"] != "ok")
                .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
                .collect();
            unhealthy.is_empty()
        });
        assert!(evaluated, "alert rules not evaluated cleanly after 30 s: {unhealthy:#?}");
        let active = prometheus.api("/api/v1/alerts")["alerts"].clone();
        assert_eq!(active, serde_json::json!([]), "alerts active on a healthy leader and follower");
        eprintln!(
            "prometheus: {} panel queries returned data, {} rules healthy, none active",
            panel_queries.len(),
            rules().len()
        );
    }

    // `walship status` as the README shows it.
    let out = Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(["status", "--admin", &format!("http://127.0.0.1:{}", leader.admin_port)])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("role leader"), "{table}");
    eprintln!("walship status:\n{table}");

    b.stop();
    leader.stop();
    leader.assert_no_errors();
    b.assert_no_errors();
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = |e: &str| referenced_metrics(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names("sum(rate(walship_log_entries_appended_total[5m]) and on (instance) (walship_is_leader == 1))"),
        ["walship_is_leader", "walship_log_entries_appended_total"]
    );
    assert_eq!(names("label_values(walship_term, instance)"), ["walship_term"]);
    assert_eq!(names("my_walship_term + walship_term{follower=\"walship_x\"}"), ["walship_term"]);
    assert_eq!(names("walship_term{a=\"\\\"walship_x\"} + walship_is_leader"), ["walship_is_leader", "walship_term"]);
    assert!(names("up == 0").is_empty());
    assert_eq!(
        exported_metrics("# TYPE walship_term gauge\nwalship_term 3\nwalship_follower_connected{follower=\"b\"} 1\n"),
        BTreeSet::from(["walship_term".to_owned(), "walship_follower_connected".to_owned()])
    );
}
