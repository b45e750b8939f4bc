#!/usr/bin/env bash
# Redundant uplinks: how fast the traffic moves to the second path when the first line goes
# silent, against HAProxy with two servers tuned at its best for the same switch, and beside the
# gateway's fall back to its local engine when every line is silent. Same machine, same run, same
# cloud, same client (target/release/loadgen `watch`, rustls, the terminal's certificate).
#
# The cloud: one engine-sim in a network namespace of its own, reached over two lines (veth
# pairs: line A 10.212.0.0/24, line B 10.213.0.0/24) and, over line B, a WireGuard tunnel to a
# wireguard-go concentrator (10.214.0.0/24). engine-sim answers every call with
# `X-Engine-Address`, the address the connection came in on, so the client sees which path
# answered. A line is black-holed with nftables in the cloud's namespace: everything the cloud
# sends back over it is dropped (requests arrive, nothing comes back: a dead line on the far
# side, the hardest failure to notice).
#
# Sides, one at a time:
#   gateway      upstream.url over line A (`connect`), [[upstream.path]] `b` over line B
#   gateway-wg   upstream.url over line A, [[upstream.path]] `vpn` through the WireGuard tunnel
#   haproxy-tuned  server `a` over line A, server `b` over line B as `backup`, tuned as the issue
#                asks: `check inter 100ms fall 2 rise 2`, `timeout check 100ms`,
#                `option redispatch`, `retries 3`, `retry-on all-retryable-errors`
# Both gateways run with the failover defaults (deadlines from the cloud's latency between 150
# and 500 ms, about one probe a second per path) except `healthy_secs = 1`, so that trials can
# follow each other; between trials the script waits 5 s after the gateway is back on line A
# (a path failing again within four stable windows of coming back must show a doubled window).
#
# A trial: a read every --every-ms (open loop, `loadgen watch`); after a random 0.2-2.2 s, line
# A is black-holed; switch time = from just before the nft command to the first answer that came
# over the second path. Counted too: answers that were errors. Then line A is restored and the
# side waits until it is back on it. The local fallback: both lines black-holed, time to the
# first answer from the gateway's cache (`x-hybridmode: emergency`).
#
#   bench/uplinks.sh [--trials N] [--every-ms MS] [--quick] [--keep]
#
# Defaults: 20 trials per side, 5 of the local fallback, a read every 20 ms. --quick: 3 and 1.
# Needs root (namespaces, nftables); installs haproxy, wireguard-go, wireguard-tools and nftables
# with apt-get when missing. Builds target/release/{kakehashi,loadgen}.
set -Eeuo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
command_line="bench/uplinks.sh $*"
trap 'echo "$(basename "$0"): line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR

trials=20 local_trials=5 every_ms=20 keep=0
while (($#)); do
  case $1 in
    --trials) trials=$2 && shift ;;
    --every-ms) every_ms=$2 && shift ;;
    --quick) trials=3 local_trials=1 ;;
    --keep) keep=1 ;;
    *) die "unknown option $1 (see the comment at the top of the script)" ;;
  esac
  shift
done
((trials > 0)) || die "--trials must be at least 1"
[[ $(id -u) -eq 0 ]] || die "needs root: network namespaces and nftables"
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
loadgen=${LOADGEN_BIN:-target/release/loadgen}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi --bin loadgen
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
peer=$(peer_bin)

