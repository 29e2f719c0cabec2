//! `deploy/` as a data engineer takes it: the Compose file and the Kubernetes
//! manifests parse, and every cross-reference in them holds. Each pathflow
//! container's config is loaded with pathflow's own loader and uses only
//! keys the example config documents; each listens on `0.0.0.0` at exactly
//! the ports its container declares; every probe, health check, scrape
//! target and data source hits a port and path that stage serves; every
//! path a config names lies on a mount (writable where the stage writes);
//! every env var a config reads is set; every volume, ConfigMap key, Secret
//! key and image exists. `promtool check config` and `check rules` pass.
//!
//! The Prometheus scrape of a running pathflow, and the dashboards' queries,
//! are checked in `tests/demo.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value;

mod common;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of a YAML file, as JSON values.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

// ---- the stages' configs ------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Ingest,
    Transform,
    Serve,
}

impl Stage {
    fn from_arg(arg: &str) -> Option<Stage> {
        match arg {
            "ingest" => Some(Stage::Ingest),
            "transform" => Some(Stage::Transform),
            "serve" => Some(Stage::Serve),
            _ => None,
        }
    }
    fn example(self) -> PathBuf {
        let name = match self {
            Stage::Ingest => "ingest",
            Stage::Transform => "transform",
            Stage::Serve => "serve",
        };
        deploy().join(format!("{name}.example.toml"))
    }
    /// The config keys that are listen addresses, and the paths each serves.
    fn listeners(self) -> &'static [(&'static str, &'static [&'static str])] {
        match self {
            Stage::Ingest => &[
                ("metrics.listen", &["/metrics"]),
                ("http.listen", &["/healthz"]),
            ],
            Stage::Transform => &[("metrics.listen", &["/metrics"])],
            Stage::Serve => &[
                (
                    "http.listen",
                    &["/healthz", "/readyz", "/metrics", "/v1/sql", "/v1/tables"],
                ),
                ("postgres.listen", &[]),
            ],
        }
    }
    /// The config keys naming paths the stage writes under.
    fn written(self) -> &'static [&'static str] {
        match self {
            Stage::Ingest => &["state_dir"],
            Stage::Transform => &["tables.location"],
            Stage::Serve => &[
                "audit.path",
                "extracts[].destination",
                "extracts[].state_dir",
            ],
        }
    }
    /// Loads `text` with pathflow's own loader: unknown keys and bad values fail.
    fn load(self, text: &str, origin: &str) {
        let path = Path::new(origin);
        let problem = match self {
            Stage::Ingest => pathflow_ingest::config::IngestConfig::parse(text, path)
                .err()
                .map(|e| e.to_string()),
            Stage::Transform => pathflow_transform::run::TransformConfig::parse(text, path)
                .err()
                .map(|e| e.to_string()),
            Stage::Serve => pathflow_query::ServeConfig::parse(text, path)
                .err()
                .map(|e| e.to_string()),
        };
        if let Some(problem) = problem {
            panic!("{origin} does not load as a {self:?} config: {problem}");
        }
    }
}

/// `{ file = … }` or `{ env = … }`: a secret's source, one value.
fn secret_ref(t: &toml::Table) -> bool {
    t.len() == 1 && (t.contains_key("file") || t.contains_key("env"))
}

