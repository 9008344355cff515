#!/usr/bin/env bash
# `make test-package`: installs .build-deb/tollgate_*.deb in a Debian 12 root
# booted with real systemd (systemd-nspawn), runs a node for every role as
# tollgate@<role>.service, and checks what an operator would: units active
# with their status text, `tollctl cluster status` all ready, reload,
# watchdog restart of a frozen node, structured journal fields, metrics
# accepted by promtool, `systemd-analyze verify`, and a purge leaving nothing.
#
# The debootstrapped root is cached in $TOLLGATE_ROOTFS_CACHE (default
# /var/cache/tollgate-test/bookworm); each run works on a fresh copy.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
tools/install-deps.sh package
[ "$(id -u)" -eq 0 ] || { echo "test-package needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

deb=$(ls .build-deb/tollgate_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "no package: run make deb first" >&2; exit 1; }
cache=${TOLLGATE_ROOTFS_CACHE:-/var/cache/tollgate-test/bookworm}
work="$top/.build-deb/container"

# The mirror comes from this machine's own apt sources.
mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
    echo "$uri"
}

if [ ! -e "$cache/.complete" ]; then
    echo "== debootstrap bookworm into $cache (cached for later runs)"
    rm -rf "$cache.partial"
    mkdir -p "$(dirname "$cache")"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,adduser,libssl3,liblmdb0,libprotobuf-c1,libsystemd0,libyaml-0-2,curl,procps \
        bookworm "$cache.partial" "$(mirror)" >/dev/null
    touch "$cache.partial/.complete"
    rm -rf "$cache"
    mv "$cache.partial" "$cache"
fi

echo "== fresh root in $work"
rm -rf "$work"
cp -a "$cache" "$work"
mkdir -p "$work/mnt/deb"
cp "$deb" "$work/mnt/deb/"
debname=$(basename "$deb")

