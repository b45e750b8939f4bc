#!/usr/bin/env bash
# Times `kakehashi firmware install` of a 64 MiB payload against the disk's own limit in the same
# run: `dd` of the same bytes with conv=fsync into the same file system. ROUNDS rounds, each a
# fresh appliance (a demo clinic's [firmware] section) and a fresh dd target; the medians and
# their ratio (target: install at least 0.8x dd's throughput).
#
# RAUC beside it, when it can run here (root; Debian's rauc, squashfs-tools and dbus-daemon):
# the same payload as a raw image in a RAUC bundle signed with an openssl-made P-256
# certificate, installed by `rauc install` into file-backed A/B slots (system.conf with
# bootloader=noop, booted slot A), through a `rauc service` on a private D-Bus system bus. The
# bundle is in the "plain" format: "verity" needs device-mapper, which a container may lack.
#
# The disk an install needs (root: a tmpfs): the same image installed into slots on a file system
# with room for the slots as they are after the install and one chunk (1 MiB) more. An install
# that kept the slot's old binary until the new one was in place would need the old binary's
# size more, and fail there.
#
# The time from a new version's start to its commit (up to 3 rounds): this build's own binary in
# an image (version 9.9.9), installed, then the supervisor started as
# deploy/kakehashi-firmware.service starts it (`firmware boot`), with the demo's engine-sim as the
# cloud: the time until the trial gateway first answers /health, and until `current` points at
# its slot (the commit: every health check passed).
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
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  umount "$work"/rauc/mnt/* "$work/clinic/slots" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ns() { date +%s%N; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

admin=127.0.0.1:$(free_port)
"$peer" demo --setup-only --dir "$work/clinic" --listen 127.0.0.1:"$(free_port)" \
  --engine-listen 127.0.0.1:"$(free_port)" --admin-listen "$admin" \
  --est-listen 127.0.0.1:"$(free_port)" --wg-listen 127.0.0.1:"$(free_port)" >/dev/null
head -c $((mib << 20)) /dev/urandom >"$work/payload"
"$peer" firmware build --version 9.0.0 --binary "$work/payload" --key "$work/clinic/firmware.key" \
  --out "$work/image" >/dev/null
printf 'small' >"$work/small"
"$peer" firmware build --version 1.0.0 --binary "$work/small" --key "$work/clinic/firmware.key" \
  --out "$work/small.img" >/dev/null
config=$work/clinic/gateway.toml

# RAUC: set up once (certificate, bundle, slots, its service); why not, if it cannot be.
rauc_why=
if [[ $EUID -ne 0 ]]; then
  rauc_why="not root (rauc mounts its bundle through a loop device)"
elif ! command -v rauc >/dev/null || ! command -v mksquashfs >/dev/null || ! command -v dbus-daemon >/dev/null; then
  rauc_why="rauc, mksquashfs or dbus-daemon missing (apt-get install rauc squashfs-tools dbus)"
fi
if [[ -z $rauc_why ]]; then
  r=$work/rauc
  mkdir -p "$r/bundle" "$r/data" "$r/mnt"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$r/key.pem" \
    -out "$r/cert.pem" -subj /CN=kakehashi-bench -days 30 2>/dev/null
  cp "$work/payload" "$r/bundle/payload.img"
  printf '[update]\ncompatible=kakehashi-bench\nversion=9.0.0\n[bundle]\nformat=plain\n[image.rootfs]\nfilename=payload.img\n' \
    >"$r/bundle/manifest.raucm"
  rauc bundle --cert="$r/cert.pem" --key="$r/key.pem" "$r/bundle" "$r/update.raucb" >/dev/null 2>&1
  rm "$r/bundle/payload.img"
  cat >"$r/system.conf" <<EOF
[system]
compatible=kakehashi-bench
bootloader=noop
data-directory=$r/data
[keyring]
path=$r/cert.pem
[slot.rootfs.0]
device=$r/slot-a.img
type=raw
bootname=A
[slot.rootfs.1]
device=$r/slot-b.img
type=raw
bootname=B
EOF
  cat >"$r/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$r/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
  export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$r/bus
  pids+=("$(dbus-daemon --config-file="$r/bus.conf" --fork --print-pid)")
  truncate -s $(((mib + 16) << 20)) "$r/slot-a.img" "$r/slot-b.img"
  rauc -c "$r/system.conf" --mount="$r/mnt" service --override-boot-slot=A >"$r/service.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do rauc -c "$r/system.conf" status >/dev/null 2>&1 && break; sleep 0.2; done
  rauc -c "$r/system.conf" status >/dev/null 2>&1 || rauc_why="its service did not start ($r/service.log)"
fi

install_ms=() dd_ms=() rauc_ms=()
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
  line="round $round: dd ${dd_ms[-1]} ms, install ${install_ms[-1]} ms"
  if [[ -z $rauc_why ]]; then
    # A fresh slot B, as Kakehashi's slot is fresh: RAUC writes the slot not booted.
    rm -f "$r/slot-b.img"
    truncate -s $(((mib + 16) << 20)) "$r/slot-b.img"
    sync
    t3=$(ns)
    rauc -c "$r/system.conf" install "$r/update.raucb" >/dev/null 2>&1 || die "rauc install failed ($r/service.log)"
    t4=$(ns)
    cmp -s -n $((mib << 20)) "$r/slot-b.img" "$work/payload" || die "rauc's slot B does not hold the payload"
    rauc_ms+=($(((t4 - t3) / 1000000)))
    line+=", rauc ${rauc_ms[-1]} ms"
  fi
  echo "$line"
done
d=$(median "${dd_ms[@]}")
i=$(median "${install_ms[@]}")
echo "payload ${mib} MiB; median dd conv=fsync ${d} ms ($(awk "BEGIN {printf \"%.0f\", $mib * 1000 / $d}") MiB/s)," \
  "install ${i} ms ($(awk "BEGIN {printf \"%.0f\", $mib * 1000 / $i}") MiB/s, verification included)"
echo "install throughput / dd throughput: $(awk "BEGIN {printf \"%.2f\", $d / $i}")x"
if [[ -z $rauc_why ]]; then
  ra=$(median "${rauc_ms[@]}")
  echo "median rauc install ${ra} ms ($(awk "BEGIN {printf \"%.0f\", $mib * 1000 / $ra}") MiB/s, plain bundle, its signature and the image's hash checked)"
  echo "kakehashi install throughput / rauc install throughput: $(awk "BEGIN {printf \"%.2f\", $ra / $i}")x"
else
  echo "RAUC: skipped: $rauc_why"
fi

# fresh_slots: no slots, no floor; then the small version installed and committed (slot b), the
# running binary adopted into slot a (the old binary the next install replaces).
fresh_slots() {
  rm -rf "$work/clinic/slots"/* "$work/clinic/data/firmware.floor"
  "$bin" firmware install "$work/small.img" --config "$config" >/dev/null
  "$bin" firmware commit --config "$config" >/dev/null
}

if [[ $EUID -ne 0 ]]; then
  echo "disk needed: skipped: not root (it mounts a tmpfs)"
else
  mkdir -p "$work/clinic/slots"
  rm -rf "$work/clinic/slots"/*
  mount -t tmpfs -o size=$(((mib + 64) << 20)) kakehashi-bench "$work/clinic/slots"
  fresh_slots
  used=$(df -B1 --output=used "$work/clinic/slots" | tail -1)
  old=$(($(stat -c %b "$work/clinic/slots/a/kakehashi") * 512))
  room=$((used - old + (mib << 20) + (1 << 20)))
  mount -o remount,size="$room" "$work/clinic/slots"
  "$bin" firmware install "$work/image" --config "$config" >/dev/null ||
    die "the install did not fit in the slots' final size and one chunk ($room bytes)"
  cmp -s "$work/clinic/slots/a/kakehashi" "$work/payload" || die "slot a does not hold the payload"
  echo "disk needed: the install fit in the slots' final size and one chunk ($room bytes; used" \
    "$(df -B1 --output=used "$work/clinic/slots" | tail -1) after); keeping the old binary" \
    "($old bytes) until the new one was in place would not have fit"
  umount "$work/clinic/slots"
fi

# The time from the new version's start to its commit.
"$peer" firmware build --version 9.9.9 --binary "$bin" --key "$work/clinic/firmware.key" \
  --out "$work/real.img" >/dev/null
"$peer" engine-sim --config "$work/clinic/engine.toml" >"$work/engine.out" 2>&1 &
pids+=($!)
wait_for "$work/engine.out" '^READY ' $! >/dev/null
answer_ms=() commit_ms=()
for round in $(seq $((rounds < 3 ? rounds : 3))); do
  fresh_slots
  "$bin" firmware install "$work/real.img" --config "$config" >/dev/null
  trial=$(readlink "$work/clinic/slots/current")
  trial=$([[ $trial == a ]] && echo b || echo a)
  t0=$(ns)
  "$bin" firmware boot --config "$config" >"$work/boot.out" 2>&1 &
  boot=$!
  pids+=("$boot")
  answered=
  while [[ $(readlink "$work/clinic/slots/current") != "$trial" ]]; do
    kill -0 "$boot" 2>/dev/null || { cat "$work/boot.out" >&2; die "the supervisor exited before the commit"; }
    (($(ns) - t0 < 60000000000)) || { cat "$work/boot.out" >&2; die "no commit within 60 s"; }
    if [[ -z $answered ]] && curl -s -o /dev/null --max-time 1 "http://$admin/health"; then
      answered=$(ns)
    fi
    sleep 0.005
  done
  t1=$(ns)
  [[ -n $answered ]] || answered=$t1
  answer_ms+=($(((answered - t0) / 1000000)))
  commit_ms+=($(((t1 - t0) / 1000000)))
  echo "round $round: the trial gateway answered /health after ${answer_ms[-1]} ms, committed after ${commit_ms[-1]} ms"
  kill "$boot"
  wait "$boot" 2>/dev/null || true
done
echo "median: from the new version's start, /health answered after $(median "${answer_ms[@]}") ms," \
  "committed after $(median "${commit_ms[@]}") ms"
