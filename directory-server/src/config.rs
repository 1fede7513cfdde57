//! Server configuration: built-in defaults, then an optional TOML file, then `QUAVER_*`
//! environment variables, then command-line flags (each layer overrides the one before).
//! With nothing given at all the server runs on its embedded default: listen on
//! `0.0.0.0:7700`, data in `./quaver-directory-data`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ops::{LimitsConfig, LogFormat};

/// Longest connect-back check allowed: well inside the server's 30 s limit on one call.
pub const MAX_VERIFY_TIMEOUT_MS: u64 = 20_000;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Where sled and the search index live.
    pub data_dir: PathBuf,
    /// How long a peer stays online after its last Announce or Heartbeat.
    pub lease_seconds: u32,
    /// How often peers are told to beat.
    pub heartbeat_seconds: u32,
    /// How long new catalog entries may wait before the search index commits them.
    pub index_commit_ms: u64,
    /// How long the connect-back check of an Announce may take (QUIC handshake to the peer's
    /// announced address) before the peer is recorded as unreachable.
    pub verify_timeout_ms: u64,
    /// PEM certificate chain for TLS on the gRPC port (with `tls_key`; both or neither).
    /// Re-read on SIGHUP. Without them the port speaks plain HTTP/2.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Where the Prometheus `/metrics` endpoint listens (plain HTTP); off when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// `text` (human-readable) or `json` (one object per line, for log shippers).
    pub log_format: LogFormat,
    /// First UDP port of the two rendezvous endpoints (the second is the next port); by
    /// default the number of the gRPC port (UDP and TCP ports are separate), so an operator
    /// opens `7700/tcp` and `7700-7701/udp`. With `listen` on port 0, both are any free port.
    pub rendezvous_port: Option<u16>,
    /// The TURN server (`host:port`, UDP, as peers reach it) handed to pairs that cannot punch;
    /// no relay without it. Needs `relay_secret`.
    pub relay_address: Option<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`), at least 16
    /// characters; best given as `QUAVER_RELAY_SECRET` rather than in the file.
    pub relay_secret: Option<String>,
    /// How long the TURN credentials the directory mints stay valid.
    pub relay_credential_seconds: u32,
    /// Abuse limits: the `[limits]` table.
    pub limits: LimitsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 7700)),
            data_dir: PathBuf::from("quaver-directory-data"),
            lease_seconds: 90,
            heartbeat_seconds: 30,
            index_commit_ms: 1000,
            verify_timeout_ms: 3000,
            tls_cert: None,
            tls_key: None,
            metrics_listen: None,
            log_format: LogFormat::Text,
            rendezvous_port: None,
            relay_address: None,
            relay_secret: None,
            relay_credential_seconds: 6 * 3600,
            limits: LimitsConfig::default(),
        }
    }
}

/// The directory's data dir variable. Not `QUAVER_DATA_DIR`: that one is the peer's (`quaver
/// --data-dir`), and a directory started in a shell set up for a peer would write its catalog
/// into the peer's data dir.
pub const DATA_DIR_ENV: &str = "QUAVER_DIRECTORY_DATA_DIR";
/// The peer's data dir variable, which the directory never reads (see [`refuse_peer_data_dir`]).
pub const PEER_DATA_DIR_ENV: &str = "QUAVER_DATA_DIR";

