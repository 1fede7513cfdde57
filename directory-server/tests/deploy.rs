//! The artefacts in `deploy/`, checked with what runs without Docker or Kubernetes: the YAML's
//! structure, the example config through the server's own loader, the systemd units through
//! `systemd-analyze`, and the Dockerfile's and compose file's command lines run against the
//! binaries built from this source on loopback.
//!
//! Running a container's command line on the host needs a few container facts mapped to host
//! ones, and only those: paths in the image (config, data dir, /music) become files of this
//! repository or temporary dirs, the service name `directory` becomes 127.0.0.1 and the
//! peers' fixed `0.0.0.0:7701` (each container has its own network namespace) becomes a free
//! loopback port each.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use quaver_directory::Config;
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::{SearchFilters, SearchRequest, StatsRequest};
use serde_norway::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    at(v, path).as_str().unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, key| match v {
        Value::Sequence(items) => {
            key.parse::<usize>().ok().and_then(|i| items.get(i)).unwrap_or(&Value::Null)
        }
        _ => v.get(*key).unwrap_or(&Value::Null),
    })
}

/// The binaries built from this source: `quaver-directory` by cargo for this test, `quaver`
/// beside it (cargo builds it for the peer crate's tests in `cargo test --workspace`).
/// `QUAVER_DEPLOY_BIN_DIR` points at other builds instead: `deploy/check-release.sh` builds the
/// release binaries exactly as the Dockerfile does and runs these checks on them.
fn binaries() -> (PathBuf, PathBuf) {
    let directory = match std::env::var_os("QUAVER_DEPLOY_BIN_DIR") {
        Some(dir) => PathBuf::from(dir).join("quaver-directory"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_quaver-directory")),
    };
    let quaver = directory.with_file_name("quaver");
    assert!(
        quaver.exists(),
        "{} is missing: run `cargo build --workspace --bins` (cargo test --workspace builds it)",
        quaver.display()
    );
    (directory, quaver)
}

// ---- config ----

/// Turns on the options the example leaves off (`#key = value` lines).
fn enable_all(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase()) && rest.contains(" = ") => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The keys a table of the config accepts, from the loader itself: serde lists them when it
/// refuses an unknown one (`deny_unknown_fields`).
fn accepted_keys(table: Option<&str>) -> BTreeSet<String> {
    let probe = match table {
        Some(t) => format!("[{t}]\n__probe__ = 1\n"),
        None => "__probe__ = 1\n".to_string(),
    };
    let err = toml::from_str::<Config>(&probe).expect_err("an unknown key is refused").to_string();
    let list = err.split("expected one of").nth(1).unwrap_or_else(|| panic!("unexpected error: {err}"));
    let keys: BTreeSet<String> = list.split('`').skip(1).step_by(2).map(str::to_owned).collect();
    assert!(!keys.is_empty(), "no keys in {err}");
    keys
}

#[test]
fn the_example_config_is_loaded_by_the_server_and_names_every_option() {
    let path = deploy().join("config/directory.toml");
    let config = Config::load(Some(&path), |_| None).expect("the example loads as it is");
    config.validate().expect("and is valid");

    let enabled = enable_all(&read(&path));
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.toml");
    std::fs::write(&all, &enabled).unwrap();
    let config = Config::load(Some(&all), |_| None).expect("with every option on, it still loads");
    config.validate().expect("and is valid");

    let table: toml::Table = toml::from_str(&enabled).unwrap();
    let mut missing = Vec::new();
    for key in accepted_keys(None) {
        match table.get(&key) {
            None => missing.push(key),
            Some(toml::Value::Table(inner)) => {
                let inner_keys: BTreeSet<String> = inner.keys().cloned().collect();
                for k in accepted_keys(Some(&key)).difference(&inner_keys) {
                    missing.push(format!("{key}.{k}"));
                }
            }
            Some(_) => {}
        }
    }
    assert!(missing.is_empty(), "deploy/config/directory.toml does not mention {missing:?}");

    // The Kubernetes ConfigMap's copy loads too.
    let docs = yaml_docs(&deploy().join("k8s/quaver-directory.yaml"));
    let map = docs.iter().find(|d| str_at(d, &["kind"]) == "ConfigMap").expect("a ConfigMap");
    let k8s = dir.path().join("k8s.toml");
    std::fs::write(&k8s, str_at(map, &["data", "directory.toml"])).unwrap();
    Config::load(Some(&k8s), |_| None).expect("the ConfigMap's config loads").validate().unwrap();
}

// ---- Dockerfile ----

struct Dockerfile {
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn parse(text: &str) -> Self {
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            current.push_str(line.trim_end_matches('\\'));
            current.push(' ');
            if !line.ends_with('\\') {
                let (op, args) = current.trim().split_once(' ').unwrap_or((current.trim(), ""));
                instructions.push((op.to_ascii_uppercase(), args.trim().to_string()));
                current.clear();
            }
        }
        Self { instructions }
    }

    fn all(&self, op: &str) -> Vec<&str> {
        self.instructions.iter().filter(|(o, _)| o == op).map(|(_, a)| a.as_str()).collect()
    }

    fn last(&self, op: &str) -> &str {
        self.all(op).last().copied().unwrap_or_else(|| panic!("no {op}"))
    }

    /// An exec-form command (`["a", "b"]`) after `prefix`.
    fn exec_form(args: &str) -> Vec<String> {
        let start = args.find('[').unwrap_or_else(|| panic!("not exec form: {args}"));
        serde_json::from_str(&args[start..]).unwrap_or_else(|e| panic!("{args}: {e}"))
    }
}

