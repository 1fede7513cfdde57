//! The `quaver-directory` binary with the operator's flags: `--tls-cert/--tls-key` with a
//! SIGHUP reload, `--metrics-listen` (its `metrics on ADDR` line) and `--log-format json`,
//! whose every standard-error line must be a JSON object, request log lines included.

mod ops_support;

use std::process::Stdio;
use std::time::Duration;

use ops_support::*;
use quaver_shared::directory::v1::StatsRequest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").args([format!("-{name}"), pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill -{name} failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_tls_reload_on_sighup_and_metrics_line() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (data, certs) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let (ca1, ca2) = (Ca::new("first CA")?, Ca::new("second CA")?);
    let (cert, key) = ca1.write_server_cert(certs.path())?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_quaver-directory"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(data.path())
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env("RUST_LOG", "quaver_directory=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let stderr_text = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut next_line = async || -> anyhow::Result<String> {
        tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the server exited early"))
    };
    let listening = next_line().await?;
    let addr = listening.strip_prefix("listening on ").ok_or_else(|| anyhow::anyhow!("{listening:?}"))?;
    let port: u16 = addr.rsplit_once(':').map(|(_, p)| p.parse()).transpose()?.unwrap_or(0);
    let metrics_line = next_line().await?;
    let metrics_addr =
        metrics_line.strip_prefix("metrics on ").ok_or_else(|| anyhow::anyhow!("{metrics_line:?}"))?;

    tls_client(port, &ca1.pem).await?.stats(StatsRequest {}).await?;
    assert!(tls_client(port, &ca2.pem).await.is_err());

    // A new certificate, then SIGHUP: new connections get it.
    ca2.write_server_cert(certs.path())?;
    signal(pid, "HUP")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = tls_client(port, &ca2.pem).await {
            c.stats(StatsRequest {}).await?;
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "SIGHUP did not reload the certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let scraped = scrape(metrics_addr.parse()?).await?;
    assert_eq!(sample(&scraped, r#"quaver_directory_tls_reloads_total{result="ok"}"#), 1.0);

    signal(pid, "TERM")?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "{status}");

    let text = stderr_text.await?;
    let mut requests = 0;
    let mut reloaded = false;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{e}: {line:?}"))?;
        match v["message"].as_str() {
            Some("request") => {
                requests += 1;
                assert!(v["method"].is_string() && v["peer"].is_string(), "{line}");
                assert!(v["status"].is_string() && v["duration_ms"].is_number(), "{line}");
            }
            Some("TLS certificate reloaded") => reloaded = true,
            _ => {}
        }
    }
    assert!(requests >= 2, "request log lines at debug: {text}");
    assert!(reloaded, "{text}");
    Ok(())
}
