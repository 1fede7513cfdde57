//! `quaver share | unshare | search | status`: one control call each, then print.

use std::path::{Path, PathBuf};

use quaver_peer::control::ControlClient;
use quaver_peer::control::pb::{SearchRequest, ShareRequest, StatusRequest, UnshareRequest};
use quaver_shared::directory::v1::MediaKind;
use serde_json::json;

use super::format::{bytes, column, duration_ms};
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
                })
            })
            .collect();
        print_json(&json!({
            "peer_id": s.peer_id, "quic_address": s.quic_address, "directory": s.directory,
            "directory_connected": s.directory_connected, "observed_address": s.observed_address,
            "folders": s.folders, "shared_files": s.shared_files, "uploaded_bytes": s.uploaded_bytes,
            "active_uploads": s.active_uploads, "downloads": downloads,
        }));
        return Exit::Ok;
    }
    println!("peer      {}", s.peer_id);
    println!("quic      {}", s.quic_address);
    let session = if s.directory_connected {
        format!("connected as {}", s.observed_address)
    } else {
        "not connected".into()
    };
    println!("directory {} ({session})", s.directory);
    println!("sharing   {} files in {} folders", s.shared_files, s.folders.len());
    for f in &s.folders {
        println!("          {f}");
    }
    println!("uploaded  {} ({} uploads now)", bytes(s.uploaded_bytes), s.active_uploads);
    for d in &s.downloads {
        let pct = if d.size == 0 { 100.0 } else { d.verified_bytes as f64 * 100.0 / d.size as f64 };
        println!(
            "download  {} {pct:.1}% of {} from {} sources",
            column(&d.name, 40),
            bytes(d.size),
            d.active_sources
        );
    }
    Exit::Ok
}
