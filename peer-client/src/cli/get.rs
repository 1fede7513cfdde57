//! `quaver get N|CONTENT_ID`: asks the node to download, shows a progress bar (bytes, speed,
//! ETA, active sources) until the file is complete, then prints where it is.
//!
//! The download is the node's: interrupting this command leaves it running, and running the
//! same `get` again joins it (or, after the node restarted, resumes it from its verified blocks).
//! While no source is online the node keeps looking, for up to `--wait-sources` seconds; this
//! command says so on standard error (once each time the wait begins, whether or not the bar
//! is drawn), then ends with exit code 7 if nobody came.

use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use quaver_peer::control::pb::{GetProgress, GetRequest, get_request::Target};
use serde_json::json;

use super::{Exit, absolute, connect, print_json, report};

pub async fn run(data_dir: &Path, target: &str, out: Option<&Path>, wait_sources: u32, json: bool) -> Exit {
    let target = match target.parse::<u32>() {
        Ok(n) if target.len() < 10 => Target::Result(n),
        _ => Target::ContentId(target.to_owned()),
    };
    let out_dir = match out.map(absolute).transpose() {
        Ok(o) => o.map(|p| p.display().to_string()).unwrap_or_default(),
        Err(e) => return e,
    };
    let mut client = match connect(data_dir).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let request = GetRequest { target: Some(target), out_dir, wait_sources_secs: wait_sources };
    let mut stream = match client.get(request).await {
        Ok(r) => r.into_inner(),
        Err(s) => return report(s),
    };
    // indicatif draws on standard error and hides itself when that is not a terminal.
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {prefix} sources",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut last: Option<GetProgress> = None;
    let mut waiting = false;
    loop {
        match stream.message().await {
            Ok(Some(p)) => {
                if bar.length() != Some(p.size) {
                    bar.set_length(p.size);
                    bar.set_message(super::format::text(&p.name).into_owned());
                }
                if p.waiting_for_sources != waiting {
                    waiting = p.waiting_for_sources;
                    if waiting {
                        bar.suspend(|| {
                            eprintln!(
                                "quaver: no source is online for {}; waiting for one (gives up in {} s; `quaver cancel {}` drops it)",
                                super::format::text(&p.name),
                                p.gives_up_in_secs,
                                hex::encode(&p.content_id)
                            )
                        });
                    }
                }
                bar.set_position(p.verified_bytes);
                bar.set_prefix(p.active_sources.to_string());
                let done = p.done;
                last = Some(p);
                if done {
                    break;
                }
            }
            Ok(None) => break,
            Err(s) => {
                bar.abandon();
                return report(s);
            }
        }
    }
    bar.finish_and_clear();
    let Some(p) = last.filter(|p| p.done) else {
        eprintln!("quaver: the node stopped reporting before the download finished");
        return Exit::DownloadFailed;
    };
    if json {
        let per_source: Vec<_> = p
            .per_source
            .iter()
            .map(|s| json!({ "peer_id": s.peer_id, "bytes": s.bytes, "path": s.path, "connect_ms": s.connect_ms }))
            .collect();
        print_json(&json!({
            "content_id": hex::encode(&p.content_id), "path": p.path, "size": p.size,
            "fetched_bytes": p.fetched_bytes, "per_source": per_source, "banned": p.banned,
        }));
    } else {
        println!("{}", p.path);
        if !p.banned.is_empty() {
            eprintln!("quaver: dropped {} source(s) that sent bad data", p.banned.len());
        }
    }
    Exit::Ok
}
