//! The deployment artefacts say what the service does: the alert rules and
//! the dashboard use only metrics the service exports, the Kubernetes
//! manifests give each replica its own WAL volume, a stable instance id,
//! health probes and time for the final flush, and every setting they (and
//! docker-compose.yml) pass is one the service reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use challenge_event_handler::config::ServeArgs;
use challenge_event_handler::metrics::Metrics;
use challenge_event_handler::telemetry::LogArgs;
use clap::{CommandFactory, Parser};
use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `challenge_event_handler_…` name in a PromQL expression, histogram
/// series reduced to their metric.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("challenge_event_handler_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.push(base.to_owned());
        rest = &tail[end..];
    }
    names
}

fn check_exported(what: &str, expr: &str, exported: &[String]) -> usize {
    let used = metrics_in(expr);
    for name in &used {
        assert!(
            exported.contains(name),
            "{what} uses {name}, which the service does not export.\nexpr: {expr}\nexported: {exported:?}"
        );
    }
    used.len()
}

#[test]
fn every_alert_uses_exported_metrics_and_says_what_to_do() {
    let exported = Metrics::new().names();
    let rules: Value = serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let mut alerts = BTreeSet::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("expr");
            assert!(
                check_exported(name, expr, &exported) > 0,
                "{name} uses no service metric"
            );
            assert!(
                ["warning", "critical"]
                    .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
                "{name}: severity"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| s.len() > 20),
                    "{name}: {key}"
                );
            }
            alerts.insert(name.to_owned());
        }
    }
    // The deployment seed's alerts and the ones this service adds.
    for needed in [
        "ChallengeEventHandlerSlowProcessing",
        "ChallengeEventHandlerHighErrorRate",
        "ChallengeEventHandlerWalBacklogGrowing",
        "ChallengeEventHandlerFlushFailing",
        "ChallengeEventHandlerReplayRunningLong",
        "ChallengeEventHandlerDedupMarksEvictedEarly",
        "ChallengeEventHandlerGdprDeletionsNotApplied",
    ] {
        assert!(alerts.contains(needed), "{needed} missing");
    }
}

/// Every alert has a case in promtool's unit test of the rules that
/// expects it to fire (`.ci/run` runs `promtool test rules` on it), so a new
/// alert cannot land untested.
#[test]
fn every_alert_has_a_promtool_case_that_fires_it() {
    let rules: Value = serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let cases: Value = serde_yaml::from_str(&read("deploy/prometheus/alerts.test.yml")).unwrap();
    assert_eq!(cases["rule_files"][0].as_str(), Some("alerts.yml"));
    let fired: BTreeSet<&str> = cases["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().expect("alert_rule_test"))
        .filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()))
        .map(|c| c["alertname"].as_str().expect("alertname"))
        .collect();
    let alerts: BTreeSet<&str> = rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules"))
        .map(|r| r["alert"].as_str().expect("alert"))
        .collect();
    for name in &alerts {
        assert!(
            fired.contains(name),
            "deploy/prometheus/alerts.test.yml has no case where {name} fires"
        );
    }
    // promtool passes a case of an alert no rule has (nothing fires): a
    // misspelt name would prove nothing.
    for case in cases["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().unwrap())
    {
        let name = case["alertname"].as_str().unwrap();
        assert!(
            alerts.contains(name),
            "alerts.test.yml tests {name}, which is not a rule"
        );
    }
}

#[test]
fn every_dashboard_panel_uses_exported_metrics() {
    let exported = Metrics::new().names();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/challenge-event-handler.json")).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6);
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            assert!(
                check_exported(title, expr, &exported) > 0,
                "{title}: {expr}"
            );
        }
    }
}

