#!/usr/bin/env bash
# Two quickstarts at once, from two clones of this repository on one machine: each must
# complete on its own SuperLink and write its results into its own clone's runs/.
#   bash benchmarks/two_quickstarts.sh [EXTRA -c PAIRS]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
extra="${1:-}"
for name in a b; do
  git clone --quiet "$repo" "$work/$name"
done
start=$(date +%s)
for name in a b; do
  (cd "$work/$name" && multifcl run --app . ${extra:+-c "$extra"} >"$work/$name.log" 2>&1; echo $? >"$work/$name.rc") &
done
wait
for name in a b; do
  echo "clone $name: exit $(cat "$work/$name.rc"), $(tail -1 "$work/$name.log")"
  echo "  results: $(ls "$work/$name/runs" 2>/dev/null | tr '\n' ' ')"
done
echo "both in $(( $(date +%s) - start )) s"
[ "$(cat "$work/a.rc")" = 0 ] && [ "$(cat "$work/b.rc")" = 0 ] \
  && [ -n "$(ls "$work/a/runs")" ] && [ -n "$(ls "$work/b/runs")" ]
