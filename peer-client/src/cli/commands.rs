//! `quaver share | unshare | search | status`: one control call each, then print.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quaver_core::nat::NatKind;
use quaver_peer::control::ControlClient;
use quaver_peer::control::pb::{SearchRequest, ShareRequest, StatusRequest, StatusResponse, UnshareRequest};
use quaver_peer::node::unreachable_advice;
use quaver_shared::directory::v1::MediaKind;
use serde_json::json;

use super::format::{bytes, column, duration_ms, text, utc_clock};
use super::{Exit, absolute, connect, print_json, report};

/// The folder made absolute (the daemon has its own working directory) and the daemon's API.
async fn folder_and_client(data_dir: &Path, folder: &Path) -> Result<(PathBuf, ControlClient), Exit> {
    Ok((absolute(folder)?, connect(data_dir).await?))
}

pub async fn share(data_dir: &Path, folder: &Path, json: bool) -> Exit {
    let (folder, mut client) = match folder_and_client(data_dir, folder).await {
        Ok(both) => both,
        Err(e) => return e,
    };
    match client.share(ShareRequest { path: folder.display().to_string() }).await {
        Ok(r) => {
            let r = r.into_inner();
            if json {
                print_json(&json!({
                    "folder": folder, "hashed": r.hashed, "unchanged": r.unchanged,
                    "unreadable": r.unreadable, "removed": r.removed, "shared_files": r.shared_files,
                }));
            } else {
                println!(
                    "sharing {}: {} hashed, {} unchanged, {} unreadable; {} files shared in all",
                    folder.display(),
                    r.hashed,
                    r.unchanged,
                    r.unreadable,
                    r.shared_files
                );
            }
            Exit::Ok
        }
        Err(s) => report(s),
    }
}

pub async fn unshare(data_dir: &Path, folder: &Path, json: bool) -> Exit {
    let (folder, mut client) = match folder_and_client(data_dir, folder).await {
        Ok(both) => both,
        Err(e) => return e,
    };
    match client.unshare(UnshareRequest { path: folder.display().to_string() }).await {
        Ok(r) => {
            let r = r.into_inner();
            if json {
                print_json(
                    &json!({ "folder": folder, "was_shared": r.was_shared, "shared_files": r.shared_files }),
                );
            } else if r.was_shared {
                println!("no longer sharing {}; {} files shared in all", folder.display(), r.shared_files);
            } else {
                println!("{} was not shared", folder.display());
            }
            Exit::Ok
        }
        Err(s) => report(s),
    }
}

pub async fn search(data_dir: &Path, query: &str, limit: u32, json: bool) -> Exit {
    if !(1..=100).contains(&limit) {
        eprintln!("quaver: --limit must be 1..=100");
        return Exit::Usage;
    }
    let mut client = match connect(data_dir).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let request = SearchRequest { query: query.to_owned(), filters: None, page_size: limit };
    let hits = match client.search(request).await {
        Ok(r) => r.into_inner().hits,
        Err(s) => return report(s),
    };
    if json {
        let rows: Vec<_> = hits
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let f = h.file.as_ref()?;
                Some(json!({
                    "n": i + 1, "content_id": hex::encode(&f.content_id), "title": f.title,
                    "artist": f.artist, "album": f.album, "file_name": f.file_name, "size": f.size,
                    "duration_ms": f.duration_ms, "bitrate_kbps": f.bitrate_kbps,
                    "media_kind": MediaKind::try_from(f.media_kind).map(|k| k.as_str_name()).unwrap_or("MEDIA_KIND_UNSPECIFIED"),
                    "online_sources": h.online_sources, "complete_sources": h.complete_sources,
                }))
            })
            .collect();
        print_json(&json!(rows));
        return Exit::Ok;
    }
    if hits.is_empty() {
        println!("nothing found for {query:?}");
        return Exit::Ok;
    }
    println!(
        "{:>3}  {}  {}  {:>10}  {:>6}  {:>7}",
        "#",
        column("title", 36),
        column("artist", 20),
        "size",
        "time",
        "sources"
    );
    for (i, h) in hits.iter().enumerate() {
        let Some(f) = h.file.as_ref() else { continue };
        let title = if f.title.is_empty() { &f.file_name } else { &f.title };
        println!(
            "{:>3}  {}  {}  {:>10}  {:>6}  {:>7}",
            i + 1,
            column(title, 36),
            column(&f.artist, 20),
            bytes(f.size),
            duration_ms(f.duration_ms),
            h.online_sources
        );
    }
    println!("get one with `quaver get N`");
    Exit::Ok
}