/// An operator looks up a metric in the README: every metric the service
/// exports is in its metrics list, and every alert is named in the
/// deployment guide's "Monitoring".
#[test]
fn the_readme_lists_every_metric_and_the_deployment_guide_every_alert() {
    let readme = read("README.md");
    let start = readme
        .find("- **Metrics** (`GET /metrics`")
        .expect("README has a metrics list");
    let list = &readme[start..];
    let list = &list[..list.find("\n- **").expect("the metrics list ends")];
    let missing: Vec<String> = Metrics::new()
        .names()
        .into_iter()
        .map(|name| {
            name.trim_start_matches("challenge_event_handler_")
                .to_owned()
        })
        .filter(|name| {
            !list.contains(&format!("`{name}`")) && !list.contains(&format!("`{name}{{"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "not in README's metrics list: {missing:?}"
    );

    let guide = read("deploy/README.md");
    let monitoring = &guide[guide.find("## Monitoring").expect("a Monitoring section")..];
    let rules: Value = serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("alert");
            assert!(
                monitoring.contains(name),
                "deploy/README.md's Monitoring does not name {name}"
            );
        }
    }
}

/// `serve`'s command line: its settings and the logging ones.
fn serve_command() -> clap::Command {
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
        #[command(flatten)]
        log: LogArgs,
    }
    Cli::command()
}

/// The environment variables the service reads.
fn settings() -> BTreeSet<String> {
    serve_command()
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

fn yaml_documents(path: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(path))
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

use serde::Deserialize;

/// The objects of deploy/kubernetes, each file listed in kustomization.yaml.
fn manifests() -> Vec<Value> {
    let dir = repo("deploy/kubernetes");
    let kustomization = yaml_documents("deploy/kubernetes/kustomization.yaml").remove(0);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let mut objects = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
            objects.extend(yaml_documents(&format!("deploy/kubernetes/{name}")));
        }
    }
    objects
}

