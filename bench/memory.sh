#!/usr/bin/env bash
# The gateway's memory under load, on the demo clinic: 6 rounds of 15 s keep-alive requests with
# person authentication (32 connections, loadgen rps) and 5 s of full handshakes (16 loops),
# the gateway's VmRSS after each, a minute after the load, and its large anonymous mappings
# (glibc's per-thread arenas show as 64 MiB-aligned regions).
#
#   bench/memory.sh [--rounds 6] [--keep]
#
# The gateway runs with the allocator settings of the units in deploy/ (GLIBC_TUNABLES; set it
# empty for glibc's defaults).
# Builds target/release/{kakehashi,loadgen} unless KAKEHASHI_BIN / LOADGEN_BIN name them. Runs
# in a temporary directory and stops what it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=6 keep=false
while (($#)); do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --keep) keep=true; shift ;;
    *) echo "usage: bench/memory.sh [--rounds N] [--keep]" >&2; exit 2 ;;
  esac
done
bin=${KAKEHASHI_BIN:-target/release/kakehashi} lg=${LOADGEN_BIN:-target/release/loadgen}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi
peer=$(peer_bin)
[[ -n ${LOADGEN_BIN:-} ]] || cargo build --release --quiet -p kakehashi-tests --bin loadgen
demo_workdir "$peer"
"$peer" engine-sim --config "$d/engine.toml" >"$W/engine.log" 2>&1 & pids+=($!)
# The allocator's settings the systemd units in deploy/ give the gateway; GLIBC_TUNABLES= (empty)
# measures glibc's defaults.
export GLIBC_TUNABLES=${GLIBC_TUNABLES-$(unit_tunables)}
"$bin" gateway run --config "$d/gateway.toml" >"$W/gateway.log" 2>&1 & g=$! pids+=($!)
unset GLIBC_TUNABLES
until grep -q READY "$W/gateway.log"; do sleep 0.1; done
rss() { awk '/VmRSS/{print $2}' "/proc/$g/status"; }
common=(--cert "$d/terminal.pem" --key "$d/terminal.key" --ca "$d/ca.pem" --server-name localhost --addr "$listen")
start=$(rss) peak=$start
echo "memory under load, $(date -u +%Y-%m-%d), $(nproc) cores: bench/memory.sh --rounds $rounds"
echo "start: $start KiB"
for ((r = 1; r <= rounds; r++)); do
  "$lg" rps "${common[@]}" --user "$(cat "$d/user.txt")" --conns 32 --duration 15 >/dev/null
  a=$(rss)
  "$lg" handshakes "${common[@]}" --conns 16 --duration 5 >/dev/null
  b=$(rss)
  peak=$((a > peak ? a : peak)) peak=$((b > peak ? b : peak))
  echo "round $r: $a KiB after keep-alive, $b KiB after handshakes"
done
sleep 60
echo "a minute after: $(rss) KiB; highest sampled: $peak KiB"
echo "anonymous mappings over 2 MiB:"
awk '/^[0-9a-f]+-[0-9a-f]+ /{r=$1} /^Anonymous:/{ if ($2 > 2048) print "  " r, $2 " KiB"}' "/proc/$g/smaps"