W=$(mktemp -d)
NS=kkb$$
cleanup() {
  local running
  running=$(jobs -p)
  for pid in $running; do kill "$pid" 2>/dev/null || true; done
  for pid in $(ip netns pids "$NS" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip link del "${NS}a" 2>/dev/null || true
  ip link del "${NS}b" 2>/dev/null || true
  if ((keep)); then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
mkdir -p "$W/runs"

# --- The cloud's namespace, its two lines and the concentrator.
ip netns add "$NS"
for line in a b; do
  net=$([[ $line == a ]] && echo 212 || echo 213)
  ip link add "$NS$line" type veth peer name "$NS${line}c"
  ip link set "$NS${line}c" netns "$NS"
  ip addr add "10.$net.0.1/24" dev "$NS$line"
  ip link set "$NS$line" up
  ip -n "$NS" addr add "10.$net.0.2/24" dev "$NS${line}c"
  ip -n "$NS" link set "$NS${line}c" up
done
ip -n "$NS" link set lo up

# --- The clinic, its engine in the cloud's namespace.
D=$W/clinic
gateway_addr=127.0.0.1:$(free_port) admin_addr=127.0.0.1:$(free_port) port=$(free_port)
"$peer" demo --setup-only --dir "$D" --listen "$gateway_addr" --engine-listen "127.0.0.1:$port" \
  --admin-listen "$admin_addr" >/dev/null
sed -i "s/127.0.0.1:$port/0.0.0.0:$port/" "$D/engine.toml"
ip netns exec "$NS" "$peer" engine-sim --config "$D/engine.toml" >"$W/engine.out" 2>"$W/engine.err" &
wait_for "$W/engine.out" '^READY ' $! >/dev/null
person=$(cat "$D/user.txt")
tls_args=(--cert "$D/terminal.pem" --key "$D/terminal.key" --ca "$D/ca.pem" --server-name localhost)

(
  umask 077
  wg genkey >"$D/uplink-wg.key"
  wg genkey >"$W/concentrator.key"
)
WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 ip netns exec "$NS" wireguard-go "${NS}w" >/dev/null
ip netns exec "$NS" wg set "${NS}w" listen-port 51820 private-key "$W/concentrator.key" \
  peer "$(wg pubkey <"$D/uplink-wg.key")" allowed-ips 10.214.0.2/32
ip -n "$NS" addr add 10.214.0.1/24 dev "${NS}w"
ip -n "$NS" link set "${NS}w" mtu 1420 up

# The gateways' configurations: line A first, then line B or the tunnel.
sed "s|^\[upstream\]$|[upstream]\nname = \"a\"\nconnect = \"10.212.0.2:$port\"|" "$D/gateway.toml" >"$W/base.toml"
printf '\n[failover]\nhealthy_secs = 1\n' >>"$W/base.toml"
{
  cat "$W/base.toml"
  printf '\n[[upstream.path]]\nname = "b"\nconnect = "10.213.0.2:%s"\n' "$port"
} >"$D/gateway-line.toml"
{
  cat "$W/base.toml"
  printf '\n[[upstream.path]]\nname = "vpn"\n[upstream.path.wireguard]\n'
  printf 'private_key = "uplink-wg.key"\npeer = "%s"\nendpoint = "10.213.0.2:51820"\n' "$(wg pubkey <"$W/concentrator.key")"
  printf 'address = "10.214.0.2/24"\nengine = "10.214.0.1:%s"\n' "$port"
} >"$D/gateway-wg.toml"

declare -A marker=(
  [gateway]="x-engine-address:10.213.0.2:$port"
  [gateway-wg]="x-engine-address:10.214.0.1:$port"
  [haproxy-tuned]="x-engine-address:10.213.0.2:$port"
)

# black_hole LINE on|off: drops everything the cloud sends back over LINE.
black_hole() {
  local net=$([[ $1 == a ]] && echo 212 || echo 213)
  ip netns exec "$NS" nft delete table inet "kkb_$1" 2>/dev/null || true
  [[ $2 == on ]] || return 0
  ip netns exec "$NS" nft "add table inet kkb_$1; add chain inet kkb_$1 out { type filter hook output priority 0; }; add rule inet kkb_$1 out ip daddr 10.$net.0.1 drop"
}

metric() {
  curl -sf "http://$admin_addr/metrics" | awk -v m="kakehashi_$1" '$1 == m {print $2}'
}
haproxy_status() {
  curl -sf "http://$stats_addr/stats;csv" | awk -F, -v s="$1" '$1 == "engines" && $2 == s {print $18}'
}

# on_line_a SIDE: waits until SIDE's new calls take line A again.
on_line_a() {
  for _ in $(seq 600); do
    case $1 in
      gateway*) [[ $(metric uplink_path) == 0 && $(metric hybrid_mode) == 0 ]] && return ;;
      haproxy*) [[ $(haproxy_status a) == UP ]] && return ;;
    esac
    sleep 0.1
  done
  die "$1 did not come back to line A within 60 s"
}

