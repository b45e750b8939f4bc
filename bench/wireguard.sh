#!/usr/bin/env bash
# The gateway's WireGuard front door (userspace mode) against wireguard-go talking to
# wireguard-go over TUN, same machine, same run, same terminal (wireguard-go in a network
# namespace) and the same programs inside the tunnel (iperf3, ping):
#
#   1. bulk transfer: `iperf3 -c … -n 1G` in the terminal's namespace.
#      gateway:  terminal namespace (wireguard-go, iperf3 -c 10.77.0.1 -p 5201) --veth, UDP-->
#                the gateway in the root namespace (boringtun, its smoltcp stack holding
#                10.77.0.1; port 5201 is a `[[wireguard.port]]` serving a raw `tcp` listener
#                route `tcp:bulk`, plain upstream, no sign-in) --loopback TCP--> `iperf3 -s` on
#                127.0.0.1. iperf3's control and data connections both go through the route.
#      baseline: namespace A (wireguard-go, iperf3 -c) --veth, UDP--> namespace B (wireguard-go,
#                its TUN device, the kernel's TCP, `iperf3 -s` on B's tunnel address).
#      Throughput is what iperf3's receiving end counted (the `receiver` line). Runs alternate
#      baseline, gateway, baseline, gateway …; medians and their ratio. During each run the CPU
#      time (utime + stime from /proc/PID/task/*/stat) of every thread of the receiving side (the
#      gateway, or B's wireguard-go) and of the terminal's wireguard-go is recorded, to show where
#      the time goes (and CPU seconds per run, which the machine's other load moves less than
#      throughput), with the whole machine's busy share from /proc/stat; softirq work the kernel
#      does on behalf of nobody in particular is in the latter only.
#   2. ping RTT: the median of 50 pings (`ping -i 0.01`) through each established tunnel, and
#      over the bare veth for reference.
#   3. handshake latency: a fresh peer each trial. Gateway: `kakehashi terminal add hsN
#      --wireguard` (not timed), the terminal's wireguard-go reconfigured with that key (`wg
#      setconf`, no keepalive so nothing is sent yet), then SIGHUP to the gateway, a wait until
#      `kakehashi_wg_peers` counts it (the reload), and one ping, which starts the handshake: its
#      reply's time (ping's own `time=`, handshake included) is the figure, the reload beside it.
#      Baseline: a new key pair and preshared key for A (`wg set A private-key … peer …
#      preshared-key …`), B's old peer removed and the new one added, then one ping. Alternating.
#   5. parallel work (run before 4, on the demo's one terminal): `iperf3 -P STREAMS -t 8` through
#      each tunnel (the [SUM] receiver line; the gateway's streams go through the tcp:bulk route),
#      and HTTP keep-alive requests/s through the gateway's tunnel with wrk (--conns connections,
#      2 threads, 8 s) to the api route on port 8000 (`GET /api01rv2/patientgetv2?id=1`, the demo
#      user's HTTP Basic: person authentication, the audit log and the cloud engine behind it, as
#      a WireGuard tablet would use it). The gateway's CPU per thread during each run shows where
#      the work goes: packet crypto and the userspace TCP/IP stack on the `wireguard` thread, the
#      routes (relays, HTTP, authentication, proxying) on the `worker-N` threads. There is no
#      wireguard-go baseline for the HTTP figure (it has no proxy); compare two builds of the
#      gateway with KAKEHASHI_BIN.
#   6. several terminals at once (run before 4): --terminals N (4) more terminals, each its own
#      network namespace, veth pair and wireguard-go with its own key, each `iperf3 -c -t 8` at
#      the same moment to its own iperf3 server. Gateway: N terminals enrolled with `kakehashi
#      terminal add parK --wireguard`, tunnel ports 5202… each a raw `tcp` route to its own
#      iperf3 on loopback. Baseline: N client namespaces, each a veth into B, all peers of B's
#      one wireguard-go, iperf3 servers 5202… in B. The sum of the receivers' Mbit/s per run,
#      alternating, --rounds runs per side; the receiving side's CPU beside it.
#   4. memory: the gateway's VmRSS (/proc/PID/status) 1 s after READY with the demo's one
#      WireGuard peer; after the transfers; with 500 configured peers (terminals enrolled with
#      `kakehashi terminal add tN --wireguard`, the tunnel network widened to /16 for them) after
#      SIGHUP (`kakehashi_wg_peers` must say 500); and 1 s after a restart with the 500. Beside it
#      B's wireguard-go (one peer), fresh and after the transfers.
#
#   bench/wireguard.sh [--rounds N] [--size SIZE] [--handshakes N] [--peers N] [--streams N]
#                      [--conns N] [--terminals N] [--quick] [--keep]
#
# Defaults: 3 bulk rounds per side of 1G (iperf3's -n, so 1 GiB), 5 handshakes per side, 500
# peers, 4 parallel streams, 16 HTTP connections, 4 terminals at once. --quick: 1 round, 2 handshakes (a smoke run, about a minute); --keep: leave the
# temporary directory (configurations, logs, every iperf3 and ping output).
# Needs root (network namespaces), iproute2, ping, wireguard-go, wireguard-tools, curl, iperf3 and wrk;
# installs the missing ones through apt-get. Builds target/release/kakehashi unless
# KAKEHASHI_BIN is set. Stops every process it started, and removes its namespaces and veths, on
# exit, Ctrl-C included.
set -Eeuo pipefail
# Keys and configs are secrets (wg refuses to write a key to a file others can read).
umask 077
cd "$(dirname "$0")/.."
source bench/lib.sh
command_line="bench/wireguard.sh $*"
trap 'echo "$(basename "$0"): line $LINENO: \`$BASH_COMMAND\` failed" >&2' ERR

