//! The `quaver-directory` binary across crashes: what it acknowledged survives `kill -9`, a
//! SIGTERM stops it cleanly, and a deleted index is rebuilt from the catalog.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use quaver_shared::directory::v1::directory_client::DirectoryClient;
use quaver_shared::directory::v1::*;
use quaver_shared::{ContentId, NodeKey};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

struct Proc {
    child: Child,
    url: String,
}

async fn start(data: &Path) -> anyhow::Result<Proc> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_quaver-directory"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("QUAVER_INDEX_COMMIT_MS", "20")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await??
        .ok_or_else(|| anyhow::anyhow!("server exited before listening"))?;
    let addr =
        line.strip_prefix("listening on ").ok_or_else(|| anyhow::anyhow!("unexpected line {line:?}"))?;
    Ok(Proc { child, url: format!("http://{addr}") })
}

fn song(n: u8, title: &str) -> SharedFile {
    SharedFile {
        info: Some(FileInfo {
            content_id: ContentId::of_bytes(&[n]).to_vec(),
            size: 1000,
            file_name: format!("{title}.mp3"),
            title: title.into(),
            artist: "周杰伦".into(),
            ..Default::default()
        }),
        complete: true,
    }
}

/// A live QUIC endpoint on 127.0.0.1 serving `key`, so the directory's connect-back check of
/// an Announce passes; it accepts connections and holds them until closed.
fn serve(key: &NodeKey) -> anyhow::Result<quinn::Endpoint> {
    Ok(quaver_shared::tls::identity_only_endpoint(SocketAddr::from(([127, 0, 0, 1], 0)), key)?)
}

async fn found(c: &mut DirectoryClient<Channel>, query: &str) -> anyhow::Result<Vec<String>> {
    let req = SearchRequest {
        query: query.into(),
        filters: Some(SearchFilters { min_online_sources: Some(0), ..Default::default() }),
        ..Default::default()
    };
    let hits = c.search(req).await?.into_inner().hits;
    Ok(hits.into_iter().filter_map(|h| h.file.map(|f| f.title)).collect())
}

async fn wait_found(c: &mut DirectoryClient<Channel>, query: &str, title: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !found(c, query).await?.iter().any(|t| t == title) {
        anyhow::ensure!(Instant::now() < deadline, "{title} never became searchable");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_announces_survive_kill_9_and_the_index_is_rebuilt() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut server = start(data.path()).await?;
    let mut c = DirectoryClient::connect(server.url.clone()).await?;
    let key = NodeKey::generate()?;
    let endpoint = serve(&key)?;
    let request =
        AnnounceRequest { quic_port: u32::from(endpoint.local_addr()?.port()), ..Default::default() };
    let announced = quaver_shared::announce_proof::announce(&mut c, &key, request).await?.into_inner();
    assert!(announced.reachable, "the connect-back check reaches the peer's endpoint");
    let token = announced.session_token;
    c.publish(PublishRequest {
        session_token: token.clone(),
        reset: true,
        added: vec![song(1, "晴天")],
        removed: vec![],
    })
    .await?;
    wait_found(&mut c, "晴天", "晴天").await?;
    let before = c.get_file(GetFileRequest { content_id: ContentId::of_bytes(&[1]).to_vec() }).await?;
    assert_eq!(before.into_inner().online_sources, 1);
    // Acknowledged, then killed at once: it may not be indexed yet, but it is in the catalog.
    c.publish(PublishRequest {
        session_token: token,
        reset: false,
        added: vec![song(2, "七里香")],
        removed: vec![],
    })
    .await?;
    server.child.start_kill()?;
    server.child.wait().await?;

    let mut server = start(data.path()).await?;
    let mut c = DirectoryClient::connect(server.url.clone()).await?;
    for (n, title) in [(1u8, "晴天"), (2, "七里香")] {
        let f =
            c.get_file(GetFileRequest { content_id: ContentId::of_bytes(&[n]).to_vec() }).await?.into_inner();
        assert_eq!(f.file.map(|f| f.title).as_deref(), Some(title));
        assert_eq!(f.online_sources, 0, "leases do not survive a restart");
    }
    wait_found(&mut c, "七里香", "七里香").await?;
    assert_eq!(found(&mut c, "周杰伦").await?.len(), 2);

    // SIGTERM: a clean exit.
    let pid = server.child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), server.child.wait()).await??;
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");

    // A deleted index is rebuilt from the catalog on the next start.
    std::fs::remove_dir_all(data.path().join("index"))?;
    let server = start(data.path()).await?;
    let mut c = DirectoryClient::connect(server.url.clone()).await?;
    wait_found(&mut c, "晴天", "晴天").await?;
    wait_found(&mut c, "七里香", "七里香").await?;
    let stats = c.stats(StatsRequest {}).await?.into_inner();
    assert_eq!(stats.indexed_documents, 2);
    Ok(())
}
