#!/usr/bin/env bash
# IoTSphere developer entry point. Each command installs what it needs first.
#   ./dev.sh demo        set up, then run the demo (cloud + gateway + Mosquitto + simulated sensors)
#   ./dev.sh test        set up, then run lint, type checks and the test suite
#   ./dev.sh test-soak   the long fault/soak tests (opt-in)
#   ./dev.sh bench       set up, then run the benchmarks in bench/ (--smoke: seconds each)
#   ./dev.sh setup       only set up (Debian packages + .venv)
set -euo pipefail
cd "$(dirname "$0")"
# 32-bit ARM (Raspberry Pi OS armhf) has no wheels for duckdb, pyarrow, cffi and others on PyPI,
# and building DuckDB there takes hours and more than 1 GB of RAM: say so before trying.
case "$(uname -m)" in
    armv6l|armv7l|armv8l|armhf)
        echo "dev.sh: 32-bit ARM ($(uname -m)) is not supported: duckdb, pyarrow and other" \
            "dependencies have no wheels for it; install 64-bit Raspberry Pi OS (aarch64)" >&2
        exit 1 ;;
esac
VENV=.venv
PY=$VENV/bin/python

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_setup() {
    local missing=()
    [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    command -v coap-client-notls >/dev/null || command -v coap-client >/dev/null || missing+=(libcoap3-bin)
    command -v npm >/dev/null || missing+=(nodejs npm)
    # the server binaries for the tests' private clusters (tests/support/postgres.py); they do
    # not use the 'main' cluster that Debian's package may create
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
        # Debian enables a system-wide broker on 1883; IoTSphere runs its own private one.
        if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
            as_root systemctl disable --now mosquitto >/dev/null 2>&1 || true
        fi
    fi
}

venv_setup() {
    [ -x $PY ] || python3 -m venv $VENV
    local stamp=$VENV/.installed
    if [ ! -f $stamp ] || [ pyproject.toml -nt $stamp ]; then
        $PY -m pip install -q --upgrade pip >&2
        $PY -m pip install -q -e '.[dev]' >&2
        touch $stamp
    fi
}

# The browser tests drive Debian's Chromium (never a downloaded browser).
browser_setup() {
    local missing=()
    [ -x /usr/bin/chromium ] || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

# The dashboard's one npm dependency (uPlot, pinned in cloud/web/package-lock.json), served
# from cloud/web/node_modules: installed when missing or when the lock file changed.
web_setup() {
    local web=cloud/web
    if [ ! -d $web/node_modules ] || [ $web/package-lock.json -nt $web/node_modules/.package-lock.json ]; then
        echo "installing the dashboard's npm packages (npm ci in $web)" >&2
        (cd $web && npm ci --no-audit --no-fund --ignore-scripts >&2)
    fi
}

setup() { apt_setup; venv_setup; web_setup; }

cmd=${1:-help}; shift || true
case "$cmd" in
    setup) setup ;;
    demo) setup; exec $VENV/bin/iotsphere demo "$@" ;;
    test)
        setup; browser_setup
        $VENV/bin/ruff check .
        $VENV/bin/ruff format --check .
        $VENV/bin/mypy edge cloud common firmware_stubs
        exec $PY -m pytest "$@" ;;
    test-soak) setup; exec $PY -m pytest -m soak "$@" ;;
    bench)  # every benchmark (a script with a --smoke mode; helper modules are skipped)
        setup
        for b in bench/*.py; do
            grep -q -- "--smoke" "$b" || continue
            echo "== $b"; $PY "$b" "$@"
        done ;;
    *) sed -n '2,8p' "$0"; [ "$cmd" = help ] || exit 2 ;;
esac
