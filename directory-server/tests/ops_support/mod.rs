//! Helpers shared by the operations tests (`tls`, `metrics`, `limits`, `ops_binary`): test
//! certificates, directories on loopback, clients bound to a chosen loopback source address,
//! peers that pass the connect-back check, and a scrape of `/metrics`.
#![allow(dead_code)] // each test file uses its own part

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use quaver_directory::{Config, RunningServer};
use quaver_shared::NodeKey;
use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub type Client = DirectoryClient<Channel>;

/// A test certificate authority.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { pem, issuer: Issuer::new(params, key) })
    }

    /// A server certificate for `localhost` and 127.0.0.1, as (cert PEM, key PEM).
    pub fn server_cert(&self) -> anyhow::Result<(String, String)> {
        let key = KeyPair::generate()?;
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        Ok((params.signed_by(&key, &self.issuer)?.pem(), key.serialize_pem()))
    }

    /// Writes a server certificate and its key into `dir` (overwriting), returns their paths.
    pub fn write_server_cert(&self, dir: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.server_cert()?;
        let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert_path, cert)?;
        std::fs::write(&key_path, key)?;
        Ok((cert_path, key_path))
    }
}

/// A config for a directory on 127.0.0.1:0 with its data in `data`.
pub fn config(data: &Path) -> Config {
    Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: data.to_owned(),
        index_commit_ms: 20,
        verify_timeout_ms: 2000,
        ..Config::default()
    }
}

pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    Ok(RunningServer::start(config).await?)
}

/// A plain client of `server` whose connection comes from the loopback address `from`.
pub async fn client_from(server: &RunningServer, from: [u8; 4]) -> anyhow::Result<Client> {
    let channel = Endpoint::from_shared(format!("http://{}", server.local_addr))?
        .local_address(Some(IpAddr::from(from)))
        .connect()
        .await?;
    Ok(DirectoryClient::new(channel))
}

/// A TLS client of the directory at `https://localhost:PORT`, trusting only `ca_pem`.
pub async fn tls_client(port: u16, ca_pem: &str) -> anyhow::Result<Client> {
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    let channel =
        Endpoint::from_shared(format!("https://localhost:{port}"))?.tls_config(tls)?.connect().await?;
    Ok(DirectoryClient::new(channel))
}

/// A peer key and a QUIC endpoint on `ip` that answers the directory's connect-back check.
pub fn peer_at(ip: [u8; 4]) -> anyhow::Result<(NodeKey, quinn::Endpoint)> {
    let key = NodeKey::generate()?;
    let endpoint = quaver_shared::tls::identity_only_endpoint(SocketAddr::from((ip, 0)), &key)?;
    Ok((key, endpoint))
}

pub fn announce_request(key: &NodeKey, endpoint: &quinn::Endpoint) -> anyhow::Result<AnnounceRequest> {
    Ok(AnnounceRequest {
        peer_id: key.peer_id().to_vec(),
        quic_port: u32::from(endpoint.local_addr()?.port()),
        ..Default::default()
    })
}

/// `GET /metrics` over plain HTTP/1.0; the samples by `name{labels}` (labels sorted, so the
/// order the server writes them in does not matter).
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n").await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no HTTP body"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    parse_exposition(body)
}

/// Parses the text exposition format: `# ` lines are metadata, every other line is
/// `name{label="value",...} value`.
pub fn parse_exposition(text: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| anyhow::anyhow!("bad line {line:?}"))?;
        let key = match series.split_once('{') {
            None => series.to_string(),
            Some((name, labels)) => {
                let labels =
                    labels.strip_suffix('}').ok_or_else(|| anyhow::anyhow!("bad labels {line:?}"))?;
                let mut pairs: Vec<&str> = labels.split(',').filter(|p| !p.is_empty()).collect();
                pairs.sort_unstable();
                format!("{name}{{{}}}", pairs.join(","))
            }
        };
        samples.insert(key, value.parse::<f64>()?);
    }
    Ok(samples)
}

/// The value of one sample, 0 when absent (a counter that has not moved yet).
pub fn sample(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}
