#!/bin/sh
# Install the system packages the Python dependencies need to build, when missing:
# gcc and libgmp-dev (py-libp2p depends on fastecdsa, which compiles against GMP),
# the Python headers (fastecdsa and ecac's own C module, ecac._opscan) and the venv module,
# and Chromium with its driver (the dashboard's browser test runs Debian's chromium headless
# through selenium; nothing downloads a browser). Uses apt-get as root, or sudo when available.
set -eu
need=""
command -v gcc >/dev/null 2>&1 || need="$need gcc"
if command -v dpkg >/dev/null 2>&1; then
    dpkg -s libgmp-dev >/dev/null 2>&1 || need="$need libgmp-dev"
elif [ ! -e /usr/include/gmp.h ] && [ ! -e /usr/include/x86_64-linux-gnu/gmp.h ]; then
    need="$need libgmp-dev"
fi
python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need="$need python3-venv"
inc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
[ -e "$inc/Python.h" ] || need="$need python3-dev"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
[ -x /usr/bin/chromedriver ] || command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
[ -z "$need" ] && exit 0
echo "ensure-sysdeps: installing:$need" >&2
if [ "$(id -u)" = "0" ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "ensure-sysdeps: need root (or sudo) to install:$need" >&2; exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-sysdeps: no apt-get; install$need with your package manager" >&2; exit 1
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need
