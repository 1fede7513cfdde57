//! TLS on the gRPC port with real handshakes on loopback: a client that trusts the server's CA
//! is served, one that trusts another CA is refused, a reload swaps the certificate for new
//! connections while open ones keep working, a bad reload keeps the old certificate, and the
//! directory still sees the client's address through TLS (an Announce records it).

mod ops_support;

use ops_support::*;
use quaver_shared::announce_proof;
use quaver_shared::directory::v1::StatsRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_right_ca_refuses_the_wrong_one_and_reloads() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = tempfile::tempdir()?;
    let certs = tempfile::tempdir()?;
    let (ca1, ca2) = (Ca::new("first CA")?, Ca::new("second CA")?);
    let (cert, key) = ca1.write_server_cert(certs.path())?;
    let server =
        start(quaver_directory::Config { tls_cert: Some(cert), tls_key: Some(key), ..config(data.path()) })
            .await?;
    let port = server.local_addr.port();

    // The right CA: served, and the Announce sees the client's own IP through TLS.
    let mut c1 = tls_client(port, &ca1.pem).await?;
    c1.stats(StatsRequest {}).await?;
    let (peer_key, peer) = peer_at([127, 0, 0, 1])?;
    let answer =
        announce_proof::announce(&mut c1, &peer_key, announce_request(&peer_key, &peer)?).await?.into_inner();
    let quic = peer.local_addr()?;
    assert_eq!(answer.observed_address, format!("127.0.0.1:{}", quic.port()));
    assert!(answer.reachable, "the connect-back check reached the peer at the observed IP");

    // The wrong CA: the handshake fails, and so does plain HTTP/2 on the TLS port.
    let refused = tls_client(port, &ca2.pem).await;
    assert!(refused.is_err(), "a client trusting another CA must be refused");
    let mut plain = client_from(&server, [127, 0, 0, 1]).await;
    if let Ok(c) = plain.as_mut() {
        assert!(c.stats(StatsRequest {}).await.is_err(), "plain HTTP/2 must not be served on the TLS port");
    }

    // Reload with a certificate from the second CA: new connections see it, the open one
    // keeps working.
    ca2.write_server_cert(certs.path())?;
    assert_eq!(server.reload_tls(), Some(true));
    let mut c2 = tls_client(port, &ca2.pem).await?;
    c2.stats(StatsRequest {}).await?;
    assert!(tls_client(port, &ca1.pem).await.is_err(), "new handshakes get the new certificate");
    c1.stats(StatsRequest {}).await?;

    // A broken file on reload: refused, the current certificate stays.
    std::fs::write(certs.path().join("server.pem"), "garbage")?;
    assert_eq!(server.reload_tls(), Some(false));
    tls_client(port, &ca2.pem).await?.stats(StatsRequest {}).await?;
    // A key that does not match the certificate is refused too.
    let (cert2, _) = ca2.server_cert()?;
    std::fs::write(certs.path().join("server.pem"), cert2)?;
    assert_eq!(server.reload_tls(), Some(false));
    tls_client(port, &ca2.pem).await?.stats(StatsRequest {}).await?;

    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_stop_the_start() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let certs = tempfile::tempdir()?;
    let missing = certs.path().join("missing.pem");
    let config = quaver_directory::Config {
        tls_cert: Some(missing.clone()),
        tls_key: Some(missing),
        ..config(data.path())
    };
    let e = start(config).await.err().ok_or_else(|| anyhow::anyhow!("started without a certificate"))?;
    assert!(e.to_string().contains("missing.pem"), "{e}");
    Ok(())
}