/// Refuses to start on the default data dir while the peer's `QUAVER_DATA_DIR` is set and
/// nothing else chose the directory's (`QUAVER_DIRECTORY_DATA_DIR`, `data_dir` in the file, or
/// `--data-dir`, which the caller checks first). Such a shell was set up for a peer, or for an
/// older directory that read `QUAVER_DATA_DIR`: starting on `./quaver-directory-data` would look
/// like a catalog lost, and reading the variable would write into a peer's data dir.
pub fn refuse_peer_data_dir(
    config: &Config,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let chosen = env(DATA_DIR_ENV).is_some() || config.data_dir != Config::default().data_dir;
    match env(PEER_DATA_DIR_ENV) {
        Some(value) if !chosen => Err(ConfigError::PeerDataDir { value }),
        _ => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "{PEER_DATA_DIR_ENV}={value:?} is set, but that variable is a peer's data dir and the \
         directory does not read it; give the directory's own with {DATA_DIR_ENV}, --data-dir or \
         data_dir in the config file (or unset {PEER_DATA_DIR_ENV})"
    )]
    PeerDataDir { value: String },
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Env { name: &'static str, value: String, reason: String },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Defaults overridden by `file` (if any) and then by the `QUAVER_*` variables in `env`.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                toml::from_str(&text)
                    .map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?
            }
            None => Config::default(),
        };
        fn parse<T: std::str::FromStr>(name: &'static str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|e: T::Err| ConfigError::Env { name, reason: e.to_string(), value })
        }
        if let Some(v) = env("QUAVER_LISTEN") {
            config.listen = parse("QUAVER_LISTEN", v)?;
        }
        if let Some(v) = env(DATA_DIR_ENV) {
            config.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("QUAVER_LEASE_SECONDS") {
            config.lease_seconds = parse("QUAVER_LEASE_SECONDS", v)?;
        }
        if let Some(v) = env("QUAVER_HEARTBEAT_SECONDS") {
            config.heartbeat_seconds = parse("QUAVER_HEARTBEAT_SECONDS", v)?;
        }
        if let Some(v) = env("QUAVER_INDEX_COMMIT_MS") {
            config.index_commit_ms = parse("QUAVER_INDEX_COMMIT_MS", v)?;
        }
        if let Some(v) = env("QUAVER_VERIFY_TIMEOUT_MS") {
            config.verify_timeout_ms = parse("QUAVER_VERIFY_TIMEOUT_MS", v)?;
        }
        if let Some(v) = env("QUAVER_TLS_CERT") {
            config.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = env("QUAVER_TLS_KEY") {
            config.tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = env("QUAVER_METRICS_LISTEN") {
            config.metrics_listen = Some(parse("QUAVER_METRICS_LISTEN", v)?);
        }
        if let Some(v) = env("QUAVER_RENDEZVOUS_PORT") {
            config.rendezvous_port = Some(parse("QUAVER_RENDEZVOUS_PORT", v)?);
        }
        if let Some(v) = env("QUAVER_RELAY_ADDRESS") {
            config.relay_address = Some(v);
        }
        if let Some(v) = env("QUAVER_RELAY_SECRET") {
            config.relay_secret = Some(v);
        }
        if let Some(v) = env("QUAVER_RELAY_CREDENTIAL_SECONDS") {
            config.relay_credential_seconds = parse("QUAVER_RELAY_CREDENTIAL_SECONDS", v)?;
        }
        if let Some(v) = env("QUAVER_LOG_FORMAT") {
            config.log_format = parse("QUAVER_LOG_FORMAT", v)?;
        }
        config.limits.apply_env(&env).map_err(|(name, value, reason)| ConfigError::Env {
            name,
            value,
            reason,
        })?;
        Ok(config)
    }

    /// Checks the values make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_seconds == 0 || self.heartbeat_seconds == 0 {
            return Err(ConfigError::Invalid(
                "lease_seconds and heartbeat_seconds must be at least 1".into(),
            ));
        }
        if self.heartbeat_seconds >= self.lease_seconds {
            return Err(ConfigError::Invalid(format!(
                "heartbeat_seconds ({}) must be shorter than lease_seconds ({}), or every peer flaps offline",
                self.heartbeat_seconds, self.lease_seconds
            )));
        }
        if !(1..=MAX_VERIFY_TIMEOUT_MS).contains(&self.verify_timeout_ms) {
            return Err(ConfigError::Invalid(format!(
                "verify_timeout_ms ({}) must be 1..={MAX_VERIFY_TIMEOUT_MS}: the connect-back check runs \
                 inside the Announce call, which the server cuts off after 30 s",
                self.verify_timeout_ms
            )));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key go together: give both (TLS) or neither (plain HTTP/2)".into(),
            ));
        }
        if self.rendezvous_port.unwrap_or(self.listen.port()) == u16::MAX {
            return Err(ConfigError::Invalid(
                "rendezvous_port must leave room for the second endpoint on the next port: at most 65534"
                    .into(),
            ));
        }
        match (&self.relay_address, &self.relay_secret) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "relay_address and relay_secret go together: give both (a relay) or neither".into(),
                ));
            }
            (Some(_), Some(secret)) if secret.len() < crate::relay::MIN_SECRET_LEN => {
                return Err(ConfigError::Invalid(format!(
                    "relay_secret must be at least {} characters: anyone who guesses it can use the relay",
                    crate::relay::MIN_SECRET_LEN
                )));
            }
            _ => {}
        }
        if self.relay_address.is_some() && self.relay_credential_seconds < 60 {
            return Err(ConfigError::Invalid(
                "relay_credential_seconds must be at least 60: shorter credentials expire mid-download"
                    .into(),
            ));
        }
        self.limits.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The relay to hand out, if one is configured.
    pub fn relay(&self) -> Option<crate::relay::RelayOffer> {
        let (address, secret) = (self.relay_address.clone()?, self.relay_secret.as_deref()?);
        let lifetime = Duration::from_secs(u64::from(self.relay_credential_seconds));
        Some(crate::relay::RelayOffer::new(address, secret, lifetime))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(u64::from(self.lease_seconds))
    }

    pub fn index_commit_interval(&self) -> Duration {
        Duration::from_millis(self.index_commit_ms.max(1))
    }

    /// The UDP ports of the two rendezvous endpoints (0: any free port).
    pub fn rendezvous_ports(&self) -> [u16; 2] {
        match self.rendezvous_port.unwrap_or(self.listen.port()) {
            0 => [0, 0],
            p => [p, p.saturating_add(1)],
        }
    }

    pub fn verify_timeout(&self) -> Duration {
        Duration::from_millis(self.verify_timeout_ms.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.toml");
        std::fs::write(&file, "listen = \"127.0.0.1:1234\"\nlease_seconds = 60\n").unwrap();
        let env = |k: &str| match k {
            "QUAVER_LEASE_SECONDS" => Some("45".to_string()),
            "QUAVER_VERIFY_TIMEOUT_MS" => Some("1500".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.verify_timeout(), Duration::from_millis(1500));
        assert_eq!(c.listen, "127.0.0.1:1234".parse().unwrap());
        assert_eq!(c.lease_seconds, 45);
        assert_eq!(c.heartbeat_seconds, 30);
        c.validate().unwrap();

        std::fs::write(
            &file,
            "tls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\nlog_format = \"json\"\n\
             [limits]\nmax_peers_per_ip = 3\nexempt_loopback = false\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "QUAVER_METRICS_LISTEN" => Some("127.0.0.1:9100".to_string()),
            "QUAVER_LIMITS_MAX_PEERS_PER_IP" => Some("5".to_string()),
            _ => None,
        };
        let c = Config::load(Some(&file), env).unwrap();
        assert_eq!(c.tls_cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(c.limits.max_peers_per_ip, 5);
        assert!(!c.limits.exempt_loopback);
        assert_eq!(c.limits.ip_request_burst, LimitsConfig::default().ip_request_burst);
        c.validate().unwrap();
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let env = |k: &str| (k == "QUAVER_LISTEN").then(|| "nowhere".to_string());
        let e = Config::load(None, env).unwrap_err().to_string();
        assert!(e.contains("QUAVER_LISTEN"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.toml");
        std::fs::write(&file, "lisen = 1\n").unwrap();
        assert!(Config::load(Some(&file), |_| None).is_err());
        let c = Config { heartbeat_seconds: 90, ..Config::default() };
        assert!(c.validate().is_err());
        for verify_timeout_ms in [0, MAX_VERIFY_TIMEOUT_MS + 1] {
            let e = Config { verify_timeout_ms, ..Config::default() }.validate().unwrap_err().to_string();
            assert!(e.contains("verify_timeout_ms"), "{e}");
        }
        let half_tls = Config { tls_cert: Some("/c.pem".into()), ..Config::default() };
        assert!(half_tls.validate().unwrap_err().to_string().contains("tls_key"));
        let env = |k: &str| (k == "QUAVER_LOG_FORMAT").then(|| "xml".to_string());
        assert!(Config::load(None, env).unwrap_err().to_string().contains("QUAVER_LOG_FORMAT"));
    }

    #[test]
    fn the_directory_reads_its_own_data_dir_variable_never_the_peers() {
        let peer = |k: &str| (k == PEER_DATA_DIR_ENV).then(|| "/home/u/.local/share/quaver".to_string());
        let c = Config::load(None, peer).unwrap();
        assert_eq!(c.data_dir, Config::default().data_dir, "QUAVER_DATA_DIR is not read");
        let e = refuse_peer_data_dir(&c, peer).unwrap_err().to_string();
        assert!(e.contains("QUAVER_DATA_DIR=\"/home/u/.local/share/quaver\" is set"), "{e}");
        assert!(e.contains("QUAVER_DIRECTORY_DATA_DIR, --data-dir or data_dir"), "{e}");

        let both = |k: &str| match k {
            DATA_DIR_ENV => Some("/var/lib/quaver-directory".to_string()),
            _ => peer(k),
        };
        let c = Config::load(None, both).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/quaver-directory"));
        refuse_peer_data_dir(&c, both).unwrap();

        // data_dir from the config file is a choice too.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("d.toml");
        std::fs::write(&file, "data_dir = \"/srv/dir\"\n").unwrap();
        let c = Config::load(Some(&file), peer).unwrap();
        refuse_peer_data_dir(&c, peer).unwrap();
        // Nothing set at all: the embedded default, no refusal.
        refuse_peer_data_dir(&Config::default(), |_| None).unwrap();
    }
}