rounds=3 size=1G handshakes=5 peers=500 streams=4 conns=16 terminals=4 keep=0
while (($#)); do
  case $1 in
    --rounds) rounds=$2 && shift ;;
    --size) size=$2 && shift ;;
    --handshakes) handshakes=$2 && shift ;;
    --peers) peers=$2 && shift ;;
    --streams) streams=$2 && shift ;;
    --conns) conns=$2 && shift ;;
    --terminals) terminals=$2 && shift ;;
    --quick) rounds=1 handshakes=2 ;;
    --keep) keep=1 ;;
    *) die "unknown option $1 (see the comment at the top of the script)" ;;
  esac
  shift
done
((rounds > 0 && handshakes > 0 && terminals > 0 && terminals < 60 && peers > handshakes + terminals + 1)) ||
  die "--rounds, --handshakes, --terminals (below 60) must be at least 1, --peers more than --handshakes + --terminals + 1"

[[ $(id -u) -eq 0 ]] || die "needs root: network namespaces, veth pairs and wireguard-go"
need=()
command -v ip >/dev/null || need+=(iproute2)
command -v ping >/dev/null || need+=(iputils-ping)
command -v wg >/dev/null || need+=(wireguard-tools)
command -v wireguard-go >/dev/null || need+=(wireguard-go)
command -v curl >/dev/null || need+=(curl)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v wrk >/dev/null || need+=(wrk)
if ((${#need[@]})); then
  echo "installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
[[ -n ${KAKEHASHI_BIN:-} ]] || cargo build --release --quiet --bin kakehashi
peer=$(peer_bin)

# Names unique on this machine (interfaces at most 15 bytes, unique across namespaces).
id=$(($$ % 10000)) net=$(($$ % 250 + 1))
ns_t=kw${id}t ns_a=kw${id}a ns_b=kw${id}b
W=$(mktemp -d)
cleanup() {
  local pid ns
  for pid in $(jobs -p); do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Every namespace of this run: the terminal, A, B and section 6's terminals and clients.
  for ns in $(ip netns list 2>/dev/null | awk -v p="kw$id" 'index($1, p) == 1 {print $1}'); do
    # wireguard-go outlives its namespace unless it is stopped first.
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -f "/var/run/wireguard/$ns.sock"
  done
  for ns in "$ns_t" $(seq -f "kw${id}g%g" 1 "$terminals"); do ip link del "${ns}h" 2>/dev/null || true; done
  if ((keep)); then echo "kept $W" >&2; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$W/runs"

# nsx NS COMMAND…: runs COMMAND in namespace NS.
nsx() {
  local ns=$1
  shift
  ip netns exec "$ns" "$@"
}

# wg_up NS: starts wireguard-go (in the foreground, as a job of this script) on interface NS in
# namespace NS, and waits for the interface.
declare -A wg_pid
wg_up() {
  # (ip netns exec itself: `nsx … &` would be a subshell, and $! not wireguard-go's id.)
  ip netns exec "$1" env WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1 wireguard-go -f "$1" >"$W/wireguard-go-$1.log" 2>&1 &
  wg_pid[$1]=$!
  for _ in $(seq 100); do
    ip -n "$1" link show "$1" >/dev/null 2>&1 && [[ -S /var/run/wireguard/$1.sock ]] && return
    kill -0 "${wg_pid[$1]}" 2>/dev/null || break
    sleep 0.05
  done
  cat "$W/wireguard-go-$1.log" >&2
  die "wireguard-go did not bring up $1"
}

# terminal_conf CONF [NS GATEWAY_IP]: sets the wireguard-go of terminal namespace NS ($ns_t) to
# the wg-quick config CONF (a fresh enrolment: new key, new session), pointed at the gateway at
# GATEWAY_IP (10.211.$net.1) over its veth, with its address and a route to the gateway's tunnel
# address. No PersistentKeepalive: nothing is sent before the first packet that is meant to start
# the handshake.
terminal_conf() {
  local conf=$1 ns=${2:-$ns_t} gateway_ip=${3:-10.211.$net.1} address
  address=$(sed -n 's/^Address = //p' "$conf")
  wg-quick strip "$conf" | grep -Ev '^(PersistentKeepalive|Endpoint) = ' >"$conf.stripped"
  nsx "$ns" wg setconf "$ns" "$conf.stripped"
  nsx "$ns" wg set "$ns" peer "$gateway_public" endpoint "$gateway_ip:$wg_port"
  ip -n "$ns" addr flush dev "$ns"
  ip -n "$ns" addr add "$address" dev "$ns"
  ip -n "$ns" link set "$ns" mtu 1420 up
  ip -n "$ns" route replace 10.77.0.1/32 dev "$ns"
}

# veth_ns NS OTHER_NS|- LOCAL_IP NS_IP: a new namespace NS joined to OTHER_NS (- : the root
# namespace) by a veth pair NSh–NSn, LOCAL_IP/30 on OTHER_NS's end and NS_IP/30 on NS's.
veth_ns() {
  local ns=$1 other=$2
  ip netns add "$ns"
  ip link add "${ns}h" type veth peer name "${ns}n"
  ip link set "${ns}n" netns "$ns"
  if [[ $other == - ]]; then
    ip addr add "$3/30" dev "${ns}h"
    ip link set "${ns}h" up
  else
    ip link set "${ns}h" netns "$other"
    ip -n "$other" addr add "$3/30" dev "${ns}h"
    ip -n "$other" link set "${ns}h" up
  fi
  ip -n "$ns" addr add "$4/30" dev "${ns}n"
  ip -n "$ns" link set "${ns}n" up
  ip -n "$ns" link set lo up
}

metric() {
  curl -sf "http://$admin_addr/metrics" | awk -v m="kakehashi_$1" '$1 == m {print $2}'
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

mib() { calc "$1 / 1024" 1; }

# --- The gateway's clinic, with a raw TCP route to an iperf3 server on port 5201 inside the tunnel.
D=$W/clinic
gateway_addr=127.0.0.1:$(free_port) cloud_addr=127.0.0.1:$(free_port) admin_addr=127.0.0.1:$(free_port)
wg_port=$(free_port) bulk_addr=127.0.0.1:$(free_port) upstream_port=$(free_port)
# Section 6's iperf3 servers on loopback, one per terminal, behind the routes bulk1….
declare -A par_upstream
for ((k = 1; k <= terminals; k++)); do par_upstream[$k]=$(free_port); done
"$peer" demo --setup-only --dir "$D" --listen "$gateway_addr" --engine-listen "$cloud_addr" \
  --admin-listen "$admin_addr" --wg-listen "0.0.0.0:$wg_port" >/dev/null
# Room for 500 terminals: a /16 instead of the demo's /24 (the demo terminal keeps 10.77.0.2).
sed -i 's|^address = "10.77.0.1/24"|address = "10.77.0.1/16"|' "$D/gateway.toml"
grep -q '^address = "10.77.0.1/16"' "$D/gateway.toml" || die "no tunnel address to widen in $D/gateway.toml"
cat >>"$D/gateway.toml" <<CONF

# The benchmark's bulk route: raw bytes to an iperf3 server, no TLS, no sign-in.
[[listener]]
address = "$bulk_addr"
kind = "tcp"
name = "bulk"
upstream = "127.0.0.1:$upstream_port"
upstream_tls = false
require_login = false

[[wireguard.port]]
port = 5201
route = "tcp:bulk"
$(for ((k = 1; k <= terminals; k++)); do
  printf '\n[[listener]]\naddress = "127.0.0.1:%s"\nkind = "tcp"\nname = "bulk%s"\nupstream = "127.0.0.1:%s"\nupstream_tls = false\nrequire_login = false\n' \
    "$(free_port)" "$k" "${par_upstream[$k]}"
  printf '\n[[wireguard.port]]\nport = %s\nroute = "tcp:bulk%s"\n' "$((5201 + k))" "$k"
done)

# Listing a port replaces the default one: the api route on 8000 (section 5's HTTP load).
[[wireguard.port]]
port = 8000
route = "api"
CONF
"$bin" gateway check --config "$D/gateway.toml" >/dev/null || die "the gateway refuses $D/gateway.toml"
gateway_public=$(sed -n '/^\[Peer\]/,$ s/^PublicKey = //p' "$D/terminal-wg.conf")

# The cloud engine: the gateway refuses raw TCP routes while its cloud is down.
"$peer" engine-sim --config "$D/engine.toml" >"$W/engine.out" 2>"$W/engine.err" &
wait_for "$W/engine.out" '^READY ' $! >/dev/null

start_gateway() {
  # Emptied here, not by the redirection: that runs in the child, maybe after wait_for has read
  # the previous run's READY.
  : >"$W/gateway.out"
  GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$D/gateway.toml" >"$W/gateway.out" 2>>"$W/gateway.err" &
  gateway_pid=$!
  wait_for "$W/gateway.out" '^READY ' "$gateway_pid" >/dev/null
}

echo "WireGuard: $(nproc) cores, $rounds bulk rounds of $size per side, $handshakes handshakes per side, $peers peers" >&2
iperf3 -s --forceflush -B 127.0.0.1 -p "$upstream_port" >"$W/iperf3-upstream.log" 2>&1 &
upstream_pid=$!
start_gateway
sleep 1
declare -A rss
rss[gateway-fresh]=$(rss_kib "$gateway_pid")
[[ $(metric wg_peers) == 1 ]] || die "the demo gateway should have 1 WireGuard peer, has $(metric wg_peers)"

# --- The gateway's terminal: a namespace joined to the root namespace by a veth pair.
veth_ns "$ns_t" - "10.211.$net.1" "10.211.$net.2"
wg_up "$ns_t"
terminal_conf "$D/terminal-wg.conf"

# --- The baseline: namespaces A and B joined by a veth pair, wireguard-go in each, peered.
ip netns add "$ns_a"
ip netns add "$ns_b"
ip link add "${ns_a}v" netns "$ns_a" type veth peer name "${ns_b}v" netns "$ns_b"
ip -n "$ns_a" addr add "10.212.$net.1/24" dev "${ns_a}v"
ip -n "$ns_b" addr add "10.212.$net.2/24" dev "${ns_b}v"
for ns in "$ns_a" "$ns_b"; do
  ip -n "$ns" link set "${ns}v" up
  ip -n "$ns" link set lo up
  wg_up "$ns"
  wg genkey >"$W/$ns.key"
  wg pubkey <"$W/$ns.key" >"$W/$ns.pub"
done
wg genpsk >"$W/psk"
b_port=$(free_port)
nsx "$ns_b" wg set "$ns_b" listen-port "$b_port" private-key "$W/$ns_b.key" \
  peer "$(cat "$W/$ns_a.pub")" preshared-key "$W/psk" allowed-ips "10.78.$net.1/32"
nsx "$ns_a" wg set "$ns_a" private-key "$W/$ns_a.key" \
  peer "$(cat "$W/$ns_b.pub")" preshared-key "$W/psk" allowed-ips "10.78.$net.2/32" endpoint "10.212.$net.2:$b_port"
ip -n "$ns_a" addr add "10.78.$net.1/32" dev "$ns_a"
ip -n "$ns_b" addr add "10.78.$net.2/32" dev "$ns_b"
for ns in "$ns_a" "$ns_b"; do ip -n "$ns" link set "$ns" mtu 1420 up; done
ip -n "$ns_a" route add "10.78.$net.2/32" dev "$ns_a"
ip -n "$ns_b" route add "10.78.$net.1/32" dev "$ns_b"
sleep 1
rss[wg-fresh]=$(rss_kib "${wg_pid[$ns_b]}")
ip netns exec "$ns_b" iperf3 -s --forceflush -B "10.78.$net.2" -p 5201 >"$W/iperf3-baseline.log" 2>&1 &
wait_for "$W/iperf3-baseline.log" listening $! >/dev/null
wait_for "$W/iperf3-upstream.log" listening "$upstream_pid" >/dev/null

# Both tunnels carry a ping (the first one starts the handshake).
nsx "$ns_t" ping -c 1 -W 5 10.77.0.1 >/dev/null || die "no ping through the gateway's tunnel"
nsx "$ns_a" ping -c 1 -W 5 "10.78.$net.2" >/dev/null || die "no ping through the baseline tunnel"

# side SIDE: the namespace the client runs in, the server address, the receiving process.
client_ns() { if [[ $1 == gateway ]]; then echo "$ns_t"; else echo "$ns_a"; fi; }
server_ip() { if [[ $1 == gateway ]]; then echo 10.77.0.1; else echo "10.78.$net.2"; fi; }
receiver_pid() { if [[ $1 == gateway ]]; then echo "$gateway_pid"; else echo "${wg_pid[$ns_b]}"; fi; }
sender_pid() { if [[ $1 == gateway ]]; then echo "${wg_pid[$ns_t]}"; else echo "${wg_pid[$ns_a]}"; fi; }

# threads PID: "TID NAME TICKS" for each thread of PID (utime + stime).
threads() {
  local task name
  for task in /proc/"$1"/task/*; do
    name=$(<"$task/comm")
    # In stat the name is in parentheses and may hold spaces: the fields after the last ')'.
    echo "${task##*/} ${name// /_} $(sed 's/.*) //' "$task/stat" | awk '{print $12 + $13}')"
  done 2>/dev/null
}

# cpu_by_name BEFORE AFTER SECONDS: the CPU a process used between two `threads` snapshots, as a
# share of one core over SECONDS: in all, then per thread name (×N: N threads of that name),
# largest first.
cpu_by_name() {
  awk -v hz="$(getconf CLK_TCK)" -v secs="$3" '
    NR == FNR {before[$1] = $3; next}
    {used[$2] += $3 - before[$1]; count[$2]++; all += $3 - before[$1]}
    END {
      printf "all %d %.0f\n", 0, 100 * all / hz / secs
      for (n in used) printf "%s %d %.0f\n", n, count[n], 100 * used[n] / hz / secs
    }' "$1" "$2" | sort -k3 -nr | awk '
      $1 == "all" {total = $3 "%"; next}
      $3 > 0 {list = list sep $1 ($2 > 1 ? "×" $2 : "") " " $3 "%"; sep = ", "}
      END {print total " (" list ")"}'
}

# cpu_secs BEFORE AFTER: the CPU seconds a process used between two `threads` snapshots.
cpu_secs() {
  awk -v hz="$(getconf CLK_TCK)" 'NR == FNR {before[$1] = $3; next} {all += $3 - before[$1]} END {printf "%.2f", all / hz}' "$1" "$2"
}

# machine BEFORE AFTER: the whole machine's CPU between two copies of /proc/stat's first line, as
# shares of all cores: busy in all, then user, system and softirq (the kernel's network path).
machine() {
  cat "$1" "$2" | awk '
    NR == 1 {for (i = 2; i <= 9; i++) a[i] = $i; next}
    {for (i = 2; i <= 9; i++) {d[i] = $i - a[i]; all += d[i]}}
    END {printf "%.0f%% busy (user %.0f%%, system %.0f%%, softirq %.0f%%)\n",
      100 * (all - d[5] - d[6]) / all, 100 * (d[2] + d[3]) / all, 100 * d[4] / all, 100 * d[8] / all}'
}

# bulk SIDE N: one transfer; appends its Mbit/s to mbits[SIDE] and notes the CPU it cost.
declare -A mbits cpu_note recv_cpu send_cpu
bulk() {
  local side=$1 out=$W/runs/bulk-$1-$2 rpid spid t0 t1 rate
  rpid=$(receiver_pid "$side") spid=$(sender_pid "$side")
  threads "$rpid" >"$out.recv0"
  threads "$spid" >"$out.send0"
  head -1 /proc/stat >"$out.stat0"
  t0=$EPOCHREALTIME
  timeout --foreground 600 ip netns exec "$(client_ns "$side")" iperf3 -c "$(server_ip "$side")" -p 5201 -n "$size" -f m \
    >"$out" 2>&1 || { cat "$out" >&2; die "$side, bulk run $2: iperf3 failed"; }
  t1=$EPOCHREALTIME
  head -1 /proc/stat >"$out.stat1"
  threads "$rpid" >"$out.recv1"
  threads "$spid" >"$out.send1"
  rate=$(awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1)}' "$out")
  [[ -n $rate ]] || { cat "$out" >&2; die "$side, bulk run $2: no receiver line from iperf3"; }
  mbits[$side]+=" $rate"
  recv_cpu[$side]+=" $(cpu_secs "$out.recv0" "$out.recv1")"
  send_cpu[$side]+=" $(cpu_secs "$out.send0" "$out.send1")"
  local secs
  secs=$(calc "$t1 - $t0" 2)
  cpu_note[$side-$2]="receiving side: $(cpu_by_name "$out.recv0" "$out.recv1" "$secs"); terminal's wireguard-go: $(cpu_by_name "$out.send0" "$out.send1" "$secs" | sed 's/ (.*//'); machine: $(machine "$out.stat0" "$out.stat1")"
  printf '  %-9s %-2s %6s Mbit/s in %5s s; %s\n' "$side" "$2" "$rate" "$secs" "${cpu_note[$side-$2]}" >&2
}

echo "0. iperf3's control and data connections through the raw TCP route" >&2
out=$W/runs/check
timeout --foreground 60 ip netns exec "$ns_t" iperf3 -c 10.77.0.1 -p 5201 -n 1M -f m >"$out" 2>&1 ||
  { cat "$out" >&2; die "iperf3 does not get through the gateway's tcp:bulk route"; }
grep -q receiver "$out" || { cat "$out" >&2; die "iperf3 through the gateway: no result"; }

echo "1. bulk transfer, $size per run, alternating" >&2
for ((i = 1; i <= rounds; i++)); do
  bulk baseline "$i"
  bulk gateway "$i"
done
rss[gateway-bulk]=$(rss_kib "$gateway_pid")
rss[wg-bulk]=$(rss_kib "${wg_pid[$ns_b]}")

# pings NS ADDRESS: the median RTT (ms) of 50 pings 10 ms apart.
pings() {
  local out
  out=$W/runs/ping-$1-$2
  nsx "$1" ping -c 50 -i 0.01 -W 1 "$2" >"$out" || { cat "$out" >&2; die "ping $2 from $1 failed"; }
  # shellcheck disable=SC2046 # one number per reply
  median $(sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' "$out")
}
echo "2. ping RTT, 50 pings" >&2
declare -A rtt
rtt[gateway]=$(pings "$ns_t" 10.77.0.1)
rtt[baseline]=$(pings "$ns_a" "10.78.$net.2")
rtt[veth]=$(pings "$ns_t" "10.211.$net.1")
echo "  gateway ${rtt[gateway]} ms, baseline ${rtt[baseline]} ms, bare veth ${rtt[veth]} ms" >&2

# first_ping NS ADDRESS: ping's time for one ping that starts a handshake.
first_ping() {
  local out=$W/runs/first-ping-$1-$RANDOM
  nsx "$1" ping -c 1 -W 10 "$2" >"$out" || { cat "$out" >&2; die "no reply to the first ping to $2"; }
  sed -n 's/.* time=\([0-9.]*\) ms.*/\1/p' "$out"
}

echo "3. handshake latency, a fresh peer each time" >&2
declare -A hs
reloads=
a_peer=$(cat "$W/$ns_a.pub")
for ((i = 1; i <= handshakes; i++)); do
  # Baseline: A gets a new key pair and preshared key; B forgets the old one and knows the new.
  wg genkey >"$W/$ns_a.key"
  wg pubkey <"$W/$ns_a.key" >"$W/$ns_a.pub"
  wg genpsk >"$W/psk"
  nsx "$ns_b" wg set "$ns_b" peer "$a_peer" remove peer "$(cat "$W/$ns_a.pub")" preshared-key "$W/psk" \
    allowed-ips "10.78.$net.1/32"
  nsx "$ns_a" wg set "$ns_a" private-key "$W/$ns_a.key" peer "$(cat "$W/$ns_b.pub")" preshared-key "$W/psk"
  a_peer=$(cat "$W/$ns_a.pub")
  ms=$(first_ping "$ns_a" "10.78.$net.2")
  hs[baseline]+=" $ms"
  # Gateway: a new terminal enrolled, the terminal reconfigured, the gateway reloaded.
  expected=$(($(metric wg_peers) + 1))
  "$bin" terminal add "hs$i" --wireguard --config "$D/gateway.toml" --out "$W/hs$i.conf" >/dev/null 2>&1
  terminal_conf "$W/hs$i.conf"
  t0=$EPOCHREALTIME
  kill -HUP "$gateway_pid"
  for _ in $(seq 1000); do [[ $(metric wg_peers) == "$expected" ]] && break; sleep 0.01; done
  [[ $(metric wg_peers) == "$expected" ]] || die "the gateway did not load terminal hs$i within 10 s"
  reload=$(calc "($EPOCHREALTIME - $t0) * 1000" 0)
  reloads+=" $reload"
  gms=$(first_ping "$ns_t" 10.77.0.1)
  hs[gateway]+=" $gms"
  printf '  %-2s baseline %6s ms; gateway %6s ms (after a reload of %s ms)\n' "$i" "$ms" "$gms" "$reload" >&2
done
[[ $(nsx "$ns_t" wg show "$ns_t" latest-handshakes | awk '{print $2}') != 0 ]] || die "the gateway's terminal has no handshake"

# busy SIDE LABEL COMMAND…: runs COMMAND in the side's client namespace while recording the
# receiving side's CPU per thread; prints the per-thread note.
busy() {
  local side=$1 label=$2 out=$W/runs/$2 rpid t0 t1
  shift 2
  rpid=$(receiver_pid "$side")
  threads "$rpid" >"$out.recv0"
  head -1 /proc/stat >"$out.stat0"
  t0=$EPOCHREALTIME
  timeout --foreground 120 ip netns exec "$(client_ns "$side")" "$@" >"$out" 2>&1 || { cat "$out" >&2; die "$label failed"; }
  t1=$EPOCHREALTIME
  head -1 /proc/stat >"$out.stat1"
  threads "$rpid" >"$out.recv1"
  echo "$(cpu_by_name "$out.recv0" "$out.recv1" "$(calc "$t1 - $t0" 2)"); machine: $(machine "$out.stat0" "$out.stat1")"
}

echo "5. parallel work: $streams streams, $conns HTTP connections" >&2
declare -A par_mbits par_note
for side in baseline gateway; do
  par_note[$side]=$(busy "$side" "parallel-$side" iperf3 -c "$(server_ip "$side")" -p 5201 -P "$streams" -t 8 -f m)
  par_mbits[$side]=$(awk '/SUM.*receiver/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1)}' "$W/runs/parallel-$side")
  [[ -n ${par_mbits[$side]} ]] || { cat "$W/runs/parallel-$side" >&2; die "$side: no [SUM] receiver line from iperf3 -P $streams"; }
  printf '  %-9s %6s Mbit/s over %s streams; receiving side: %s\n' "$side" "${par_mbits[$side]}" "$streams" "${par_note[$side]}" >&2
done
basic=$(tr -d '\n' <"$D/user.txt" | base64 -w0)
http_note=$(busy gateway http wrk -t 2 -c "$conns" -d 8s --latency -H "Authorization: Basic $basic" \
  "http://10.77.0.1:8000/api01rv2/patientgetv2?id=1&format=json")
http_rps=$(awk '/^Requests\/sec:/ {print $2}' "$W/runs/http")
http_p99=$(awk '$1 == "99%" {print $2}' "$W/runs/http")
grep -q "Non-2xx" "$W/runs/http" && { cat "$W/runs/http" >&2; die "wrk got answers other than 2xx through the gateway"; }
[[ -n $http_rps ]] || { cat "$W/runs/http" >&2; die "no Requests/sec from wrk"; }
printf '  gateway   %s requests/s (p99 %s) over %s connections; gateway: %s\n' "$http_rps" "$http_p99" "$conns" "$http_note" >&2

echo "6. $terminals terminals at once, 8 s, alternating" >&2
# The gateway's: enrolled, each in its namespace over its own veth from the root namespace.
expected=$(($(metric wg_peers) + terminals))
for ((k = 1; k <= terminals; k++)); do
  ns=kw${id}g$k
  veth_ns "$ns" - "10.213.$net.$((4 * k + 1))" "10.213.$net.$((4 * k + 2))"
  wg_up "$ns"
  "$bin" terminal add "par$k" --wireguard --config "$D/gateway.toml" --out "$W/par$k.conf" >/dev/null 2>&1 ||
    die "terminal add par$k failed"
  iperf3 -s --forceflush -B 127.0.0.1 -p "${par_upstream[$k]}" >"$W/iperf3-upstream-$k.log" 2>&1 &
  wait_for "$W/iperf3-upstream-$k.log" listening $! >/dev/null
done
kill -HUP "$gateway_pid"
for _ in $(seq 1000); do [[ $(metric wg_peers) == "$expected" ]] && break; sleep 0.01; done
[[ $(metric wg_peers) == "$expected" ]] || die "the gateway did not load terminals par1…par$terminals"
# The baseline's: clients of B's one wireguard-go, each over its own veth into B.
for ((k = 1; k <= terminals; k++)); do
  ns=kw${id}c$k
  veth_ns "$ns" "$ns_b" "10.214.$net.$((4 * k + 1))" "10.214.$net.$((4 * k + 2))"
  wg_up "$ns"
  wg genkey >"$W/$ns.key"
  nsx "$ns_b" wg set "$ns_b" peer "$(wg pubkey <"$W/$ns.key")" allowed-ips "10.78.$net.$((10 + k))/32"
  nsx "$ns" wg set "$ns" private-key "$W/$ns.key" \
    peer "$(cat "$W/$ns_b.pub")" allowed-ips "10.78.$net.2/32" endpoint "10.214.$net.$((4 * k + 1)):$b_port"
  ip -n "$ns" addr add "10.78.$net.$((10 + k))/32" dev "$ns"
  ip -n "$ns" link set "$ns" mtu 1420 up
  ip -n "$ns" route add "10.78.$net.2/32" dev "$ns"
  ip -n "$ns_b" route add "10.78.$net.$((10 + k))/32" dev "$ns_b"
  ip netns exec "$ns_b" iperf3 -s --forceflush -B "10.78.$net.2" -p "$((5201 + k))" >"$W/iperf3-baseline-$k.log" 2>&1 &
  wait_for "$W/iperf3-baseline-$k.log" listening $! >/dev/null
done
for ((k = 1; k <= terminals; k++)); do
  terminal_conf "$W/par$k.conf" "kw${id}g$k" "10.213.$net.$((4 * k + 1))"
  nsx "kw${id}g$k" ping -c 1 -W 5 10.77.0.1 >/dev/null || die "no ping through terminal par$k's tunnel"
  nsx "kw${id}c$k" ping -c 1 -W 5 "10.78.$net.2" >/dev/null || die "no ping through baseline client $k's tunnel"
done

# together SIDE N: every terminal's iperf3 at once; appends the receivers' sum to many[SIDE].
declare -A many many_note
together() {
  local side=$1 out=$W/runs/together-$1-$2 rpid t0 t1 k ns ip pids=() sum
  rpid=$(receiver_pid "$side")
  threads "$rpid" >"$out.recv0"
  head -1 /proc/stat >"$out.stat0"
  t0=$EPOCHREALTIME
  for ((k = 1; k <= terminals; k++)); do
    if [[ $side == gateway ]]; then ns=kw${id}g$k ip=10.77.0.1; else ns=kw${id}c$k ip=10.78.$net.2; fi
    timeout --foreground 60 ip netns exec "$ns" iperf3 -c "$ip" -p "$((5201 + k))" -t 8 -f m >"$out.$k" 2>&1 &
    pids+=($!)
  done
  for k in "${!pids[@]}"; do
    wait "${pids[$k]}" || { cat "$out.$((k + 1))" >&2; die "$side, $terminals terminals, run $2: iperf3 $((k + 1)) failed"; }
  done
  t1=$EPOCHREALTIME
  head -1 /proc/stat >"$out.stat1"
  threads "$rpid" >"$out.recv1"
  sum=$(cat "$out".[0-9]* | awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") s += $(i - 1); n++}
    END {if (n == '"$terminals"') print s}')
  [[ -n $sum ]] || { cat "$out".[0-9]* >&2; die "$side, $terminals terminals, run $2: not every iperf3 has a receiver line"; }
  many[$side]+=" $sum"
  many_note[$side-$2]="receiving side: $(cpu_by_name "$out.recv0" "$out.recv1" "$(calc "$t1 - $t0" 2)"); machine: $(machine "$out.stat0" "$out.stat1")"
  printf '  %-9s %-2s %6s Mbit/s from %s terminals; %s\n' "$side" "$2" "$sum" "$terminals" "${many_note[$side-$2]}" >&2
}
for ((i = 1; i <= rounds; i++)); do
  together baseline "$i"
  together gateway "$i"
done

echo "4. memory with $peers configured peers" >&2
have=$(metric wg_peers)
t0=$EPOCHREALTIME
for ((i = 1; i <= peers - have; i++)); do
  "$bin" terminal add "t$i" --wireguard --config "$D/gateway.toml" --out "$W/runs/t$i.conf" >/dev/null 2>&1 ||
    die "terminal add t$i failed"
done
enrol_secs=$(calc "$EPOCHREALTIME - $t0" 1)
kill -HUP "$gateway_pid"
for _ in $(seq 300); do [[ $(metric wg_peers) == "$peers" ]] && break; sleep 0.1; done
[[ $(metric wg_peers) == "$peers" ]] || die "the gateway has $(metric wg_peers) WireGuard peers after SIGHUP, not $peers"
sleep 1
rss[gateway-reload]=$(rss_kib "$gateway_pid")
kill "$gateway_pid"
wait "$gateway_pid" || die "the gateway did not stop cleanly"
start_gateway
sleep 1
rss[gateway-restart]=$(rss_kib "$gateway_pid")
[[ $(metric wg_peers) == "$peers" ]] || die "the restarted gateway has $(metric wg_peers) WireGuard peers, not $peers"
echo "  enrolled $((peers - have)) terminals in $enrol_secs s; RSS ${rss[gateway-reload]} KiB after SIGHUP, ${rss[gateway-restart]} KiB after a restart" >&2
# shellcheck disable=SC2086 # lists of numbers
{
  g=$(median ${mbits[gateway]}) b=$(median ${mbits[baseline]})
  per_peer=$(calc "(${rss[gateway-restart]} - ${rss[gateway-fresh]}) / ($peers - 1)" 1)
  echo
  echo "WireGuard, $(date -u +%Y-%m-%d), $(nproc) cores, $(wireguard-go --version 2>&1 | head -1 | awk '{print "wireguard-go", $2}'), $(iperf3 --version | head -1 | awk '{print "iperf3", $2}'): $command_line"
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' what gateway wireguard-go gateway/baseline target
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "1. bulk $size, Mbit/s, median of $rounds" "$g" "$b" "$(calc "$g / $b")x" "at least 0.8x"
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   every run" "${mbits[gateway]# }" "${mbits[baseline]# }" - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   receiving side CPU s per run (gateway / B), median" \
    "$(median ${recv_cpu[gateway]})" "$(median ${recv_cpu[baseline]})" "$(calc "$(median ${recv_cpu[gateway]}) / $(median ${recv_cpu[baseline]})")x" -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   terminal's wireguard-go CPU s per run, median" \
    "$(median ${send_cpu[gateway]})" "$(median ${send_cpu[baseline]})" - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "2. ping RTT ms, median of 50 (bare veth ${rtt[veth]})" "${rtt[gateway]}" "${rtt[baseline]}" - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "3. first ping with handshake ms, median of $handshakes" \
    "$(median ${hs[gateway]})" "$(median ${hs[baseline]})" - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   every trial" "${hs[gateway]# }" "${hs[baseline]# }" - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   SIGHUP until the peer is loaded, ms, median" "$(median $reloads)" - - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "4. RSS MiB, 1 peer, 1 s after start" "$(mib "${rss[gateway-fresh]}")" "$(mib "${rss[wg-fresh]}")" - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   after the bulk transfers" "$(mib "${rss[gateway-bulk]}")" "$(mib "${rss[wg-bulk]}")" - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   $peers peers, after SIGHUP" "$(mib "${rss[gateway-reload]}")" - - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   $peers peers, 1 s after a restart" "$(mib "${rss[gateway-restart]}")" - - -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "5. $streams parallel streams, Mbit/s (iperf3 -P, 8 s)" "${par_mbits[gateway]}" "${par_mbits[baseline]}" "$(calc "${par_mbits[gateway]} / ${par_mbits[baseline]}")x" -
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   HTTP keep-alive requests/s, $conns conns (wrk, 8 s)" "$http_rps (p99 $http_p99)" - - -
  g=$(median ${many[gateway]}) b=$(median ${many[baseline]})
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "6. $terminals terminals at once, Mbit/s sum, median of $rounds" "$g" "$b" "$(calc "$g / $b")x" "at least 1x"
  printf '%-52s | %-20s | %-20s | %-16s | %s\n' "   every run" "${many[gateway]# }" "${many[baseline]# }" - -
  echo "   ${per_peer} KiB per configured peer (restart with $peers against start with 1); $((peers - have)) terminals enrolled in $enrol_secs s"
  echo "   CPU during the bulk runs (processes: share of one core over the run; machine: share of all $(nproc) cores):"
  for ((i = 1; i <= rounds; i++)); do
    echo "     baseline $i: ${cpu_note[baseline-$i]}"
    echo "     gateway  $i: ${cpu_note[gateway-$i]}"
  done
  echo "   CPU during the parallel runs (the receiving side, per thread):"
  echo "     baseline, $streams streams: ${par_note[baseline]}"
  echo "     gateway,  $streams streams: ${par_note[gateway]}"
  echo "     gateway,  HTTP: $http_note"
  echo "   CPU during the runs of $terminals terminals at once:"
  for ((i = 1; i <= rounds; i++)); do
    echo "     baseline $i: ${many_note[baseline-$i]}"
    echo "     gateway  $i: ${many_note[gateway-$i]}"
  done
}
