#!/usr/bin/env bash
# Times `kakehashi cert issue` against `openssl req -x509 -newkey ec` signing with the same CA,
# both as whole processes, alternating, in the same run. Both decrypt the same encrypted CA key
# (PBKDF2-SHA256, 600,000 rounds), generate a P-256 key and sign a clientAuth certificate;
# kakehashi also records the certificate in its index with fsync, openssl records nothing.
#
#   bench/cert-issue.sh [ROUNDS]      (default 40; needs a release build and openssl)
#
# Prints the median wall time of each and the ratio openssl/kakehashi (above 1: kakehashi faster).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-40}
bin=${KAKEHASHI_BIN:-target/release/kakehashi}
[[ -x $bin ]] || cargo build --release --bin kakehashi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

printf 'bench passphrase for the CA\n' >"$work/pass"
chmod 600 "$work/pass"
"$bin" cert init-ca --dir "$work/ca" --name "Bench Clinic CA" --passphrase-file "$work/pass" >/dev/null
cat >"$work/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
[dn]
CNF

ns() { date +%s%N; }
k_times=() o_times=()
for ((i = 0; i < rounds; i++)); do
  t0=$(ns)
  "$bin" cert issue --dir "$work/ca" --profile terminal --name "k$i" --out "$work/k" \
    --passphrase-file "$work/pass" >/dev/null
  t1=$(ns)
  openssl req -x509 -config "$work/openssl.cnf" -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$work/o$i.key" -out "$work/o$i.pem" -subj "/CN=o$i" -days 365 \
    -CA "$work/ca/ca.pem" -CAkey "$work/ca/ca.key" -passin "file:$work/pass" \
    -addext "basicConstraints=critical,CA:FALSE" -addext "keyUsage=critical,digitalSignature" \
    -addext "extendedKeyUsage=clientAuth" 2>/dev/null
  t2=$(ns)
  k_times+=($((t1 - t0))) o_times+=($((t2 - t1)))
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
k=$(median "${k_times[@]}") o=$(median "${o_times[@]}")
awk -v k="$k" -v o="$o" -v n="$rounds" 'BEGIN {
  printf "rounds                 %d, alternating\n", n
  printf "kakehashi cert issue   %.1f ms (median)\n", k / 1e6
  printf "openssl req -x509 -CA  %.1f ms (median)\n", o / 1e6
  printf "openssl / kakehashi    %.2fx\n", o / k
}'