#[test]
fn the_kubernetes_manifests_give_each_replica_a_volume_an_id_probes_and_time_to_flush() {
    let objects = manifests();
    let kind = |k: &'static str| objects.iter().filter(move |o| o["kind"] == k);
    let set = kind("StatefulSet").next().expect("a StatefulSet");
    assert!(kind("PodDisruptionBudget").next().is_some());
    assert!(set["spec"]["volumeClaimTemplates"][0]["spec"]["accessModes"][0] == "ReadWriteOnce");
    let pod = &set["spec"]["template"]["spec"];
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 40,
        "room for SHUTDOWN_GRACE twice"
    );
    let container = &pod["containers"][0];
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(mounts
        .iter()
        .any(|m| m["name"] == "data" && m["mountPath"] == "/data"));
    let env = container["env"].as_sequence().unwrap();
    let instance = env
        .iter()
        .find(|e| e["name"] == "INSTANCE_ID")
        .expect("INSTANCE_ID");
    assert_eq!(
        instance["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The image is one the reader must name: kustomization.yaml's `images:`
    // replaces the StatefulSet's, and its placeholder cannot be pulled.
    let kustomization = yaml_documents("deploy/kubernetes/kustomization.yaml").remove(0);
    let image = container["image"].as_str().unwrap();
    let set_image = kustomization["images"]
        .as_sequence()
        .expect("images: in kustomization.yaml")
        .iter()
        .find(|i| i["name"] == image)
        .expect("kustomization.yaml sets the StatefulSet's image");
    for key in ["newName", "newTag"] {
        assert!(
            set_image[key].as_str().unwrap().contains("SET-"),
            "{key} is a placeholder the reader must set"
        );
    }
    assert!(!image.contains("latest"));
    // The build context leaves target/ out.
    assert!(read(".dockerignore").lines().any(|l| l.trim() == "target/"));
    assert!(
        read("Dockerfile").contains(r#"CMD ["/usr/local/bin/challenge-event-handler", "health"]"#)
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    // Every setting passed is one the service reads.
    let known = settings();
    let mut passed: Vec<String> = env
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    // The ConfigMaps and Secrets given as the environment (envFrom).
    let from: Vec<&Value> = container["envFrom"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| {
            r["configMapRef"]["name"]
                .as_str()
                .or(r["secretRef"]["name"].as_str())
        })
        .flat_map(|name| {
            objects
                .iter()
                .filter(move |o| o["metadata"]["name"] == name && o["kind"] != "StatefulSet")
        })
        .collect();
    assert!(from.len() >= 2, "the settings ConfigMap and the Secret");
    for map in from {
        for section in ["data", "stringData"] {
            if let Some(keys) = map[section].as_mapping() {
                passed.extend(keys.keys().map(|k| k.as_str().unwrap().to_owned()));
            }
        }
    }
    for name in passed.iter().filter(|n| !n.ends_with(".json")) {
        assert!(
            known.contains(name),
            "{name} is not a setting of the service"
        );
    }
}

#[test]
fn http_ingest_in_the_manifests_has_its_own_port_a_token_file_and_a_network_policy() {
    let objects = manifests();
    let kind = |k: &'static str| objects.iter().filter(move |o| o["kind"] == k);
    let set = kind("StatefulSet").next().expect("a StatefulSet");
    let pod = &set["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let port_named = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    // HTTP_INGEST_PORT (a ConfigMap setting) is the container's ingest port,
    // not the metrics port, and the Service exposes it.
    let config = kind("ConfigMap")
        .find(|m| m["data"]["HTTP_INGEST_PORT"].is_string())
        .expect("HTTP_INGEST_PORT in a ConfigMap");
    let ingest_port: u64 = config["data"]["HTTP_INGEST_PORT"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ingest_port, port_named("ingest"));
    assert_ne!(ingest_port, port_named("http"));
    assert!(kind("Service").any(|s| s["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|p| p["targetPort"] == "ingest")));
    // HTTP_INGEST_TOKEN_FILE is a key of a Secret mounted as a directory
    // (a subPath mount would never see the Secret change).
    let env = container["env"].as_sequence().unwrap();
    let file = env
        .iter()
        .find(|e| e["name"] == "HTTP_INGEST_TOKEN_FILE")
        .expect("HTTP_INGEST_TOKEN_FILE")["value"]
        .as_str()
        .unwrap();
    let (dir, key) = file.rsplit_once('/').unwrap();
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir)
        .expect("a mount at the token file's directory");
    assert!(mount["subPath"].is_null());
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    let secret_name = volume["secret"]["secretName"]
        .as_str()
        .expect("a Secret volume");
    let secret = kind("Secret")
        .find(|s| s["metadata"]["name"] == secret_name)
        .expect("the token Secret is a manifest");
    assert!(
        secret["stringData"][key].is_string(),
        "the Secret has the key {key}"
    );
    // Nothing opens HTTP ingest without a token.
    for text in [
        read("deploy/kubernetes/config.yaml"),
        read("deploy/kubernetes/statefulset.yaml"),
        read("docker-compose.yml"),
    ] {
        assert!(!text.contains("HTTP_INGEST_OPEN"));
    }
    // The NetworkPolicy admits each port, and scrapes and writes from different peers.
    let policy = kind("NetworkPolicy").next().expect("a NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"],
        set["spec"]["selector"]["matchLabels"]
    );
    let rules = policy["spec"]["ingress"].as_sequence().unwrap();
    let from_of = |port: &str| {
        let rule = rules
            .iter()
            .find(|r| {
                r["ports"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .any(|p| p["port"] == port)
            })
            .unwrap_or_else(|| panic!("no NetworkPolicy rule for the {port} port"));
        assert!(
            rule["from"].as_sequence().is_some_and(|f| !f.is_empty()),
            "the {port} rule names its peers"
        );
        rule["from"].clone()
    };
    let _ = from_of("grpc");
    assert_ne!(from_of("http"), from_of("ingest"));
    // Every setting the policy relies on is one the service reads.
    let known = settings();
    for name in [
        "HTTP_INGEST_PORT",
        "HTTP_INGEST_TOKEN_FILE",
        "HTTP_INGEST_RATE",
    ] {
        assert!(known.contains(name), "{name}");
    }
}

/// Seconds of a Prometheus duration such as `10m`, `30s`, `1h`.
fn prom_seconds(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.len() - 1);
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a duration: {text}"));
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => panic!("a duration: {text}"),
    }
}

#[test]
fn every_alert_has_a_runbook_section_and_fires_before_a_probe_restarts_the_pod() {
    let runbook = read("docs/RUNBOOK.md");
    let sections: BTreeSet<&str> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .collect();
    let rules: Value = serde_yaml::from_str(&read("deploy/prometheus/alerts.yml")).unwrap();
    let set = manifests()
        .into_iter()
        .find(|o| o["kind"] == "StatefulSet")
        .unwrap();
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let budget = |probe: &str| {
        let p = &container[probe];
        p["periodSeconds"].as_u64().unwrap() * p["failureThreshold"].as_u64().unwrap()
    };
    let startup = budget("startupProbe");
    let mut phase_alerts = 0;
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(
                sections.contains(name),
                "docs/RUNBOOK.md has no section \"## {name}\""
            );
            let section = runbook.split(&format!("## {name}\n")).nth(1).unwrap();
            let section = section.split("\n## ").next().unwrap();
            for part in ["**Means**", "**Check**", "**Do**"] {
                assert!(
                    section.contains(part),
                    "{name}: no {part} in its runbook section"
                );
            }
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{name} has no runbook_url"));
            assert!(
                url.ends_with(&format!("docs/RUNBOOK.md#{}", name.to_lowercase())),
                "{name}: {url}"
            );
            // An alert on a start-up phase must fire, with a scrape and an
            // evaluation to spare, before the startup probe gives up (a
            // restart resets the phase, and the alert would never fire).
            let expr = rule["expr"].as_str().unwrap();
            if expr.contains("challenge_event_handler_phase") {
                phase_alerts += 1;
                let wait = prom_seconds(rule["for"].as_str().expect("a for: window"));
                assert!(
                    wait + 120 <= startup,
                    "{name} fires after {wait} s; the startup probe restarts the pod after {startup} s"
                );
            }
        }
    }
    assert!(phase_alerts >= 2, "NotServing and ReplayRunningLong");
    // Liveness only runs after start-up and tolerates a minute of 503s.
    assert!(budget("livenessProbe") >= 60);
}

#[test]
fn the_drain_job_runs_wal_drain_on_a_replicas_claim_under_its_instance_id() {
    let job = yaml_documents("deploy/kubernetes/jobs/drain-job.yaml").remove(0);
    assert_eq!(job["kind"], "Job");
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["wal", "drain"]);
    let env = container["env"].as_sequence().unwrap();
    let value = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("{name} is not set"))
    };
    // The replica's pod name is its INSTANCE_ID, and its claim is
    // data-<pod name> (the StatefulSet's volumeClaimTemplate "data").
    let instance = value("INSTANCE_ID");
    assert!(
        instance.starts_with("challenge-event-handler-"),
        "{instance}"
    );
    let claim = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "data")
        .expect("the data volume")["persistentVolumeClaim"]["claimName"]
        .as_str()
        .unwrap();
    assert_eq!(claim, format!("data-{instance}"));
    assert_eq!(value("DATA_DIR"), "/data");
    let known = settings();
    for e in env {
        let name = e["name"].as_str().unwrap();
        assert!(
            known.contains(name),
            "{name} is not a setting of the service"
        );
    }
}

