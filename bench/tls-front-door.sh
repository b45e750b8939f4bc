#!/usr/bin/env bash
# The gateway's TLS front door against nginx, same machine, same run, same certificates, same
# engine-sim behind both, same client (target/release/loadgen, rustls) for every figure:
#
#   1. keep-alive HTTPS requests/s through the proxy (closed loop, --conns connections)
#   2. full mTLS handshakes/s (no resumption; X25519 on both sides, since Debian's nginx has no
#      post-quantum group; the handshake counts once the server has checked the client certificate)
#   3. memory per idle mTLS connection: PSS of all server processes with --idle connections open
#      (each after a handshake and one request), minus PSS before, divided by the connections
#   4. p99 latency added over calling engine-sim directly, at half of each proxy's peak rate
#      (the medians of --rounds back-to-back pairs, direct then proxy), and with both proxies at
#      one rate, half of the lower peak (--rounds rounds of direct, nginx, gateway). Open loop,
#      fixed rate, over as many connections as the peak was measured with; more connections than
#      nginx keeps upstream (--latency-conns 128) make it open an upstream mTLS connection per
#      request, and its latency collapses
#   5. requests/s with the gateway's person authentication on (HTTP Basic on every request) as a
#      ratio to off
#   6. requests/s with scopes configured (the terminal holds client,reference, the person
#      reference: every request is classified and checked against both) as a ratio to the same
#      gateway with authentication on and no scopes set
# nginx: the Debian package, one worker per core with `reuseport`, `ssl_verify_client on` with the
# clinic CA and its CRL, proxy_pass over mTLS (the uplink certificate) to engine-sim with 64
# kept-alive upstream connections per worker.
# The gateway runs with person authentication off for the like-for-like figures, on for figure 5.
# It runs with the allocator settings of the unit in deploy/ (GLIBC_TUNABLES), as it ships;
# until 2026-12-05 it ran with glibc's defaults, which keep a per-thread cache the unit turns off.
# Keep-alive and handshake runs alternate the sides, --rounds times; the medians are reported.
#
#   bench/tls-front-door.sh [--duration S] [--rounds N] [--conns N] [--latency-conns N] [--idle N]
#                           [--quick] [--keep]
#
# --quick: 3 s runs, one round, 200 idle connections (a smoke run); --keep: leave the temporary
# directory (configurations, logs, every loadgen output) for a look afterwards.
# Needs nginx (`apt-get install nginx`); builds target/release/{kakehashi,loadgen}. Runs everything
# in a temporary directory and stops every process it started on exit. Until `kakehashi gateway`
# exists the gateway columns are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
command_line="bench/tls-front-door.sh $*"

duration=10 rounds=3 conns=32 latency_conns= idle=1000 keep=0
while (($#)); do
  case $1 in
    --duration) duration=$2 && shift ;;
    --rounds) rounds=$2 && shift ;;
    --conns) conns=$2 && shift ;;
    --latency-conns) latency_conns=$2 && shift ;;
    --idle) idle=$2 && shift ;;
    --quick) duration=3 rounds=1 idle=200 ;;
    --keep) keep=1 ;;
    *) die "unknown option $1 (see the comment at the top of the script)" ;;
  esac
  shift
done

latency_conns=${latency_conns:-$conns}
command -v nginx >/dev/null || die "needs nginx: apt-get install nginx"
# Each idle connection is a descriptor in the client and one (nginx: two with the upstream) in the server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > idle * 2 + 100)) || die "open-file limit $(ulimit -n) is too low for --idle $idle: ulimit -n 65536"
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
loadgen=${LOADGEN_BIN:-target/release/loadgen}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi --bin loadgen
peer=$(peer_bin)

W=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if ((keep)); then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -p "$W/runs"

# --- The clinic's PKI: the demo CA, a terminal, the gateway's server certificate (also nginx's),
# the uplink certificate both proxies present to the engine, and the engine's own certificate.
pki=$W/pki
"$peer" demo --setup-only --dir "$pki" >/dev/null
engine_user=ormaster:ormaster
person=bench-user:bench-password-$RANDOM$RANDOM

