#!/usr/bin/env bash
# Interop suites: our crates against independent implementations.
#
# Creates a virtualenv at target/interop-venv with the pinned packages of
# tests/interop/requirements.txt (reinstalled only when that file changes),
# then runs every suite in SUITES. Each suite is a shell function
# `suite_NAME` that builds what it needs and runs its checks; its last output
# line must be `N passed, N failed`. Suites run inside `||`, where `set -e`
# does not apply: end every command that may fail with `|| return`. The totals are printed at the end, and
# the script exits non-zero if any suite failed, ran no case, printed no
# summary or ran past its time limit.
#
# To add a suite: append its name to SUITES and define `suite_NAME` below.
set -euo pipefail
cd "$(dirname "$0")/../.."

SUITES=(
  propagation
  grpcio
  connect_node
  connect_python
  h2load
)

VENV=target/interop-venv
REQUIREMENTS=tests/interop/requirements.txt
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
PY="$VENV/bin/python"
# Bound on each suite's checks: a hung peer or call fails the suite instead
# of stalling CI.
LIMIT=${INTEROP_TIMEOUT:-300}

# W3C Trace Context / Baggage / B3 against Python's opentelemetry propagators.
suite_propagation() {
  cargo build --quiet -p otel-integration-tests --bin propagation-interop || return
  timeout "$LIMIT" "$PY" tests/interop/propagation.py "$TARGET_DIR/debug/propagation-interop"
}

# otel_tonic server and client against grpcio + opentelemetry-instrumentation-grpc.
suite_grpcio() {
  cargo build --quiet -p otel-integration-tests --bin tonic-interop || return
  timeout "$LIMIT" "$PY" tests/interop/grpcio_interop.py "$TARGET_DIR/debug/tonic-interop"
}

# otel_connect server and client against @connectrpc/connect-node 2.1.2
# (Node 20; exact versions in tests/interop/connect-node/package-lock.json).
suite_connect_node() {
  cargo build --quiet -p otel-integration-tests --bin connect-interop || return
  (cd tests/interop/connect-node && npm ci --no-audit --no-fund --loglevel=error) || return
  timeout "$LIMIT" node tests/interop/connect-node/interop.mjs "$TARGET_DIR/debug/connect-interop"
}

# otel_connect server against Python connectrpc 0.13 (gzip by default).
suite_connect_python() {
  cargo build --quiet -p otel-integration-tests --bin connect-interop || return
  timeout "$LIMIT" "$PY" tests/interop/connect_python.py "$TARGET_DIR/debug/connect-interop"
}

# otel_connect's server under load from h2load (nghttp2's HTTP/2 load
# generator): every call answered, and exactly one span and one metric count
# per call. h2load comes from Debian's nghttp2-client, installed when missing.
suite_h2load() {
  if ! command -v h2load >/dev/null; then
    install_debian_packages nghttp2-client || return
  fi
  cargo build --quiet -p otel-integration-tests --bin connect-interop || return
  timeout "$LIMIT" "$PY" tests/interop/h2load.py "$TARGET_DIR/debug/connect-interop"
}

install_debian_packages() {
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  echo "== installing Debian packages: $*"
  # Without a fresh package index first; refresh it only if that fails.
  "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null \
    || { "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq "$@" >/dev/null; }
}

setup_venv() {
  if [[ ! -x "$PY" ]]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
  fi
  if ! cmp -s "$REQUIREMENTS" "$VENV/requirements.installed"; then
    echo "== installing $REQUIREMENTS"
    "$PY" -m pip install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
    cp "$REQUIREMENTS" "$VENV/requirements.installed"
  fi
}

setup_venv

total_passed=0
total_failed=0
broken=()
for name in "${SUITES[@]}"; do
  echo "== interop: $name"
  log=$(mktemp)
  status=0
  "suite_$name" 2>&1 | tee "$log" || status=$?
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)
  rm -f "$log"
  if [[ -z "$summary" ]]; then
    broken+=("$name (no summary, exit $status)")
    continue
  fi
  read -r passed _ failed _ <<<"${summary//,/}"
  total_passed=$((total_passed + passed))
  total_failed=$((total_failed + failed))
  if [[ $status -ne 0 && $failed -eq 0 ]]; then
    broken+=("$name (exit $status)")
  fi
  if [[ $passed -eq 0 ]]; then
    broken+=("$name (no case ran)")
  fi
done

for b in "${broken[@]}"; do
  echo "interop suite broken: $b"
  total_failed=$((total_failed + 1))
done
echo "interop: $total_passed passed, $total_failed failed"
[[ $total_failed -eq 0 ]]