/// Every key path in a TOML value (`a.b`, arrays of tables as `a[].b`),
/// with the scalar values under it.
fn flatten(v: &toml::Value, prefix: &str, out: &mut BTreeMap<String, Vec<toml::Value>>) {
    match v {
        toml::Value::Table(t) if prefix.is_empty() || !secret_ref(t) => {
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.entry(p.clone()).or_default();
                flatten(v, &p, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
            let p = format!("{prefix}[]");
            out.entry(p.clone()).or_default();
            for x in a {
                flatten(x, &p, out);
            }
        }
        other => out
            .entry(prefix.to_string())
            .or_default()
            .push(other.clone()),
    }
}

fn key_values(text: &str, origin: &str) -> BTreeMap<String, Vec<toml::Value>> {
    let v: toml::Value = toml::from_str(text).unwrap_or_else(|e| panic!("{origin}: {e}"));
    let mut out = BTreeMap::new();
    flatten(&v, "", &mut out);
    out
}

/// Where a container mounts something: its path and whether it can write there.
#[derive(Debug)]
struct Mount {
    path: String,
    writable: bool,
}

/// One pathflow container, as a manifest describes it.
struct Container {
    origin: String,
    stage: Stage,
    config_text: String,
    config_origin: String,
    ports: BTreeSet<u16>,
    mounts: Vec<Mount>,
    env: BTreeSet<String>,
    /// (port, path) each health check or probe requests.
    probes: Vec<(u16, String)>,
}

fn port_of(listen: &str) -> u16 {
    listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{listen:?} has no port"))
}

fn under(path: &str, mount: &Mount) -> bool {
    let m = mount.path.trim_end_matches('/');
    path == m || path.starts_with(&format!("{m}/"))
}

/// Checks one container against its config; returns the ports it serves
/// each path on (for scrape targets and Services).
fn check_container(c: &Container) -> BTreeMap<u16, Vec<&'static str>> {
    let what = format!("{} ({:?}, config {})", c.origin, c.stage, c.config_origin);
    c.stage.load(&c.config_text, &c.config_origin);

    // Only documented keys.
    let example = read(&c.stage.example());
    let documented = key_values(&example, "example");
    let used = key_values(&c.config_text, &c.config_origin);
    let unknown: Vec<&String> = used
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what}: keys not in {}: {unknown:?}",
        c.stage.example().display()
    );

    // Listeners: reachable from other containers, and declared.
    let mut served = BTreeMap::new();
    for (key, paths) in c.stage.listeners() {
        for v in used.get(*key).into_iter().flatten() {
            let listen = v.as_str().unwrap_or_default();
            if listen.is_empty() {
                continue; // postgres.listen = "" turns it off
            }
            assert!(
                listen.starts_with("0.0.0.0:") || listen.starts_with("[::]:"),
                "{what}: {key} = {listen:?} is unreachable from outside the container; listen on 0.0.0.0"
            );
            served.insert(port_of(listen), paths.to_vec());
        }
    }
    let listening: BTreeSet<u16> = served.keys().copied().collect();
    assert_eq!(
        c.ports, listening,
        "{what}: the ports declared are not the ports its config listens on"
    );
    for (port, path) in &c.probes {
        let paths = served
            .get(port)
            .unwrap_or_else(|| panic!("{what}: a probe asks port {port}, where nothing listens"));
        assert!(
            paths.contains(&path.as_str()),
            "{what}: a probe asks {path} on port {port}, which serves only {paths:?}"
        );
    }

    // Every absolute path is on a mount, written ones on a writable mount;
    // a secret from a file is on a mount, one from the environment is set.
    for (key, values) in &used {
        for v in values {
            let path = match v {
                toml::Value::String(s) => s.as_str(),
                toml::Value::Table(t) => match (t.get("file"), t.get("env")) {
                    (Some(file), _) => file.as_str().unwrap_or_default(),
                    (_, Some(var)) => {
                        let var = var.as_str().unwrap_or_default();
                        assert!(
                            c.env.contains(var),
                            "{what}: {key} reads ${var}, which is not set"
                        );
                        continue;
                    }
                    _ => continue,
                },
                _ => continue,
            };
            if !path.starts_with('/') {
                continue;
            }
            let mount = c.mounts.iter().find(|m| under(path, m));
            let mount = mount.unwrap_or_else(|| {
                panic!("{what}: {key} = {path:?} is on no mount ({:?})", c.mounts)
            });
            if c.stage.written().contains(&key.as_str()) {
                assert!(
                    mount.writable,
                    "{what}: {key} = {path:?} is on a read-only mount"
                );
            }
        }
    }
    served
}

// ---- docker compose -----------------------------------------------------

const PATHFLOW_IMAGE: &str = "pathflow:0.1.0";