/// deploy/README.md's "Scaling down" makes the drain Job of replica N with
/// one `sed` over drain-job.yaml: run as written for replica 3, it names
/// that replica everywhere (Job, INSTANCE_ID, claim) and sets the image.
#[test]
fn the_guides_drain_command_makes_the_job_of_the_replica_it_names() {
    let guide = read("deploy/README.md");
    let lines: Vec<&str> = guide.lines().map(str::trim).collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with("sed ") && l.contains("SET-YOUR-REGISTRY"))
        .expect("the guide's sed over drain-job.yaml");
    let mut command = String::new();
    for line in &lines[start..] {
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if !line.ends_with('\\') {
            break;
        }
    }
    let command = command.split("| kubectl apply").next().unwrap().to_owned();
    assert!(command.contains("drain-job.yaml"), "{command}");
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("N=3; IMAGE=registry.test/ceh:9.9.9; {command}"))
        .current_dir(repo(""))
        .output()
        .expect("bash");
    assert!(output.status.success(), "{command}: {output:?}");
    let job: Value = serde_yaml::from_slice(&output.stdout).unwrap();
    assert_eq!(job["metadata"]["name"], "challenge-event-handler-drain-3");
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.test/ceh:9.9.9");
    let instance = container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "INSTANCE_ID")
        .unwrap()["value"]
        .clone();
    assert_eq!(instance, "challenge-event-handler-3");
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-challenge-event-handler-3"
    );
    // The commands after it wait for, read and delete the same replica's.
    for needed in [
        "job/challenge-event-handler-drain-$N",
        "kubectl delete pvc data-challenge-event-handler-$N",
    ] {
        assert!(guide.contains(needed), "the guide lacks {needed}");
    }
}

