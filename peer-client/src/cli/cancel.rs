//! `quaver cancel CONTENT_ID`: stops a download (running, or waiting for a source) and removes
//! its partial data from the node's work dir. A `quaver get` watching it ends with exit code 9.

use std::path::Path;

use quaver_peer::control::pb::CancelRequest;
use serde_json::json;

use super::{Exit, connect, print_json, report};

pub async fn run(data_dir: &Path, content_id: &str, json: bool) -> Exit {
    let mut client = match connect(data_dir).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    match client.cancel(CancelRequest { content_id: content_id.trim().to_owned() }).await {
        Ok(r) => {
            let r = r.into_inner();
            if json {
                print_json(&json!({
                    "content_id": content_id.trim(), "was_running": r.was_running, "freed_bytes": r.freed_bytes,
                }));
            } else {
                let stopped = if r.was_running { "stopped; " } else { "" };
                println!(
                    "cancelled {}: {stopped}{} bytes of partial data removed",
                    content_id.trim(),
                    r.freed_bytes
                );
            }
            Exit::Ok
        }
        Err(s) => report(s),
    }
}
