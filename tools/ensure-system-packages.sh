#!/bin/sh
# Installs the system packages the tests and the demo need, when they are missing.
# Usage: ensure-system-packages.sh [--optional] [postgres] [prometheus] [alertmanager]
# As root, missing packages are installed with apt; otherwise the script says what to install
# and fails, or, with --optional, exits quietly (the caller runs without them and says so).
set -eu

optional=""
if [ "${1:-}" = "--optional" ]; then
  optional=1
  shift
fi
missing=""
for want in "$@"; do
  case "$want" in
    postgres)
      found=""
      for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null) "$(pg_config --bindir 2>/dev/null || true)"; do
        [ -x "$dir/initdb" ] && found=1
      done
      command -v initdb >/dev/null 2>&1 && found=1
      [ -n "$found" ] || missing="$missing postgresql postgresql-contrib"
      ;;
    prometheus)
      command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 \
        || missing="$missing prometheus"
      ;;
    alertmanager)
      command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1 \
        || missing="$missing prometheus-alertmanager"
      command -v amtool >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
      ;;
    *) echo "ensure-system-packages: unknown package group '$want'" >&2; exit 2 ;;
  esac
done

[ -n "$missing" ] || exit 0
missing=$(echo "$missing" | tr ' ' '\n' | sort -u | tr '\n' ' ')
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
elif [ -n "$optional" ]; then
  exit 0
else
  echo "missing system packages:$missing" >&2
  echo "install them (e.g. sudo apt-get install$missing) and run make again" >&2
  exit 1
fi