fn compose() -> Value {
    let docs = yaml_docs(&deploy().join("docker-compose.yml"));
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

/// `./a:/b[:ro]` or a long-form volume: (source, target, writable).
fn compose_volume(v: &Value) -> (String, String, bool) {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            assert!(parts.len() >= 2, "volume {s:?} has no target");
            (
                parts[0].to_string(),
                parts[1].to_string(),
                parts.get(2) != Some(&"ro"),
            )
        }
        other => (
            str_of(&other["source"], "volume source").to_string(),
            str_of(&other["target"], "volume target").to_string(),
            other["read_only"].as_bool() != Some(true),
        ),
    }
}

/// The URL a health check's command requests, as (port, path).
fn healthcheck_url(test: &[String]) -> Option<(u16, String)> {
    let url = test.iter().find_map(|a| a.strip_prefix("http://"))?;
    let (host_port, path) = url.split_once('/').unwrap_or((url, ""));
    Some((port_of(host_port), format!("/{path}")))
}

#[test]
fn the_compose_file_references_only_what_exists() {
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let volumes: BTreeSet<&String> = compose["volumes"]
        .as_object()
        .map(|v| v.keys().collect())
        .unwrap_or_default();
    let mut served: BTreeMap<String, BTreeMap<u16, Vec<&'static str>>> = BTreeMap::new();
    let mut built = false;
    for (name, svc) in services {
        // Images: pinned, and pathflow's is the one this repository builds.
        let image = str_of(&svc["image"], "image");
        assert!(
            image.contains(':') && !image.ends_with(":latest"),
            "{name}: image {image:?} has no pinned tag"
        );
        if image.starts_with("pathflow:") {
            assert_eq!(image, PATHFLOW_IMAGE, "{name}");
        }
        if let Some(build) = svc.get("build") {
            assert_eq!(image, PATHFLOW_IMAGE, "{name} builds another image");
            let context = deploy().join(str_of(&build["context"], "build context"));
            let dockerfile = context.join(str_of(&build["dockerfile"], "dockerfile"));
            assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
            assert!(
                context.join("Cargo.toml").is_file(),
                "{name}: context is not the repository"
            );
            built = true;
        }
        for dep in svc["depends_on"]
            .as_object()
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_else(|| strings(&svc["depends_on"]))
        {
            assert!(
                services.contains_key(&dep),
                "{name} depends on unknown service {dep}"
            );
        }
        // Volumes: named ones declared, bind sources present.
        let mut mounts = Vec::new();
        let mut config_source = BTreeMap::new();
        for v in svc["volumes"].as_array().into_iter().flatten() {
            let (source, target, writable) = compose_volume(v);
            if source.starts_with('.') || source.starts_with('/') {
                let path = deploy().join(&source);
                assert!(path.exists(), "{name}: bind source {source} does not exist");
                config_source.insert(target.clone(), path);
            } else {
                assert!(
                    volumes.contains(&source),
                    "{name}: volume {source} is not declared"
                );
            }
            mounts.push(Mount {
                path: target,
                writable,
            });
        }

        // pathflow stages: their configs against their containers.
        let command = strings(&svc["command"]);
        let Some(stage) = command.first().and_then(|c| Stage::from_arg(c)) else {
            continue;
        };
        assert_eq!(image, PATHFLOW_IMAGE, "{name}");
        let config = command
            .iter()
            .skip_while(|a| *a != "--config")
            .nth(1)
            .unwrap_or_else(|| panic!("{name}: no --config"));
        let source = config_source
            .get(config)
            .unwrap_or_else(|| panic!("{name}: --config {config} is not mounted from deploy/"));
        let mut ports: BTreeSet<u16> = strings(&svc["expose"])
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        for p in strings(&svc["ports"]) {
            ports.insert(port_of(&format!(":{p}")));
        }
        let env = match &svc["environment"] {
            Value::Object(m) => m.keys().cloned().collect(),
            other => strings(other)
                .iter()
                .map(|kv| kv.split('=').next().unwrap().to_string())
                .collect(),
        };
        let probes = healthcheck_url(&strings(&svc["healthcheck"]["test"]))
            .into_iter()
            .collect();
        let container = Container {
            origin: format!("docker-compose.yml service {name}"),
            stage,
            config_text: read(source),
            config_origin: source.display().to_string(),
            ports,
            mounts,
            env,
            probes,
        };
        served.insert(name.clone(), check_container(&container));
    }
    assert!(built, "no service builds {PATHFLOW_IMAGE}");
    for stage in [
        "ingest",
        "transform",
        "serve",
        "prometheus",
        "grafana",
        "kafka",
    ] {
        assert!(services.contains_key(stage), "no {stage} service");
    }

    // Prometheus scrapes each stage where it serves /metrics.
    let prometheus = &yaml_docs(&deploy().join("prometheus/prometheus.yml"))[0];
    let mut scraped = BTreeSet::new();
    for job in prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
    {
        let path = job["metrics_path"].as_str().unwrap_or("/metrics");
        for sc in job["static_configs"].as_array().into_iter().flatten() {
            for target in strings(&sc["targets"]) {
                let (host, port) = target.rsplit_once(':').expect("host:port");
                let port: u16 = port.parse().unwrap();
                let paths = served
                    .get(host)
                    .and_then(|s| s.get(&port))
                    .unwrap_or_else(|| {
                        panic!("scrape target {target}: no pathflow stage listens there")
                    });
                assert!(
                    paths.contains(&path),
                    "scrape target {target}{path} is not served"
                );
                scraped.insert(host.to_string());
            }
        }
    }
    for stage in served.keys() {
        assert!(
            scraped.contains(stage),
            "Prometheus does not scrape {stage}"
        );
    }
    let mounted_rules = strings(&services["prometheus"]["volumes"]).join(" ");
    for rules in strings(&prometheus["rule_files"]) {
        assert!(
            deploy().join("prometheus").join(&rules).is_file(),
            "no rule file {rules}"
        );
        assert!(
            mounted_rules.contains(&rules),
            "rule file {rules} is not mounted into prometheus"
        );
    }

    // Grafana's data sources point at services and ports that exist.
    let sources = &yaml_docs(&deploy().join("grafana/provisioning/datasources/pathflow.yml"))[0];
    for ds in sources["datasources"].as_array().expect("datasources") {
        let url = str_of(&ds["url"], "datasource url");
        let host_port = url.trim_start_matches("http://").trim_end_matches('/');
        let (host, port) = host_port.rsplit_once(':').expect("host:port");
        assert!(
            services.contains_key(host),
            "data source {url}: no service {host}"
        );
        if host == "serve" {
            assert!(
                served["serve"].contains_key(&port.parse().unwrap()),
                "{url}"
            );
        }
        for v in ds["secureJsonData"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
        {
            if let Some(var) = v.as_str().and_then(|s| s.strip_prefix('$')) {
                let grafana = serde_json::to_string(&services["grafana"]).unwrap();
                assert!(
                    grafana.contains(var),
                    "Grafana's data source reads ${var}, which the grafana service does not set"
                );
            }
        }
    }
    let grafana_mounts = strings(&services["grafana"]["volumes"]).join(" ");
    for dir in ["./grafana/provisioning", "./grafana/dashboards"] {
        assert!(grafana_mounts.contains(dir), "grafana does not mount {dir}");
    }
}

// ---- kubernetes ---------------------------------------------------------

fn k8s_docs() -> Vec<(String, Value)> {
    let dir = deploy().join("k8s");
    let kustomization = &yaml_docs(&dir.join("kustomization.yaml"))[0];
    let mut docs = Vec::new();
    for file in strings(&kustomization["resources"]) {
        let path = dir.join(&file);
        assert!(
            path.is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
        docs.extend(yaml_docs(&path).into_iter().map(|d| (file.clone(), d)));
    }
    // The Secret is applied by hand (it holds the keys), but is referenced.
    docs.extend(
        yaml_docs(&dir.join("secret.example.yaml"))
            .into_iter()
            .map(|d| ("secret.example.yaml".to_string(), d)),
    );
    docs
}

fn named<'a>(docs: &'a [(String, Value)], kind: &str) -> BTreeMap<String, &'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| (str_of(&d["metadata"]["name"], "name").to_string(), d))
        .collect()
}

