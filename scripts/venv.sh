# shellcheck shell=bash
# pinned_venv VENV EXE PIN...: makes the Python venv VENV hold exactly the
# pinned packages PIN... (recorded in VENV/.crmsync-pins; EXE, a program the
# venv must have, is checked too). Sourced by the install fragments
# (dav-servers.sh, browser.sh).
pinned_venv() {
    local venv="$1" exe="$2"
    shift 2
    local stamp="$venv/.crmsync-pins" want
    want="$(printf '%s\n' "$@")"
    if [[ -x "$venv/bin/$exe" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "up to date in $venv"
        return 0
    fi
    echo "installing $* into $venv"
    mkdir -p -- "$(dirname "$venv")"
    if [[ ! -x "$venv/bin/python" ]]; then
        rm -rf -- "$venv"
        if ! python3 -m venv "$venv" 2>/dev/null; then
            rm -rf -- "$venv"
            if declare -F apt_install >/dev/null; then
                apt_install python3-venv
            fi
            python3 -m venv "$venv" || {
                echo "python3 -m venv $venv failed" >&2
                return 1
            }
        fi
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$@" || {
        if declare -F die >/dev/null; then die "pip could not install $*"; fi
        return 1
    }
    printf '%s\n' "$want" >"$stamp"
}
