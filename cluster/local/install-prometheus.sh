#!/usr/bin/env bash
# Debian's Prometheus for `raylane up --monitoring` (and its tests). Needs root and apt-get;
# elsewhere it says what to do and exits 0 unless --required. The package's own service is kept
# from starting: raylane starts Prometheus itself, on 127.0.0.1 and the port the config names.
set -euo pipefail
required=${1:-}
if command -v prometheus >/dev/null; then exit 0; fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "prometheus is not installed: run 'apt-get install prometheus' (needed by 'raylane up --monitoring')" >&2
    [ "$required" = --required ] && exit 1 || exit 0
fi
policy=/usr/sbin/policy-rc.d
had_policy=0; [ -e "$policy" ] && had_policy=1
[ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; }
trap '[ "$had_policy" = 1 ] || rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -1
