#!/usr/bin/env bash
# Debian packages raylane's local extras and tests use:
#   prometheus   `raylane up --monitoring` (and the monitoring tests)
#   postgresql   the metadata-DB tests against a real PostgreSQL server (the fixture runs its own)
# Needs root and apt-get; elsewhere it says what to do and exits 0 unless --required. The packages'
# own services are kept from starting: raylane and the tests start these servers themselves, on
# 127.0.0.1 and the ports they choose.
set -euo pipefail
required=${1:-}
missing=()
command -v prometheus >/dev/null || missing+=(prometheus)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null || missing+=(postgresql)
[ ${#missing[@]} = 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "not installed: ${missing[*]}: run 'apt-get install ${missing[*]}' (monitoring and DB tests need them)" >&2
    [ "$required" = --required ] && exit 1 || exit 0
fi
policy=/usr/sbin/policy-rc.d
had_policy=0; [ -e "$policy" ] && had_policy=1
[ "$had_policy" = 1 ] || { printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; }
trap '[ "$had_policy" = 1 ] || rm -f "$policy"' EXIT
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "installed: ${missing[*]}"
