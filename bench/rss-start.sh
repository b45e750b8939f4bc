#!/usr/bin/env bash
# The appliance build's memory at start, on the demo clinic (one TLS terminal and one WireGuard
# peer enrolled): the gateway's RSS 1 s after READY, then again after one terminal's first
# second of keep-alive requests with person authentication (loadgen rps, 1 connection), each
# with what it is made of (/proc/PID/smaps): the binary's code and read-only data mapped, the
# shared libraries, and what the gateway allocated (anonymous). Medians of the rounds, each a
# fresh start. --cold drops the binary's pages from the page cache before each start, as after
# the router boots; without it they stay cached from the build or the last start, as after a
# restart, and the kernel maps more of them (it maps cached pages around each one touched).
#
#   bench/rss-start.sh [--rounds 3] [--cold]
#
# The gateway runs with the allocator settings of the unit in deploy/ (GLIBC_TUNABLES).
# Builds target/appliance/kakehashi (docs/development.md) unless KAKEHASHI_BIN names a binary,
# and target/release/{kakehashi,loadgen} for the demo clinic's engine and the terminal. Runs in
# a temporary directory and stops what it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=3 cold=false
while (($#)); do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --cold) cold=true; shift ;;
    *) echo "usage: bench/rss-start.sh [--rounds N] [--cold]" >&2; exit 2 ;;
  esac
done
bin=${KAKEHASHI_BIN:-target/appliance/kakehashi}
[[ -n ${KAKEHASHI_BIN:-} ]] ||
  cargo build --quiet --profile appliance -p kakehashi-gateway --no-default-features --bin kakehashi
cargo build --release --quiet --bin kakehashi -p kakehashi-gateway
cargo build --release --quiet -p kakehashi-tests --bin loadgen
peer=$(peer_bin)
demo_workdir "$peer"
"$peer" engine-sim --config "$d/engine.toml" >"$W/engine.log" 2>&1 & pids+=($!)
name=$(basename "$bin")

# usage PID: "RSS ANONYMOUS CODE RODATA LIBRARIES PSS" in KiB; CODE and RODATA are the binary's
# own executable and read-only mappings, LIBRARIES every other file mapped (libc, the loader, SQLite's -shm files).
usage() {
  awk -v bin="$name" '
    /^[0-9a-f]+-[0-9a-f]+ / { perms = $2; file = $6; next }
    /^Rss:/ { rss += $2
      if (file != "" && file !~ /^\[/) {
        n = split(file, p, "/")
        if (p[n] == bin) { if (perms ~ /x/) code += $2; else if (perms !~ /w/) ro += $2 }
        else libs += $2
      } }
    /^Anonymous:/ { anon += $2 }
    /^Pss:/ { pss += $2 }
    END { print rss, anon, code, ro, libs, pss }' "/proc/$1/smaps"
}

declare -A at
tunables=$(unit_tunables)
for ((r = 1; r <= rounds; r++)); do
  # dd with count=0 and iflag=nocache asks the kernel to drop the whole file's cached pages.
  ! $cold || dd if="$bin" iflag=nocache count=0 status=none
  GLIBC_TUNABLES=$tunables "$bin" gateway run --config "$d/gateway.toml" >"$W/gateway.log" 2>&1 &
  g=$! pids+=($!)
  wait_for "$W/gateway.log" READY "$g" >/dev/null
  sleep 1
  read -r -a u < <(usage "$g")
  for i in 0 1 2 3 4 5; do at[start,$i]+=" ${u[$i]}"; done
  target/release/loadgen rps --cert "$d/terminal.pem" --key "$d/terminal.key" --ca "$d/ca.pem" \
    --server-name localhost --addr "$listen" --user "$(cat "$d/user.txt")" --conns 1 --duration 1 >/dev/null
  read -r -a u < <(usage "$g")
  for i in 0 1 2 3 4 5; do at[served,$i]+=" ${u[$i]}"; done
  kill "$g"
  wait "$g" 2>/dev/null || true
done

mib() { calc "$1 / 1024" 1; }
echo "RSS at start, $(date -u +%Y-%m-%d), $(nproc) cores: $bin ($(stat -c %s "$bin") bytes), medians of $rounds $($cold && echo cold || echo warm) starts"
echo "| when | RSS | anonymous | the binary's code | its read-only data | libraries, SQLite's shared memory | PSS |"
echo "|---|---|---|---|---|---|---|"
for when in start served; do
  label=$([[ $when == start ]] && echo "1 s after READY" || echo "after 1 s of one terminal's requests")
  row="| $label"
  for i in 0 1 2 3 4 5; do
    # shellcheck disable=SC2086
    row+=" | $(mib "$(median ${at[$when,$i]})") MiB"
  done
  echo "$row |"
done
