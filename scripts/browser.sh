# shellcheck shell=bash
# The real browser of the web interface tests (tests/browser): Debian's
# Chromium, driven by Playwright for Python, with axe-core (bundled by
# axe-playwright-python) checking each page's accessibility; pytest runs
# them. No browser is downloaded: Playwright drives /usr/bin/chromium.
# Sourced by scripts/test, which calls install_browser; usable alone too:
#   . scripts/browser.sh && install_browser
# The tests find the venv through CRMSYNC_BROWSER_VENV.

CRMSYNC_BROWSER_PINS=(
    "playwright==1.65.2"
    "axe-playwright-python==0.1.8"
    "pytest==9.2.0"
)

# shellcheck source=scripts/venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

install_browser() {
    if [[ ! -x /usr/bin/chromium ]]; then
        if declare -F apt_install >/dev/null; then
            apt_install chromium fonts-dejavu-core
        else
            echo "browser: /usr/bin/chromium not found; install Debian's chromium" >&2
            return 1
        fi
    fi
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/crmsync/browser-venv"
    printf 'browser: '
    pinned_venv "$venv" pytest "${CRMSYNC_BROWSER_PINS[@]}" || return 1
    /usr/bin/chromium --version
    export CRMSYNC_BROWSER_VENV="$venv"
}
