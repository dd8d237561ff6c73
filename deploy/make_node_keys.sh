#!/usr/bin/env bash
# SuperNode authentication keys: one ECDSA P-384 key pair per SuperNode (ssh-keygen format,
# the format Flower's SuperLink registers).
#
#   deploy/make_node_keys.sh OUT_DIR NAME [NAME ...]
#
# Writes OUT_DIR/NAME (the private key: copy it to that SuperNode's machine only, and start
# the SuperNode with --auth-supernode-private-key) and OUT_DIR/NAME.pub (the public key:
# register it with `flwr supernode register OUT_DIR/NAME.pub <connection>`).
set -euo pipefail

if [[ $# -lt 2 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
command -v ssh-keygen >/dev/null || { echo "make_node_keys.sh: ssh-keygen is not installed" >&2; exit 1; }

out="$1"
shift
mkdir -p "$out"
for name in "$@"; do
  if [[ ! "$name" =~ ^[A-Za-z0-9._-]+$ ]]; then
    echo "make_node_keys.sh: node name '$name' may only use letters, digits, '.', '_' and '-'" >&2
    exit 1
  fi
  if [[ -e "$out/$name" || -e "$out/$name.pub" ]]; then
    echo "make_node_keys.sh: $out/$name exists; remove it or choose another name" >&2
    exit 1
  fi
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "$name" -f "$out/$name"
  echo "SuperNode key: $out/$name (private), $out/$name.pub (register this one)"
done
