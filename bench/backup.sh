#!/usr/bin/env bash
# Backups at a clinic's scale: `kakehashi backup run` (consistent snapshots, zstd, age, the
# archive read back and verified) and `kakehashi backup restore`, beside the hand-made way in the
# same run: `sqlite3 DB ".backup COPY"` for each database, then `tar | zstd -3` (no encryption, no
# verification). Also the CPU one run costs, as a share of a core at a one-minute and an hourly
# schedule.
#
#   bench/backup.sh [--terminals N] [--people N] [--journal N] [--audit N] [--rounds N] [--budget SIZE]
#
# Defaults: the issue's clinic, 500 terminals, 200 people, 10,000 journal entries, 100,000 audit
# entries; 4 rounds; `[storage] budget = "256MiB"`, a router with 512 MiB of flash (the default
# budget is half the file system; the audit log's segments are a 32nd of it, here 8 MiB). The
# first round's archive holds every sealed audit segment, the later rounds' refer to them
# (incremental archives): both are reported, the later as medians. The state is made through the gateway itself: `terminal add`,
# `user add`, journaled writes while the cloud is SIGSTOPped (then handed back: they stay in
# journal.db as its record), and reads with person authentication for the audit entries (both
# with target/release/loadgen). Needs sqlite3 and zstd (installed as root if missing).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
trap 'echo "$(basename "$0"): line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR
terminals=500 people=200 journal=10000 audit=100000 rounds=4 budget=256MiB
while (($#)); do
  case $1 in
    --terminals) terminals=$2 ;;
    --people) people=$2 ;;
    --journal) journal=$2 ;;
    --audit) audit=$2 ;;
    --rounds) rounds=$2 ;;
    --budget) budget=$2 ;;
    *) die "unknown option $1" ;;
  esac
  shift 2
