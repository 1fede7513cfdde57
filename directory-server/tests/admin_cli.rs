//! The operator subcommands of the `quaver-directory` binary against a running directory:
//! `peers`, `ban`, `bans`, `unban`, `remove-file`, their output and exit status, and the
//! metric that counts the Announces a ban refused.

mod ops_support;

use std::process::Output;

use ops_support::*;
use quaver_shared::ContentId;
use quaver_shared::announce_proof;
use quaver_shared::directory::v1::{FileInfo, PublishRequest, SharedFile};
use tokio::process::Command;

/// Runs `quaver-directory ARGS --server URL` and returns its output.
async fn run(url: &str, args: &[&str]) -> anyhow::Result<Output> {
    let data = tempfile::tempdir()?;
    let output = Command::new(env!("CARGO_BIN_EXE_quaver-directory"))
        .args(args)
        .args(["--server", url])
        // A data dir of its own, so no command can touch the running server's.
        .arg("--data-dir")
        .arg(data.path())
        .output();
    Ok(tokio::time::timeout(std::time::Duration::from_secs(60), output).await??)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_list_ban_lift_and_remove_with_clear_output() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let server = start(quaver_directory::Config {
        metrics_listen: Some("127.0.0.1:0".parse()?),
        ..config(data.path())
    })
    .await?;
    let url = format!("http://{}", server.local_addr);
    let metrics = server.metrics_addr.ok_or_else(|| anyhow::anyhow!("no metrics address"))?;
    let mut c = client_from(&server, [127, 0, 0, 1]).await?;
    let (key, endpoint) = peer_at([127, 0, 0, 1])?;
    let token = announce_proof::announce(&mut c, &key, announce_request(&key, &endpoint)?)
        .await?
        .into_inner()
        .session_token;
    let id = ContentId::of_bytes(b"admin cli test");
    let info =
        FileInfo { content_id: id.to_vec(), size: 5, file_name: "晴天.mp3".into(), ..Default::default() };
    let added = vec![SharedFile { info: Some(info), complete: true }];
    c.publish(PublishRequest { session_token: token, reset: true, added, removed: vec![] }).await?;

    let peers = run(&url, &["peers"]).await?;
    assert!(peers.status.success(), "{peers:?}");
    let text = stdout(&peers);
    let port = endpoint.local_addr()?.port();
    let row = text.lines().find(|l| l.starts_with(&key.peer_id().to_string())).unwrap_or_default();
    let columns: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(columns.get(1..5), Some(&[&*format!("127.0.0.1:{port}"), "yes", "1", "0"][..]), "{text}");
    assert!(text.starts_with("PEER ") && text.ends_with("1 peer(s) online\n"), "{text}");

    let peer = key.peer_id().to_string();
    let ban = run(&url, &["ban", &peer, "--for", "2h", "--reason", "spam"]).await?;
    assert!(ban.status.success(), "{ban:?}");
    let text = stdout(&ban);
    assert!(text.starts_with(&format!("banned: peer {peer} until 20")), "{text}");
    assert!(text.ends_with("; 1 online peer(s) taken offline\n"), "{text}");
    let refused = announce_proof::announce(&mut c, &key, announce_request(&key, &endpoint)?).await;
    assert_eq!(refused.err().map(|s| s.code()), Some(tonic::Code::PermissionDenied));
    let counted = sample(&scrape(metrics).await?, "quaver_directory_banned_announces_total");
    assert_eq!(counted, 1.0, "the refused Announce is counted");

    let bans = stdout(&run(&url, &["bans"]).await?);
    assert!(bans.starts_with("TARGET "), "{bans}");
    assert!(
        bans.lines().nth(1).is_some_and(|l| l.starts_with(&format!("peer {peer}")) && l.ends_with("spam")),
        "{bans}"
    );
    let bad = run(&url, &["ban", "10.0.0.0/33", "--for", "1h"]).await?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither a peer id"), "{bad:?}");
    let bad = run(&url, &["ban", "10.0.0.0/8", "--for", "5w"]).await?;
    assert!(String::from_utf8_lossy(&bad.stderr).contains("the unit must be s, m, h or d"), "{bad:?}");

    let unban = run(&url, &["unban", &peer]).await?;
    assert_eq!(stdout(&unban), format!("lifted the ban of peer {peer}\n"));
    assert_eq!(stdout(&run(&url, &["unban", &peer]).await?), format!("no ban of peer {peer} was in force\n"));
    assert_eq!(stdout(&run(&url, &["bans"]).await?), "no bans in force\n");

    let removed = run(&url, &["remove-file", &id.to_string()]).await?;
    assert!(removed.status.success(), "{removed:?}");
    assert_eq!(
        stdout(&removed),
        format!("removed {id} from the catalog and the search index; 1 peer(s) shared it\n")
    );
    let again = run(&url, &["remove-file", &id.to_string()]).await?;
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains(&format!("has no file with content id {id}")),
        "{again:?}"
    );
    server.shutdown().await?;
    Ok(())
}
