#!/usr/bin/env bash
# `make test-package`: installs .build-deb/tollgate_*.deb in a bare Debian 12
# root (debootstrap --variant=minbase plus systemd, nothing else: the
# package's Depends must bring the rest) booted with real systemd
# (systemd-nspawn), enables a node for every role as docs/operations.md
# says, and checks what an operator meets: reload with a good and a bad
# file, watchdog and kill -9 restarts, a configuration error ending in
# `failed`, a mistyped instance, one key per node, journal fields, metrics
# and the shipped dashboard and alerting rules,
# an upgrade restarting only the running nodes one at a time, a reinstall
# keeping data and certificates byte for byte, a reboot through
# tollgate.target, and a purge leaving nothing.
#
# Every check prints one line, `pass: NAME` or `FAIL: NAME`; the run goes
# on after a failure and exits 1 at the end if any failed.
#
# The debootstrapped root is cached in $TOLLGATE_ROOTFS_CACHE (default
# /var/cache/tollgate-test/bookworm-minbase); each run works on a fresh copy.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
tools/install-deps.sh package
[ "$(id -u)" -eq 0 ] || { echo "test-package needs root (debootstrap, systemd-nspawn)" >&2; exit 1; }

deb=$(ls .build-deb/tollgate_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || { echo "no package: run make deb first" >&2; exit 1; }
cache=${TOLLGATE_ROOTFS_CACHE:-/var/cache/tollgate-test/bookworm-minbase}
work="$top/.build-deb/container"
logs="$top/.build-deb"

# The mirror comes from this machine's own apt sources.
mirror() {
    local uri
    uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || { echo "no Debian mirror found in /etc/apt/sources.list*" >&2; exit 1; }
    echo "$uri"
}

if [ ! -e "$cache/.complete" ]; then
    echo "== debootstrap bookworm (minbase + systemd) into $cache (cached for later runs)"
    rm -rf "$cache.partial"
    mkdir -p "$(dirname "$cache")"
    debootstrap --variant=minbase --include=systemd,systemd-sysv bookworm "$cache.partial" "$(mirror)" >/dev/null
    # Package lists only, so apt can resolve the package's Depends; nothing installed.
    chroot "$cache.partial" apt-get update -q >/dev/null
    touch "$cache.partial/.complete"
    rm -rf "$cache"
    mv "$cache.partial" "$cache"
fi

echo "== fresh root in $work"
rm -rf "$work"
cp -a "$cache" "$work"
mkdir -p "$work/mnt/deb" "$work/mnt/cluster"
cp "$deb" "$work/mnt/deb/"
cp tools/cluster-scenario.py Tests/Interop/throttle_load.py "$work/mnt/cluster/"
# A debug build of tollgated (its fault hooks are compiled out of the package)
# for the cluster's watchdog row, with the Swift libraries it links beside it.
debug_bin=${TOLLGATE_DEBUG_BIN:-$(swift build --show-bin-path)/tollgated}
[ -x "$debug_bin" ] || { echo "no debug tollgated at $debug_bin: run make build first" >&2; exit 1; }
mkdir -p "$work/opt/tollgate-debug/lib"
cp "$debug_bin" "$work/opt/tollgate-debug/tollgated"
ldd "$debug_bin" | awk '$3 ~ /^\// && $3 !~ /^\/(usr\/)?lib\// {print $3}' | xargs -r cp -t "$work/opt/tollgate-debug/lib/"
debname=$(basename "$deb")

nspawn_pid=
pid1=
boot_count=0
boot() {
    boot_count=$((boot_count + 1))
    systemd-nspawn -q --register=no --keep-unit -D "$work" -b >"$logs/container-$boot_count.log" 2>&1 &
    nspawn_pid=$!
    pid1=
    for _ in $(seq 150); do
        pid1=$(pgrep -P "$nspawn_pid" -x systemd || true)
        [ -n "$pid1" ] && nsenter -t "$pid1" -a test -e /run/systemd/private 2>/dev/null && break
        sleep 0.2
    done
    [ -n "$pid1" ] || { echo "the container did not boot" >&2; cat "$logs/container-$boot_count.log" >&2; exit 1; }
    echo "system: $(inside systemctl is-system-running --wait || true)"
}
# Powers the container off and waits for nspawn to end.
shutdown_container() {
    [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null || return 0
    inside systemctl poweroff >/dev/null 2>&1 || true
    for _ in $(seq 150); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$nspawn_pid" 2>/dev/null; then kill "$nspawn_pid" 2>/dev/null || true; fi
    wait "$nspawn_pid" 2>/dev/null || true
    nspawn_pid=
}
trap shutdown_container EXIT
inside() { nsenter -t "$pid1" -a -- env LANG=C.UTF-8 HOME=/root "$@"; }
ish() { inside sh -c "$1"; }

failures=0
check() {
    local what=$1; shift
    if "$@" >/dev/null 2>&1; then echo "pass: $what"; else echo "FAIL: $what"; failures=$((failures + 1)); fi
}
fatal() { echo "FAIL: $*"; inside journalctl --no-pager -n 80 -u 'tollgate@*' >&2 || true; exit 1; }
active() { [ "$(inside systemctl is-active "$1" 2>/dev/null)" = active ]; }
# Waits up to 30 s for a unit to be active.
wait_active() { for _ in $(seq 60); do active "$1" && return 0; sleep 0.5; done; return 1; }
main_pid() { inside systemctl show -p MainPID --value "$1"; }
prop() { inside systemctl show -p "$2" --value "$1"; }

roles="publisher store keymanager gateway trafficmanager analytics"
nodes=$(for role in $roles; do printf 'tollgate@%s.service ' "$role"; done)
ca=/etc/tollgate/certs/ca.pem
admin_cert="--cert /etc/tollgate/certs/admin.pem --key /etc/tollgate/certs/admin.key"

boot

echo "== install on a bare system"
check "bare system: no procps (kill(1)) before the install" ish '! dpkg -s procps'
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "/mnt/deb/$debname" >"$logs/install.log" 2>&1 \
    || { cat "$logs/install.log" >&2; fatal "apt install (the package's Depends on a bare system)"; }
check "install: user tollgate exists" inside getent passwd tollgate
check "install: cluster CA created" inside test -s /etc/tollgate/certs/ca.pem
check "install: admin password 0640 root:tollgate" ish '[ "$(stat -c %U:%G:%a /etc/tollgate/admin.password)" = root:tollgate:640 ]'
check "install: every private key (CA, nodes, admin) root:root 0600" \
    ish 'for k in /etc/tollgate/certs/*.key; do [ "$(stat -c %U:%G:%a "$k")" = root:root:600 ] || exit 1; done'
check "install: certificates group-readable, not world-readable" \
    ish 'for c in /etc/tollgate/certs/*.pem; do [ "$(stat -c %G:%a "$c")" = tollgate:640 ] || exit 1; done'

echo "== enable a node for every role (docs/operations.md)"
inside systemctl enable --now $nodes >"$logs/enable.log" 2>&1 || { cat "$logs/enable.log" >&2; fatal "systemctl enable --now"; }
for role in $roles; do
    status=$(prop "tollgate@$role" StatusText)
    check "tollgate@$role active, status: $status" sh -c "[ \"\$(nsenter -t $pid1 -a systemctl is-active tollgate@$role)\" = active ] && case \"$status\" in 'ready: node $role'*) true;; *) false;; esac"
done
check "instances enabled through tollgate.target" ish '[ -L /etc/systemd/system/tollgate.target.wants/tollgate@publisher.service ]'

echo "== tollctl"
ish "tollctl login --node 127.0.0.1:7444 --ca $ca --user admin --password-stdin < /etc/tollgate/admin.password" >/dev/null \
    || fatal "tollctl login"
all_ready() {
    local view
    # Every node as one of these three sees it (each lists its configured peers).
    view=$(inside tollctl cluster status --node 127.0.0.1:7444 --ca $ca; \
           inside tollctl cluster status --node 127.0.0.1:7454 --ca $ca $admin_cert; \
           inside tollctl cluster status --node 127.0.0.1:7473 --ca $ca $admin_cert)
    for role in $roles; do
        echo "$view" | grep -E "^$role " | grep -q ' yes ' || return 1
    done
    ! echo "$view" | grep -E 'retrying|connecting' >/dev/null
}
for _ in $(seq 60); do all_ready && break; sleep 0.5; done
check "tollctl cluster status: every node ready and connected" all_ready

echo "== one identity per node"
# What the publisher's process can see: its mount namespace, its user.
publisher_pid=$(main_pid tollgate@publisher)
as_publisher() { inside nsenter -t "$publisher_pid" -m -- setpriv --reuid=tollgate --regid=tollgate --init-groups "$@"; }
not() { ! "$@"; }
check "publisher reads its own key (credential)" as_publisher test -r /run/credentials/tollgate@publisher.service/node.key
check "publisher cannot read the gateway's credential" not as_publisher cat /run/credentials/tollgate@gateway.service/node.key
check "publisher cannot read the gateway's key on disk" not as_publisher cat /etc/tollgate/certs/gateway.key
check "publisher cannot read the all-in-one key on disk" not as_publisher cat /etc/tollgate/certs/all-in-one.key
# Even root there finds an empty stand-in (InaccessiblePaths=), not the key.
check "the CA key is hidden from the service" not inside nsenter -t "$publisher_pid" -m -- grep -q "PRIVATE KEY" /etc/tollgate/certs/ca.key

echo "== reload"
check "reload with a good file exits 0" inside systemctl reload tollgate@publisher.service
sleep 1
check "publisher reports the reload" ish 'systemctl show -p StatusText --value tollgate@publisher | grep -q "configuration reloaded"'
inside cp /etc/tollgate/publisher.toml /root/publisher.toml
ish 'echo "mystery_key = true" >> /etc/tollgate/publisher.toml'
check "reload with a bad file exits non-zero" ish '! systemctl reload tollgate@publisher.service'
check "reload with a bad file: the node keeps running, unsignalled" \
    sh -c "[ \"\$(nsenter -t $pid1 -a systemctl show -p MainPID --value tollgate@publisher)\" = $publisher_pid ] && nsenter -t $pid1 -a systemctl is-active tollgate@publisher"
check "reload with a bad file: the journal says why" ish 'journalctl --no-pager -u tollgate@publisher | grep -q "mystery_key: unknown key"'
inside cp /root/publisher.toml /etc/tollgate/publisher.toml

echo "== one log line per event"
check "one ready line per start" ish '[ "$(journalctl --no-pager -u tollgate@gateway -o cat | grep -c "ready: node gateway")" = 1 ]'
# LimitNICE=-4 is what lets libdispatch renice its manager thread; systemd
# can set it only with CAP_SYS_RESOURCE, which some sandboxes withhold.
nice_limit=$(ish "sed -n 's/^Max nice priority *\([0-9]*\).*/\1/p' /proc/$(main_pid tollgate@gateway)/limits")
if [ "$nice_limit" = 24 ]; then
    check "no 'failed to set thread priority' notice" ish '! journalctl --no-pager -u "tollgate@*" -o cat | grep -qi "thread priority"'
else
    echo "skip: no 'failed to set thread priority' notice (RLIMIT_NICE is $nice_limit, not 24: systemd here lacks CAP_SYS_RESOURCE to apply LimitNICE=-4)"
fi

echo "== restarts"
frozen=$(main_pid tollgate@gateway)
ish "kill -STOP $frozen"  # the shell's kill: no procps here
restarted=
for _ in $(seq 60); do
    now=$(main_pid tollgate@gateway)
    if [ "$now" != "$frozen" ] && [ "$now" != 0 ] && active tollgate@gateway; then restarted=1; break; fi
    sleep 0.5
done
check "watchdog: a frozen gateway is killed and restarted" test -n "$restarted"
check "watchdog: the journal names it" ish 'journalctl --no-pager -u tollgate@gateway | grep -qi watchdog'
killed=$(main_pid tollgate@store)
ish "kill -9 $killed"
restarted=
for _ in $(seq 60); do
    now=$(main_pid tollgate@store)
    if [ "$now" != "$killed" ] && [ "$now" != 0 ] && active tollgate@store; then restarted=1; break; fi
    sleep 0.5
done
check "kill -9: the store is restarted" test -n "$restarted"

echo "== a configuration error ends in failed"
inside cp /etc/tollgate/trafficmanager.toml /root/trafficmanager.toml
ish 'sed -i "s/^roles = .*/roles = [\"nonsense\"]/" /etc/tollgate/trafficmanager.toml'
inside systemctl restart tollgate@trafficmanager >/dev/null 2>&1 || true
sleep 5
check "config error: tollgate@trafficmanager is failed, not restarting" \
    sh -c "[ \"\$(nsenter -t $pid1 -a systemctl is-active tollgate@trafficmanager)\" = failed ] && [ \"\$(nsenter -t $pid1 -a systemctl show -p NRestarts --value tollgate@trafficmanager)\" = 0 ]"
check "config error: exit status 78" sh -c "[ \"\$(nsenter -t $pid1 -a systemctl show -p ExecMainStatus --value tollgate@trafficmanager)\" = 78 ]"
check "config error: systemctl status shows the one-line reason" \
    ish 'systemctl status --no-pager -n 10 tollgate@trafficmanager | grep -q "tollgated: /etc/tollgate/trafficmanager.toml: roles"'
inside cp /root/trafficmanager.toml /etc/tollgate/trafficmanager.toml
inside systemctl start tollgate@trafficmanager >/dev/null 2>&1 || true
check "config error fixed: tollgate@trafficmanager starts again" active tollgate@trafficmanager

echo "== a mistyped instance"
mistyped=$(inside systemctl start tollgate@publsher 2>&1 && echo "rc=0" || true)
check "systemctl start tollgate@publsher fails loudly" sh -c "echo \"\$0\" | grep -q 'Assertion failed on job for tollgate@publsher.service'" "$mistyped"
check "the journal records the failed assertion" \
    ish 'journalctl --no-pager -u tollgate@publsher | grep -q "Assertion failed for tollgate@publsher.service"'
check "tollgate@publsher is not running" sh -c "! nsenter -t $pid1 -a systemctl is-active -q tollgate@publsher"

echo "== journal fields and request ids"
inside tollctl whoami --node 127.0.0.1:7454 --ca $ca >/dev/null 2>&1 || true  # a refused call is logged
inside tollctl whoami --node 127.0.0.1:7454 --ca $ca >/dev/null 2>&1 || true
sleep 0.5
fields=$(inside journalctl --no-pager -u tollgate@store -o verbose)
check "journal: TOLLGATE_NODE_ID" sh -c "echo \"\$0\" | grep -q 'TOLLGATE_NODE_ID=store'" "$fields"
check "journal: TOLLGATE_ROLE" sh -c "echo \"\$0\" | grep -q 'TOLLGATE_ROLE=store'" "$fields"
check "journal: PRIORITY" sh -c "echo \"\$0\" | grep -q 'PRIORITY=6'" "$fields"
ids=$(echo "$fields" | sed -n 's/^ *TOLLGATE_REQUEST_ID=//p')
first_id=$(echo "$ids" | head -1)
check "journal: request ids on calls, all distinct" sh -c "[ -n \"\$0\" ] && [ \"\$(echo \"\$0\" | sort | uniq -d)\" = '' ] && [ \"\$(echo \"\$0\" | wc -l)\" -ge 2 ]" "$ids"
check "journalctl TOLLGATE_REQUEST_ID=… finds one entry" sh -c "[ \"\$(nsenter -t $pid1 -a journalctl --no-pager -o cat TOLLGATE_REQUEST_ID=$first_id | wc -l)\" = 1 ]"

echo "== metrics"
for port in 9464 9465 9466 9467 9468 9469; do
    check "promtool accepts :$port/metrics" sh -c "curl -sf http://127.0.0.1:$port/metrics | promtool check metrics"
done
check "tollgate_certificate_expiry_seconds for the node and the CA" \
    sh -c "curl -sf http://127.0.0.1:9467/metrics | grep -q '^tollgate_certificate_expiry_seconds{certificate=\"node\"} [1-9]' && curl -sf http://127.0.0.1:9467/metrics | grep -q '^tollgate_certificate_expiry_seconds{certificate=\"ca\"} [1-9]'"

echo "== tollctl certs renew"
# The certificate the gateway's cluster listener presents (host openssl).
# s_client exits 1 (the listener wants a client certificate) after printing it.
served() {
    { openssl s_client -connect 127.0.0.1:7473 -alpn tollgate-rpc/1 </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256 2>/dev/null; } || true
}
before=$(curl -sf http://127.0.0.1:9467/metrics | sed -n 's/^tollgate_certificate_expiry_seconds{certificate="node"} //p')
served_before=$(served)
key_before=$(inside sha256sum /etc/tollgate/certs/gateway.key)
check "certs renew replaces the gateway's certificate in place, same key" \
    sh -c "nsenter -t $pid1 -a tollctl certs renew --ca /etc/tollgate/certs --days 900 /etc/tollgate/certs/gateway.pem && [ \"\$(nsenter -t $pid1 -a sha256sum /etc/tollgate/certs/gateway.key)\" = '$key_before' ]"
check "certs renew keeps owner and mode" \
    ish '[ "$(stat -c %U:%G:%a /etc/tollgate/certs/gateway.key)" = root:root:600 ] && [ "$(stat -c %G:%a /etc/tollgate/certs/gateway.pem)" = tollgate:640 ]'
check "reload after renew exits 0" inside systemctl reload tollgate@gateway
served_after=$(served)
check "the gateway presents the renewed certificate" sh -c "[ -n '$served_before' ] && [ -n '$served_after' ] && [ '$served_before' != '$served_after' ] && [ '$served_after' = \"\$(nsenter -t $pid1 -a cat /etc/tollgate/certs/gateway.pem | openssl x509 -noout -fingerprint -sha256)\" ]"
after=$(curl -sf http://127.0.0.1:9467/metrics | sed -n 's/^tollgate_certificate_expiry_seconds{certificate="node"} //p')
check "the expiry metric follows the renewed certificate" sh -c "[ -n '$after' ] && [ '$after' != '$before' ]"

echo "== files and documentation"
verify=$(inside systemd-analyze verify --man=no tollgate@publisher.service tollgate.target 2>&1 || echo "rc=$?")
check "systemd-analyze verify is clean${verify:+: $verify}" test -z "$verify"
check "man pages installed (tollgated.8 has EXIT STATUS, SIGNALS, FILES, ENVIRONMENT)" \
    ish 'zcat /usr/share/man/man8/tollgated.8.gz | grep -q "^.SH EXIT STATUS" && zcat /usr/share/man/man8/tollgated.8.gz | grep -q "^.SH SIGNALS" && zcat /usr/share/man/man8/tollgated.8.gz | grep -q "^.SH FILES" && zcat /usr/share/man/man8/tollgated.8.gz | grep -q "^.SH ENVIRONMENT" && test -s /usr/share/man/man1/tollctl.1.gz'
check "Documentation= links resolve" ish 'for unit in tollgate@.service tollgate.target; do for link in $(systemctl show -p Documentation --value $unit); do case $link in file://*) test -s "${link#file://}" || exit 1;; man:*) page=${link#man:}; name=${page%%(*}; section=${page#*(}; section=${section%)}; test -s /usr/share/man/man$section/$name.$section.gz || exit 1;; esac; done; done'
check "README is the project README; operations.md and certificates.md ship" \
    ish 'head -1 /usr/share/doc/tollgate/README.md* 2>/dev/null | grep -q "^# Tollgate" || zcat /usr/share/doc/tollgate/README.md.gz | head -1 | grep -q "^# Tollgate"; test -s /usr/share/doc/tollgate/operations.md && test -s /usr/share/doc/tollgate/certificates.md'
check "bash completion installed" inside test -s /usr/share/bash-completion/completions/tollctl
check "Grafana dashboard installed, valid JSON" \
    sh -c "nsenter -t $pid1 -a cat /usr/share/tollgate/grafana/tollgate-dashboard.json | python3 -m json.tool"
check "Prometheus alerting rules installed, accepted by promtool check rules" \
    sh -c "nsenter -t $pid1 -a cat /usr/share/tollgate/prometheus/tollgate-alerts.yml > '$logs/tollgate-alerts.yml' && promtool check rules '$logs/tollgate-alerts.yml'"

echo "== upgrade: running nodes restarted one at a time, stopped ones stay stopped"
inside systemctl stop tollgate@analytics
declare -A old_pid
for role in $roles; do old_pid[$role]=$(main_pid "tollgate@$role"); done
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall "/mnt/deb/$debname" >"$logs/upgrade.log" 2>&1 \
    || { cat "$logs/upgrade.log" >&2; fatal "apt reinstall"; }
restarted_all=1
for role in $roles; do
    [ "$role" = analytics ] && continue
    now=$(main_pid "tollgate@$role")
    { [ "$now" != "${old_pid[$role]}" ] && active "tollgate@$role"; } || restarted_all=
done
check "upgrade: every running node restarted and active" test -n "$restarted_all"
check "upgrade: the stopped analytics node stays stopped" sh -c "! nsenter -t $pid1 -a systemctl is-active -q tollgate@analytics"
# In name order, each restart begins (old process stopping) after the previous node is ready again.
in_order=1
previous_ready=
for role in $(echo "$roles" | tr ' ' '\n' | grep -v analytics | sort); do
    stop_began=$(prop "tollgate@$role" InactiveEnterTimestampMonotonic)
    if [ -n "$previous_ready" ] && [ "$stop_began" -lt "$previous_ready" ]; then in_order=; fi
    previous_ready=$(prop "tollgate@$role" ActiveEnterTimestampMonotonic)
done
check "upgrade: one node at a time (each restart after the previous node was ready)" test -n "$in_order"

echo "== reinstall keeps data and certificates byte for byte"
inside systemctl stop tollgate.target $nodes
fingerprint() { ish 'find /etc/tollgate /var/lib/tollgate -type f -print0 | sort -z | xargs -0 sha256sum; find /etc/tollgate /var/lib/tollgate -printf "%p %U %G %m\n" | sort'; }
before_sums=$(fingerprint)
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall "/mnt/deb/$debname" >"$logs/reinstall.log" 2>&1 \
    || { cat "$logs/reinstall.log" >&2; fatal "apt reinstall"; }
after_sums=$(fingerprint)
check "reinstall: data, configuration and certificates unchanged (content, owner, mode)" test "$before_sums" = "$after_sums"
check "reinstall: no stopped node started" sh -c "! nsenter -t $pid1 -a systemctl is-active -q $nodes"

echo "== reboot through tollgate.target"
inside systemctl disable tollgate@analytics >/dev/null 2>&1
shutdown_container
boot
booted=1
for role in $roles; do [ "$role" = analytics ] || wait_active "tollgate@$role" || booted=; done
check "reboot: every enabled node is up" test -n "$booted"
check "reboot: tollgate.target active" active tollgate.target
check "reboot: the disabled node stays down" sh -c "! nsenter -t $pid1 -a systemctl is-active -q tollgate@analytics"
inside systemctl enable tollgate@analytics >/dev/null 2>&1

echo "== the whole cluster: nine nodes, a scenario and a fault matrix (tools/cluster-scenario.py, docs/cluster.md)"
# Python and requests from Debian, as an operator's client would have them.
# The clients (Python requests, wrk) and the backend (nginx) come from Debian;
# policy-rc.d keeps nginx's own service from starting on port 80.
ish 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-requests wrk nginx-light >"$logs/cluster-deps.log" 2>&1 \
    || { cat "$logs/cluster-deps.log" >&2; fatal "apt install python3-requests wrk nginx-light"; }
inside rm -f /usr/sbin/policy-rc.d
cluster_output=$(inside /usr/bin/python3 /mnt/cluster/cluster-scenario.py --load-script /mnt/cluster/throttle_load.py \
    --soak-seconds "${TOLLGATE_SOAK_SECONDS:-600}" --debug-tollgated /opt/tollgate-debug/tollgated 2>"$logs/cluster.err") || true
echo "$cluster_output" > "$logs/cluster.log"
echo "$cluster_output" | grep -E '^(pass|FAIL|figure): '
cluster_failed=$(echo "$cluster_output" | grep -c '^FAIL: ' || true)
failures=$((failures + cluster_failed))
if [ "$cluster_failed" -gt 0 ] || ! echo "$cluster_output" | grep -q 'cluster scenario: all checks passed'; then
    tail -20 "$logs/cluster.err" >&2
    inside journalctl --no-pager -n 60 -u 'tollgate@*' >&2 || true
    [ "$cluster_failed" -gt 0 ] || { echo "FAIL: the cluster scenario ended early"; failures=$((failures + 1)); }
fi
inside systemctl stop cluster-backend.service >/dev/null 2>&1 || true

echo "== purge"
inside env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q tollgate >"$logs/purge.log" 2>&1 || { cat "$logs/purge.log" >&2; fatal "apt purge"; }
check "purge: no enabled-instance links or units left" \
    ish '! find /etc/systemd/system /lib/systemd/system /usr/lib/systemd/system -name "*tollgate*" 2>/dev/null | grep -q .'
inside systemctl list-units --all --plain --no-legend "tollgate*" >>"$logs/purge.log" 2>&1 || true
check "purge: systemd knows no tollgate unit" ish '! systemctl list-units --all --plain --no-legend "tollgate*" | grep -q .'
check "purge: no state" ish '! test -e /var/lib/tollgate'
check "purge: no dashboard or alerting rules" ish '! test -e /usr/share/tollgate'
check "purge: no configuration" ish '! test -e /etc/tollgate'
check "purge: no binaries, documentation or package state" \
    ish '! test -e /usr/bin/tollgated && ! test -e /usr/share/doc/tollgate && ! dpkg -s tollgate 2>/dev/null | grep -q "^Status: install"'
check "purge: the tollgate system user stays (uid not reused; docs/operations.md)" inside getent passwd tollgate
inside env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "/mnt/deb/$debname" >"$logs/reinstall-after-purge.log" 2>&1 \
    || { cat "$logs/reinstall-after-purge.log" >&2; fatal "apt install after purge"; }
check "fresh install after purge starts no old instance" ish '! systemctl list-units --state=active --plain --no-legend "tollgate@*" | grep -q .'

shutdown_container
if [ "$failures" -gt 0 ]; then
    echo "test-package: $failures check(s) failed (logs in $logs)"
    exit 1
fi
echo "test-package: all checks passed"