#[test]
fn the_dockerfile_builds_release_binaries_and_runs_unprivileged() {
    let docker = Dockerfile::parse(&read(&deploy().join("Dockerfile")));
    let froms = docker.all("FROM");
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    let runtime = froms.last().copied().unwrap_or_default();
    assert!(runtime.starts_with("debian:") && runtime.contains("slim"), "{runtime}");
    let build = docker.all("RUN").join(" ");
    for needed in ["--release", "--locked", "--bin quaver-directory", "--bin quaver"] {
        assert!(build.contains(needed), "the build runs cargo with {needed}");
    }
    let user = docker.last("USER");
    assert!(!user.starts_with("root") && !user.starts_with('0'), "USER {user}");
    assert!(
        docker.all("EXPOSE").iter().any(|e| e.split_whitespace().any(|p| p == "7700/tcp" || p == "7700"))
    );
    assert!(docker.last("VOLUME").contains("/var/lib/quaver-directory"));
    let health = docker.last("HEALTHCHECK");
    assert!(health.contains("CMD"), "{health}");
    assert_eq!(Dockerfile::exec_form(health)[..2], ["quaver-directory", "health"]);
    assert_eq!(Dockerfile::exec_form(docker.last("CMD"))[0], "quaver-directory");
    // The config the image runs with is the example, where QUAVER_CONFIG says.
    let copy =
        docker.all("COPY").into_iter().find(|c| c.contains("directory.toml")).expect("COPY of the config");
    assert!(copy.starts_with("deploy/config/directory.toml /etc/quaver/directory.toml"), "{copy}");
    assert!(docker.all("ENV").contains(&"QUAVER_CONFIG=/etc/quaver/directory.toml"));
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    assert!(ignore.lines().any(|l| l.trim() == "target"), "the build context leaves target/ out");
}

// ---- compose and Kubernetes ----

#[test]
fn compose_runs_a_directory_and_three_peers_sharing_the_sample_folder() {
    let compose = yaml_docs(&deploy().join("compose.yaml")).remove(0);
    let services = at(&compose, &["services"]).as_mapping().expect("services");
    let names: BTreeSet<&str> = services.keys().filter_map(Value::as_str).collect();
    assert_eq!(names, BTreeSet::from(["directory", "peer1", "peer2", "peer3"]));
    let directory = at(&compose, &["services", "directory"]);
    assert_eq!(str_at(directory, &["build", "dockerfile"]), "deploy/Dockerfile");
    assert!(deploy().join(str_at(directory, &["build", "context"])).join("Cargo.toml").exists());
    let image = str_at(directory, &["image"]);
    assert_eq!(at(directory, &["ports", "0"]).as_str(), Some("7700:7700"));
    assert!(str_at(directory, &["volumes", "0"]).ends_with(":/var/lib/quaver-directory"));
    for peer in ["peer1", "peer2", "peer3"] {
        let p = at(&compose, &["services", peer]);
        assert_eq!(str_at(p, &["image"]), image, "{peer} runs the same image");
        assert_eq!(str_at(p, &["depends_on", "directory", "condition"]), "service_healthy");
        assert_eq!(str_at(p, &["environment", "QUAVER_DIRECTORY"]), "http://directory:7700");
        assert_eq!(str_at(p, &["volumes", "0"]), "./sample-music:/music:ro");
        assert!(str_at(p, &["command", "2"]).contains("quaver share /music"));
    }
    let samples = std::fs::read_dir(deploy().join("sample-music")).unwrap().count();
    assert!(samples >= 3, "the sample folder holds music");
}

