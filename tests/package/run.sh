#!/usr/bin/env bash
# The Debian package, end to end (run by .ci/run, as root, on a Debian machine
# where systemd need not be PID 1): builds it with `cargo deb`, installs it
# with apt, and checks what a user gets:
#   - every file where it belongs (config/crowdsec/ under
#     /usr/share/sniroute/crowdsec/), the binary stripped, the config a conffile;
#   - `logrotate -d` and `promtool check/test rules` on the installed files;
#   - nothing enabled or started by the install;
#   - `sniroute check /etc/sniroute/sniroute.toml` exits 0, loopback ignored;
#   - `systemd-analyze verify` clean, `security --offline=true` <= 2.0;
#   - `man -l` renders sniroute(8) and sniroute.toml(5);
#   - bash completes `sniroute ba<TAB>` to `bans`;
#   - lintian: no error;
#   - the installed binary runs on the shipped config and keeps a ban in
#     /var/lib/sniroute; `apt remove` keeps that, `apt purge` removes it.
# It leaves the machine as it found it (purges the package, stops the daemon
# it started), also when a check fails. Usage: tests/package/run.sh [DEB]
# (without DEB it runs `cargo deb` first).
set -euo pipefail
cd "$(dirname "$0")/../.."

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $*"; }

[ "$(id -u)" = 0 ] || fail "run as root (it installs a package)"
if dpkg-query -W -f='${Status}' sniroute 2>/dev/null | grep -q 'ok installed'; then
    fail "a sniroute package is already installed here; not touching it"
fi
# Loopback only, the shipped config's ports: they must be free for the run.
for port in 8443 8880 9151; do
    if ss -Htln "sport = :$port" | grep -q .; then fail "port $port is taken"; fi
done

deb=${1:-}
if [ -z "$deb" ]; then
    step "cargo deb"
    cargo deb -- --locked
    deb=$(ls -t target/debian/sniroute_*.deb | head -1)
fi
[ -f "$deb" ] || fail "no package at $deb"

work=$(mktemp -d)
daemon=
had_run_dir=$([ -e /run/sniroute ] && echo yes || echo no)
cleanup() {
    if [ -n "$daemon" ] && kill -0 "$daemon" 2>/dev/null; then
        kill -TERM "$daemon" 2>/dev/null || true
        wait "$daemon" 2>/dev/null || true
    fi
    if dpkg-query -W -f='${Status}' sniroute 2>/dev/null | grep -q 'installed\|config-files'; then
        apt-get purge -y -qq sniroute >/dev/null 2>&1 || dpkg --purge sniroute >/dev/null 2>&1 || true
    fi
    [ "$had_run_dir" = yes ] || rm -rf /run/sniroute
    rm -rf "$work"
}
trap cleanup EXIT

step "lintian $deb"
# --fail-on error: warnings and notes are printed, only errors fail.
lintian --fail-on error --tag-display-limit 0 "$deb" | tee "$work/lintian.txt"
! grep -q '^E:' "$work/lintian.txt" || fail "lintian reports errors"

step "apt install $deb"
apt-get install -y -qq "$(realpath "$deb")" >/dev/null

step "files in place"
unitdir=/lib/systemd/system
[ -e $unitdir/sniroute.service ] || unitdir=/usr/lib/systemd/system
for f in /usr/bin/sniroute /etc/sniroute/sniroute.toml \
    $unitdir/sniroute.service $unitdir/sniroute.socket \
    /etc/fail2ban/filter.d/sniroute.conf /etc/logrotate.d/sniroute \
    /usr/share/sniroute/dashboards/sniroute.json \
    /usr/share/sniroute/prometheus/sniroute-alerts.yml \
    /usr/share/sniroute/prometheus/sniroute-alerts.test.yml \
    /usr/share/sniroute/prometheus/sniroute-alerts.week.test.yml \
    /usr/share/sniroute/crowdsec/parsers/s01-parse/sniroute-logs.yaml \
    /usr/share/sniroute/crowdsec/scenarios/sniroute-unknown-sni.yaml \
    /usr/share/sniroute/crowdsec/acquis.d/sniroute.yaml \
    /usr/share/doc/sniroute/examples/sniroute.toml \
    /usr/share/doc/sniroute/copyright \
    /usr/share/man/man8/sniroute.8.gz /usr/share/man/man5/sniroute.toml.5.gz \
    /usr/share/bash-completion/completions/sniroute \
    /usr/share/zsh/vendor-completions/_sniroute \
    /usr/share/fish/vendor_completions.d/sniroute.fish; do
    [ -f "$f" ] || fail "missing $f"