pub async fn status(data_dir: &Path, json: bool) -> Exit {
    let mut client = match connect(data_dir).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let s = match client.status(StatusRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(s) => return report(s),
    };
    if json {
        let downloads: Vec<_> = s
            .downloads
            .iter()
            .map(|d| {
                json!({
                    "content_id": hex::encode(&d.content_id), "name": d.name, "size": d.size,
                    "verified_bytes": d.verified_bytes, "active_sources": d.active_sources,
                    "waiting_for_sources": d.waiting_for_sources, "gives_up_in_secs": d.gives_up_in_secs,
                })
            })
            .collect();
        print_json(&json!({
            "peer_id": s.peer_id, "quic_address": s.quic_address, "directory": s.directory,
            "directory_connected": s.directory_connected, "observed_address": s.observed_address,
            "folders": s.folders, "shared_files": s.shared_files, "uploaded_bytes": s.uploaded_bytes,
            "active_uploads": s.active_uploads, "downloads": downloads,
            "directory_since_unix_ms": s.directory_since_unix_ms,
            "directory_last_error": s.directory_last_error, "reachable": s.reachable,
            "nat": s.nat, "public_address": s.public_address, "discovery_error": s.discovery_error,
            "introducible": s.introducible, "relayed": s.relayed, "relay_address": s.relay_address,
        }));
        return Exit::Ok;
    }
    println!("peer      {}", s.peer_id);
    println!("quic      {}", s.quic_address);
    for line in session_lines(&s, SystemTime::now()) {
        println!("{line}");
    }
    println!("sharing   {} files in {} folders", s.shared_files, s.folders.len());
    for f in &s.folders {
        println!("          {}", text(f));
    }
    println!("uploaded  {} ({} uploads now)", bytes(s.uploaded_bytes), s.active_uploads);
    for d in &s.downloads {
        let pct = if d.size == 0 { 100.0 } else { d.verified_bytes as f64 * 100.0 / d.size as f64 };
        let from = if d.waiting_for_sources {
            format!("waiting for a source to come online (gives up in {} s)", d.gives_up_in_secs)
        } else {
            format!("from {} sources", d.active_sources)
        };
        println!("download  {} {pct:.1}% of {} {from}", column(&d.name, 40), bytes(d.size));
    }
    Exit::Ok
}

/// What `status` says about the directory session and whether others can reach this node, as
/// of `now`. Everything the directory sent (its error text, the address it saw) is shown
/// through [`text`].
fn session_lines(s: &StatusResponse, now: SystemTime) -> Vec<String> {
    let url = text(&s.directory);
    let since = (s.directory_since_unix_ms > 0).then(|| {
        let at = UNIX_EPOCH + Duration::from_millis(s.directory_since_unix_ms);
        let ago = now.duration_since(at).unwrap_or_default().as_secs();
        format!("since {} ({ago} s ago)", utc_clock(s.directory_since_unix_ms))
    });
    let last_error = text(&s.directory_last_error);
    let mut lines = Vec::new();
    match (s.directory_connected, since) {
        (true, Some(since)) => lines.push(format!("directory {url} (connected {since})")),
        (true, None) => lines.push(format!("directory {url} (connected)")),
        (false, None) => lines.push(format!("directory {url} (connecting: no answer yet)")),
        (false, Some(since)) if last_error.is_empty() => {
            lines.push(format!("directory {url} (reconnecting {since})"));
        }
        (false, Some(since)) => {
            lines.push(format!("directory {url} (reconnecting {since}; last error: {last_error})"));
            lines.push(format!("          {}", unreachable_advice(&url)));
        }
    }
    let address = text(&s.observed_address);
    match s.reachable {
        Some(true) => {
            lines.push(format!("reach     reachable at {address}: other peers can download from this node"))
        }
        Some(false) if s.introducible => lines.push(format!(
            "reach     reachable through hole punching at {address}: the directory cannot dial this node, \
             but it introduces downloaders, who then connect while this node dials them"
        )),
        Some(false) if s.relayed => {
            let relay = match text(&s.relay_address) {
                r if r.is_empty() => {
                    "no relayed address yet: one is allocated when a downloader needs it".to_owned()
                }
                r => format!("relayed address {r}"),
            };
            lines.push(format!(
                "reach     reachable through the directory's relay only ({relay}): this node's router maps \
                 it anew for every destination, so no hole can be punched; forwarding a UDP port to it \
                 would make it reachable directly"
            ))
        }
        Some(false) => {
            let port = address.rsplit_once(':').map_or("", |(_, port)| port);
            lines.push(format!(
                "reach     not reachable: the directory could not connect back to {address}, so other peers \
                 cannot download from this node; check that UDP port {port} is forwarded to this machine \
                 and that no firewall drops it"
            ));
        }
        None => lines.push("reach     not known yet (the directory checks when this node announces)".into()),
    }
    if let Some(line) = nat_line(s) {
        lines.push(line);
    }
    lines
}

