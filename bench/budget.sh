#!/usr/bin/env bash
# The disk budget under load: a 64 MiB budget on a tmpfs data directory, the demo clinic under
# keep-alive load with person authentication (target/release/loadgen, 32 connections), and
# `kakehashi backup run` in a loop (each run verifies its archive, then prunes the audit segments
# it holds). Reports the largest the data directory got (sampled every 0.2 s, allocated bytes as
# `du` counts them), the requests refused, the audit entries written and the bytes an entry costs
# on disk, the segments pruned and whether every prune stayed within a verified backup.
#
#   bench/budget.sh [--minutes N] [--short] [--conns N] [--budget SIZE] [--backup-every SECONDS]
#
# Defaults: 10 minutes, 32 connections, 64MiB, a backup as soon as the last one ends. --short: 1
# minute. Needs root (it mounts the tmpfs).
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
trap 'echo "$(basename "$0"): line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR
minutes=10 conns=32 budget=64MiB every=0
while (($#)); do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --short) minutes=1; shift ;;
    --conns) conns=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --backup-every) every=$2; shift 2 ;;
    *) die "unknown option $1" ;;
  esac
done
[[ $(id -u) -eq 0 ]] || die "needs root to mount a tmpfs"
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
loadgen=${LOADGEN_BIN:-target/release/loadgen}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi --bin loadgen
peer=$(peer_bin)

W=$(mktemp -d)
T=$W/tmpfs
cleanup() {
  local running
  running=$(jobs -p)
  for pid in $running; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount "$T" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$T"
mount -t tmpfs -o size=512m,mode=0700 tmpfs "$T"

D=$W/clinic
gateway_addr=127.0.0.1:$(free_port) cloud_addr=127.0.0.1:$(free_port) admin_addr=127.0.0.1:$(free_port)
"$peer" demo --setup-only --dir "$D" --listen "$gateway_addr" --engine-listen "$cloud_addr" \
  --admin-listen "$admin_addr" --est-listen "127.0.0.1:$(free_port)" --wg-listen "127.0.0.1:$(free_port)" >/dev/null
mv "$D/data" "$T/data"
sed -i "s|^data_dir = .*|data_dir = \"$T/data\"|" "$D/gateway.toml"
printf '\n[storage]\nbudget = "%s"\n' "$budget" >>"$D/gateway.toml"
config=$D/gateway.toml
"$bin" gateway check --config "$config" >/dev/null
"$peer" engine-sim --config "$D/engine.toml" >"$W/engine.out" 2>"$W/engine.err" &
wait_for "$W/engine.out" '^READY ' $! >/dev/null
GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$config" >"$W/gateway.out" 2>"$W/gateway.err" &
wait_for "$W/gateway.out" '^READY ' $! >/dev/null
metric() { curl -s "http://$admin_addr/metrics" | awk -v m="kakehashi_$1" '$1 == m {print $2}'; }
budget_bytes=$(metric disk_budget_bytes)
person=$(cat "$D/user.txt")
tls_args=(--cert "$D/terminal.pem" --key "$D/terminal.key" --ca "$D/ca.pem")
seconds=$((minutes * 60))
echo "budget $budget_bytes bytes on tmpfs, $conns connections, $minutes min" >&2

# The size of the data directory, every 0.2 s.
# (du exits 1 when a file goes while it counts, a backup's scratch copy; its total stands.)
(
  set +e
  trap - ERR
  while :; do du -s -B1 "$T/data" 2>/dev/null | cut -f1; sleep 0.2; done
) >"$W/sizes" &
sampler=$!
# Backups in a loop: each verified archive lets the segments it holds be pruned.
(
  runs=0 failed=0
  end=$((SECONDS + seconds))
  while ((SECONDS < end)); do
    if "$bin" backup run --config "$config" >"$W/backup.out" 2>&1; then
      runs=$((runs + 1))
      grep -c '^pruned audit segment' "$W/backup.out" >>"$W/pruned" || true
    else
      failed=$((failed + 1))
      tail -1 "$W/backup.out" >&2
    fi
    sleep "$every"
  done
  echo "$runs $failed" >"$W/backups"
) &
backups=$!
"$loadgen" rps "${tls_args[@]}" --addr "$gateway_addr" --user "$person" --conns "$conns" --duration "$seconds" \
  >"$W/load.out"
wait $backups
sleep 6 # the gateway's own budget check
kill $sampler
result=$(grep '^RESULT' "$W/load.out")
requests=$(sed -n 's/.* requests=\([0-9]*\).*/\1/p' <<<"$result")
refused=$(($(sed -n 's/.* bad_status=\([0-9]*\).*/\1/p' <<<"$result") + $(sed -n 's/.* io_errors=\([0-9]*\).*/\1/p' <<<"$result")))
max=$(sort -n "$W/sizes" | tail -1)
read -r runs failed <"$W/backups"
pruned=$(awk '{s += $1} END {print s + 0}' "$W/pruned" 2>/dev/null || echo 0)
verify=$("$bin" audit verify --config "$config")
last=$(sed -n 's/^audit log intact: \([0-9]*\) entries, head \([0-9]*\).*/\2/p' <<<"$verify")
local_entries=$(sed -n 's/^audit log intact: \([0-9]*\) entries.*/\1/p' <<<"$verify")
[[ -n $last ]] || die "the audit log does not verify: $verify"
archive=$(ls "$D/backups"/kakehashi-*.backup | tail -1)
against=$("$bin" audit verify --config "$config" --against "$archive" | tail -1)
audit_bytes=$(du -s -B1 "$T/data/audit" | cut -f1)
offbox=$(sed -n 's/.*"audit_offbox_id": \([0-9]*\).*/\1/p' "$T/data/backup.json")
floor=$(cut -d' ' -f1 "$T/data/audit/pruned" 2>/dev/null || echo 0)
echo "load: $requests requests answered, $refused refused or failed ($result)"
echo "data directory: at most $max bytes of a $budget_bytes-byte budget ($((max * 100 / budget_bytes)) %)"
echo "audit: $last entries written, $local_entries on the box in $audit_bytes bytes ($((audit_bytes / (local_entries > 0 ? local_entries : 1))) bytes an entry on disk)"
echo "backups: $runs verified, $failed failed; $pruned segments pruned; pruned through entry $floor, verified off the box up to $offbox"
echo "against the last archive: $against"
echo "the backup target: $(ls "$D/backups"/kakehashi-*.backup | wc -l) archives kept (backup.keep 14, and every one holding entries no newer one holds), $(du -s -B1 "$D/backups" | cut -f1) bytes"
((max <= budget_bytes)) || die "the data directory went over its budget"
((floor <= offbox)) || die "a segment was pruned beyond what a verified backup holds"
echo "RESULT max_bytes=$max budget_bytes=$budget_bytes refused=$refused requests=$requests audit_entries=$last bytes_per_entry=$((audit_bytes / (local_entries > 0 ? local_entries : 1))) backups=$runs pruned=$pruned"
