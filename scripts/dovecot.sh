# shellcheck shell=bash
# Dovecot, the IMAP server the crmsync-imap tests start on loopback ports
# (one instance per test, own config in a temp dir; see
# crates/imap/tests/support/mod.rs). Sourced by scripts/test, which calls
# install_dovecot; usable alone too:
#   . scripts/dovecot.sh && install_dovecot
# The tests find the binary at /usr/sbin/dovecot (or CRMSYNC_DOVECOT).

install_dovecot() {
    local bin="${CRMSYNC_DOVECOT:-/usr/sbin/dovecot}"
    if [[ ! -x "$bin" ]]; then
        if declare -F apt_install >/dev/null; then
            # Debian's package starts a system Dovecot where an init system
            # runs; the tests never use it (they start their own).
            apt_install dovecot-imapd
        else
            echo "dovecot: $bin not found and apt_install is not defined; install dovecot-imapd" >&2
            return 1
        fi
    fi
    [[ -x "$bin" ]] || {
        if declare -F die >/dev/null; then die "dovecot still not found at $bin after installing dovecot-imapd"; fi
        return 1
    }
    # A system instance is not needed; stop it if the package started one,
    # so it does not hold ports 143/993 or run needlessly.
    if command -v doveadm >/dev/null 2>&1 && [[ -S /run/dovecot/master ]]; then
        if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet dovecot 2>/dev/null; then
            systemctl stop dovecot >/dev/null 2>&1 || true
            systemctl disable dovecot >/dev/null 2>&1 || true
        fi
    fi
    echo "dovecot: $("$bin" --version)"
}
