#!/usr/bin/env bash
# Builds the release binaries with the command deploy/Dockerfile runs, then runs the deploy
# checks (the image's CMD and HEALTHCHECK, the compose peers' command lines, the unit files and
# manifests) against those binaries. Docker itself cannot run on the build machines; this is the
# closest check of what the image would do. Too slow for every CI run (a cold release build),
# so CI runs the same checks on the debug build of the same source.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin quaver-directory --bin quaver
QUAVER_DEPLOY_BIN_DIR="$PWD/target/release" cargo test --workspace --locked --test deploy
