#!/usr/bin/env bash
# Failover: how fast the gateway notices that the cloud engine is gone, against HAProxy with a
# backup server (twice: as most deployments leave it, and tuned at its best for fast detection),
# and what its journal and replay sustain. Same machine, same run, same client
# (target/release/loadgen, rustls, the terminal's certificate) for both proxies:
#
#   1. detection time: a client reads GET /api01rv2/patientgetv2?id=1&format=json every
#      --every-ms (open loop: `loadgen watch`, each request on an idle kept-alive connection or a
#      new one, so requests held by the silent primary do not hold back the ones after them); the
#      primary engine is stopped with SIGSTOP (a black hole: the kernel still accepts connections,
#      nothing answers) and, in fewer trials, killed with SIGKILL (connections refused). Detection
#      time = from the signal (bash's $EPOCHREALTIME just before `kill`) to the arrival of the
#      first answer from the backup: `x-hybridmode: emergency`, which the gateway sets on what its
#      cache answers, and HAProxy on what its backup server answers. Each trial waits a random
#      0.2–2.2 s after the client's first answer before the signal, so the failure falls anywhere
#      in either prober's cycle. After each trial the engine is continued (or restarted) and the
#      side waits until it is back on its primary. Also counted: answers that were errors, the
#      requests the silent primary still held when the backup first answered, and the health
#      checks per second each side sends to the cloud.
#   2. durable journal appends/s: the gateway's cloud stopped (emergency), 16 keep-alive
#      connections POST /orca11/acceptmodv2?class=01&format=json for --write-secs (loadgen rps);
#      only a 200 with x-kakehashi-journal-id counts. Next to it, the journal alone
#      (target/release/journal-rate: 16 tasks calling Journal::append, no TLS or HTTP), and one
#      task alone: one commit, so one fsync, per append, which shows what this disk's fsync costs.
#   3. replay: the cloud continued; from the signal, and from the first entry delivered, until
#      kakehashi_journal_pending is 0 on /metrics.
#
# The gateway: a clinic from `kakehashi demo --setup-only`, `kakehashi engine-sim --config
# engine.toml` as its cloud, `kakehashi gateway run` with the failover defaults (about one probe
# a second, deadlines from the cloud's latency between 150 and 500 ms) except `healthy_secs = 1`,
# so that trials can follow each other.
# HAProxy (the Debian package), twice: TLS front door with the same server certificate, client
# certificates required (clinic CA and CRL); backend `cloud` = an engine-sim of its own and
# `local` = a second engine-sim with the same options plus `backup`; `haproxy` checks them with
# `check inter 2s fall 3`, `haproxy-tuned` with `check inter 100ms fall 2 rise 2`, `timeout check
# 100ms`, `option redispatch`, `retries 3`, `retry-on all-retryable-errors`;
# both over mTLS with the uplink certificate, so HAProxy's default check for an `ssl` server is a
# TLS handshake (a plain TCP check would pass against a stopped process: the kernel accepts).
# Each proxy has its own engines, so a trial on one side does not disturb the other; trials
# alternate between the sides.
#
#   bench/failover.sh [--trials N] [--kill-trials N] [--write-secs S] [--every-ms MS] [--quick] [--keep]
#
# Defaults: 20 black-hole and 3 refused trials per side, a read every 20 ms, 3 s of writes (handing
# back what they journal takes about a minute). --quick: 3 and 1 trials, 1 s of writes (a smoke run);
# --keep: leave the temporary directory (configurations, logs, every client output).
# Needs HAProxy and curl; installs HAProxy through apt-get when it is missing and this runs as
# root (as scripts/test does for its peers). Builds target/release/{kakehashi,loadgen,journal-rate}.
# Stops every process it started on exit, stopped ones included.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
command_line="bench/failover.sh $*"
# A command that fails without saying why stops the script: say where.
trap 'echo "$(basename "$0"): line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR

trials=20 kill_trials=3 write_secs=3 every_ms=20 keep=0
while (($#)); do
  case $1 in
    --trials) trials=$2 && shift ;;
    --kill-trials) kill_trials=$2 && shift ;;
    --write-secs) write_secs=$2 && shift ;;
    --every-ms) every_ms=$2 && shift ;;
    --quick) trials=3 kill_trials=1 write_secs=1 ;;
    --keep) keep=1 ;;
    *) die "unknown option $1 (see the comment at the top of the script)" ;;
  esac
  shift