#[test]
fn the_kubernetes_statefulset_keeps_its_data_and_probes_grpc_health() {
    let docs = yaml_docs(&deploy().join("k8s/quaver-directory.yaml"));
    let kinds: Vec<&str> = docs.iter().map(|d| str_at(d, &["kind"])).collect();
    assert_eq!(kinds, ["ConfigMap", "Service", "Service", "StatefulSet"]);
    let set = &docs[3];
    assert_eq!(at(set, &["spec", "replicas"]).as_u64(), Some(1), "one writer per data dir");
    let labels = at(set, &["spec", "template", "metadata", "labels"]);
    assert_eq!(at(set, &["spec", "selector", "matchLabels"]), labels);
    let pod = at(set, &["spec", "template", "spec"]);
    assert_eq!(at(pod, &["securityContext", "runAsNonRoot"]).as_bool(), Some(true));
    let c = at(pod, &["containers", "0"]);
    assert_eq!(at(c, &["ports", "0", "containerPort"]).as_u64(), Some(7700));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(at(c, &[probe, "grpc", "port"]).as_u64(), Some(7700), "{probe} on gRPC health");
    }
    for (kind, what) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
        assert!(!at(c, &["resources", kind, what]).is_null(), "resources.{kind}.{what}");
    }
    // The claim is mounted where the config puts the data.
    let claim = str_at(set, &["spec", "volumeClaimTemplates", "0", "metadata", "name"]);
    let mounts = at(c, &["volumeMounts"]).as_sequence().unwrap();
    let mount_of = |name: &str| {
        mounts.iter().find(|m| str_at(m, &["name"]) == name).map(|m| str_at(m, &["mountPath"]).to_owned())
    };
    let config_text = str_at(&docs[0], &["data", "directory.toml"]);
    let config: Config = toml::from_str(config_text).unwrap();
    assert_eq!(mount_of(claim).map(PathBuf::from), Some(config.data_dir));
    assert_eq!(mount_of("config").as_deref(), Some("/etc/quaver"));
    let args: Vec<&str> = at(c, &["args"]).as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(args, ["quaver-directory", "--config", "/etc/quaver/directory.toml"]);
    // Peers' source IPs survive the Service (they are handed out as peer addresses).
    let public = &docs[2];
    assert_eq!(str_at(public, &["spec", "externalTrafficPolicy"]), "Local");
    assert_eq!(at(public, &["spec", "selector"]), at(labels, &[]));
}

// ---- systemd ----

