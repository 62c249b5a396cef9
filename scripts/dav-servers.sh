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

install_dav_servers() {
    local venv="${XDG_CACHE_HOME:-$HOME/.cache}/crmsync/dav-venv"
    local stamp="$venv/.crmsync-pins"
    local want
    want="$(printf '%s\n' "${CRMSYNC_DAV_PINS[@]}")"
    if [[ -x "$venv/bin/radicale" && -x "$venv/bin/xandikos" && -f "$stamp" \
        && "$(cat "$stamp")" == "$want" ]]; then
        echo "dav servers: up to date in $venv"
    else
        echo "dav servers: installing ${CRMSYNC_DAV_PINS[*]} into $venv"
        mkdir -p -- "$(dirname "$venv")"
        if [[ ! -x "$venv/bin/python" ]]; then
            rm -rf -- "$venv"
            if ! python3 -m venv "$venv" 2>/dev/null; then
                rm -rf -- "$venv"
                if declare -F apt_install >/dev/null; then
                    apt_install python3-venv
                fi
                python3 -m venv "$venv" || {
                    echo "dav servers: python3 -m venv failed" >&2
                    return 1
                }
            fi
        fi
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${CRMSYNC_DAV_PINS[@]}" || {
            if declare -F die >/dev/null; then die "pip could not install ${CRMSYNC_DAV_PINS[*]}"; fi
            return 1
        }
        printf '%s\n' "$want" >"$stamp"
    fi
    "$venv/bin/radicale" --version
    "$venv/bin/python" -c 'import xandikos, caldav; print("xandikos", ".".join(map(str, xandikos.__version__)), "caldav", caldav.__version__)' || true
    export CRMSYNC_DAV_VENV="$venv"
}
