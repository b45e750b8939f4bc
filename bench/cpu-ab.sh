#!/usr/bin/env bash
# The gateway's CPU per keep-alive request, two builds (or two allocator settings) side by side:
# the way to tell whether a change to the request path made it cheaper, on a machine whose load
# moves more between runs than most changes do. Each round starts engine-sim and one gateway on
# the same demo clinic, warms up for 2 s, then runs `loadgen rps --user` (32 connections, person
# authentication on) and divides the gateway's CPU time (user and kernel, /proc/PID/stat) by the
# requests answered; A and B alternate, and the medians are compared. engine-sim's CPU per
# request in the same rounds shows how much the machine itself moved. The audit writer's thread
# is shown apart (part of the gateway's figure): about a tenth of it, the largest single part, and
# one thread's figure moves less with the machine than the whole's.
#
#   bench/cpu-ab.sh A_BIN B_BIN [--rounds 4] [--duration 6]
#   bench/cpu-ab.sh BIN BIN --tunables-a 'glibc.malloc.…' --tunables-b 'glibc.malloc.…'
#
# Both gateways run with GLIBC_TUNABLES as the units in deploy/ set it unless --tunables-a/-b say
# otherwise. To compare with the tree before a change: build it (`git stash; cargo build
# --release --bin kakehashi; cp target/release/kakehashi /tmp/kakehashi-before; git stash pop`).
# Runs in a temporary directory and stops what it started on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
usage="usage: bench/cpu-ab.sh A_BIN B_BIN [--rounds N] [--duration S] [--tunables-a T] [--tunables-b T]"
(($# >= 2)) || die "$usage"
declare -A bin=([A]=$1 [B]=$2)
shift 2
units=$(unit_tunables)
declare -A tunables=([A]=$units [B]=$units)
rounds=4 duration=6
while (($#)); do
  case $1 in
    --rounds) rounds=$2; shift 2 ;;
    --duration) duration=$2; shift 2 ;;
    --tunables-a) tunables[A]=$2; shift 2 ;;
    --tunables-b) tunables[B]=$2; shift 2 ;;
    *) die "$usage" ;;
  esac
done
for side in A B; do [[ -x ${bin[$side]} ]] || die "$side: ${bin[$side]} is not an executable"; done
peer=$(peer_bin) lg=${LOADGEN_BIN:-target/release/loadgen}
[[ -n ${LOADGEN_BIN:-} ]] || cargo build --release --quiet -p kakehashi-tests --bin loadgen
demo_workdir "$peer"
common=(--cert "$d/terminal.pem" --key "$d/terminal.key" --ca "$d/ca.pem" --server-name localhost
  --addr "$listen" --user "$(cat "$d/user.txt")" --conns 32)
ticks=$(getconf CLK_TCK)

# thread_ticks PID NAME: the CPU time (user + kernel, clock ticks) of PID's threads named NAME.
thread_ticks() {
  local t sum=0
  for t in /proc/"$1"/task/*; do
    [[ $(cat "$t/comm" 2>/dev/null) == "$2" ]] || continue
    sum=$((sum + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "$t/stat")))
  done
  echo "$sum"
}

# one SIDE: writes "TOTAL_US KERNEL_US ENGINE_US REQUESTS/S AUDIT_US" (CPU per request) to
# $W/result.
one() {
  local side=$1 e g
  # Each run starts with an empty audit log: the two builds may store it differently (a build
  # refuses a log newer than it knows), and no round faces a longer log than the one before.
  rm -rf "$d/data/audit" "$d/data/audit.head"
  "$peer" engine-sim --config "$d/engine.toml" >"$W/engine.log" 2>&1 & e=$! pids+=($e)
  GLIBC_TUNABLES=${tunables[$side]} "${bin[$side]}" gateway run --config "$d/gateway.toml" \
    >"$W/gateway.log" 2>&1 & g=$! pids+=($g)
  wait_for "$W/engine.log" READY "$e" >/dev/null
  wait_for "$W/gateway.log" READY "$g" >/dev/null
  "$lg" rps "${common[@]}" --duration 2 >/dev/null
  local gu0 gs0 eu0 es0 gu1 gs1 eu1 es1 a0 a1
  read -r gu0 gs0 < <(cpu_ticks "$g")
  read -r eu0 es0 < <(cpu_ticks "$e")
  a0=$(thread_ticks "$g" audit-writer)
  "$lg" rps "${common[@]}" --duration "$duration" >"$W/rps.out"
  read -r gu1 gs1 < <(cpu_ticks "$g")
  read -r eu1 es1 < <(cpu_ticks "$e")
  a1=$(thread_ticks "$g" audit-writer)
  kill "$g" "$e"
  wait "$g" "$e" 2>/dev/null || true
  local n
  n=$(field "$W/rps.out" requests)
  ((n > 0)) || die "$side: no request answered (see $W/gateway.log)"
  echo "$(calc "($gu1 + $gs1 - $gu0 - $gs0) * 1e6 / $ticks / $n" 1)" \
    "$(calc "($gs1 - $gs0) * 1e6 / $ticks / $n" 1)" \
    "$(calc "($eu1 + $es1 - $eu0 - $es0) * 1e6 / $ticks / $n" 1)" \
    "$(field "$W/rps.out" rps)" \
    "$(calc "($a1 - $a0) * 1e6 / $ticks / $n" 2)" >"$W/result"
}

echo "CPU per keep-alive request, $(date -u +%Y-%m-%d), $(nproc) cores: bench/cpu-ab.sh, $rounds rounds of ${duration} s"
declare -A total=() kernel=() engine=() rate=() relative=() audit=()
for ((r = 1; r <= rounds; r++)); do
  for side in A B; do
    one "$side"
    read -r t k e q a <"$W/result"
    total[$side]+=" $t" kernel[$side]+=" $k" engine[$side]+=" $e" rate[$side]+=" $q" audit[$side]+=" $a"
    relative[$side]+=" $(calc "$t / $e" 3)"
    echo "  $side-$r  gateway $t µs ($k in the kernel, $a in the audit writer), engine-sim $e µs, $q requests/s"
  done
done
for side in A B; do
  # shellcheck disable=SC2086 # the lists are numbers, split on purpose
  echo "$side median: gateway $(median ${total[$side]}) µs ($(median ${kernel[$side]}) in the kernel," \
    "$(median ${audit[$side]}) in the audit writer)," \
    "engine-sim $(median ${engine[$side]}) µs, $(median ${rate[$side]}) requests/s," \
    "gateway / engine-sim $(median ${relative[$side]})  (${bin[$side]})"
done
# shellcheck disable=SC2086
echo "B / A: $(calc "$(median ${total[B]}) / $(median ${total[A]})")"
# The host's speed moves from one round to the next on a shared machine, and engine-sim (the
# same binary on both sides) moves with it: the gateway's cost in units of engine-sim's, round by
# round, takes most of that out.
# shellcheck disable=SC2086
echo "B / A, the audit writer: $(calc "$(median ${audit[B]}) / $(median ${audit[A]})")"
# shellcheck disable=SC2086
echo "B / A, each round's gateway over its engine-sim: $(calc "$(median ${relative[B]}) / $(median ${relative[A]})")"
