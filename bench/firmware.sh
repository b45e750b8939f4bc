#!/usr/bin/env bash
# Times `kakehashi firmware install` of a 64 MiB payload against the disk's own limit in the same
# run: `dd` of the same bytes with conv=fsync into the same file system. ROUNDS rounds, each a
# fresh appliance (a demo clinic's [firmware] section) and a fresh dd target; the medians and
# their ratio (target: install at least 0.8x dd's throughput). Also the disk used beside the
# slots during install (the partial file is the new binary itself; no second copy of the image).
#
#   bench/firmware.sh [ROUNDS] [MIB]     (default 5 rounds of 64 MiB; needs a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${1:-5}
mib=${2:-64}
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
[[ -x $bin ]] || cargo build --release --bin kakehashi
peer=$(peer_bin)
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/kakehashi-fw.XXXXXX")
trap 'rm -rf "$work"' EXIT
ns() { date +%s%N; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

"$peer" demo --setup-only --dir "$work/clinic" --listen 127.0.0.1:"$(free_port)" \
  --engine-listen 127.0.0.1:"$(free_port)" --admin-listen 127.0.0.1:"$(free_port)" \
  --est-listen 127.0.0.1:"$(free_port)" --wg-listen 127.0.0.1:"$(free_port)" >/dev/null
head -c $((mib << 20)) /dev/urandom >"$work/payload"
"$peer" firmware build --version 9.0.0 --binary "$work/payload" --key "$work/clinic/firmware.key" \
  --out "$work/image" >/dev/null
printf 'small' >"$work/small"
"$peer" firmware build --version 1.0.0 --binary "$work/small" --key "$work/clinic/firmware.key" \
  --out "$work/small.img" >/dev/null
config=$work/clinic/gateway.toml
install_ms=() dd_ms=()
for round in $(seq "$rounds"); do
  rm -rf "$work/clinic/slots" "$work/clinic/data/firmware.floor" "$work/dd.out"
  # The slots set up first, outside the timing: a small version installed and committed.
  "$bin" firmware install "$work/small.img" --config "$config" >/dev/null
  "$bin" firmware commit --config "$config" >/dev/null
  sync
  t0=$(ns)
  dd if="$work/payload" of="$work/dd.out" bs=1M conv=fsync status=none
  t1=$(ns)
  "$bin" firmware install "$work/image" --config "$config" >/dev/null
  t2=$(ns)
  dd_ms+=($(((t1 - t0) / 1000000)))
  install_ms+=($(((t2 - t1) / 1000000)))
  echo "round $round: dd ${dd_ms[-1]} ms, install ${install_ms[-1]} ms"
done
d=$(median "${dd_ms[@]}")
i=$(median "${install_ms[@]}")
echo "payload ${mib} MiB; median dd conv=fsync ${d} ms ($(awk "BEGIN {printf \"%.0f\", $mib * 1000 / $d}") MiB/s)," \
  "install ${i} ms ($(awk "BEGIN {printf \"%.0f\", $mib * 1000 / $i}") MiB/s, verification included)"
echo "install throughput / dd throughput: $(awk "BEGIN {printf \"%.2f\", $d / $i}")x"