start_side() {
  case $1 in
    gateway | gateway-wg)
      local config=$D/gateway-line.toml
      [[ $1 == gateway-wg ]] && config=$D/gateway-wg.toml
      GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$config" >"$W/$1.out" 2>"$W/$1.err" &
      side_pid=$!
      wait_for "$W/$1.out" '^READY ' $side_pid >/dev/null
      # Both paths answering their probes.
      for _ in $(seq 300); do
        [[ $(curl -sf "http://$admin_addr/metrics" | grep -c '^kakehashi_uplink_path_up{.*} 1') == 2 ]] && break
        sleep 0.1
      done
      ;;
    haproxy-tuned)
      local dir=$W/haproxy basic
      mkdir -p "$dir"
      stats_addr=127.0.0.1:$(free_port)
      cat "$D/server.pem" "$D/server.key" >"$dir/server.pem"
      cat "$D/uplink.pem" "$D/uplink.key" >"$dir/uplink.pem"
      chmod 600 "$dir"/*.pem
      basic=$(printf %s "$(awk -F'"' '/^user = / {print $2; exit}' "$D/gateway.toml"):$(head -1 "$D/upstream.password")" | base64 -w0)
      local tls="ssl crt $dir/uplink.pem ca-file $D/ca.pem verify required"
      cat >"$dir/haproxy.cfg" <<CONF
global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend terminals
  bind $gateway_addr ssl crt $dir/server.pem ca-file $D/ca.pem crl-file $D/crl.pem verify required alpn http/1.1
  default_backend engines
backend engines
  timeout check 100ms
  option redispatch
  retries 3
  retry-on all-retryable-errors
  http-request set-header Authorization "Basic $basic"
  server a 10.212.0.2:$port $tls check inter 100ms fall 2 rise 2
  server b 10.213.0.2:$port $tls check inter 100ms fall 2 rise 2 backup
listen stats
  bind $stats_addr
  stats enable
  stats uri /stats
CONF
      haproxy -c -q -f "$dir/haproxy.cfg" || die "HAProxy refused $dir/haproxy.cfg"
      haproxy -db -f "$dir/haproxy.cfg" >"$W/$1.out" 2>&1 &
      side_pid=$!
      for _ in $(seq 100); do
        [[ $(haproxy_status a 2>/dev/null) == UP && $(haproxy_status b 2>/dev/null) == UP ]] && break
        sleep 0.1
      done
      [[ $(haproxy_status a) == UP ]] || { cat "$W/$1.out" >&2; die "HAProxy's servers are not UP"; }
      ;;
  esac
}

# trial SIDE LINES N: one black hole of LINES (`a`, or `a b`); sets `switched` (ms) and `failed`.
trial() {
  local side=$1 lines=$2 out=$W/runs/$1-${2// /}-$3 mark t0 watcher
  mark=${marker[$side]}
  [[ $lines == "a b" ]] && mark="x-hybridmode:emergency"
  on_line_a "$side"
  [[ $side == gateway* ]] && sleep 5
  "$loadgen" watch "${tls_args[@]}" --addr "$gateway_addr" --user "$person" --every-ms "$every_ms" \
    --marker "$mark" --max-secs 30 >"$out" 2>"$out.err" &
  watcher=$!
  wait_for "$out" '^READY' $watcher >/dev/null
  sleep "$(awk -v r=$RANDOM 'BEGIN {printf "%.3f", 0.2 + 2 * r / 32768}')"
  t0=$EPOCHREALTIME
  for line in $lines; do black_hole "$line" on; done
  { wait "$watcher"; } 2>/dev/null || { cat "$out.err" >&2; die "$side trial $3: no answer over the other path"; }
  switched=$(calc "($(field "$out" marked_us) - ${t0/./}) / 1000" 1)
  failed=$(field "$out" errors)
  for line in $lines; do black_hole "$line" off; done
  printf '  %-26s %8s ms, %d answers were errors\n' "$side ${lines// /+} $3" "$switched" "$failed" >&2
}

declare -A sw errs
for side in gateway gateway-wg haproxy-tuned; do
  echo "$side: $trials trials" >&2
  start_side "$side"
  errs[$side]=0
  for n in $(seq "$trials"); do
    trial "$side" a "$n"
    sw[$side]+=" $switched"
    errs[$side]=$((errs[$side] + failed))
  done
  if [[ $side == gateway ]]; then
    echo "gateway, both lines: $local_trials trials" >&2
    errs[local]=0
    for n in $(seq "$local_trials"); do
      trial "$side" "a b" "$n"
      sw[local]+=" $switched"
      errs[local]=$((errs[local] + failed))
    done
  fi
  kill "$side_pid"
  wait "$side_pid" 2>/dev/null || true
done

ms() { echo "$(calc "$(median "$@")" 1) / $(worst "$@")"; }
ratio() {
  echo "$(calc "$(median ${sw[$1]}) / $(median ${sw[haproxy-tuned]})" 2)x / $(calc "$(worst ${sw[$1]}) / $(worst ${sw[haproxy-tuned]})" 2)x"
}
row() { printf '%-46s | %-15s | %-15s | %-15s | %s\n' "$@"; }
{
  echo
  echo "Redundant uplinks, $(date -u +%Y-%m-%d), $(nproc) cores, $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'): $command_line"
  row what "gateway (line)" "gateway (tunnel)" haproxy-tuned target
  row "switch to the second path ms, median / worst" "$(ms ${sw[gateway]})" "$(ms ${sw[gateway-wg]})" "$(ms ${sw[haproxy-tuned]})" -
  row "   gateway / HAProxy tuned, median / worst" "$(ratio gateway)" "$(ratio gateway-wg)" - "at most 0.5x"
  row "   answers that were errors, all trials" "${errs[gateway]}" "${errs[gateway-wg]}" "${errs[haproxy-tuned]}" 0
  row "local engine, both lines black-holed, ms" "$(ms ${sw[local]})" - - -
  row "   answers that were errors, all trials" "${errs[local]}" - - 0
}