declare -A addr user pid_of
# Every side is an address the terminal calls, with the credentials it sends (if any).

start_engine() {
  "$peer" engine-sim --listen 127.0.0.1:0 --db "$W/engine.db" --seed demo --user "$engine_user" \
    --tls-cert "$pki/engine.pem" --tls-key "$pki/engine.key" --client-ca "$pki/ca.pem" >"$W/engine.out" 2>&1 &
  pids+=($!) pid_of[direct]=$!
  addr[direct]=$(wait_for "$W/engine.out" '^READY ' $! | sed 's#^READY https://##')
  user[direct]=$engine_user
}

start_nginx() {
  local port basic
  port=$(free_port)
  basic=$(printf %s "$engine_user" | base64)
  mkdir -p "$W/nginx"
  cat >"$W/nginx/nginx.conf" <<CONF
worker_processes auto;
worker_rlimit_nofile $(ulimit -n);
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  # Like the gateway: keep-alive connections stay open for the whole run.
  keepalive_timeout 600s;
  keepalive_requests 1000000000;
  upstream engine_sim {
    server ${addr[direct]};
    keepalive 64;
    keepalive_requests 1000000000;
  }
  server {
    # reuseport: the kernel spreads connections over the workers (without it one worker takes most).
    listen 127.0.0.1:$port ssl reuseport;
    ssl_certificate $pki/server.pem;
    ssl_certificate_key $pki/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ECDHE+AESGCM:ECDHE+CHACHA20;
    ssl_session_cache shared:SSL:10m;
    ssl_verify_client on;
    ssl_client_certificate $pki/ca.pem;
    ssl_crl $pki/crl.pem;
    location / {
      proxy_pass https://engine_sim;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Basic $basic";
      proxy_ssl_certificate $pki/uplink.pem;
      proxy_ssl_certificate_key $pki/uplink.key;
      proxy_ssl_trusted_certificate $pki/ca.pem;
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_session_reuse on;
    }
  }
}
CONF
  nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -g 'daemon off;' 2>>"$W/nginx/error.log" &
  pids+=($!) pid_of[nginx]=$!
  addr[nginx]=127.0.0.1:$port
  # Ready when a request through it is answered.
  for _ in $(seq 100); do
    curl -sf --cacert "$pki/ca.pem" --cert "$pki/terminal.pem" --key "$pki/terminal.key" \
      "https://localhost:$port/api01rv2/patientgetv2?id=1" >/dev/null 2>&1 && return
    kill -0 "${pid_of[nginx]}" 2>/dev/null || break
    sleep 0.1
  done
  cat "$W/nginx/error.log" >&2
  die "nginx did not answer on port $port"
}

gateway_available() {
  "$bin" gateway --help >/dev/null 2>&1
}

