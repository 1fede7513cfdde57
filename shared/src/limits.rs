//! The protocol's bounds, in one place. The directory enforces them on every request; clients
//! use them to size their batches. Changing one is a protocol change: document it in
//! `proto/directory.proto` too.

/// Longest title, artist or album, in bytes.
pub const MAX_TAG_BYTES: usize = 1024;
/// Longest file name, in bytes.
pub const MAX_FILE_NAME_BYTES: usize = 1024;
/// Longest search query, in bytes.
pub const MAX_QUERY_BYTES: usize = 256;
/// Longest `agent` string in `Announce`.
pub const MAX_AGENT_BYTES: usize = 64;
/// Most files added, or removed, in one `Publish` or `Withdraw`.
pub const MAX_BATCH_FILES: usize = 1000;
/// Most files one peer may share.
pub const MAX_FILES_PER_PEER: u64 = 200_000;
/// Largest search page.
pub const MAX_PAGE_SIZE: u32 = 100;
/// Page size when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Deepest result reachable by paging (page * page_size + page_size).
pub const MAX_SEARCH_DEPTH: u32 = 1000;
/// Most sources in one `Locate` answer.
pub const MAX_LOCATE_SOURCES: u32 = 50;
/// Sources in a `Locate` answer when the request says 0.
pub const DEFAULT_LOCATE_SOURCES: u32 = 20;
/// Largest gRPC message the directory decodes, in bytes (a full batch fits with room).
pub const MAX_GRPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