done
((trials > 0)) || die "--trials must be at least 1"

command -v curl >/dev/null || die "needs curl: apt-get install curl"
if ! command -v haproxy >/dev/null; then
  [[ $(id -u) -eq 0 ]] || die "needs HAProxy: apt-get install haproxy (or run as root to let this script do it)"
  echo "installing haproxy" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null
fi
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
loadgen=${LOADGEN_BIN:-target/release/loadgen}
journal_rate=${JOURNAL_RATE_BIN:-target/release/journal-rate}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi --bin loadgen --bin journal-rate
peer=$(peer_bin)

W=$(mktemp -d)
cleanup() {
  # Every process this script started and has not reaped is one of its jobs. A stopped one
  # gets SIGTERM only once it runs again.
  local running
  running=$(jobs -p)
  for pid in $running; do kill -CONT "$pid" 2>/dev/null || true; done
  for pid in $running; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((keep)); then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -p "$W/runs"

# --- The gateway's clinic: demo CA, terminal, person, server, uplink and engine certificates.
D=$W/clinic
gateway_addr=127.0.0.1:$(free_port) cloud_addr=127.0.0.1:$(free_port) admin_addr=127.0.0.1:$(free_port)
"$peer" demo --setup-only --dir "$D" --listen "$gateway_addr" --engine-listen "$cloud_addr" \
  --admin-listen "$admin_addr" >/dev/null
# Only what the trials need: come back after 1 s of healthy probes instead of 10.
printf '\n[failover]\nhealthy_secs = 1\n' >>"$D/gateway.toml"
person=$(cat "$D/user.txt")
tls_args=(--cert "$D/terminal.pem" --key "$D/terminal.key" --ca "$D/ca.pem" --server-name localhost)

declare -A pid_of addr primary_of
# Every side is a proxy the terminal calls, and the engine that plays its cloud.
addr[gateway]=$gateway_addr
primary_of=([gateway]=gateway-cloud [haproxy]=haproxy-cloud [haproxy-tuned]=haproxy-tuned-cloud)
sides=(gateway haproxy haproxy-tuned)

# start NAME COMMAND…: runs an engine or proxy that prints READY when it listens.
start() {
  local name=$1
  shift
  "$@" >"$W/$name.out" 2>"$W/$name.err" &
  pid_of[$name]=$!
  wait_for "$W/$name.out" '^READY ' $! >/dev/null
}

# The engine-sims: the gateway's cloud from the clinic's engine.toml; HAProxy's primary and
# backup with the same TLS settings on their own ports and databases.
start_engine() {
  case $1 in
    gateway-cloud) start "$1" "$peer" engine-sim --config "$D/engine.toml" ;;
    haproxy*-cloud | haproxy*-local)
      start "$1" "$peer" engine-sim --listen "${addr[$1]}" --db "$W/$1.db" --seed demo --user ormaster:ormaster \
        --tls-cert "$D/engine.pem" --tls-key "$D/engine.key" --client-ca "$D/ca.pem"
      ;;
  esac
}

metric() {
  curl -sf "http://$admin_addr/metrics" | awk -v m="kakehashi_$1" '$1 == m {print $2}'
}

# haproxy_status SIDE SERVER: the status of SERVER (UP, DOWN, DOWN 1/2, …) from SIDE's CSV
# statistics.
haproxy_status() {
  curl -sf "http://${addr[$1-stats]}/stats;csv" | awk -F, -v s="$2" '$1 == "engines" && $2 == s {print $18}'
}

# back_to_normal SIDE SINCE: waits until SIDE serves from its primary again. The gateway: mode 0
# after at least two changes of state since SINCE (down, then up), so a trial whose failure the
# prober has not recorded yet does not count as recovered. HAProxy: the primary UP.
back_to_normal() {
  local side=$1 since=${2:-0}
  for _ in $(seq 600); do
    case $side in
      gateway)
        [[ $(metric hybrid_mode) == 0 && $(metric hybrid_changes_total) -ge $((since + 2)) ]] && return
        ;;
      haproxy*) [[ $(haproxy_status "$side" cloud) == UP ]] && return ;;
    esac
    sleep 0.1
  done
  die "$side did not return to its primary within 60 s"
}