/// A probe's or Service's port: a number, or a container port's name.
fn resolve_port(port: &Value, names: &BTreeMap<String, u16>) -> u16 {
    match port {
        Value::Number(n) => n.as_u64().unwrap() as u16,
        Value::String(s) => *names
            .get(s)
            .unwrap_or_else(|| panic!("no container port named {s:?} (ports: {names:?})")),
        other => panic!("port {other}"),
    }
}

#[test]
fn the_kubernetes_manifests_reference_only_what_exists() {
    let docs = k8s_docs();
    let config_maps = named(&docs, "ConfigMap");
    let secrets = named(&docs, "Secret");
    let claims = named(&docs, "PersistentVolumeClaim");
    let deployments = named(&docs, "Deployment");
    assert!(!named(&docs, "Namespace").is_empty(), "no Namespace");
    for (_, d) in &docs {
        if let Some(ns) = d["metadata"]["namespace"].as_str() {
            assert_eq!(ns, "pathflow", "{}", d["metadata"]["name"]);
        }
    }

    let mut stages = BTreeMap::new();
    let mut pod_ports: BTreeMap<String, (BTreeMap<String, u16>, BTreeSet<u16>)> = BTreeMap::new();
    for (name, deployment) in &deployments {
        let pod = &deployment["spec"]["template"];
        let labels = pod["metadata"]["labels"].as_object().expect("pod labels");
        for (k, v) in deployment["spec"]["selector"]["matchLabels"]
            .as_object()
            .expect("selector")
        {
            assert_eq!(
                labels.get(k),
                Some(v),
                "{name}: the selector does not match its pods"
            );
        }
        let volumes: BTreeMap<String, &Value> = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| (str_of(&v["name"], "volume name").to_string(), v))
            .collect();
        // Every volume refers to something defined, with the keys it picks.
        for (vname, v) in &volumes {
            if let Some(cm) = v.get("configMap") {
                let cm_name = str_of(&cm["name"], "configMap name");
                let data = &config_maps
                    .get(cm_name)
                    .unwrap_or_else(|| panic!("{name}: no ConfigMap {cm_name}"))["data"];
                for item in cm["items"].as_array().into_iter().flatten() {
                    let key = str_of(&item["key"], "key");
                    assert!(
                        data.get(key).is_some(),
                        "{name}: ConfigMap {cm_name} has no {key}"
                    );
                }
            } else if let Some(secret) = v.get("secret") {
                let s_name = str_of(&secret["secretName"], "secretName");
                let s = secrets
                    .get(s_name)
                    .unwrap_or_else(|| panic!("{name}: no Secret {s_name}"));
                for item in secret["items"].as_array().into_iter().flatten() {
                    let key = str_of(&item["key"], "key");
                    assert!(
                        s["stringData"].get(key).is_some() || s["data"].get(key).is_some(),
                        "{name}: Secret {s_name} has no {key}"
                    );
                }
            } else if let Some(pvc) = v.get("persistentVolumeClaim") {
                let claim = str_of(&pvc["claimName"], "claimName");
                assert!(
                    claims.contains_key(claim),
                    "{name}: no PersistentVolumeClaim {claim}"
                );
            } else {
                assert!(
                    v.get("emptyDir").is_some(),
                    "{name}: volume {vname} of unknown kind"
                );
            }
        }
        let annotations = &pod["metadata"]["annotations"];
        for c in pod["spec"]["containers"].as_array().expect("containers") {
            let image = str_of(&c["image"], "image");
            assert_eq!(image, PATHFLOW_IMAGE, "{name}");
            let args = strings(&c["args"]);
            let stage =
                Stage::from_arg(&args[0]).unwrap_or_else(|| panic!("{name}: args {args:?}"));
            let config = args
                .iter()
                .skip_while(|a| *a != "--config")
                .nth(1)
                .unwrap_or_else(|| panic!("{name}: no --config"));
            let mut mounts = Vec::new();
            let mut config_text = None;
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let path = str_of(&m["mountPath"], "mountPath").to_string();
                let vname = str_of(&m["name"], "volume name");
                let v = volumes
                    .get(vname)
                    .unwrap_or_else(|| panic!("{name}: mounts undefined volume {vname}"));
                if let Some(cm) = v.get("configMap")
                    && let Some(file) = config.strip_prefix(&format!("{path}/"))
                {
                    let cm = config_maps[str_of(&cm["name"], "name")];
                    config_text = cm["data"][file].as_str().map(str::to_string);
                }
                mounts.push(Mount {
                    writable: m["readOnly"].as_bool() != Some(true)
                        && (v.get("persistentVolumeClaim").is_some()
                            || v.get("emptyDir").is_some()),
                    path,
                });
            }
            let config_text = config_text
                .unwrap_or_else(|| panic!("{name}: --config {config} is not from a ConfigMap"));
            let mut names = BTreeMap::new();
            let mut ports = BTreeSet::new();
            for p in c["ports"].as_array().into_iter().flatten() {
                let n = p["containerPort"].as_u64().unwrap() as u16;
                ports.insert(n);
                if let Some(pname) = p["name"].as_str() {
                    names.insert(pname.to_string(), n);
                }
            }
            let probes = ["livenessProbe", "readinessProbe", "startupProbe"]
                .iter()
                .filter_map(|p| c.get(*p).and_then(|p| p.get("httpGet")))
                .map(|g| {
                    (
                        resolve_port(&g["port"], &names),
                        str_of(&g["path"], "path").to_string(),
                    )
                })
                .collect();
            let env = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| str_of(&e["name"], "env name").to_string())
                .collect();
            let container = Container {
                origin: format!("k8s Deployment {name}"),
                stage,
                config_text,
                config_origin: format!("k8s ConfigMap data {config}"),
                ports: ports.clone(),
                mounts,
                env,
                probes,
            };
            let served = check_container(&container);
            if let Some(port) = annotations["prometheus.io/port"].as_str() {
                let path = annotations["prometheus.io/path"]
                    .as_str()
                    .unwrap_or("/metrics");
                let paths = &served[&port.parse().unwrap()];
                assert!(
                    paths.contains(&path),
                    "{name}: scrape annotation {port}{path} is not served"
                );
            }
            stages.insert(
                format!("{stage:?}"),
                deployment["spec"]["replicas"].as_u64(),
            );
            pod_ports.insert(name.clone(), (names, ports));
        }
    }
    for stage in ["Ingest", "Transform", "Serve"] {
        assert!(stages.contains_key(stage), "no Deployment runs {stage}");
    }
    assert!(
        stages["Transform"].unwrap_or(1) >= 2,
        "the transform Deployment should show several replicas in one consumer group"
    );

    // Services select a Deployment's pods and target its ports.
    let services = named(&docs, "Service");
    assert!(!services.is_empty());
    for (name, svc) in &services {
        let selector = svc["spec"]["selector"].as_object().expect("selector");
        let (dep, _) = deployments
            .iter()
            .find(|(_, d)| {
                let labels = &d["spec"]["template"]["metadata"]["labels"];
                selector.iter().all(|(k, v)| &labels[k] == v)
            })
            .unwrap_or_else(|| panic!("Service {name} selects no Deployment's pods"));
        let (names, ports) = &pod_ports[dep];
        for p in svc["spec"]["ports"].as_array().expect("ports") {
            let target = p.get("targetPort").unwrap_or(&p["port"]);
            let port = resolve_port(target, names);
            assert!(
                ports.contains(&port),
                "Service {name} targets port {port}, which {dep} does not open"
            );
        }
    }
}

// ---- Prometheus ---------------------------------------------------------

#[test]
fn promtool_accepts_the_prometheus_config_and_alert_rules() {
    if !common::tool_or_skip("promtool") {
        return;
    }
    let dir = deploy().join("prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "alerts.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The rules the issue asks for are there.
    let rules = read(&dir.join("alerts.yml"));
    for metric in [
        "pathflow_transform_consumer_lag_messages",
        "pathflow_ingest_dead_letters_total",
        "pathflow_transform_newest_event_timestamp_seconds",
        "up{",
    ] {
        assert!(rules.contains(metric), "no alert rule uses {metric}");
    }
}