/// What address discovery found out about the node's router; `None` before it ran.
fn nat_line(s: &StatusResponse) -> Option<String> {
    let public = text(&s.public_address);
    Some(match NatKind::from_name(&s.nat)? {
        NatKind::None => format!("nat       none: peers see this node at its own address {public}"),
        NatKind::EndpointIndependent => format!(
            "nat       cone: the router maps this node to {public} for every peer, so hole punching can connect it"
        ),
        NatKind::Symmetric => format!(
            "nat       symmetric: the router maps this node to a new address for every peer ({public} towards \
             the directory), so only a relay or a peer without such a NAT can connect to it"
        ),
        NatKind::Unknown => {
            format!("nat       unknown: address discovery failed ({})", text(&s.discovery_error))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        connected: bool,
        since_unix_ms: u64,
        last_error: &str,
        reachable: Option<bool>,
    ) -> StatusResponse {
        StatusResponse {
            directory: "http://127.0.0.1:7700".into(),
            directory_connected: connected,
            observed_address: "203.0.113.7:4433".into(),
            directory_since_unix_ms: since_unix_ms,
            directory_last_error: last_error.into(),
            reachable,
            ..StatusResponse::default()
        }
    }

    /// 2026-12-07 02:14:05 UTC.
    const SINCE_MS: u64 = 1_796_609_645_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn a_reachable_node_says_others_can_download_from_it() {
        let lines = session_lines(&status(true, SINCE_MS, "", Some(true)), at(SINCE_MS + 12_000));
        assert_eq!(
            lines,
            [
                "directory http://127.0.0.1:7700 (connected since 02:14:05 UTC (12 s ago))",
                "reach     reachable at 203.0.113.7:4433: other peers can download from this node",
            ]
        );
    }

    #[test]
    fn an_unreachable_node_says_others_cannot_download_and_what_to_check() {
        let lines = session_lines(&status(true, SINCE_MS, "", Some(false)), at(SINCE_MS));
        let reach = &lines[1];
        assert!(
            reach.starts_with(
                "reach     not reachable: the directory could not connect back to 203.0.113.7:4433"
            ),
            "{reach}"
        );
        assert!(reach.contains("other peers cannot download from this node"), "{reach}");
        assert!(reach.contains("UDP port 4433 is forwarded") && reach.contains("firewall"), "{reach}");
    }

    #[test]
    fn a_lost_session_says_reconnecting_since_when_with_the_error_and_what_to_check() {
        let error = "cannot connect to the directory: transport error: Connection refused";
        let lines = session_lines(&status(false, SINCE_MS, error, Some(true)), at(SINCE_MS + 3_000));
        assert_eq!(
            lines[0],
            format!(
                "directory http://127.0.0.1:7700 (reconnecting since 02:14:05 UTC (3 s ago); last error: {error})"
            )
        );
        assert!(
            lines[1].contains("check that the directory is running and listening at http://127.0.0.1:7700")
        );
        assert!(lines[1].contains("QUAVER_DIRECTORY"));
        assert!(!lines.iter().any(|l| l.contains("connected since")));
    }

    #[test]
    fn a_starting_session_and_an_unknown_verdict_say_so() {
        let lines = session_lines(&status(false, 0, "", None), at(SINCE_MS));
        assert_eq!(lines[0], "directory http://127.0.0.1:7700 (connecting: no answer yet)");
        assert!(lines[1].starts_with("reach     not known yet"));
    }

    #[test]
    fn the_nat_line_names_the_kind_and_the_mapped_address() {
        let mut s = status(true, SINCE_MS, "", Some(false));
        assert_eq!(nat_line(&s), None);
        s.public_address = "198.18.0.11:4433".into();
        s.nat = "cone".into();
        assert!(nat_line(&s).unwrap().contains("maps this node to 198.18.0.11:4433 for every peer"));
        s.nat = "symmetric".into();
        assert!(nat_line(&s).unwrap().contains("only a relay"));
        s.nat = "unknown".into();
        s.discovery_error = "no answer".into();
        assert_eq!(nat_line(&s).unwrap(), "nat       unknown: address discovery failed (no answer)");
    }

    #[test]
    fn what_the_directory_sent_is_shown_without_control_or_bidi_characters() {
        let mut s = status(false, SINCE_MS, "refused: \u{1b}[2J\u{202e}gnp.exe", Some(false));
        s.observed_address = "1.2.3.4:5\u{202e}".into();
        for line in session_lines(&s, at(SINCE_MS)) {
            assert!(!line.chars().any(|c| c.is_control() || c == '\u{202e}'), "{line:?}");
        }
    }
}
