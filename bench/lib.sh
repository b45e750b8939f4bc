# Helpers shared by the benchmark scripts (sourced, not run).

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

# peer_bin: the kakehashi that plays the peers and sets up the clinic (`engine-sim`, `demo`):
# PEER_BIN, or the release build. The gateway under test is KAKEHASHI_BIN, which may be the
# appliance build, and that leaves both commands out (docs/development.md).
peer_bin() {
  local peer=${PEER_BIN:-target/release/kakehashi}
  [[ -x $peer ]] || die "no $peer to run engine-sim and demo: cargo build --release --bin kakehashi, or set PEER_BIN"
  echo "$peer"
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now, below the kernel's ephemeral
# range, so that no client connection of an earlier run (thousands, in the benchmarks) holds it.
free_port() {
  local port low
  read -r low _ </proc/sys/net/ipv4/ip_local_port_range
  ((low > 11000)) || low=32768
  for _ in $(seq 100); do
    port=$((10000 + RANDOM % (low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  die "no free port found"
}

# demo_clinic PEER DIR LISTEN: `PEER demo --setup-only` into DIR, its api listener on LISTEN and
# every other listener (engine-sim, admin, EST, WireGuard) on a free port of its own.
demo_clinic() {
  "$1" demo --setup-only --dir "$2" --listen "$3" --engine-listen "127.0.0.1:$(free_port)" \
    --admin-listen "127.0.0.1:$(free_port)" --est-listen "127.0.0.1:$(free_port)" \
    --wg-listen "127.0.0.1:$(free_port)" >/dev/null
}

# unit_tunables: the allocator's settings (GLIBC_TUNABLES) the systemd unit in deploy/ gives the
# gateway, read from the unit so that the benchmarks measure what ships.
unit_tunables() {
  local t
  t=$(sed -n 's/^Environment=GLIBC_TUNABLES=//p' deploy/kakehashi.service)
  [[ -n $t ]] || die "deploy/kakehashi.service sets no GLIBC_TUNABLES"
  echo "$t"
}

# demo_workdir PEER: the work directory W (removed on exit unless keep=true), the demo clinic in
# d=$W/demo with its api listener on $listen, and an exit trap that stops every PID in pids.
demo_workdir() {
  W=$(mktemp -d) pids=()
  trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; ${keep:-false} || rm -rf "$W"' EXIT
  listen=127.0.0.1:$(free_port)
  demo_clinic "$1" "$W/demo" "$listen"
  d=$W/demo
}

# wait_for FILE PATTERN PID [SECONDS]: waits until FILE has a line matching PATTERN (grep -E) and
# prints it; fails if PID exits first or SECONDS (default 30) pass.
wait_for() {
  local file=$1 pattern=$2 pid=$3 seconds=${4:-30}
  for _ in $(seq $((seconds * 10))); do
    if grep -Eq "$pattern" "$file" 2>/dev/null; then
      grep -E -m1 "$pattern" "$file"
      return
    fi
    kill -0 "$pid" 2>/dev/null || { cat "$file" >&2; die "process $pid exited before printing /$pattern/"; }
    sleep 0.1
  done
  cat "$file" >&2
  die "no /$pattern/ from process $pid within $seconds s"
}

# children PID: the direct children of PID (nginx's workers under its master).
children() {
  cat "/proc/$1/task/$1/children" 2>/dev/null || true
}

# pss_kib PID…: the proportional set size of the processes together, in KiB: each process's own
# pages plus its share of the pages it shares (so nginx's workers are not counted twice for the
# memory they share with the master).
pss_kib() {
  local total=0 pid kib
  for pid in "$@"; do
    kib=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup") || die "cannot read /proc/$pid/smaps_rollup"
    total=$((total + kib))
  done
  echo "$total"
}

# cpu_ticks PID…: "USER SYSTEM", the CPU time the processes have used so far in user space and in
# the kernel, in clock ticks (all their threads; see proc(5), fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
  local user=0 system=0 pid u s
  for pid in "$@"; do
    read -r u s < <(awk '{sub(/^.*\) /, ""); print $12, $13}' "/proc/$pid/stat") || die "cannot read /proc/$pid/stat"
    user=$((user + u)) system=$((system + s))
  done
  echo "$user $system"
}

# machine_ticks: the CPU time every core has spent busy so far (user, nice, system, irq, softirq),
# in clock ticks.
machine_ticks() {
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat
}

# field FILE KEY: the value of KEY=… on FILE's RESULT line.
field() {
  grep '^RESULT ' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -1
}

# median NUMBER…
median() {
  printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

# worst NUMBER…: the largest.
worst() {
  printf '%s\n' "$@" | sort -g | tail -1
}

# calc EXPRESSION [DIGITS]: floating-point arithmetic through awk, e.g. calc "3 / 2" -> 1.50
calc() {
  awk "BEGIN {printf \"%.${2:-2}f\", $1}"
}
