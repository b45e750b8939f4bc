#!/usr/bin/env bash
# The status page's time to serve through the gateway: the page for staff, the page with the
# operator's sections (signed in on the login page) and the JSON, each asked N times by curl over
# one kept-alive TLS connection with the demo terminal's certificate (so the handshake is not
# counted), while the gateway's cloud answers (normal). The time is curl's time to the first byte
# of the answer (%{time_starttransfer}), which includes gathering the report (SQLite reads of the
# journal and the outage history) and rendering it; the page weight is the body's size.
#
#   bench/status.sh [N]     (default 200)
#
# The gateway: a clinic from `kakehashi demo --setup-only`, its `engine-sim` as the cloud,
# `kakehashi gateway run` with `[status] operators = ["reception"]`. Builds
# target/release/kakehashi unless KAKEHASHI_BIN is set. Stops what it started on exit.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
trap 'echo "$(basename "$0"): line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR
n=${1:-200}
command -v curl >/dev/null || die "needs curl"
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi
peer=$(peer_bin)

W=$(mktemp -d)
cleanup() {
  local running
  running=$(jobs -p)
  for pid in $running; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

D=$W/clinic
gateway_addr=127.0.0.1:$(free_port) cloud_addr=127.0.0.1:$(free_port) admin_addr=127.0.0.1:$(free_port)
"$peer" demo --setup-only --dir "$D" --listen "$gateway_addr" --engine-listen "$cloud_addr" \
  --admin-listen "$admin_addr" >/dev/null
printf '\n[status]\noperators = ["reception"]\n' >>"$D/gateway.toml"
"$peer" engine-sim --config "$D/engine.toml" >"$W/engine.out" 2>"$W/engine.err" &
wait_for "$W/engine.out" '^READY ' $! >/dev/null
GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$D/gateway.toml" >"$W/gateway.out" 2>"$W/gateway.err" &
wait_for "$W/gateway.out" '^READY ' $! >/dev/null
url=https://$gateway_addr
tls=(--cacert "$D/ca.pem" --cert "$D/terminal.pem" --key "$D/terminal.key")
IFS=: read -r id password <"$D/user.txt"
curl -s "${tls[@]}" -c "$W/cookies" --data-urlencode "id=$id" --data-urlencode "password=$password" \
  -d next=/ -o /dev/null "$url/kakehashi/login"

# measure NAME PATH [CURL OPTION…]: N requests on one connection; median and p90 in ms, bytes.
measure() {
  local name=$1 path=$2
  shift 2
  local urls=()
  for _ in $(seq "$n"); do urls+=(-o /dev/null "$url$path"); done
  curl -s "${tls[@]}" "$@" -w '%{time_starttransfer} %{size_download}\n' "${urls[@]}" >"$W/$name.times"
  local times bytes p90
  times=$(awk '{print $1 * 1000}' "$W/$name.times")
  bytes=$(awk 'END {print $2}' "$W/$name.times")
  # shellcheck disable=SC2086
  p90=$(printf '%s\n' $times | sort -g | awk -v n="$n" '{a[NR]=$1} END {print a[int(n * 0.9)]}')
  # shellcheck disable=SC2086
  printf '%-28s median %6.2f ms  p90 %6.2f ms  %6d bytes\n' "$name" "$(median $times)" "$p90" "$bytes"
}

echo "status page, $n requests each on one kept-alive connection (time to first byte):"
measure "page (staff)" /kakehashi/status
measure "page (operator)" /kakehashi/status -b "$W/cookies"
measure "json (staff)" /kakehashi/status.json
measure "json (operator)" /kakehashi/status.json -b "$W/cookies"
measure "stylesheet" /kakehashi/status.css
measure "engine read via the gateway" "/api01rv2/patientgetv2?id=1&format=json" -u "$id:$password"
