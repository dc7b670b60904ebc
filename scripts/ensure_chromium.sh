#!/usr/bin/env bash
# Make sure Debian's headless-capable `chromium` is on PATH (the HTML Pareto plot is checked by rendering it).
# Installs it with apt-get when missing; non-interactive, needs root (or passwordless sudo) on Debian/Ubuntu.
# Prints one line saying what it did; exits non-zero with a clear message when it cannot.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
  echo "ensure_chromium: chromium already present at $(command -v chromium)"
  exit 0
fi

fail() {
  echo "ensure_chromium: $*" >&2
  exit 1
}

command -v apt-get >/dev/null 2>&1 || fail "chromium is missing and apt-get is not available; install chromium by hand"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    fail "chromium is missing and installing it needs root (run: apt-get install -y chromium)"
  fi
fi

export DEBIAN_FRONTEND=noninteractive
LOG=$(mktemp -t ensure_chromium.XXXXXX.log)
apt_install() {
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
    >>"$LOG" 2>&1
}

start=$(date +%s)
updated=""
# try with the existing package lists first; on a fresh machine they are empty, so update and retry
if ! apt_install; then
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$LOG" 2>&1 \
    || { tail -n 20 "$LOG" >&2; fail "apt-get update failed (full log: $LOG)"; }
  updated=" (after apt-get update)"
  apt_install || { tail -n 20 "$LOG" >&2; fail "apt-get install chromium failed (full log: $LOG)"; }
fi
command -v chromium >/dev/null 2>&1 || fail "apt-get reported success but chromium is still not on PATH"
rm -f "$LOG"
echo "ensure_chromium: installed $(chromium --version 2>/dev/null || echo chromium)$updated in $(( $(date +%s) - start ))s"
