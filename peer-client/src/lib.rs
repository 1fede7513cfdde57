//! Quaver peer node (see ARCHITECTURE.md).
