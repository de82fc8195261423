# Helpers for the guest side of the scenarios (sourced by each scenario script in the guest).
# /vm/env provides TARGET, PORTAL (10.0.2.2:PORT, the host's keel) and SCENARIO.
set -o pipefail
. /vm/env
up() { cut -d' ' -f1 /proc/uptime; }
# step TEXT: a timestamped headline.
step() { echo "--- [$(up)s] $*"; }
# run CMD...: show it, run it, fail the scenario on a non-zero status.
run() {
    echo "# $*"
    "$@"
    local rc=$?
    [ $rc = 0 ] || die "'$*' exited with $rc"
}
# sh_run 'pipeline': the same for a shell string.
sh_run() {
    echo "# $1"
    bash -o pipefail -c "$1"
    local rc=$?
    [ $rc = 0 ] || die "'$1' exited with $rc"
}
die() {
    echo "@@KEEL-VM FAIL: $*"
    echo "--- dmesg (tail):"; dmesg | tail -25
    exit 1
}
# host_request WHAT: ask interop/vm/run (which watches the console) to act on the host.
host_request() { echo "@@KEEL-VM REQUEST $*"; }

# iscsi_init [INITIATOR-NAME]: load the initiator, set the name, start iscsid.
iscsi_init() {
    mkdir -p /run/lock/iscsi /var/lib/iscsi /run/iscsi /etc/iscsi
    echo "InitiatorName=${1:-iqn.2026-11.org.example.vm:$SCENARIO}" > /etc/iscsi/initiatorname.iscsi
    modprobe iscsi_tcp || die "no iscsi_tcp module"
    # Fail fast instead of waiting 8 x 15 s when something is wrong.
    sed -i -e 's/^node.session.initial_login_retry_max.*/node.session.initial_login_retry_max = 2/' \
        /etc/iscsi/iscsid.conf
    iscsid || die "iscsid did not start"
    sleep 1
}
# discover [PORTAL [IFACE...]]: SendTargets; fails unless TARGET is listed. Then the node record
# is (re)created for PORTAL itself: keel answers TargetAddress with the address the connection
# reached it on, which behind qemu's user-mode NAT is the host's 127.0.0.1 (unreachable from
# the guest). keel has no "advertised address" setting yet, so the record is rewritten here.
# The record carries the portal group tag (1): without one, open-iscsi stores an "old style"
# record per portal that the second iface's record would silently overwrite.
discover() {
    local p=${1:-$PORTAL}; shift || true
    local ifs=() i; for i in "$@"; do ifs+=(-I "$i"); done
    echo "# iscsiadm -m discovery -t st -p $p ${ifs[*]}"
    local out; out=$(iscsiadm -m discovery -t st -p "$p" "${ifs[@]}" 2>&1); echo "$out"
    grep -q " $TARGET\$" <<<"$out" || die "discovery at $p did not list $TARGET"
    iscsiadm -m node -o delete >/dev/null 2>&1
    if [ $# = 0 ]; then
        run iscsiadm -m node -o new -T "$TARGET" -p "$p,1"
    else
        for i in "$@"; do run iscsiadm -m node -o new -T "$TARGET" -p "$p,1" -I "$i"; done
    fi
    iscsiadm -m node
}
# node_set KEY VALUE [PORTAL]: update the node record.
node_set() { run iscsiadm -m node -T "$TARGET" -p "${3:-$PORTAL}" -o update -n "$1" -v "$2"; }
login() { run iscsiadm -m node -T "$TARGET" -p "${1:-$PORTAL}" --login; udevadm settle -t 30; }
logout() { run iscsiadm -m node -T "$TARGET" -p "${1:-$PORTAL}" --logout; udevadm settle -t 30; }
# session_disk: the /dev/sdX of the (first) logged-in session's LUN, waiting up to 30 s for it.
session_disk() {
    local d
    for _ in $(seq 1 60); do
        d=$(iscsiadm -m session -P 3 2>/dev/null | awk '/Attached scsi disk/{print $4; exit}')
        [ -n "$d" ] && [ -b "/dev/$d" ] && { echo "/dev/$d"; return 0; }
        sleep 0.5
    done
    return 1
}
# roundtrip DISK MIB [OFFSET-MIB]: write random data with O_DIRECT, read it back, compare.
roundtrip() {
    local d=$1 n=$2 off=${3:-0}
    dd if=/dev/urandom of=/tmp/pat bs=1M count="$n" status=none || die "urandom"
    run dd if=/tmp/pat of="$d" bs=1M seek="$off" oflag=direct conv=fsync status=none
    run dd if="$d" of=/tmp/back bs=1M skip="$off" count="$n" iflag=direct status=none
    cmp /tmp/pat /tmp/back || die "data read back from $d differs from what was written"
    echo "ok: $n MiB at $off MiB written and read back identical (O_DIRECT)"
}

# guest_keel_start: run keel INSIDE the guest with /tmp/keel.toml (checked first), logging to
# /tmp/keel.log (appended: one log over restarts); sets KP (its pid). guest_keel_stop: SIGTERM,
# at most 5 s, and keel must exit cleanly.
guest_keel_start() {
    run /vm/keel check --config /tmp/keel.toml
    touch /tmp/keel.log; local n; n=$(wc -l < /tmp/keel.log)
    KEEL_LOG=info /vm/keel serve --config /tmp/keel.toml >> /tmp/keel.log 2>&1 &
    KP=$!
    for _ in $(seq 1 100); do tail -n +$((n + 1)) /tmp/keel.log | grep -q listening && break; sleep 0.1; done
    tail -n +$((n + 1)) /tmp/keel.log | grep -q listening || { tail -20 /tmp/keel.log; die "keel did not start in the guest"; }
    keel_log() { echo "--- guest keel log (tail):"; tail -15 /tmp/keel.log; }
    trap keel_log EXIT
}
guest_keel_stop() {
    kill -TERM $KP; for _ in $(seq 1 50); do kill -0 $KP 2>/dev/null || break; sleep 0.1; done
    kill -0 $KP 2>/dev/null && die "keel did not stop on SIGTERM"
    wait $KP || die "keel exited with an error"
    KP=
}

# zvol_setup: a pool on /dev/vdc, a sparse zvol (volblocksize 4096) and a thick one (volblocksize
# 512), both compression=off (so zeros cost space and only a real discard frees it); keel started
# INSIDE the guest serving them as LUN 0 and 1 on 127.0.0.1:3260; the guest initiator logged in.
# Sets DEV[thin], DEV[thick] and KP (keel's pid); zvol_teardown undoes it.
declare -A DEV
zvol_setup() {
    PORTAL=127.0.0.1:3260
    step "pool and zvols"
    run modprobe zfs
    run zpool create -f -o ashift=12 tank /dev/vdc
    run zfs create -s -V 512M -o volblocksize=4096 -o compression=off tank/thin
    run zfs create -V 256M -o volblocksize=512 -o compression=off tank/thick
    udevadm settle -t 30
    for v in thin thick; do [ -b /dev/zvol/tank/$v ] || die "no /dev/zvol/tank/$v"; done
    sh_run "zfs get -H -p -o name,property,value volsize,volblocksize,refreservation,used,referenced tank/thin tank/thick"
    lbs() { cat /sys/block/$(basename "$(readlink -f /dev/zvol/tank/$1)")/queue/logical_block_size; }
    echo "logical block size: thin $(lbs thin), thick $(lbs thick)"

    step "keel in the guest, serving both zvols"
    mkdir -p /var/lib/keel
    cat > /tmp/keel.toml <<EOT
[server]
portals = ["$PORTAL"]
data_dir = "/var/lib/keel"

[[target]]
name = "$TARGET"

[[target.lun]]
lun = 0
block = "/dev/zvol/tank/thin"
block_size = $(lbs thin)

[[target.lun]]
lun = 1
block = "/dev/zvol/tank/thick"
block_size = $(lbs thick)
EOT
    guest_keel_start
    iscsi_init
    discover
    login
    iscsiadm -m session -P 3 | awk '/ Lun: /{l=$NF} /Attached scsi disk/{print l, $4}' > /tmp/luns; cat /tmp/luns
    DEV=([thin]=/dev/$(awk '$1==0{print $2}' /tmp/luns) [thick]=/dev/$(awk '$1==1{print $2}' /tmp/luns))
    for v in thin thick; do [ -b "${DEV[$v]}" ] || die "no disk for the $v zvol"; done
}
zvol_teardown() {
    logout
    guest_keel_stop
    run zpool export tank
}
