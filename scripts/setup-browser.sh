#!/usr/bin/env bash
# The UI tests drive Debian's Chromium through chromedriver. Install both where
# we may (root with apt-get, as in CI); elsewhere the UI tests fail saying how
# to get them.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
  echo "Installing Debian's chromium and chromium-driver for the UI tests…"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
else
  echo "Note: the UI tests need chromium and chromedriver (Debian: apt-get install chromium chromium-driver)." >&2
fi