done
need=()
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v zstd >/dev/null || need+=(zstd)
if ((${#need[@]})); then
  [[ $(id -u) -eq 0 ]] || die "needs ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
loadgen=${LOADGEN_BIN:-target/release/loadgen}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi --bin loadgen
peer=$(peer_bin)

W=$(mktemp -d)
cleanup() {
  local running
  running=$(jobs -p)
  for pid in $running; do kill -CONT "$pid" 2>/dev/null || true; done
  for pid in $running; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

D=$W/clinic
gateway_addr=127.0.0.1:$(free_port) cloud_addr=127.0.0.1:$(free_port) admin_addr=127.0.0.1:$(free_port)
"$peer" demo --setup-only --dir "$D" --listen "$gateway_addr" --engine-listen "$cloud_addr" \
  --admin-listen "$admin_addr" --est-listen "127.0.0.1:$(free_port)" --wg-listen "127.0.0.1:$(free_port)" >/dev/null
printf '\n[failover]\nhealthy_secs = 1\n\n[storage]\nbudget = "%s"\n' "$budget" >>"$D/gateway.toml"
config=$D/gateway.toml
"$peer" engine-sim --config "$D/engine.toml" >"$W/engine.out" 2>"$W/engine.err" &
cloud_pid=$!
wait_for "$W/engine.out" '^READY ' $cloud_pid >/dev/null
GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$config" >"$W/gateway.out" 2>"$W/gateway.err" &
wait_for "$W/gateway.out" '^READY ' $! >/dev/null
metric() { curl -s "http://$admin_addr/metrics" | awk -v m="kakehashi_$1" '$1 == m {print $2}'; }
person=$(cat "$D/user.txt")
tls_args=(--cert "$D/terminal.pem" --key "$D/terminal.key" --ca "$D/ca.pem")

echo "making the clinic: $terminals terminals, $people people, $journal journal entries, $audit audit entries" >&2
for i in $(seq "$terminals"); do "$bin" terminal add "bench-$i" --config "$config" >/dev/null; done
printf 'a-long-enough-password\n' >"$W/password"
chmod 600 "$W/password"
for i in $(seq "$people"); do
  "$bin" user add "staff-$i" --password-file "$W/password" --config "$config" >/dev/null
done
printf '%s' '{"acceptreq":{"Patient_ID":"1"}}' >"$W/accept.json"
kill -STOP $cloud_pid
for _ in $(seq 100); do [[ $(metric hybrid_mode) == 1 ]] && break; sleep 0.1; done
[[ $(metric hybrid_mode) == 1 ]] || die "the gateway did not go to emergency"
while (($(metric journal_pending) < journal)); do
  "$loadgen" rps "${tls_args[@]}" --addr "$gateway_addr" --user "$person" --conns 16 --duration 2 \
    --path '/orca11/acceptmodv2?class=01&format=json' --post "$W/accept.json" >/dev/null
done
kill -CONT $cloud_pid
for _ in $(seq 600); do [[ $(metric journal_pending) == 0 ]] && break; sleep 0.5; done
audit_count() { cut -d' ' -f1 "$D/data/audit.head"; }
while (($(audit_count) < audit)); do
  "$loadgen" rps "${tls_args[@]}" --addr "$gateway_addr" --user "$person" --conns 16 --duration 5 >/dev/null
done
sleep 1
journal_n=$(sqlite3 "$D/data/journal.db" 'SELECT count(*) FROM entries')
audit_n=$(audit_count)
data_bytes=$(du -sb "$D/data" | cut -f1)
echo "the clinic: $(sqlite3 "$D/data/gateway.db" 'SELECT count(*) FROM terminals') terminals," \
  "$(sqlite3 "$D/data/gateway.db" 'SELECT count(*) FROM users') people, $journal_n journal entries," \
  "$audit_n audit entries; data directory $((data_bytes / 1024)) KiB" >&2

# timed FILE CMD…: runs CMD, appends "wall user sys" (seconds) to FILE.
timed() {
  local file=$1
  shift
  local TIMEFORMAT='%R %U %S'
  { time "$@" >/dev/null 2>"$W/timed.err"; } 2>>"$file" || { cat "$W/timed.err" >&2; die "$* failed"; }
}

for r in $(seq "$rounds"); do
  timed "$W/run.times" "$bin" backup run --config "$config"
  archive=$(ls -t "$D"/backups/*.backup | head -1)
  stat -c %s "$archive" >>"$W/run.bytes"
  rm -rf "$W/restored"
  timed "$W/restore.times" "$bin" backup restore "$archive" --identity "$D/backup.key" --to "$W/restored"

  rm -rf "$W/peer" && mkdir -p "$W/peer/copy"
  peer_backup() {
    mkdir -p "$W/peer/copy/audit"
    for db in "$D"/data/*.db "$D"/data/audit/*.db; do
      [[ $(basename "$db") == cache.db ]] && continue
      sqlite3 "$db" ".backup $W/peer/copy/${db#"$D"/data/}"
    done
    tar -C "$W/peer/copy" -cf - . | zstd -3 -q -o "$W/peer/backup.tar.zst"
  }
  timed "$W/peer-run.times" peer_backup
  rm -rf "$W/peer/out" && mkdir -p "$W/peer/out"
  timed "$W/peer-restore.times" bash -c "zstd -d -q -c '$W/peer/backup.tar.zst' | tar -C '$W/peer/out' -xf -"
  echo "  round $r: backup $(tail -1 "$W/run.times") restore $(tail -1 "$W/restore.times")" \
    "| sqlite3+tar+zstd $(tail -1 "$W/peer-run.times") restore $(tail -1 "$W/peer-restore.times") (wall user sys, s)" >&2
done
peer_bytes=$(stat -c %s "$W/peer/backup.tar.zst")
col() { awk -v c="$2" '{print $c}' "$1"; }
# The first round (a full archive) and the median of the later ones (incremental).
first() { head -1 "$1"; }
later() { tail -n +2 "$1"; }
full_wall=$(first "$W/run.times" | cut -d' ' -f1) full_cpu=$(first "$W/run.times" | awk '{print $2 + $3}')
full_bytes=$(first "$W/run.bytes")
# shellcheck disable=SC2046
run_wall=$(median $(later "$W/run.times" | cut -d' ' -f1)) run_cpu=$(median $(later "$W/run.times" | awk '{print $2 + $3}'))
# shellcheck disable=SC2046
archive_bytes=$(median $(later "$W/run.bytes"))
# shellcheck disable=SC2046
restore_wall=$(median $(col "$W/restore.times" 1))
# shellcheck disable=SC2046
peer_wall=$(median $(col "$W/peer-run.times" 1)) peer_restore=$(median $(col "$W/peer-restore.times" 1))
echo
echo "backup of $terminals terminals, $people people, $journal_n journal entries, $audit_n audit entries" \
  "(data directory $((data_bytes / 1024)) KiB, $(ls "$D"/data/audit/*.db | wc -l) audit segments), budget $budget:"
printf '  %-40s %8s s wall  %8s s CPU  %10s bytes\n' "kakehashi backup run, first (full)" "$full_wall" "$full_cpu" "$full_bytes"
printf '  %-40s %8s s wall  %8s s CPU  %10s bytes\n' "kakehashi backup run, later (incremental)" "$run_wall" "$run_cpu" "$archive_bytes"
printf '  %-40s %8s s wall  %19s %10s bytes\n' "sqlite3 .backup + tar + zstd -3" "$peer_wall" "" "$peer_bytes"
printf '  %-40s %8s s wall\n' "kakehashi backup restore (incremental)" "$restore_wall"
printf '  %-40s %8s s wall\n' "zstd -d | tar -x" "$peer_restore"
echo "  ratio to the hand-made way: full backup $(calc "$full_wall / $peer_wall" 2)x, incremental $(calc "$run_wall / $peer_wall" 2)x;" \
  "size $(calc "$full_bytes / $peer_bytes" 2)x, incremental $(calc "$archive_bytes / $peer_bytes" 2)x"
echo "  CPU of the schedule: $(calc "$run_cpu / 60 * 100" 2) % of a core at one run a minute," \
  "$(calc "$run_cpu / 3600 * 100" 3) % hourly"
