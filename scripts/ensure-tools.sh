#!/usr/bin/env bash
# Makes sure redis-server is on PATH: the tests start their own instances on
# free loopback ports. Installs the Debian package when missing and possible;
# otherwise stops with a message naming it. Never lets tests skip silently.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found: installing the Debian package redis-server" >&2
if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
      echo "not root and no sudo: install the Debian package redis-server (apt-get install -y redis-server) and re-run" >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
  # The package starts a system service on 6379; the tests do not use it.
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop redis-server >/dev/null 2>&1 || true; fi
fi
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server is still missing: install the Debian package redis-server (apt-get install -y redis-server)" >&2
  exit 1
fi
redis-server --version