nspawn_pid=
cleanup() {
    if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
        [ -n "${pid1:-}" ] && nsenter -t "$pid1" -a systemctl poweroff >/dev/null 2>&1 || true
        for _ in $(seq 50); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
        kill "$nspawn_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT

echo "== boot"
systemd-nspawn -q --register=no --keep-unit -D "$work" -b >"$top/.build-deb/container.log" 2>&1 &
nspawn_pid=$!
pid1=
for _ in $(seq 100); do
    pid1=$(pgrep -P "$nspawn_pid" -x systemd || true)
    [ -n "$pid1" ] && nsenter -t "$pid1" -a test -e /run/systemd/private 2>/dev/null && break
    sleep 0.2
done
[ -n "$pid1" ] || { echo "the container did not boot" >&2; cat "$top/.build-deb/container.log" >&2; exit 1; }
inside() { nsenter -t "$pid1" -a -- env LANG=C.UTF-8 HOME=/root "$@"; }
state=$(inside systemctl is-system-running --wait || true)
echo "system: $state"

fail() { echo "FAIL: $*" >&2; inside journalctl --no-pager -n 60 -u 'tollgate@*' >&2 || true; exit 1; }
check() { local what=$1; shift; if "$@"; then echo "ok: $what"; else fail "$what"; fi; }

echo "== install"
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "/mnt/deb/$debname" >"$top/.build-deb/install.log" 2>&1 \
    || { cat "$top/.build-deb/install.log" >&2; fail "apt install"; }
check "user tollgate exists" inside getent passwd tollgate
check "cluster CA created" inside test -s /etc/tollgate/certs/ca.pem
check "admin password created, not world-readable" inside sh -c '[ "$(stat -c %a /etc/tollgate/admin.password)" = 640 ]'
check "CA key private to root" inside sh -c '[ "$(stat -c %U:%a /etc/tollgate/certs/ca.key)" = root:600 ]'

roles="publisher store keymanager gateway trafficmanager analytics"
echo "== start a node for every role"
for role in $roles; do inside systemctl start "tollgate@$role.service" || fail "start tollgate@$role"; done
for role in $roles; do
    check "tollgate@$role active" sh -c "[ \"\$(nsenter -t $pid1 -a systemctl is-active tollgate@$role)\" = active ]"
    status=$(inside systemctl show -p StatusText --value "tollgate@$role")
    check "tollgate@$role status: $status" sh -c "case \"$status\" in 'ready: node $role'*) true;; *) false;; esac"
done

echo "== tollctl"
inside sh -c 'tollctl login --node 127.0.0.1:7444 --ca /etc/tollgate/certs/ca.pem --user admin --password-stdin < /etc/tollgate/admin.password' \
    || fail "tollctl login"
all_ready() {
    local view
    # Every node as one of these three sees it (each lists its configured peers).
    view=$(inside tollctl cluster status --node 127.0.0.1:7444 --ca /etc/tollgate/certs/ca.pem; \
           inside tollctl cluster status --node 127.0.0.1:7454 --ca /etc/tollgate/certs/ca.pem \
              --cert /etc/tollgate/certs/admin.pem --key /etc/tollgate/certs/admin.key; \
           inside tollctl cluster status --node 127.0.0.1:7473 --ca /etc/tollgate/certs/ca.pem \
              --cert /etc/tollgate/certs/admin.pem --key /etc/tollgate/certs/admin.key)
    for role in $roles; do
        echo "$view" | grep -E "^$role " | grep -q ' yes ' || return 1
    done
    ! echo "$view" | grep -E 'retrying|connecting' >/dev/null
}
for _ in $(seq 60); do all_ready && break; sleep 0.5; done
inside tollctl cluster status --node 127.0.0.1:7473 --ca /etc/tollgate/certs/ca.pem --cert /etc/tollgate/certs/admin.pem --key /etc/tollgate/certs/admin.key
check "tollctl cluster status: every node ready and connected" all_ready

echo "== reload"
inside systemctl reload tollgate@publisher.service || fail "systemctl reload"
sleep 1
check "publisher active after reload" sh -c "[ \"\$(nsenter -t $pid1 -a systemctl is-active tollgate@publisher)\" = active ]"
check "publisher reported the reload" sh -c "nsenter -t $pid1 -a systemctl show -p StatusText --value tollgate@publisher | grep -q 'configuration reloaded'"

echo "== watchdog"
frozen=$(inside systemctl show -p MainPID --value tollgate@gateway.service)
inside kill -STOP "$frozen"
restarted=
for _ in $(seq 60); do
    now=$(inside systemctl show -p MainPID --value tollgate@gateway.service)
    if [ "$now" != "$frozen" ] && [ "$now" != 0 ] && [ "$(inside systemctl is-active tollgate@gateway)" = active ]; then restarted=1; break; fi
    sleep 0.5
done
check "a frozen gateway is killed by the watchdog and restarted" test -n "$restarted"
check "the journal names the watchdog" sh -c "nsenter -t $pid1 -a journalctl --no-pager -u tollgate@gateway | grep -qi watchdog"

echo "== journal fields"
inside tollctl whoami --node 127.0.0.1:7454 --ca /etc/tollgate/certs/ca.pem >/dev/null 2>&1 || true  # a refused call is logged
sleep 0.5
fields=$(inside journalctl --no-pager -u tollgate@store -o verbose)
check "TOLLGATE_NODE_ID" sh -c "echo \"\$0\" | grep -q 'TOLLGATE_NODE_ID=store'" "$fields"
check "TOLLGATE_ROLE" sh -c "echo \"\$0\" | grep -q 'TOLLGATE_ROLE=store'" "$fields"
check "TOLLGATE_REQUEST_ID on call logs" sh -c "echo \"\$0\" | grep -q 'TOLLGATE_REQUEST_ID='" "$fields"
check "PRIORITY" sh -c "echo \"\$0\" | grep -q 'PRIORITY=6'" "$fields"

echo "== metrics"
for port in 9464 9465 9466 9467 9468 9469; do
    check "promtool accepts :$port/metrics" sh -c "curl -sf http://127.0.0.1:$port/metrics | promtool check metrics"
done

echo "== systemd-analyze verify"
# --man=no: the minimal root has no man(1); the pages themselves are checked below.
verify=$(inside systemd-analyze verify --man=no tollgate@publisher.service tollgate.target 2>&1 || echo "rc=$?")
check "systemd-analyze verify is clean${verify:+: $verify}" test -z "$verify"
check "man pages installed" inside test -s /usr/share/man/man8/tollgated.8.gz -a -s /usr/share/man/man1/tollctl.1.gz
check "bash completion installed" inside test -s /usr/share/bash-completion/completions/tollctl

echo "== purge"
inside systemctl stop tollgate.target 'tollgate@*.service' || true
inside env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tollgate >"$top/.build-deb/purge.log" 2>&1 || { cat "$top/.build-deb/purge.log" >&2; fail "apt purge"; }
check "no tollgate user" sh -c "! nsenter -t $pid1 -a getent passwd tollgate"
check "no tollgate group" sh -c "! nsenter -t $pid1 -a getent group tollgate"
check "no state" sh -c "! nsenter -t $pid1 -a test -e /var/lib/tollgate"
check "no configuration" sh -c "! nsenter -t $pid1 -a test -e /etc/tollgate"
check "no units" sh -c "! nsenter -t $pid1 -a sh -c 'ls /lib/systemd/system/tollgate* /etc/systemd/system/*tollgate* /etc/systemd/system/*/*tollgate* 2>/dev/null | grep -q .'"
check "no binaries" sh -c "! nsenter -t $pid1 -a test -e /usr/bin/tollgated"
echo "test-package: all checks passed"
