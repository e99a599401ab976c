#!/usr/bin/env bash
# Install the Debian data packages formerlab's real-data tasks read (../shared/data.md):
# Fashion-MNIST and the fortunes collections. Nothing here is required: without them the tasks
# that need the data say how to install it, and their tests skip with that reason.
# Safe to run repeatedly; never fails the build (prints what it could not do instead).
set -u
PACKAGES="dataset-fashion-mnist fortunes fortunes-min fortunes-de fortunes-es fortunes-it fortunes-ru fortunes-pl fortunes-cs fortunes-br"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: apt-get not found; real-data tasks need:$missing (their tests will skip)"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "note: not root; to enable the real-data tasks run: sudo apt-get install -y$missing"
    exit 0
fi
echo "installing Debian data packages:$missing"
if ! { $SUDO apt-get update -qq >/dev/null 2>&1 || true; \
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null 2>&1; }; then
    echo "note: apt-get install failed; real-data tasks need:$missing (their tests will skip)"
fi
exit 0
