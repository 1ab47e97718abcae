#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 300) each, seeded from seeds/.
# Needs cargo-fuzz (`cargo install cargo-fuzz`); the stable toolchain is used
# with RUSTC_BOOTSTRAP=1 for the sanitizer flags.
#   bash otel-tower/fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(propagation envelope connect_error grpc_web_trailers timeout)
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== fuzz $t for ${seconds}s"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1
done