# start_gateway SIDE PERSON_AUTH(true|false) [TERMINAL_SCOPES PERSON_SCOPES]: a gateway with its
# own data directory.
start_gateway() {
  local side=$1 auth=$2 dir=$W/$1 terminal_scopes=${3:-all} person_scopes=${4:-all}
  mkdir -p "$dir"
  printf '%s\n' "${engine_user#*:}" >"$dir/upstream.password"
  chmod 600 "$dir/upstream.password"
  "$bin" terminal add reception-1 --scopes "$terminal_scopes" --data-dir "$dir/data" >/dev/null
  KAKEHASHI_USER_PASSWORD=${person#*:} "$bin" user add "${person%%:*}" --scopes "$person_scopes" \
    --data-dir "$dir/data" >/dev/null
  cat >"$dir/gateway.toml" <<CONF
data_dir = "data"
[tls]
cert = "$pki/server.pem"
key = "$pki/server.key"
client_ca = "$pki/ca.pem"
crl = "$pki/crl.pem"
[[listener]]
address = "127.0.0.1:$(free_port)"
kind = "api"
[upstream]
url = "https://${addr[direct]}"
ca = "$pki/ca.pem"
cert = "$pki/uplink.pem"
key = "$pki/uplink.key"
user = "${engine_user%%:*}"
password_file = "upstream.password"
[auth]
person = $auth
[admin]
address = "127.0.0.1:$(free_port)"
CONF
  GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$dir/gateway.toml" >"$dir/out" 2>&1 &
  pids+=($!) pid_of[$side]=$!
  addr[$side]=$(wait_for "$dir/out" '^READY ' $! | sed 's#^READY https://##')
  [[ $auth == true ]] && user[$side]=$person
  return 0
}

# load LABEL MODE SIDE KEY [LOADGEN OPTIONS…]: runs loadgen against SIDE, shows its line, prints
# the RESULT value of KEY. Errors in a run are shown, and fail the benchmark.
load() {
  local label=$1 mode=$2 side=$3 key=$4 out=$W/runs/$1
  shift 4
  local args=(--cert "$pki/terminal.pem" --key "$pki/terminal.key" --ca "$pki/ca.pem"
    --server-name localhost --addr "${addr[$side]}")
  [[ -n ${user[$side]:-} && $mode != handshakes ]] && args+=(--user "${user[$side]}")
  local procs=("${pid_of[$side]}" $(children "${pid_of[$side]}")) user0 sys0 engine0 engine_sys0
  read -r user0 sys0 < <(cpu_ticks "${procs[@]}")
  read -r engine0 engine_sys0 < <(cpu_ticks "${pid_of[direct]}")
  local machine0=$(machine_ticks)
  "$loadgen" "$mode" "${args[@]}" "$@" >"$out" 2>"$out.err" || { cat "$out.err" >&2; die "loadgen $mode against $side failed"; }
  printf '  %-22s %s' "$label" "$(head -1 "$out")" >&2
  # CPU per request (or handshake) of the side's own processes (and how much of it in the
  # kernel), of engine-sim behind it, and of the whole machine (the client included): on a
  # shared machine the throughput ratio follows these.
  local done=$(field "$out" requests) hz=$(getconf CLK_TCK) user1 sys1 engine1 engine_sys1
  [[ $mode == handshakes ]] && done=$(field "$out" handshakes)
  if [[ $mode != latency && $side != direct && ${done:-0} -gt 0 ]]; then
    read -r user1 sys1 < <(cpu_ticks "${procs[@]}")
    read -r engine1 engine_sys1 < <(cpu_ticks "${pid_of[direct]}")
    local machine1=$(machine_ticks)
    local per="* 1000000 / $hz / $done"
    printf "; CPU per %s: %s µs here (%s in the kernel), %s µs engine, %s µs the whole machine" \
      "$([[ $mode == handshakes ]] && echo handshake || echo request)" \
      "$(calc "($user1 + $sys1 - $user0 - $sys0) $per" 1)" "$(calc "($sys1 - $sys0) $per" 1)" \
      "$(calc "($engine1 + $engine_sys1 - $engine0 - $engine_sys0) $per" 1)" \
      "$(calc "($machine1 - $machine0) $per" 1)" >&2
  fi
  echo >&2
  [[ $(field "$out" errors) == 0 ]] || { cat "$out.err" >&2; die "$label: errors; every response must be a 200"; }
  field "$out" "$key"
}

# idle_kib SIDE: KiB of server memory per idle mTLS connection held open by `loadgen idle`.
idle_kib() {
  local side=$1 procs before after holder hold out=$W/runs/idle-$1
  procs=("${pid_of[$side]}" $(children "${pid_of[$side]}"))
  sleep 1
  before=$(pss_kib "${procs[@]}")
  mkfifo "$out.hold"
  local args=(--cert "$pki/terminal.pem" --key "$pki/terminal.key" --ca "$pki/ca.pem"
    --server-name localhost --addr "${addr[$side]}" --conns "$idle")
  [[ -n ${user[$side]:-} ]] && args+=(--user "${user[$side]}")
  "$loadgen" idle "${args[@]}" <"$out.hold" >"$out" 2>"$out.err" &
  holder=$!
  exec {hold}>"$out.hold" # stdin stays open until this descriptor closes
  wait_for "$out" '^HOLDING ' "$holder" 120 >/dev/null
  [[ $(sed -n 's/^HOLDING //p' "$out") == "$idle" ]] || { cat "$out.err" >&2; die "idle: not every connection to $side was established"; }
  sleep 2
  after=$(pss_kib "${procs[@]}")
  exec {hold}>&-
  wait "$holder"
  printf '  %-22s PSS %d KiB before, %d KiB with %d connections\n' "idle-$side" "$before" "$after" "$idle" >&2
  calc "($after - $before) / $idle" 1
}

echo "TLS front door: $(nproc) cores, ${duration}s per run, $rounds round(s), $conns connections ($latency_conns for latency), $idle idle" >&2
start_engine
start_nginx
sides=(direct nginx)
if gateway_available; then
  start_gateway gateway false
  start_gateway gateway-auth true
  start_gateway gateway-scoped true client,reference reference
  sides+=(gateway gateway-auth gateway-scoped)
else
  echo "kakehashi gateway is not in this build: the gateway runs are skipped" >&2
fi
has() { [[ " ${sides[*]} " == *" $1 "* ]]; }
proxies=(nginx)
has gateway && proxies+=(gateway)

declare -A rps hps hps_pq kib p99 p99_direct rate p99_same
echo "1. keep-alive requests/s" >&2
declare -A samples
for ((r = 1; r <= rounds; r++)); do
  for side in "${sides[@]}"; do
    samples[$side]+=" $(load "rps-$side-$r" rps "$side" rps --conns "$conns" --duration "$duration")"
  done
done
for side in "${sides[@]}"; do rps[$side]=$(calc "$(median ${samples[$side]})" 0); done

echo "2. full mTLS handshakes/s" >&2
samples=()
for ((r = 1; r <= rounds; r++)); do
  for side in "${proxies[@]}"; do
    samples[$side]+=" $(load "handshakes-$side-$r" handshakes "$side" hps --conns "$conns" --duration "$duration" --kx x25519)"
  done
done
for side in "${proxies[@]}"; do
  hps[$side]=$(calc "$(median ${samples[$side]})" 0)
  # What a rustls terminal gets by default: the hybrid post-quantum group where the server has it.
  hps_pq[$side]=$(load "handshakes-pq-$side" handshakes "$side" hps --conns "$conns" --duration "$duration")
  hps_pq[$side]=$(calc "${hps_pq[$side]}" 0)
done

echo "3. memory per idle mTLS connection" >&2
for side in "${proxies[@]}"; do kib[$side]=$(idle_kib "$side"); done

echo "4. p99 latency added at half of each proxy's peak" >&2
# Each round measures engine-sim directly and then through the proxy at the same rate, back to
# back, so that both see the machine in the same state; the medians of the rounds are reported.
for side in "${proxies[@]}"; do
  rate[$side]=$(calc "${rps[$side]} / 2" 0)
  # Warm-up, not counted: the proxy's upstream connections for this many terminals are opened here.
  load "warm-up-$side" latency "$side" p99_us --rate "${rate[$side]}" --conns "$latency_conns" --duration 2 >/dev/null
  direct_samples= proxy_samples=
  for ((r = 1; r <= rounds; r++)); do
    direct_samples+=" $(load "latency-direct-${rate[$side]}-$r" latency direct p99_us --rate "${rate[$side]}" --conns "$latency_conns" --duration "$duration")"
    proxy_samples+=" $(load "latency-$side-$r" latency "$side" p99_us --rate "${rate[$side]}" --conns "$latency_conns" --duration "$duration")"
  done
  p99_direct[$side]=$(calc "$(median $direct_samples)" 0)
  p99[$side]=$(calc "$(median $proxy_samples)" 0)
done
# The same, with both proxies at one rate (half of the lower peak), direct then nginx then the
# gateway in each round: at half of its own peak the faster proxy is measured under more load,
# so this separates what each adds to a request from how much load it was given.
if has gateway; then
  same=$((rate[nginx] < rate[gateway] ? rate[nginx] : rate[gateway]))
  declare -A same_samples
  for ((r = 1; r <= rounds; r++)); do
    for side in direct "${proxies[@]}"; do
      same_samples[$side]+=" $(load "latency-same-$side-$r" latency "$side" p99_us --rate "$same" --conns "$latency_conns" --duration "$duration")"
    done
  done
  for side in direct "${proxies[@]}"; do p99_same[$side]=$(calc "$(median ${same_samples[$side]})" 0); done
fi

# --- The summary.
gw() { has gateway && echo "$1" || echo "skipped"; }
ratio() { has gateway && echo "$(calc "$1")x" || echo "-"; }
added() { printf '%+d µs (p99 %d at %d/s; direct %d)\n' "$((${p99[$1]} - ${p99_direct[$1]}))" "${p99[$1]}" "${rate[$1]}" "${p99_direct[$1]}"; }
{
  echo
  echo "TLS front door, $(date -u +%Y-%m-%d), $(nproc) cores: $command_line"
  printf '%-40s | %-10s | %-10s | %-10s | %-14s | %s\n' what direct nginx gateway gateway/nginx target
  printf '%-40s | %-10s | %-10s | %-10s | %-14s | %s\n' "1. keep-alive requests/s" "${rps[direct]}" "${rps[nginx]}" \
    "$(gw "${rps[gateway]:-}")" "$(ratio "${rps[gateway]:-0} / ${rps[nginx]}")" "at least 1.2x"
  printf '%-40s | %-10s | %-10s | %-10s | %-14s | %s\n' "2. full mTLS handshakes/s (X25519)" - "${hps[nginx]}" \
    "$(gw "${hps[gateway]:-}")" "$(ratio "${hps[gateway]:-0} / ${hps[nginx]}")" "at least 2x"
  printf '%-40s | %-10s | %-10s | %-10s | %-14s | %s\n' "   the same, client offers X25519MLKEM768" - "${hps_pq[nginx]}" \
    "$(gw "${hps_pq[gateway]:-}")" "$(ratio "${hps_pq[gateway]:-0} / ${hps_pq[nginx]}")" "(nginx: X25519)"
  printf '%-40s | %-10s | %-10s | %-10s | %-14s | %s\n' "3. KiB per idle mTLS connection ($idle)" - "${kib[nginx]}" \
    "$(gw "${kib[gateway]:-}")" "$(ratio "${kib[gateway]:-0} / ${kib[nginx]}")" "at most 32 KiB, below nginx"
  echo "4. p99 latency added over engine-sim direct, at half of each proxy's peak:"
  echo "     nginx   $(added nginx)"
  has gateway && echo "     gateway $(added gateway)"
  has gateway && printf '   both at %d/s (half of the lower peak): nginx %+d µs, gateway %+d µs (p99 %d and %d; direct %d)\n' \
    "$same" "$((p99_same[nginx] - p99_same[direct]))" "$((p99_same[gateway] - p99_same[direct]))" \
    "${p99_same[nginx]}" "${p99_same[gateway]}" "${p99_same[direct]}"
  has gateway && echo "5. person authentication on/off: ${rps[gateway-auth]} / ${rps[gateway]} requests/s = $(calc "${rps[gateway-auth]} / ${rps[gateway]}")x (target at least 0.9x)"
  has gateway || echo "5. person authentication on/off: skipped (no kakehashi gateway in this build)"
  has gateway && echo "6. scopes configured/not (authentication on): ${rps[gateway-scoped]} / ${rps[gateway-auth]} requests/s = $(calc "${rps[gateway-scoped]} / ${rps[gateway-auth]}")x (target at least 0.95x)"
}
