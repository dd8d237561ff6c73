#!/usr/bin/env bash
# A test certificate authority and a SuperLink server certificate, for TLS between the
# SuperLink, its SuperNodes and the `flwr` CLI. For trials and closed networks only: use
# certificates from your own CA in production.
#
#   deploy/make_certificates.sh OUT_DIR [HOST ...]
#
# Writes OUT_DIR/ca.crt (give it to every SuperNode and CLI machine), OUT_DIR/ca.key (keep
# private), OUT_DIR/server.crt and OUT_DIR/server.key (for the SuperLink). The server
# certificate is valid for localhost, 127.0.0.1 and every HOST given (names or IP addresses
# the SuperNodes and the CLI use to reach the SuperLink).
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command -v openssl >/dev/null || { echo "make_certificates.sh: openssl is not installed" >&2; exit 1; }

out="$1"
shift
for existing in ca.crt ca.key server.crt server.key; do
  if [[ -e "$out/$existing" ]]; then
    echo "make_certificates.sh: $out/$existing exists; remove it or choose another folder" >&2
    exit 1
  fi
done
mkdir -p "$out"

san="DNS:localhost,IP:127.0.0.1"
for host in "$@"; do
  if [[ ! "$host" =~ ^[A-Za-z0-9.:*-]+$ ]]; then
    echo "make_certificates.sh: host '$host' is not a host name or an IP address" >&2
    exit 1
  elif [[ "$host" == localhost || "$host" == 127.0.0.1 ]]; then
    continue
  elif [[ "$host" =~ ^[0-9.]+$ || "$host" == *:* ]]; then
    san+=",IP:$host"
  else
    san+=",DNS:$host"
  fi
done
days=365

umask 077
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days "$days" \
  -subj "/CN=multifcl test CA" -out "$out/ca.crt" \
  -addext "basicConstraints = critical, CA:TRUE" \
  -addext "keyUsage = critical, keyCertSign, cRLSign" \
  -addext "subjectKeyIdentifier = hash"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$out/server.key"
openssl req -new -key "$out/server.key" -subj "/CN=${1:-localhost}" -out "$out/server.csr"
extensions="$(mktemp)"
trap 'rm -f "$extensions" "$out/server.csr" "$out/ca.srl"' EXIT
printf '%s\n' \
  "basicConstraints = CA:FALSE" \
  "keyUsage = critical, digitalSignature" \
  "extendedKeyUsage = serverAuth" \
  "subjectKeyIdentifier = hash" \
  "authorityKeyIdentifier = keyid, issuer" \
  "subjectAltName = $san" >"$extensions"
if ! signed=$(openssl x509 -req -in "$out/server.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -sha256 -days "$days" -extfile "$extensions" -out "$out/server.crt" 2>&1); then
  echo "make_certificates.sh: signing the server certificate failed: $signed" >&2
  exit 1
fi
chmod 644 "$out/ca.crt" "$out/server.crt"

echo "CA certificate:     $out/ca.crt"
echo "server certificate: $out/server.crt (valid for $san)"
echo "server key:         $out/server.key"
