# shellcheck shell=bash
# Cyrus IMAP, the third mail server the tests start on loopback ports (IMAP
# and CalDAV/CardDAV in one server; one instance per test, own config in a
# temp dir; see crates/mailbox/tests/servers/cyrus.rs). Sourced by
# scripts/test, which calls install_cyrus; usable alone too:
#   . scripts/cyrus.sh && install_cyrus
#
# Debian's cyrus-imapd (imapd, idled) conflicts with dovecot-imapd (both
# provide imap-server), so it is not installed: its package is unpacked to
# CRMSYNC_CYRUS_DIR. The rest comes from packages that coexist with Dovecot:
# cyrus-common (master), cyrus-caldav (httpd), sasl2-bin (saslpasswd2).

CRMSYNC_CYRUS_DIR="/usr/local/lib/crmsync/cyrus"

install_cyrus() {
    local need=()
    [[ -x /usr/lib/cyrus/bin/master ]] || need+=(cyrus-common)
    [[ -x /usr/lib/cyrus/bin/httpd ]] || need+=(cyrus-caldav)
    command -v saslpasswd2 >/dev/null 2>&1 || need+=(sasl2-bin)
    if ((${#need[@]})); then
        if declare -F apt_install >/dev/null; then
            apt_install "${need[@]}"
        else
            echo "cyrus: missing ${need[*]} and apt_install is not defined; install them" >&2
            return 1
        fi
    fi
    # The package may start a system Cyrus where an init system runs; the
    # tests never use it (they start their own).
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet cyrus-imapd 2>/dev/null; then
        systemctl stop cyrus-imapd >/dev/null 2>&1 || true
        systemctl disable cyrus-imapd >/dev/null 2>&1 || true
    fi
    if [[ -x /usr/lib/cyrus/bin/imapd ]]; then
        echo "cyrus: imapd installed by its package"
    elif [[ ! -x "$CRMSYNC_CYRUS_DIR/imapd" || ! -x "$CRMSYNC_CYRUS_DIR/idled" ]]; then
        unpack_cyrus_imapd || return 1
    fi
    echo "cyrus: $(dpkg-query -W -f '${Version}' cyrus-common 2>/dev/null || echo '?') ($CRMSYNC_CYRUS_DIR)"
}

# Downloads Debian's cyrus-imapd of the installed cyrus-common's version and
# copies its imapd and idled to CRMSYNC_CYRUS_DIR.
unpack_cyrus_imapd() {
    local sudo=()
    [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
    local version tmp
    version="$(dpkg-query -W -f '${Version}' cyrus-common)" || return 1
    tmp="$(mktemp -d)"
    chmod 755 "$tmp" # apt's download user writes here
    echo "cyrus: unpacking cyrus-imapd $version into $CRMSYNC_CYRUS_DIR"
    # The package lists may predate the installed version: update once.
    if ! (cd "$tmp" && apt-get download -qq "cyrus-imapd=$version" 2>/dev/null) \
        && ! { ${sudo[@]+"${sudo[@]}"} apt-get update -qq \
            && (cd "$tmp" && apt-get download -qq "cyrus-imapd=$version"); }; then
        rm -rf -- "$tmp"
        echo "cyrus: cannot download cyrus-imapd $version (the version of cyrus-common); upgrade cyrus-common and cyrus-caldav, then run again" >&2
        return 1
    fi
    dpkg-deb -x "$tmp"/cyrus-imapd_*.deb "$tmp/root"
    ${sudo[@]+"${sudo[@]}"} install -d -m 755 "$CRMSYNC_CYRUS_DIR"
    ${sudo[@]+"${sudo[@]}"} install -m 755 "$tmp/root/usr/lib/cyrus/bin/imapd" "$tmp/root/usr/lib/cyrus/bin/idled" "$CRMSYNC_CYRUS_DIR/"
    rm -rf -- "$tmp"
}
