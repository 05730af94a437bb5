#!/usr/bin/env bash
# Makes sure the programs the tests run are on PATH: redis-server and
# redis-cli (the tests start their own instances on free loopback ports),
# promtool (the tests check deploy/prometheus/alerts.yml with it), curl
# (the README's HTTP examples), chromium and chromedriver (the web
# console's browser tests) and buf (scripts/ensure-buf.sh). Installs
# the Debian packages when missing and possible; otherwise stops with a
# message naming them. Never lets tests skip silently.
set -euo pipefail

# need <command> <package> [apt options...]
need() {
  local cmd=$1 pkg=$2
  shift 2
  if command -v "$cmd" >/dev/null 2>&1; then
    return 0
  fi
  echo "$cmd not found: installing the Debian package $pkg" >&2
  if command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
        echo "not root and no sudo: install the Debian package $pkg (apt-get install -y $pkg) and re-run" >&2
        exit 1
      fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${APT_UPDATED:-}" ]; then $sudo apt-get update -qq; APT_UPDATED=1; fi
    $sudo apt-get install -y -qq "$@" "$pkg" >/dev/null
    # The packages start system services; the tests do not use them.
    if command -v systemctl >/dev/null 2>&1; then $sudo systemctl stop "$pkg" >/dev/null 2>&1 || true; fi
  fi
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "$cmd is still missing: install the Debian package $pkg (apt-get install -y $pkg)" >&2
    exit 1
  fi
}

need redis-server redis-server
need redis-cli redis-tools
need promtool prometheus --no-install-recommends
# The HTTP/JSON tests run the README's curl commands.
need curl curl
# The web console's browser tests drive a headless chromium through
# chromedriver (internal/webdriver). chromium-driver depends on the exact
# chromium version, so apt installs and upgrades the two together.
need chromium chromium --no-install-recommends
need chromedriver chromium-driver --no-install-recommends
# A font, for readable screenshots (the tests read the page, not pixels).
if command -v dpkg >/dev/null 2>&1 && ! dpkg -s fonts-dejavu-core >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
  $sudo apt-get install -y -qq --no-install-recommends fonts-dejavu-core >/dev/null || echo "fonts-dejavu-core not installed: the console's screenshots may lack text" >&2
fi
chromium_version=$(chromium --version 2>/dev/null | awk '{print $2}')
chromedriver_version=$(chromedriver --version | awk '{print $2}')
if [ "$chromium_version" != "$chromedriver_version" ]; then
  echo "chromium $chromium_version and chromedriver $chromedriver_version differ: install both from Debian (apt-get install -y chromium chromium-driver)" >&2
  exit 1
fi
redis-server --version
promtool --version 2>&1 | head -1
chromedriver --version
# buf: the descriptor-set test and make breaking (scripts/ensure-buf.sh).
bash "$(dirname "$0")/ensure-buf.sh"
