//! Errors as people read them: one line, each cause said once.
//!
//! Error types often repeat their source's text in their own message (`"store: {0}"` over an
//! I/O error that is also its `source()`), and tonic's do it by design. A printer that walks
//! the chain and appends every cause then says the same thing two or three times. These
//! helpers walk the chain and leave out a cause whose text the line already holds.

use std::error::Error;

/// `error` and its sources as one line, each cause once.
pub fn describe(error: &(dyn Error + 'static)) -> String {
    with_causes(error.to_string(), error.source())
}

/// The errors of `chain` (outermost first, as `anyhow::Error::chain` gives them) as one line,
/// each cause once.
pub fn chain_line<'a>(chain: impl IntoIterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut line = String::new();
    for cause in chain {
        append(&mut line, &cause.to_string());
    }
    line
}

/// `line` followed by the text of `source` and its sources, each said once.
pub fn with_causes(mut line: String, mut source: Option<&(dyn Error + 'static)>) -> String {
    while let Some(cause) = source {
        append(&mut line, &cause.to_string());
        source = cause.source();
    }
    line
}

fn append(line: &mut String, text: &str) {
    if text.is_empty() || line.contains(text) {
        return;
    }
    if !line.is_empty() {
        line.push_str(": ");
    }
    line.push_str(text);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("store: {0}")]
    struct Embeds(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("store database failed: {0}")]
    struct Middle(#[source] std::io::Error);

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::AddrInUse, "Address already in use (os error 98)")
    }

    #[test]
    fn a_cause_embedded_in_its_parent_is_said_once() {
        let error = Embeds(Middle(io()));
        let line = describe(&error);
        assert_eq!(line, "store: store database failed: Address already in use (os error 98)");
        assert_eq!(line.matches("Address already in use").count(), 1);
    }

    #[test]
    fn causes_that_are_not_embedded_are_all_said() {
        #[derive(Debug, thiserror::Error)]
        #[error("starting the directory")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(describe(&Outer(io())), "starting the directory: Address already in use (os error 98)");
        let chain: [&(dyn Error + 'static); 2] = [&Outer(io()), &Middle(io())];
        assert_eq!(
            chain_line(chain),
            "starting the directory: store database failed: Address already in use (os error 98)"
        );
    }
}