#[test]
fn the_systemd_units_verify() {
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("systemd-analyze is not installed: skipping the unit checks");
        return;
    };
    assert!(out.status.success());
    let (directory, quaver) = binaries();
    let dir = tempfile::tempdir().unwrap();
    for (unit, from, to) in [
        ("quaver-directory.service", "/usr/local/bin/quaver-directory", directory.display().to_string()),
        ("quaver-peer.service", "%h/.local/bin/quaver", quaver.display().to_string()),
    ] {
        // verify wants the ExecStart binary to exist: point it at the one built here.
        let text = read(&deploy().join("systemd").join(unit));
        assert!(text.contains(from), "{unit} runs {from}");
        let path = dir.path().join(unit);
        std::fs::write(&path, text.replace(from, &to)).unwrap();
        let out = std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.trim().is_empty(), "{unit}: {stderr}");
    }
    let text = read(&deploy().join("systemd/quaver-directory.service"));
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=quaver-directory",
        "NoNewPrivileges=yes",
        "SystemCallFilter=@system-service",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(text.lines().any(|l| l == line), "the directory unit has {line}");
    }
    // systemd's own exposure score (0 = locked down, 100 = none): 2.5 or better.
    let out = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--threshold=25"])
        .arg(dir.path().join("quaver-directory.service"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

// ---- the command lines, run ----

struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        // The child leads its own process group; end the whole group (a peer's share loop).
        if let Some(pid) = self.0.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", "--", &format!("-{pid}")]).status();
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn run_status(program: &str, args: &[String], env: &[(&str, String)], path: &str) -> bool {
    let mut cmd = Command::new(program);
    cmd.args(args).env("PATH", path).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.status().await.map(|s| s.success()).unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_and_compose_command_lines_serve_and_share() -> anyhow::Result<()> {
    let (directory, _) = binaries();
    let bin_dir = directory.parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let docker = Dockerfile::parse(&read(&deploy().join("Dockerfile")));
    let data = tempfile::tempdir()?;

    // The image's environment, with its paths mapped to this host.
    let listen = format!("127.0.0.1:{}", free_port());
    let mut env: Vec<(&str, String)> = Vec::new();
    for e in docker.all("ENV") {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        assert_eq!(k, "QUAVER_CONFIG", "an ENV this test does not map: {e}");
        assert_eq!(v, "/etc/quaver/directory.toml");
        env.push(("QUAVER_CONFIG", deploy().join("config/directory.toml").display().to_string()));
    }
    env.push(("QUAVER_DIRECTORY_DATA_DIR", data.path().display().to_string()));
    env.push(("QUAVER_LISTEN", listen.clone()));

    let health = Dockerfile::exec_form(docker.last("HEALTHCHECK"));
    assert!(
        !run_status(&health[0], &health[1..], &env, &path).await,
        "the health check fails while nothing listens"
    );

    let cmd = Dockerfile::exec_form(docker.last("CMD"));
    let mut server = Command::new(&cmd[0]);
    server.args(&cmd[1..]).env("PATH", &path).stdout(Stdio::piped()).kill_on_drop(true).process_group(0);
    for (k, v) in &env {
        server.env(k, v);
    }
    let mut server = Group(server.spawn()?);
    let stdout = server.0.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await??.unwrap_or_default();
    assert_eq!(line, format!("listening on {listen}"));
    assert!(run_status(&health[0], &health[1..], &env, &path).await, "the health check passes");

    // The compose peers' command lines, one process group each.
    let compose = yaml_docs(&deploy().join("compose.yaml")).remove(0);
    let music = deploy().join("sample-music").canonicalize()?;
    let url = format!("http://{listen}");
    let mut peers = Vec::new();
    for name in ["peer1", "peer2", "peer3"] {
        let service = at(&compose, &["services", name]);
        let command: Vec<String> = at(service, &["command"])
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .map(|a| {
                a.replace("$$", "$")
                    .replace("/music", &music.display().to_string())
                    .replace("0.0.0.0:7701", "127.0.0.1:0")
            })
            .collect();
        let peer_data = data.path().join(name);
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .env("PATH", &path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .process_group(0);
        for (k, v) in at(service, &["environment"]).as_mapping().unwrap() {
            let (k, v) = (k.as_str().unwrap(), v.as_str().unwrap());
            let v = match k {
                "QUAVER_DIRECTORY" => v.replace("http://directory:7700", &url),
                "QUAVER_DATA_DIR" => peer_data.display().to_string(),
                _ => v.to_owned(),
            };
            cmd.env(k, v);
        }
        peers.push(Group(cmd.spawn()?));
    }

    // Three peers online, each sample file with three online sources.
    let mut c = DirectoryClient::connect(url.clone()).await?;
    let samples = std::fs::read_dir(&music)?.count();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stats = c.stats(StatsRequest {}).await?.into_inner();
        let hits = c
            .search(SearchRequest {
                query: "quaver demo".into(),
                page_size: 20,
                filters: Some(SearchFilters { min_online_sources: Some(0), ..Default::default() }),
                ..Default::default()
            })
            .await?
            .into_inner()
            .hits;
        let shared_by_all = hits.iter().filter(|h| h.online_sources == 3).count();
        if stats.online_peers == 3 && shared_by_all == samples {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "compose peers never all shared the samples: {stats:?}, {shared_by_all} of {samples} files"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(peers);
    drop(server);
    Ok(())
}
