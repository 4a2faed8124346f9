#!/usr/bin/env bash
# Install headless Chromium for tests/test_browser.py (the offline-rendering test). Idempotent:
# does nothing when /usr/bin/chromium (or $BERTOLOGY_CHROMIUM) exists. Needs root and apt-get;
# without them it says so and exits 0, and the browser test skips.
set -euo pipefail
browser="${BERTOLOGY_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$browser" ]; then
  echo "install_browser: $browser already present"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: need root and apt-get to install chromium; tests/test_browser.py will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
echo "install_browser: installed $(command -v chromium)"
