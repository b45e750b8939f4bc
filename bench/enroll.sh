#!/usr/bin/env bash
# Times a terminal's enrollment from token to first answer, with clients we did not write:
#   1. `kakehashi terminal add NAME --enroll --json` on the appliance (the token),
#   2. `openssl req` makes the terminal's key and CSR,
#   3. `curl` posts it to EST simpleenroll with the token, `openssl pkcs7 -print_certs` reads the
#      certificate out of the answer,
#   4. `curl` with the new certificate and the staff password fetches a patient through the
#      gateway (HTTP 200 ends the clock).
# Every step is a whole process, as a person or script would run it, against a demo clinic whose
# gateway and cloud engine (engine-sim) run on this machine.
#
#   bench/enroll.sh [ROUNDS]      (default 20; needs a release build, openssl and curl)
#
# Prints the median, the fastest and the slowest round, and the median of each step.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
rounds=${1:-20}
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
peer=$(peer_bin)
[[ -x $bin ]] || cargo build --release --bin kakehashi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

clinic=$work/clinic
"$peer" demo --setup-only --dir "$clinic" --listen "127.0.0.1:$(free_port)" \
  --engine-listen "127.0.0.1:$(free_port)" --admin-listen "127.0.0.1:$(free_port)" \
  --wg-listen "127.0.0.1:$(free_port)" --est-listen "127.0.0.1:$(free_port)" >/dev/null
"$peer" engine-sim --config "$clinic/engine.toml" >"$work/engine.out" 2>"$work/engine.err" &
pids+=($!)
wait_for "$work/engine.out" '^READY ' "$!" >/dev/null
RUST_LOG=warn GLIBC_TUNABLES=$(unit_tunables) "$bin" gateway run --config "$clinic/gateway.toml" >"$work/gateway.out" 2>"$work/gateway.err" &
pids+=($!)
gateway=$(wait_for "$work/gateway.out" '^READY ' "$!" | sed 's/^READY //')
est=$(cat "$clinic/est.url")
user=$(cat "$clinic/user.txt")

ns() { date +%s%N; }
totals=() tokens=() csrs=() enrolls=() firsts=()
for ((i = 0; i < rounds; i++)); do
  name=bench-$i
  t0=$(ns)
  token=$("$bin" terminal add "$name" --enroll --json --data-dir "$clinic/data" |
    sed -n 's/.*"token": "\([0-9a-f]*\)".*/\1/p')
  [[ -n $token ]] || die "no token for $name"
  t1=$(ns)
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/$name.key" \
    -subj "/CN=$name" -outform DER 2>/dev/null | openssl base64 >"$work/$name.csr"
  t2=$(ns)
  curl -sf --cacert "$clinic/ca.pem" -u "$name:$token" -H 'Content-Type: application/pkcs10' \
    --data-binary "@$work/$name.csr" "$est/simpleenroll" | openssl base64 -d |
    openssl pkcs7 -inform DER -print_certs -out "$work/$name.pem"
  t3=$(ns)
  code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$clinic/ca.pem" --cert "$work/$name.pem" \
    --key "$work/$name.key" -u "$user" "$gateway/api01rv2/patientgetv2?id=1&format=json")
  t4=$(ns)
  [[ $code == 200 ]] || die "$name: the gateway answered $code, not 200"
  totals+=($((t4 - t0))) tokens+=($((t1 - t0))) csrs+=($((t2 - t1))) enrolls+=($((t3 - t2))) firsts+=($((t4 - t3)))
done

ms() { calc "$1 / 1000000" 1; }
sorted=$(printf '%s\n' "${totals[@]}" | sort -n)
echo "rounds                          $rounds, each a new terminal"
echo "token to working terminal       $(ms "$(median "${totals[@]}")") ms (median)," \
  "fastest $(ms "$(head -1 <<<"$sorted")") ms, slowest $(ms "$(tail -1 <<<"$sorted")") ms"
echo "  terminal add --enroll         $(ms "$(median "${tokens[@]}")") ms"
echo "  openssl req (key and CSR)     $(ms "$(median "${csrs[@]}")") ms"
echo "  curl simpleenroll + pkcs7     $(ms "$(median "${enrolls[@]}")") ms"
echo "  curl through the gateway      $(ms "$(median "${firsts[@]}")") ms"
