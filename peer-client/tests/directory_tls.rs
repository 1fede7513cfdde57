//! A node talking to a TLS directory (`https://` URL): with `directory_ca` (`--directory-ca`)
//! naming the directory's CA, its session announces and publishes and its searches work; with
//! the system roots only, the directory's test certificate is refused and the node never gets
//! a session.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use quaver_directory::{Config, RunningServer};
use quaver_peer::node::{Node, NodeConfig};
use quaver_shared::directory::v1::{SearchFilters, SearchRequest};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A CA and a server certificate for localhost signed by it, written into `dir`; returns the
/// paths of the CA, the server certificate and its key.
fn certificates(dir: &Path) -> anyhow::Result<[std::path::PathBuf; 3]> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "Quaver test CA");
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
    let paths = [dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key")];
    std::fs::write(&paths[0], ca_pem)?;
    std::fs::write(&paths[1], cert.pem())?;
    std::fs::write(&paths[2], key.serialize_pem())?;
    Ok(paths)
}

async fn node(root: &Path, name: &str, url: &str, ca: Option<&Path>) -> anyhow::Result<std::sync::Arc<Node>> {
    let mut config = NodeConfig::new(root.join(name), url.to_string());
    config.directory_ca = ca.map(Path::to_owned);
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    Ok(Node::start(config).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_the_directory_ca_talks_to_a_tls_directory() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let [ca, cert, key] = certificates(root.path())?;
    let server = RunningServer::start(Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: root.path().join("directory"),
        index_commit_ms: 20,
        tls_cert: Some(cert),
        tls_key: Some(key),
        ..Config::default()
    })
    .await?;
    let url = format!("https://localhost:{}", server.local_addr.port());

    let music = root.path().join("music");
    std::fs::create_dir_all(&music)?;
    std::fs::write(music.join("Jay Chou - Sunny Day.mp3"), vec![7u8; 50_000])?;
    let trusted = node(root.path(), "trusted", &url, Some(&ca)).await?;
    trusted.share(music).await?;
    let untrusted = node(root.path(), "untrusted", &url, None).await?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let request = SearchRequest {
        query: "sunny day".into(),
        filters: Some(SearchFilters { min_online_sources: Some(0), ..Default::default() }),
        ..Default::default()
    };
    loop {
        let state = trusted.session_state();
        if state.connected && !trusted.search(request.clone()).await?.is_empty() {
            assert_eq!(state.reachable, Some(true), "the directory saw the node's own address");
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "no session over TLS: {state:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let state = untrusted.session_state();
    assert!(!state.connected, "a node without the CA must not trust the test certificate");
    assert!(untrusted.search(request).await.is_err());
    trusted.shutdown().await;
    untrusted.shutdown().await;
    server.shutdown().await?;
    Ok(())
}