# start_haproxy SIDE: `haproxy` as most deployments leave it (checks every 2 s, 3 to fall), or
# `haproxy-tuned` at its best for fast detection, as its documentation suggests: checks every
# 100 ms with a 100 ms timeout, 2 to fall and 2 to rise, failed requests retried (on the backup
# once the primary is down) and redispatched.
start_haproxy() {
  local side=$1 dir=$W/$1 basic check tuning=
  mkdir -p "$dir"
  addr[$side]=127.0.0.1:$(free_port) addr[$side-stats]=127.0.0.1:$(free_port)
  case $side in
    haproxy) check="check inter 2s fall 3" ;;
    haproxy-tuned)
      check="check inter 100ms fall 2 rise 2"
      tuning="  timeout check 100ms
  option redispatch
  retries 3
  retry-on all-retryable-errors"
      ;;
  esac
  # HAProxy wants certificate and key in one file.
  cat "$D/server.pem" "$D/server.key" >"$dir/server.pem"
  cat "$D/uplink.pem" "$D/uplink.key" >"$dir/uplink.pem"
  chmod 600 "$dir"/*.pem
  basic=$(printf %s ormaster:ormaster | base64)
  local tls="ssl crt $dir/uplink.pem ca-file $D/ca.pem verify required"
  cat >"$dir/haproxy.cfg" <<CONF
global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  # As the gateway's limits.upstream_timeout_secs.
  timeout server 60s
frontend terminals
  bind ${addr[$side]} ssl crt $dir/server.pem ca-file $D/ca.pem crl-file $D/crl.pem verify required alpn http/1.1
  default_backend engines
backend engines
$tuning
  http-request set-header Authorization "Basic $basic"
  # Like the gateway's cache: an answer from the backup says so.
  http-response set-header X-Hybridmode emergency if { srv_name local }
  server cloud ${addr[$side-cloud]} $tls $check
  server local ${addr[$side-local]} $tls $check backup
listen stats
  bind ${addr[$side-stats]}
  stats enable
  stats uri /stats
CONF
  haproxy -c -q -f "$dir/haproxy.cfg" || die "HAProxy refused $dir/haproxy.cfg"
  haproxy -db -f "$dir/haproxy.cfg" >"$W/$side.out" 2>&1 &
  pid_of[$side]=$!
  for _ in $(seq 100); do
    [[ $(haproxy_status "$side" cloud 2>/dev/null) == UP && $(haproxy_status "$side" local 2>/dev/null) == UP ]] && return
    kill -0 "${pid_of[$side]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$W/$side.out" >&2
  die "HAProxy's servers are not UP"
}

# trial SIDE SIGNAL N: one failure of SIDE's primary; sets `detected` (ms), `failed` (answers
# that were errors before the backup answered) and `waiting` (requests still unanswered then).
trial() {
  local side=$1 sig=$2 out=$W/runs/$1-$2-$3 engine=${primary_of[$1]} since=0 t0 watcher
  [[ $side == gateway ]] && since=$(metric hybrid_changes_total)
  "$loadgen" watch "${tls_args[@]}" --addr "${addr[$side]}" --user "$person" --every-ms "$every_ms" \
    --max-secs 60 >"$out" 2>"$out.err" &
  watcher=$!
  wait_for "$out" '^READY' $watcher >/dev/null
  sleep "$(awk -v r=$RANDOM 'BEGIN {printf "%.3f", 0.2 + 2 * r / 32768}')"
  t0=$EPOCHREALTIME
  kill -"$sig" "${pid_of[$engine]}"
  # (Redirected: bash reports the engine killed meanwhile while it waits.)
  { wait "$watcher"; } 2>/dev/null || { cat "$out.err" >&2; die "$side, SIG$sig trial $3: no answer from the backup"; }
  grep -q '^RESULT ' "$out" || { cat "$out" "$out.err" >&2; die "$side, SIG$sig trial $3: the client ended without a result"; }
  detected=$(calc "($(field "$out" marked_us) - ${t0/./}) / 1000" 1)
  failed=$(field "$out" errors)
  waiting=$(($(field "$out" requests) - $(field "$out" unmarked) - failed - 1))
  # The gateway's cache answers a read at its deadline, before the probe it asks for has failed:
  # the primary stays silent until the gateway has declared it down, as HAProxy's has by then.
  declared=
  if [[ $side == gateway ]]; then
    for _ in $(seq 500); do
      [[ $(metric hybrid_mode) == 1 ]] && declared=$(calc "(${EPOCHREALTIME/./} - ${t0/./}) / 1000" 0) && break
      sleep 0.01
    done
    [[ -n $declared ]] || die "gateway, SIG$sig trial $3: the cloud was not declared down within 5 s"
  fi
  case $sig in
    STOP) kill -CONT "${pid_of[$engine]}" ;;
    KILL)
      { wait "${pid_of[$engine]}"; } 2>/dev/null || true
      start_engine "$engine"
      ;;
  esac
  back_to_normal "$side" "$since"
  printf '  %-22s %8s ms; before it %4d answers were errors, %4d requests were still waiting%s\n' \
    "$side SIG$sig $3" "$detected" "$failed" "$waiting" "${declared:+; declared down after $declared ms}" >&2
}

# detection SIGNAL TRIALS: alternating trials; fills det, errs and held[SIDE-SIGNAL].
declare -A det errs held decl
detection() {
  local sig=$1 n=$2
  for ((i = 1; i <= n; i++)); do
    for side in "${sides[@]}"; do
      trial "$side" "$sig" "$i"
      det[$side-$sig]+=" $detected"
      errs[$side-$sig]=$((${errs[$side-$sig]:-0} + failed))
      held[$side-$sig]=$((${held[$side-$sig]:-0} + waiting))
      [[ -z $declared ]] || decl[$sig]+=" $declared"
    done
  done
}


echo "Failover: $(nproc) cores, $trials black-hole and $kill_trials refused trials per side, a read every $every_ms ms, $write_secs s of writes" >&2
for side in haproxy haproxy-tuned; do
  addr[$side-cloud]=127.0.0.1:$(free_port) addr[$side-local]=127.0.0.1:$(free_port)
done
for engine in gateway-cloud haproxy-cloud haproxy-local haproxy-tuned-cloud haproxy-tuned-local; do start_engine "$engine"; done
# env, so that the PID recorded is the gateway's: the allocator settings the units ship.
start gateway env GLIBC_TUNABLES="$(unit_tunables)" "$bin" gateway run --config "$D/gateway.toml"
start_haproxy haproxy
start_haproxy haproxy-tuned
# The read the client repeats, once through each side: the gateway's cache holds it from here on.
for side in "${sides[@]}"; do
  curl -sf -o /dev/null --cacert "$D/ca.pem" --cert "$D/terminal.pem" --key "$D/terminal.key" -u "$person" \
    "https://${addr[$side]}/api01rv2/patientgetv2?id=1&format=json" || die "$side does not answer the read"
done
back_to_normal gateway -2

echo "1. detection time, black hole (SIGSTOP)" >&2
probes0=$(metric probes_total) probe_t0=$EPOCHREALTIME
detection STOP "$trials"
probe_rate=$(calc "($(metric probes_total) - $probes0) / ($EPOCHREALTIME - $probe_t0)" 1)
if ((kill_trials > 0)); then
  echo "   detection time, refused connections (SIGKILL)" >&2
  detection KILL "$kill_trials"
fi

echo "2. durable journal appends/s, 16 writers, the cloud stopped" >&2
printf '%s' '{"acceptreq":{"Patient_ID":"1"}}' >"$W/accept.json"
kill -STOP "${pid_of[gateway-cloud]}"
for _ in $(seq 100); do [[ $(metric hybrid_mode) == 1 ]] && break; sleep 0.1; done
[[ $(metric hybrid_mode) == 1 ]] || die "the gateway did not go to emergency"
out=$W/runs/appends
"$loadgen" rps "${tls_args[@]}" --addr "$gateway_addr" --user "$person" --conns 16 --duration "$write_secs" \
  --path '/orca11/acceptmodv2?class=01&format=json' --post "$W/accept.json" \
  --expect-header x-kakehashi-journal-id >"$out" 2>"$out.err" || { cat "$out.err" >&2; die "loadgen rps failed"; }
printf '  %-22s %s\n' gateway "$(head -1 "$out")" >&2
[[ $(field "$out" errors) == 0 ]] || { cat "$out.err" >&2; die "appends: errors; every answer must be a 200 with x-kakehashi-journal-id"; }
appends=$(field "$out" requests)
append_rate=$(calc "$(field "$out" rps)" 0)
append_p99=$(calc "$(field "$out" p99_us) / 1000" 1)
pending=$(metric journal_pending)
[[ $pending == "$appends" ]] || die "the journal holds $pending pending entries, the client was answered $appends times"

declare -A raw_rate
for writers in 16 1; do
  out=$W/runs/journal-rate-$writers
  "$journal_rate" --dir "$W/journal-rate-$writers" --writers "$writers" --duration "$write_secs" >"$out" 2>&1 ||
    { cat "$out" >&2; die "journal-rate failed"; }
  printf '  %-22s %s\n' "Journal::append alone" "$(head -1 "$out")" >&2
  raw_rate[$writers]=$(calc "$(field "$out" rate)" 0)
done

echo "3. replay: the cloud continued" >&2
delivered0=$(metric journal_delivered_total) quarantined0=$(metric journal_quarantined_total)
t0=$EPOCHREALTIME
kill -CONT "${pid_of[gateway-cloud]}"
first=
for _ in $(seq 6000); do
  now=$EPOCHREALTIME
  m=$(curl -sf "http://$admin_addr/metrics")
  delivered=$(awk '$1 == "kakehashi_journal_delivered_total" {print $2}' <<<"$m")
  pending=$(awk '$1 == "kakehashi_journal_pending" {print $2}' <<<"$m")
  [[ -z $first && $delivered -gt $delivered0 ]] && first=$now
  [[ $pending == 0 ]] && break
  sleep 0.05
done
t1=$EPOCHREALTIME first=${first:-$t0}
[[ $pending == 0 ]] || die "replay: $pending entries still pending after 5 minutes"
quarantined=$(($(metric journal_quarantined_total) - quarantined0))
handed=$(($(metric journal_delivered_total) - delivered0))
replay_all=$(calc "$t1 - $t0" 2)
replay_run=$(calc "$t1 - $first" 2)
replay_rate=$(calc "$appends / $replay_run" 0)
printf '  %-22s %d entries: %s s from SIGCONT, %s s from the first delivery; %d delivered, %d quarantined\n' \
  gateway "$appends" "$replay_all" "$replay_run" "$handed" "$quarantined" >&2

# --- The summary.
ms() { echo "$(calc "$(median "$@")" 1) / $(worst "$@")"; }
# ratio SIDE SIGNAL: the gateway's median and worst over SIDE's.
ratio() {
  echo "$(calc "$(median ${det[gateway-$2]}) / $(median ${det[$1-$2]})" 2)x / $(calc "$(worst ${det[gateway-$2]}) / $(worst ${det[$1-$2]})" 2)x"
}
row() { printf '%-44s | %-15s | %-15s | %-15s | %s\n' "$@"; }
{
  echo
  echo "Failover, $(date -u +%Y-%m-%d), $(nproc) cores, $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'): $command_line"
  row what gateway haproxy haproxy-tuned target
  row "1. detection ms, black hole, median / worst" \
    "$(ms ${det[gateway-STOP]})" "$(ms ${det[haproxy-STOP]})" "$(ms ${det[haproxy-tuned-STOP]})" -
  row "   gateway / HAProxy, median / worst" - "$(ratio haproxy STOP)" "$(ratio haproxy-tuned STOP)" \
    "at most 0.5x tuned"
  row "   answers that were errors, all trials" \
    "${errs[gateway-STOP]}" "${errs[haproxy-STOP]}" "${errs[haproxy-tuned-STOP]}" 0
  row "   the gateway declared the cloud down, ms" "$(ms ${decl[STOP]})" - - -
  row "   requests still held at detection, all" \
    "${held[gateway-STOP]}" "${held[haproxy-STOP]}" "${held[haproxy-tuned-STOP]}" -
  row "   health checks/s to the cloud" "$probe_rate" "0.5 (1 server)" "10 (1 server)" "about 1"
  if ((kill_trials > 0)); then
    row "   detection ms, refused, median / worst" \
      "$(ms ${det[gateway-KILL]})" "$(ms ${det[haproxy-KILL]})" "$(ms ${det[haproxy-tuned-KILL]})" -
    row "   answers that were errors, all trials" \
      "${errs[gateway-KILL]}" "${errs[haproxy-KILL]}" "${errs[haproxy-tuned-KILL]}" 0
  fi
  row "2. journal appends/s, 16 writers, $write_secs s" "$append_rate" - - "at least 2,000/s"
  row "   p99 ms of an append through the gateway" "$append_p99" - - -
  row "   Journal::append alone, 16 tasks" "${raw_rate[16]}" - - -
  row "   Journal::append alone, 1 task" "${raw_rate[1]}" - - -
  row "3. replay entries/s ($appends entries)" "$replay_rate" - - -
  echo "   replay took $replay_run s from the first delivery, $replay_all s from SIGCONT (healthy_secs = 1 first);" \
    "$handed delivered, $quarantined quarantined"
}