#[test]
fn docker_compose_runs_postgres_and_the_service_with_a_volume_for_the_wal() {
    let compose: Value = serde_yaml::from_str(&read("docker-compose.yml")).unwrap();
    let service = &compose["services"]["challenge-event-handler"];
    assert!(compose["services"]["postgres"]["image"]
        .as_str()
        .unwrap()
        .starts_with("postgres:"));
    assert!(service["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|v| v.as_str().unwrap().ends_with(":/data")));
    let known = settings();
    for key in service["environment"].as_mapping().unwrap().keys() {
        assert!(
            known.contains(key.as_str().unwrap()),
            "{key:?} is not a setting"
        );
    }
    let dockerfile = read("Dockerfile");
    for needed in [
        "DATA_DIR=/data",
        "VOLUME [\"/data\"]",
        "USER app",
        "HEALTHCHECK",
        "\"health\"",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed}");
    }
}

#[test]
fn the_metric_scanner_reads_histogram_series_as_their_metric() {
    assert_eq!(
        metrics_in("rate(challenge_event_handler_flush_duration_seconds_bucket[5m]) / challenge_event_handler_wal_bytes"),
        ["challenge_event_handler_flush_duration_seconds", "challenge_event_handler_wal_bytes"]
    );
}

/// Bytes of a Kubernetes memory quantity (`512Mi`, `1Gi`, `1000M`, plain bytes).
fn quantity_bytes(text: &str) -> u64 {
    let units = [
        ("Ki", 1u64 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
    ];
    for (suffix, unit) in units {
        if let Some(n) = text.strip_suffix(suffix) {
            return n.parse::<u64>().unwrap_or_else(|e| panic!("{text}: {e}")) * unit;
        }
    }
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Memory per user-goal held, at the peak of a flush with the buffer full
/// again behind it (measured: docs/BENCHMARKS.md, "Memory through an
/// outage"), rounded up.
const MEMORY_PER_KEY: u64 = 2048;

/// Disk per byte of WAL records while an outage lasts (sled's log-structured
/// file holds what was appended until segments free up), rounded up.
const DISK_PER_WAL_BYTE: u64 = 2;

/// A setting of the ConfigMap, or the binary's default.
fn setting(objects: &[Value], name: &str, default: &str) -> String {
    objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "challenge-event-handler")
        .expect("the settings ConfigMap")["data"][name]
        .as_str()
        .unwrap_or(default)
        .to_owned()
}

#[test]
fn the_manifests_keep_memory_within_its_limit_and_the_wal_within_its_volume() {
    let objects = manifests();
    let set = objects
        .iter()
        .find(|o| o["kind"] == "StatefulSet")
        .expect("a StatefulSet");
    let container = &set["spec"]["template"]["spec"]["containers"][0];
    let limit = quantity_bytes(
        container["resources"]["limits"]["memory"]
            .as_str()
            .expect("a memory limit"),
    );
    // Memory: the buffer and a failed flush's batch hold MEMORY_MAX_KEYS
    // user-goals each at most, whatever the backlog; past that it waits on disk.
    let keys: u64 = setting(&objects, "MEMORY_MAX_KEYS", "100000")
        .parse()
        .expect("MEMORY_MAX_KEYS is a number");
    // An idle service with its dedup marks' index and sled's cache.
    let base = 128 << 20;
    assert!(
        keys * MEMORY_PER_KEY + base <= limit,
        "MEMORY_MAX_KEYS={keys} needs about {} MiB; the limit is {} MiB",
        (keys * MEMORY_PER_KEY + base) >> 20,
        limit >> 20
    );
    // Disk: the WAL up to its bound, and the dedup marks (~35 bytes each).
    let wal_max =
        challenge_event_handler::config::parse_bytes(&setting(&objects, "WAL_MAX_BYTES", "1GiB"))
            .unwrap();
    let marks: u64 = setting(&objects, "DEDUP_MAX_MARKS", "2000000")
        .parse()
        .expect("DEDUP_MAX_MARKS is a number");
    let claim = &set["spec"]["volumeClaimTemplates"][0];
    let volume = quantity_bytes(
        claim["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .expect("a volume size"),
    );
    let disk = wal_max * DISK_PER_WAL_BYTE + marks * 35 + (64 << 20);
    assert!(
        disk <= volume,
        "WAL_MAX_BYTES={wal_max} and {marks} dedup marks need about {} MiB of disk; the volume has {} MiB",
        disk >> 20,
        volume >> 20
    );
}

/// README's settings table against the command line itself: every variable
/// `serve` reads has a row, with its flag, and a default written as one
/// value (`1s`, `4`) is the binary's default.
#[test]
fn the_readme_settings_table_names_every_setting_with_its_flag_and_default() {
    let readme = read("README.md");
    let start = readme
        .find("| variable | flag | default | meaning |")
        .expect("README has a settings table");
    // Variable → (flag, default cell), a row naming several split on " / ".
    let mut rows: std::collections::BTreeMap<String, (String, String)> = Default::default();
    for line in readme[start..].lines().skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split(" | ").collect();
        let names: Vec<&str> = cells[0].trim_start_matches("| ").split(" / ").collect();
        let flags: Vec<&str> = cells[1].split(" / ").collect();
        let defaults: Vec<&str> = cells[2].split(" / ").collect();
        for (i, name) in names.iter().enumerate() {
            let flag = flags.get(i).copied().unwrap_or("");
            let default = if defaults.len() == names.len() {
                defaults[i]
            } else {
                cells[2]
            };
            rows.insert(
                name.trim_matches('`').to_owned(),
                (flag.trim_matches('`').to_owned(), default.trim().to_owned()),
            );
        }
    }
    let mut checked_defaults = 0;
    for arg in serve_command().get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let env = env.to_string_lossy().into_owned();
        let (flag, default) = rows
            .get(&env)
            .unwrap_or_else(|| panic!("README's settings table has no row for {env}"));
        let long = format!("--{}", arg.get_long().expect("a long flag"));
        assert!(
            flag == &long || flag.starts_with(&long),
            "{env}: README says {flag:?}, the binary {long}"
        );
        let single = default
            .strip_prefix('`')
            .and_then(|d| d.strip_suffix('`'))
            .filter(|d| !d.contains('`'));
        if let (Some(written), Some(actual)) = (single, arg.get_default_values().first()) {
            assert_eq!(
                written,
                actual.to_string_lossy(),
                "{env}: README's default differs from the binary's"
            );
            checked_defaults += 1;
        }
    }
    assert!(
        checked_defaults >= 20,
        "{checked_defaults} defaults checked"
    );
}
