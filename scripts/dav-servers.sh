# shellcheck shell=bash
# Radicale and Xandikos (the CalDAV/CardDAV servers the crmsync-dav tests start
# on loopback ports), the Python `caldav` library and vdirsyncer (the other
# clients of the interoperability tests), in one venv at pinned versions.
# Sourced by scripts/test, which calls install_dav_servers; usable alone too:
#   . scripts/dav-servers.sh && install_dav_servers
# The tests find the venv through CRMSYNC_DAV_VENV (default: the path below).

CRMSYNC_DAV_PINS=(
    "radicale==3.9.0"
    "xandikos==0.4.10"
    "caldav==3.6.0"
    "vdirsyncer==0.21.0"
)

# shellcheck source=scripts/venv.sh
. "$(dirname "${BASH_SOURCE[0]}")/venv.sh"

install_dav_servers() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/crmsync/dav-venv"
    printf 'dav servers: '
    pinned_venv "$venv" xandikos "${CRMSYNC_DAV_PINS[@]}" || return 1
    "$venv/bin/radicale" --version
    "$venv/bin/python" -c 'import xandikos, caldav; print("xandikos", ".".join(map(str, xandikos.__version__)), "caldav", caldav.__version__)' || true
    export CRMSYNC_DAV_VENV="$venv"
}
