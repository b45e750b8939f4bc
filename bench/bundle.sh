#!/usr/bin/env bash
# Times the vendor's bundle build and the appliance's import for a clinic of 500 terminals (200
# with PKCS#12 files, 150 WireGuard, 150 with enrollment tokens) and 200 staff accounts, each a
# whole `kakehashi` process as the vendor and the appliance run it:
#   - `provision bundle build` (collect, fresh CRL, sign, encrypt to the appliance), ROUNDS times;
#   - the first `gateway import-bundle` on a fresh appliance (everything inserted), and then
#     ROUNDS updates, each one version newer (every terminal and user rewritten, the CRLs
#     republished), with a gateway running on the appliance: the clock stops when the import
#     returns; the script then waits for the gateway's reload (`reloads_total`) and reports how
#     long after the import it came.
#
#   bench/bundle.sh [ROUNDS]     (default 5; needs a release build)
#
# Prints the setup time, the bundle's size, and the medians with their range.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${1:-5}
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
[[ -x $bin ]] || cargo build --release --bin kakehashi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ns() { date +%s%N; }
ms() { echo $((($2 - $1) / 1000000)); }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] " ms (" a[1] "–" a[NR] ")"}'; }

# The cloud (for its CA and engine account), the vendor, the appliance.
cloud=$work/cloud
"$bin" demo --setup-only --dir "$cloud" --listen "127.0.0.1:$(free_port)" \
  --engine-listen "127.0.0.1:$(free_port)" --admin-listen "127.0.0.1:$(free_port)" \
  --wg-listen "127.0.0.1:$(free_port)" --est-listen "127.0.0.1:$(free_port)" >/dev/null
echo "a vendor passphrase for the benchmark" >"$work/passphrase"
echo "ormaster" >"$work/engine.password"
echo "a-long-staff-password" >"$work/staff.password"
chmod 600 "$work/passphrase" "$work/engine.password" "$work/staff.password"
vendor() { "$bin" provision --dir "$work/vendor" --passphrase-file "$work/passphrase" "$@"; }
app=$work/appliance
admin=127.0.0.1:$(free_port)
t0=$(ns)
vendor vendor init >/dev/null
"$bin" gateway init --data-dir "$app" >/dev/null
vendor clinic add --clinic bench --name "Bench Clinic" --request "$app/request.json" \
  --engine-host engine.bench.test --engine-url "https://127.0.0.1:$(free_port)" \
  --engine-ca "$cloud/ca.pem" --engine-user ormaster --engine-password-file "$work/engine.password" \
  --listen "127.0.0.1:$(free_port)" --est-listen "127.0.0.1:$(free_port)" --admin-listen "$admin" \
  --wg-endpoint "127.0.0.1:$(free_port)" --wg-listen "127.0.0.1:$(free_port)" --wg-network 10.80.0.1/22 >/dev/null
"$bin" cert sign-csr --dir "$cloud" --csr "$work/vendor/clinics/bench/uplink.csr" --profile uplink \
  --name bench-uplink --out "$work/uplink.pem" >/dev/null
vendor clinic set --clinic bench --uplink-cert "$work/uplink.pem" >/dev/null
for i in $(seq 200); do vendor terminal add --clinic bench --name "pc-$i" --kind tls >/dev/null; done
for i in $(seq 150); do vendor terminal add --clinic bench --name "tablet-$i" --kind wireguard >/dev/null; done
for i in $(seq 150); do vendor terminal add --clinic bench --name "new-$i" --kind tls --enroll >/dev/null; done
for i in $(seq 200); do
  vendor user add --clinic bench --id "staff-$i" --password-file "$work/staff.password" >/dev/null
done
t1=$(ns)
echo "setup: 500 terminals and 200 users in $(ms "$t0" "$t1") ms"

builds=() updates=() reloads=()
a=$(ns)
vendor bundle build --clinic bench --out "$work/b0" >/dev/null
b=$(ns)
builds+=("$(ms "$a" "$b")")
size=$(stat -c %s "$work/b0")
a=$(ns)
"$bin" gateway import-bundle "$work/b0" --data-dir "$app" --trust-vendor "$(cat "$work/vendor/vendor-key.txt")" >/dev/null
b=$(ns)
first=$(ms "$a" "$b")

RUST_LOG=warn GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$app/gateway.toml" >"$work/gateway.out" 2>"$work/gateway.err" &
pids+=($!)
wait_for "$work/gateway.out" '^READY ' "$!" >/dev/null
reloads_total() { curl -s "http://$admin/metrics" | awk '$1 == "kakehashi_reloads_total" {print $2}'; }
for ((r = 1; r <= rounds; r++)); do
  a=$(ns)
  vendor bundle build --clinic bench --out "$work/b$r" >/dev/null
  b=$(ns)
  builds+=("$(ms "$a" "$b")")
  before=$(reloads_total)
  a=$(ns)
  "$bin" gateway import-bundle "$work/b$r" --data-dir "$app" >/dev/null
  b=$(ns)
  updates+=("$(ms "$a" "$b")")
  while [[ $(reloads_total) == "$before" ]]; do sleep 0.02; done
  c=$(ns)
  reloads+=("$(ms "$b" "$c")")
done
terminals=$("$bin" terminal list --json --data-dir "$app" | grep -c '"name"')
users=$("$bin" user list --json --data-dir "$app" | grep -c '"id"')
echo "bundle: $size bytes; the appliance lists $terminals terminals (tokens wait for enrollment) and $users users"
echo "bundle build:          median $(median "${builds[@]}")"
echo "first import:          $first ms"
echo "update import:         median $(median "${updates[@]}")"
echo "running gateway live:  median $(median "${reloads[@]}") after the import returned (1 s polling)"