done
# Optional parts: checked when the repository has them.
if [ -d config/sniroute.service.d ]; then
    for f in config/sniroute.service.d/*.conf; do
        [ -f "$unitdir/sniroute.service.d/$(basename "$f")" ] || fail "missing drop-in $(basename "$f")"
    done
fi
# Every CrowdSec file of the repository is shipped, byte for byte.
for f in $(cd config/crowdsec && find . -type f); do
    cmp -s "config/crowdsec/$f" "/usr/share/sniroute/crowdsec/$f" \
        || fail "/usr/share/sniroute/crowdsec/$f missing or not config/crowdsec/$f"
done
dpkg-query --control-show sniroute conffiles | grep -qx /etc/sniroute/sniroute.toml \
    || fail "/etc/sniroute/sniroute.toml is not a conffile"
if readelf -S /usr/bin/sniroute | grep -qE '\.(debug_[a-z]+|symtab)\b'; then
    fail "/usr/bin/sniroute is not stripped"
fi
/usr/bin/sniroute --version

step "logrotate and promtool accept the installed snippet and rules"
logrotate -d -s "$work/logrotate.state" /etc/logrotate.d/sniroute >"$work/logrotate.txt" 2>&1 \
    || fail "logrotate -d /etc/logrotate.d/sniroute: $(cat "$work/logrotate.txt")"
! grep -qi 'error' "$work/logrotate.txt" || fail "logrotate -d: $(cat "$work/logrotate.txt")"
promtool check rules /usr/share/sniroute/prometheus/sniroute-alerts.yml >"$work/promtool.txt" 2>&1 \
    || fail "promtool check rules: $(cat "$work/promtool.txt")"
promtool test rules /usr/share/sniroute/prometheus/*.test.yml >"$work/promtool.txt" 2>&1 \
    || fail "promtool test rules: $(cat "$work/promtool.txt")"

step "installing started and enabled nothing"
if ls /etc/systemd/system/*.wants/sniroute.* >/dev/null 2>&1; then
    fail "the package enabled a unit: $(ls /etc/systemd/system/*.wants/sniroute.*)"
fi
if [ -d /run/systemd/system ] && systemctl is-active --quiet sniroute.service; then
    fail "the package started sniroute.service"
fi

step "sniroute check /etc/sniroute/sniroute.toml"
sniroute check /etc/sniroute/sniroute.toml | tee "$work/check.txt"
grep -q 'listen: 127.0.0.1:8443, \[::1\]:8443' "$work/check.txt" || fail "not loopback only"
grep -q 'ban.ignore: 127.0.0.0/8, ::1/128' "$work/check.txt" || fail "loopback not ignored"

step "systemd-analyze"
said=$(systemd-analyze verify $unitdir/sniroute.service $unitdir/sniroute.socket 2>&1) \
    || fail "systemd-analyze verify: $said"
[ -z "$said" ] || fail "systemd-analyze verify is not clean: $said"
exposure=$(systemd-analyze security --offline=true $unitdir/sniroute.service 2>&1 \
    | sed -n 's/.*Overall exposure level for sniroute.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || fail "no exposure level from systemd-analyze security"
echo "exposure $exposure"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || fail "exposure $exposure > 2.0"

step "man pages"
for page in /usr/share/man/man8/sniroute.8.gz /usr/share/man/man5/sniroute.toml.5.gz; do
    out=$(MANWIDTH=80 man -l "$page" 2>"$work/man.err") || fail "man -l $page"
    [ ! -s "$work/man.err" ] || fail "man -l $page warns: $(cat "$work/man.err")"
    echo "$out" | grep -q 'sniroute' || fail "man -l $page: nothing rendered"
done
MANWIDTH=80 man -l /usr/share/man/man5/sniroute.toml.5.gz | grep -q 'ignore = \["127.0.0.0/8", "::1"\]' \
    || fail "sniroute.toml(5) lacks ban.ignore's default"

step "bash completion"
got=$(bash -c '
    source /usr/share/bash-completion/bash_completion 2>/dev/null || true
    source /usr/share/bash-completion/completions/sniroute
    func=$(complete -p sniroute | sed -n "s/.*-F \([^ ]*\).*/\1/p")
    COMP_WORDS=(sniroute ba); COMP_CWORD=1; COMP_LINE="sniroute ba"; COMP_POINT=${#COMP_LINE}
    "$func" sniroute ba sniroute
    echo "${COMPREPLY[*]}"')
[ "$got" = bans ] || fail "sniroute ba<TAB> completes to '$got', not 'bans'"

step "the installed daemon on the shipped config"
sniroute run >"$work/daemon.log" 2>&1 &
daemon=$!
for _ in $(seq 100); do
    grep -q 'listening on' "$work/daemon.log" && break
    kill -0 "$daemon" 2>/dev/null || fail "sniroute run exited: $(cat "$work/daemon.log")"
    sleep 0.1
done
grep -q 'listening on' "$work/daemon.log" || fail "sniroute run never listened: $(cat "$work/daemon.log")"
sniroute bans add 203.0.113.7 --for 1h
if sniroute bans add 0.0.0.0/0 2>"$work/force.txt"; then fail "0.0.0.0/0 taken without --force"; fi
grep -q -- '--force' "$work/force.txt" || fail "no --force hint: $(cat "$work/force.txt")"
sniroute status >/dev/null
sniroute bans list | tee "$work/list.txt"
grep -q '203.0.113.7/32' "$work/list.txt" || fail "the ban is not listed"
kill -TERM "$daemon"
wait "$daemon" || fail "sniroute run did not stop cleanly: $(cat "$work/daemon.log")"
daemon=
grep -q '203.0.113.7' /var/lib/sniroute/bans.json || fail "no ban in /var/lib/sniroute/bans.json"

step "apt remove keeps the state, apt purge removes it"
apt-get remove -y -qq sniroute >/dev/null
[ ! -e /usr/bin/sniroute ] || fail "remove left the binary"
[ -f /var/lib/sniroute/bans.json ] || fail "remove deleted /var/lib/sniroute"
[ -f /etc/sniroute/sniroute.toml ] || fail "remove deleted the conffile"
apt-get purge -y -qq sniroute >/dev/null
[ ! -e /var/lib/sniroute ] || fail "purge left /var/lib/sniroute"
[ ! -e /etc/sniroute ] || fail "purge left /etc/sniroute"

echo "package checks passed"
