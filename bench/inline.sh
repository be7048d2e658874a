#!/usr/bin/env bash
# bench/inline.sh: what `portcullis run` costs on the packet path.
#
# The same traffic with and without the inline daemon, in one run, between
# two network namespaces this script creates and deletes:
#   client pcbc<pid> 198.18.10.2/24  <-- veth -->  server pcbs<pid> 198.18.10.1/24
# portcullis runs in the server namespace (`ip netns exec`).
#
#   1. TCP bulk throughput: iperf3, one stream, -t 5 (default policy).
#   2. 64-byte UDP packets/s with every UDP packet queued to user space
#      (inline.queue_all = ["UDP"]); NFQUEUE drop counters before/after.
#   3. New TCP connections/s (crates/testnet/examples/connrate.rs; default
#      policy: each SYN goes through user space).
#
# Each measurement runs RUNS times, alternating the order of with/without;
# the table shows medians and the ratio of medians. See bench/README.md.
#
# Run as root from anywhere:  sudo bench/inline.sh
# Settings (environment):
#   RUNS=3               repetitions of each measurement
#   TESTS="tcp udp conn" which measurements to run
#   TCP_SECS=5           iperf3 -t
#   UDP_PACKETS=1000000  64-byte datagrams per UDP run (iperf3 -k)
#   UDP_RATE=            offered packets/s; empty: calibrated on the
#                        no-firewall path (see README)
#   CONN_COUNT=60000     connections per connrate run
#   CONN_CONCURRENCY=16  client threads
#   CONN_SECS=10         time bound of one connrate run
#   PORTCULLIS=          binary (default target/release/portcullis, built if missing)
#   CONNRATE=            binary (default target/release/examples/connrate, built if missing)
#   PIN=1                client side on CPU 0, server side + portcullis on CPU 1
#   WITHOUT_ONLY=1       measure only the no-firewall half
#   KEEP_LOGS=1          keep the work directory (kept anyway on failure)

set -Eeuo pipefail

RUNS=${RUNS:-3}
TESTS=" ${TESTS:-tcp udp conn} "
TCP_SECS=${TCP_SECS:-5}
UDP_PACKETS=${UDP_PACKETS:-1000000}
UDP_RATE=${UDP_RATE:-}
UDP_LEN=64
CONN_COUNT=${CONN_COUNT:-60000}
CONN_CONCURRENCY=${CONN_CONCURRENCY:-16}
CONN_SECS=${CONN_SECS:-10}
WITHOUT_ONLY=${WITHOUT_ONLY:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
PIN=${PIN:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NS_C=pcbc$$
NS_S=pcbs$$
IF_C=vpcbc$$
IF_S=vpcbs$$
ADDR_C=198.18.10.2
ADDR_S=198.18.10.1
IPERF_PORT=5201
CONN_PORT=5301

WORK=""
PIDS=()          # every background process this script started
PC_PID=""        # the running portcullis, if any
FAILED=1

log() { printf '%s\n' "$*" >&2; }
die() { log "inline.sh: error: $*"; exit 1; }

# ---------------------------------------------------------------- cleanup
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    local p
    for p in "${PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
    done
    for p in "${PIDS[@]}"; do
        wait_pid "$p" 10 || { kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; }
    done
    # Deleting a namespace removes its veth end and every rule in it.
    ip netns list 2>/dev/null | grep -qw "$NS_S" && ip netns delete "$NS_S"
    ip netns list 2>/dev/null | grep -qw "$NS_C" && ip netns delete "$NS_C"
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ $FAILED == 1 || $KEEP_LOGS == 1 ]]; then
            log "inline.sh: logs kept in $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "inline.sh: interrupted"; exit 130' INT
trap 'log "inline.sh: terminated"; exit 143' TERM

# wait_pid PID SECS: wait for a child to exit, at most SECS; 0 if it did.
wait_pid() {
    local pid=$1 end=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS >= end)) && return 1
        sleep 0.1
    done
    wait "$pid" 2>/dev/null || true
    return 0
}

# Starts a command in the background, records its pid in PIDS and in $BG.
bg() {
    local out=$1
    shift
    : >"$out"
    "$@" >"$out" 2>&1 &
    BG=$!
    PIDS+=("$BG")
}

in_s() { ip netns exec "$NS_S" "$@"; }
in_c() { ip netns exec "$NS_C" "$@"; }
# The load generators and the measured side, optionally on separate CPUs
# (PIN=1: client side on CPU 0, server side with portcullis on CPU 1).
CLI=(ip netns exec "$NS_C")
SRV=(ip netns exec "$NS_S")
if [[ $PIN == 1 ]]; then
    (($(nproc) >= 2)) || die "PIN=1 needs 2 CPUs"
    CLI+=(taskset -c 0)
    SRV+=(taskset -c 1)
fi

median() { # numbers on stdin -> lower median
    sort -g | awk '{v[NR]=$1} END {if (NR==0) print "nan"; else print v[int((NR+1)/2)]}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0==0 || a=="nan" || b=="nan") print "n/a"; else printf "%.2f", a/b}'; }

# ---------------------------------------------------------------- checks
[[ $(id -u) == 0 ]] || die "run as root (network namespaces, nftables, NFQUEUE)"
for t in ip:iproute2 iperf3:iperf3 jq:jq timeout:coreutils ss:iproute2 taskset:util-linux; do
    command -v "${t%%:*}" >/dev/null ||
        die "\`${t%%:*}\` is missing: apt-get install ${t#*:}"
done

PORTCULLIS=${PORTCULLIS:-$ROOT/target/release/portcullis}
CONNRATE=${CONNRATE:-$ROOT/target/release/examples/connrate}
if [[ ! -x $CONNRATE ]]; then
    log "building connrate (cargo build --release -p portcullis-testnet --example connrate)"
    (cd "$ROOT" && cargo build --release -q -p portcullis-testnet --example connrate) ||
        die "could not build connrate"
fi
WITH=1
if [[ $WITHOUT_ONLY == 1 ]]; then
    WITH=0
else
    if [[ ! -x $PORTCULLIS ]]; then
        log "building portcullis (cargo build --release -p portcullis)"
        (cd "$ROOT" && cargo build --release -q -p portcullis) || die "could not build portcullis"
    fi
    if ! "$PORTCULLIS" run --help >/dev/null 2>&1; then
        log "inline.sh: $PORTCULLIS has no \`run\` command: measuring WITHOUT portcullis only"
        WITH=0
    fi
fi
PC_QUIET=()
if [[ $WITH == 1 ]] && "$PORTCULLIS" run --help 2>&1 | grep -q -- '--quiet'; then
    PC_QUIET=(--quiet)
fi

# With portcullis, every connection gets a conntrack entry in the server
# namespace that lives on in TIME_WAIT for 120 s; a full table would drop
# SYNs and measure the table, not portcullis.
ct_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo 262144)
if [[ $TESTS == *" conn "* ]] && ((RUNS * (CONN_COUNT + 1000) > ct_max * 8 / 10)); then
    die "RUNS x CONN_COUNT ($RUNS x $CONN_COUNT) would fill the conntrack table (nf_conntrack_max $ct_max): lower CONN_COUNT"
fi

WORK=$(mktemp -d /tmp/pcbench.XXXXXX)
PC_SOCKET=()
if [[ $WITH == 1 ]] && "$PORTCULLIS" run --help 2>&1 | grep -q -- '--socket'; then
    PC_SOCKET=(--socket "$WORK/portcullis.sock")
fi
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------- lab
ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add "$IF_C" netns "$NS_C" type veth peer name "$IF_S" netns "$NS_S"
ip -n "$NS_S" addr add "$ADDR_S/24" dev "$IF_S"
ip -n "$NS_C" addr add "$ADDR_C/24" dev "$IF_C"
for ns in "$NS_S" "$NS_C"; do ip -n "$ns" link set lo up; done
ip -n "$NS_S" link set "$IF_S" up
ip -n "$NS_C" link set "$IF_C" up
# Many short connections: a wide ephemeral port range on the client.
in_c sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
timeout 5 ip netns exec "$NS_C" ping -c1 -W2 -q "$ADDR_S" >/dev/null || die "the veth link does not work"

cat >"$WORK/udp.json" <<'EOF'
{"inline": {"queue_all": ["UDP"]}, "scan": {"enabled": false}, "events": {"dns_queries": false}}
EOF
mkdir -p "$WORK/state"

# ---------------------------------------------------------------- portcullis
QNUM=""
# pc_start TAG [CONFIG]: portcullis in the server namespace, ready when its
# queue is bound.
pc_start() {
    local tag=$1 cfg=${2:-}
    local args=(run --events "$WORK/events-$tag.jsonl" --state-dir "$WORK/state" "${PC_QUIET[@]}" "${PC_SOCKET[@]}")
    [[ -n $cfg ]] && args+=(--config "$cfg")
    bg "$WORK/portcullis-$tag.log" "${SRV[@]}" "$PORTCULLIS" "${args[@]}"
    PC_PID=$BG
    local end=$((SECONDS + 15))
    while ((SECONDS < end)); do
        kill -0 "$PC_PID" 2>/dev/null ||
            die "portcullis exited during start-up: $(tail -5 "$WORK/portcullis-$tag.log")"
        QNUM=$(awk 'match($0, /running on NFQUEUE [0-9]+/) {
            print substr($0, RSTART + 19, RLENGTH - 19); exit}' "$WORK/portcullis-$tag.log")
        if [[ -n $QNUM ]] && qcounters >/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "portcullis did not bind its queue within 15 s: $(tail -5 "$WORK/portcullis-$tag.log")"
}

# pc_cpu: CPU seconds (user + system, all threads) portcullis has used.
pc_cpu() {
    local stat
    stat=$(cat "/proc/$PC_PID/stat" 2>/dev/null) || { echo "?"; return; }
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / hz}' <<<"${stat##*) }"
}

# pc_wakeups: voluntary context switches of portcullis' main thread (the
# packet thread): about one per batch it waited for.
pc_wakeups() {
    awk '/^voluntary_ctxt_switches/ {print $2; f = 1} END {if (!f) print "?"}' \
        "/proc/$PC_PID/status" 2>/dev/null || echo "?"
}

# pc_stop: SIGTERM, wait, check that its rules are gone.
pc_stop() {
    [[ -n $PC_PID ]] || return 0
    PC_CPU=$(pc_cpu)
    PC_WAKE=$(pc_wakeups)
    kill -TERM "$PC_PID" 2>/dev/null || true
    if ! wait_pid "$PC_PID" 15; then
        kill -KILL "$PC_PID" 2>/dev/null || true
        wait_pid "$PC_PID" 5 || true
        PC_PID=""
        die "portcullis did not stop within 15 s of SIGTERM"
    fi
    PC_PID=""
    if in_s nft list table inet portcullis >/dev/null 2>&1; then
        die "portcullis left its table inet portcullis behind after SIGTERM"
    fi
    if in_s iptables-save 2>/dev/null | grep -q NFQUEUE ||
        in_s ip6tables-save 2>/dev/null | grep -q NFQUEUE; then
        die "portcullis left an iptables NFQUEUE rule behind after SIGTERM"
    fi
}

# qcounters: "queue_dropped user_dropped id_sequence" of our queue, in the
# server namespace (id_sequence counts the packets handed to user space).
qcounters() {
    in_s cat /proc/net/netfilter/nfnetlink_queue 2>/dev/null |
        awk -v q="$QNUM" '$1 == q {print $6, $7, $8; found=1} END {exit !found}'
}

# rule_hits: packets that hit portcullis' NFQUEUE rules (iptables path,
# IPv4 + IPv6), or "-" when there is none (native nft `queue` path).
rule_hits() {
    { in_s iptables-save -c 2>/dev/null; in_s ip6tables-save -c 2>/dev/null; } |
        awk '/-j NFQUEUE/ && /portcullis/ {split(substr($1, 2), c, ":"); n += c[1]; found = 1}
             END {if (found) print n; else print "-"}'
}

# ---------------------------------------------------------------- measurements
# Each sets OUT (not printed: they run in this shell, so that the pids of
# what they start stay in PIDS).

# TCP bulk throughput, Gbit/s (receiver side).
m_tcp() {
    local tag=$1
    bg "$WORK/iperf3-s-$tag.json" timeout $((TCP_SECS + 20)) \
        "${SRV[@]}" iperf3 -s -1 -J -B "$ADDR_S" -p "$IPERF_PORT"
    local spid=$BG
    wait_listen "$IPERF_PORT"
    timeout $((TCP_SECS + 15)) "${CLI[@]}" \
        iperf3 -c "$ADDR_S" -p "$IPERF_PORT" -t "$TCP_SECS" -J >"$WORK/iperf3-c-$tag.json" 2>&1 ||
        die "iperf3 TCP client failed ($tag): $(tail -3 "$WORK/iperf3-c-$tag.json")"
    wait_pid "$spid" 10 || die "iperf3 server did not finish ($tag)"
    OUT=$(jq -r '.end.sum_received.bits_per_second / 1e9' "$WORK/iperf3-c-$tag.json")
}

# udp_rcvbuf_errors: datagrams the server namespace dropped because a
# socket's receive buffer was full (/proc/net/snmp, Udp RcvbufErrors).
udp_rcvbuf_errors() {
    in_s cat /proc/net/snmp | awk '$1 == "Udp:" {
        if (!n) {for (i = 2; i <= NF; i++) col[$i] = i; n = 1} else print $col["RcvbufErrors"]}'
}

# 64-byte UDP at RATE packets/s (0: as fast as iperf3 sends), UDP_PACKETS
# of them: OUT="delivered_pps received lost rcvbuf_errors sender_pps tail".
# tail: the part of "lost" that was missing only at the end (sent after
# the last datagram the server counted: still queued or in flight when
# iperf3 ended the test, or lost there).
m_udp() {
    local tag=$1 rate=$2 packets=${3:-$UDP_PACKETS} rb0 rb1
    rb0=$(udp_rcvbuf_errors)
    local bps=$((rate * UDP_LEN * 8)) limit
    if ((rate > 0)); then limit=$((packets / rate + 20)); else
        limit=$((packets / 50000 + 20))
        bps=0
    fi
    bg "$WORK/iperf3-s-$tag.json" timeout $((limit + 10)) \
        "${SRV[@]}" iperf3 -s -1 -J -B "$ADDR_S" -p "$IPERF_PORT"
    local spid=$BG
    wait_listen "$IPERF_PORT"
    # -w 4M: socket buffers on both ends (capped by net.core.rmem_max).
    timeout "$limit" "${CLI[@]}" \
        iperf3 -c "$ADDR_S" -p "$IPERF_PORT" -u -l "$UDP_LEN" -b "$bps" -k "$packets" -w 4M -J \
        >"$WORK/iperf3-c-$tag.json" 2>&1 ||
        die "iperf3 UDP client failed ($tag): $(tail -3 "$WORK/iperf3-c-$tag.json")"
    wait_pid "$spid" 10 || die "iperf3 server did not finish ($tag)"
    # Received per the server; lost = sent (per the client) - received, so
    # that datagrams missing at the end count too (iperf3's lost_packets
    # only counts gaps).
    local sent sender
    sent=$(jq -r '.end.sum.packets' "$WORK/iperf3-c-$tag.json")
    sender=$(jq -r '.end.sum_sent // .end.sum | .packets / .seconds | floor' "$WORK/iperf3-c-$tag.json")
    rb1=$(udp_rcvbuf_errors)
    OUT=$(jq -r --argjson sent "$sent" --argjson rb $((rb1 - rb0)) --argjson tx "$sender" '.end.sum |
        (.packets - .lost_packets) as $got |
        [$got / .seconds, $got, $sent - $got, $rb, $tx, $sent - .packets] | map(floor | tostring) | join(" ")' \
        "$WORK/iperf3-s-$tag.json")
}

# New TCP connections/s: OUT="rate connections errors".
m_conn() {
    local tag=$1
    timeout $((CONN_SECS + 20)) "${CLI[@]}" "$CONNRATE" client "$ADDR_S:$CONN_PORT" \
        --count "$CONN_COUNT" --concurrency "$CONN_CONCURRENCY" --max-secs "$CONN_SECS" \
        >"$WORK/connrate-$tag.txt" 2>&1 || die "connrate client failed ($tag): $(tail -3 "$WORK/connrate-$tag.txt")"
    OUT=$(sed -n 's/.*connections=\([0-9]*\) errors=\([0-9]*\) secs=[0-9.]* rate=\([0-9]*\).*/\3 \1 \2/p' \
        "$WORK/connrate-$tag.txt")
    [[ -n $OUT ]] || die "no result from connrate ($tag): $(tail -3 "$WORK/connrate-$tag.txt")"
}

wait_listen() {
    local port=$1 end=$((SECONDS + 10))
    until in_s ss -Hltn "sport = :$port" | grep -q .; do
        ((SECONDS < end)) || die "nothing listens on $ADDR_S:$port"
        sleep 0.05
    done
}

# run_one TEST MODE REP: one measurement; MODE is "with" (portcullis
# started before, stopped after, queue counters read around it) or
# "without".
declare -A RES   # RES[test-mode-rep] = OUT of m_<test>
run_one() {
    local test=$1 mode=$2 rep=$3 tag="$1-$2-$3" qd0 ud0 id0 rh0 qd1 ud1 id1 rh1
    if [[ $mode == with ]]; then
        local cfg=""
        [[ $test == udp ]] && cfg=$WORK/udp.json
        pc_start "$tag" "$cfg"
        local before after
        before=$(qcounters) || die "cannot read the queue counters"
        before+=" $(rule_hits)"
        case $test in
        tcp) m_tcp "$tag" ;;
        udp) m_udp "$tag" "$UDP_RATE" ;;
        conn) m_conn "$tag" ;;
        esac
        RES[$tag]=$OUT
        after=$(qcounters) || die "cannot read the queue counters"
        after+=" $(rule_hits)"
        pc_stop
        read -r qd0 ud0 id0 rh0 <<<"$before"
        read -r qd1 ud1 id1 rh1 <<<"$after"
        # Packets sent to the queue but never handed to user space: let
        # through uninspected (fail-open on a full queue; not counted by
        # queue_dropped). "-" when the queue rule has no counter we can read.
        local bypass=-
        [[ $rh0 != - && $rh1 != - ]] && bypass=$(((rh1 - rh0) - (id1 - id0)))
        QSTAT[$tag]="$((qd1 - qd0)) $((ud1 - ud0)) $((id1 - id0)) $bypass"
        CPU[$tag]=$PC_CPU
        WAKE[$tag]=$PC_WAKE
    else
        case $test in
        tcp) m_tcp "$tag" ;;
        udp) m_udp "$tag" "$UDP_RATE" ;;
        conn) m_conn "$tag" ;;
        esac
        RES[$tag]=$OUT
    fi
    local f
    read -r -a f <<<"${RES[$tag]}"
    case $test in
    tcp) f=("$(printf '%.2f' "${f[0]}") Gbit/s") ;;
    udp) f=("${f[0]} packets/s, received ${f[1]}, lost ${f[2]} (rcvbuf ${f[3]}, tail ${f[5]}), sender reached ${f[4]}/s") ;;
    conn) f=("${f[0]} connections/s, ${f[1]} done, ${f[2]} errors") ;;
    esac
    if [[ -n ${QSTAT[$tag]:-} ]]; then
        read -r qd0 ud0 id0 rh0 <<<"${QSTAT[$tag]}"
        f+=("| queue_dropped $qd0, user_dropped $ud0, queued $id0, uninspected $rh0," \
            "portcullis CPU ${CPU[$tag]} s, packet-thread wakeups ${WAKE[$tag]}")
    fi
    log "  $tag: ${f[*]}"
}
declare -A QSTAT CPU WAKE
PC_CPU="" PC_WAKE=""

# run_test TEST: RUNS repetitions; odd ones measure without portcullis
# first, even ones with portcullis first.
run_test() {
    local test=$1 rep
    for ((rep = 1; rep <= RUNS; rep++)); do
        if [[ $WITH == 0 ]]; then
            run_one "$test" without "$rep"
        elif ((rep % 2)); then
            run_one "$test" without "$rep"
            run_one "$test" with "$rep"
        else
            run_one "$test" with "$rep"
            run_one "$test" without "$rep"
        fi
    done
}

# ---------------------------------------------------------------- run
log "portcullis inline benchmark: $(nproc) cores, load average at start $LOAD"
log "work directory $WORK"

if [[ $TESTS == *" tcp "* ]]; then
log "1. TCP bulk (iperf3 -t $TCP_SECS)"
run_test tcp
fi

# Offered UDP rate: what the no-firewall path delivers without loss.
UDP_CAL=""
if [[ $TESTS == *" udp "* ]]; then
if [[ -z $UDP_RATE ]]; then
    log "2. UDP: calibrating the offered rate on the no-firewall path"
    m_udp cal-max 0 $((UDP_PACKETS / 2))
    read -r max _ lost _ <<<"$OUT"
    log "  unlimited sender: $max packets/s delivered ($lost lost)"
    rate=$((max * 9 / 10 / 1000 * 1000))
    for try in 1 2 3 4 5; do
        m_udp "cal-$try" "$rate" $((UDP_PACKETS / 2))
        read -r got _ lost _ <<<"$OUT"
        log "  offered $rate/s: $got/s delivered, $lost lost"
        # Lossless enough: at most 0.1 % lost.
        ((lost * 1000 <= UDP_PACKETS / 2)) && break
        rate=$((rate * 85 / 100))
    done
    UDP_RATE=$rate
    UDP_CAL="calibrated: unlimited sender delivered $max/s without portcullis; offered 90 % of that, less 15 % per try losing > 0.1 %"
fi
log "2. UDP $UDP_LEN-byte datagrams, $UDP_PACKETS at $UDP_RATE/s"
run_test udp
fi

if [[ $TESTS == *" conn "* ]]; then
log "3. new TCP connections (connrate, $CONN_COUNT x $CONN_CONCURRENCY threads, <= $CONN_SECS s)"
bg "$WORK/connrate-server.txt" timeout 3600 "${SRV[@]}" "$CONNRATE" server "$ADDR_S:$CONN_PORT" --max-secs 3500
wait_listen "$CONN_PORT"
run_test conn
fi

# ---------------------------------------------------------------- report
col() { # col TEST MODE FIELD -> median of that field over the runs, or "nan"
    local test=$1 mode=$2 field=$3 rep vals=()
    for ((rep = 1; rep <= RUNS; rep++)); do
        local r=${RES[$test-$mode-$rep]:-}
        [[ -n $r ]] && vals+=("$(awk -v f="$field" '{print $f}' <<<"$r")")
    done
    ((${#vals[@]})) || { echo "nan"; return; }
    printf '%s\n' "${vals[@]}" | median
}
runs() {
    local test=$1 mode=$2 field=$3 fmt=$4 rep out=()
    for ((rep = 1; rep <= RUNS; rep++)); do
        local r=${RES[$test-$mode-$rep]:-}
        [[ -n $r ]] && out+=("$(awk -v f="$field" -v fmt="$fmt" '{printf fmt, $f}' <<<"$r")")
    done
    local IFS=' '
    echo "${out[*]:-}"
}
verdict() { # verdict RATIO TARGET
    awk -v r="$1" -v t="$2" 'BEGIN {if (r=="n/a") print ""; else if (r+0 >= t+0) print "met"; else print "MISSED"}'
}

tcp_off=$(col tcp without 1); tcp_on=$(col tcp with 1)
udp_off=$(col udp without 1); udp_on=$(col udp with 1)
con_off=$(col conn without 1); con_on=$(col conn with 1)
tcp_r=$(ratio "$tcp_on" "$tcp_off")
udp_r=$(ratio "$udp_on" "$udp_off")
con_r=$(ratio "$con_on" "$con_off")

# Totals over all runs. bypassed: packets let through uninspected
# (fail-open on a full queue), from the queue rule's counter; where that
# cannot be read, estimated as datagrams received beyond those queued.
qd=0 ud=0 queued=0 recv_with=0 bypassed=0 bypass_exact=1 lost_off=0 lost_on=0 rb_off=0 rb_on=0
tail_off=0 tail_on=0
conn_err=0 conn_bypassed=0 conn_qd=0 conn_ud=0
for ((rep = 1; rep <= RUNS; rep++)); do
    if [[ -n ${RES[udp-with-$rep]:-} ]]; then
        read -r _ got lost rb _ tl <<<"${RES[udp-with-$rep]}"
        tail_on=$((tail_on + tl))
        read -r a b c d <<<"${QSTAT[udp-with-$rep]}"
        qd=$((qd + a)) ud=$((ud + b)) queued=$((queued + c))
        recv_with=$((recv_with + got)) lost_on=$((lost_on + lost)) rb_on=$((rb_on + rb))
        if [[ $d == - ]]; then
            bypass_exact=0
            ((got > c)) && bypassed=$((bypassed + got - c))
        else
            bypassed=$((bypassed + d))
        fi
    fi
    if [[ -n ${QSTAT[conn-with-$rep]:-} ]]; then
        read -r a b _ d <<<"${QSTAT[conn-with-$rep]}"
        conn_qd=$((conn_qd + a)) conn_ud=$((conn_ud + b))
        [[ $d != - ]] && conn_bypassed=$((conn_bypassed + d))
    fi
    if [[ -n ${RES[udp-without-$rep]:-} ]]; then
        read -r _ _ lost rb _ tl <<<"${RES[udp-without-$rep]}"
        lost_off=$((lost_off + lost)) rb_off=$((rb_off + rb)) tail_off=$((tail_off + tl))
    fi
    for m in with without; do
        if [[ -n ${RES[conn-$m-$rep]:-} ]]; then
            read -r _ _ e <<<"${RES[conn-$m-$rep]}"
            conn_err=$((conn_err + e))
        fi
    done
done

fmt() { awk -v v="$1" -v f="$2" 'BEGIN {if (v=="nan") print "-"; else printf f, v}'; }
# cell TEST MODE FORMAT: "median [run run run]", or "-".
cell() {
    local m
    m=$(col "$1" "$2" 1)
    if [[ $m == nan ]]; then echo "-"; else echo "$(fmt "$m" "$3") [$(runs "$1" "$2" 1 "$3")]"; fi
}

echo
echo "portcullis inline benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -r), $(nproc) cores"
echo "load average at start: $LOAD"
[[ $PIN == 1 ]] && echo "pinned: client side on CPU 0, server side and portcullis on CPU 1"
echo "each figure: median of $RUNS runs (runs in brackets), with/without alternating"
[[ $WITH == 0 ]] && echo "portcullis NOT measured (no \`run\` command or WITHOUT_ONLY=1): the 'with' column is empty"
echo
printf '%-36s %-34s %-34s %-6s %s\n' test "without portcullis" "with portcullis" ratio target
printf '%-36s %-34s %-34s %-6s %s\n' \
    "TCP bulk, iperf3 -t $TCP_SECS (Gbit/s)" \
    "$(cell tcp without '%.1f')" \
    "$(cell tcp with '%.1f')" \
    "$tcp_r" ">= 0.95 $(verdict "$tcp_r" 0.95)"
printf '%-36s %-34s %-34s %-6s %s\n' \
    "UDP ${UDP_LEN} B, all queued (packets/s)" \
    "$(cell udp without '%d')" \
    "$(cell udp with '%d')" \
    "$udp_r" ">= 0.8 $(verdict "$udp_r" 0.8)"
printf '%-36s %-34s %-34s %-6s %s\n' \
    "new TCP connections/s" \
    "$(cell conn without '%d')" \
    "$(cell conn with '%d')" \
    "$con_r" ">= 0.7 $(verdict "$con_r" 0.7)"
echo
echo "UDP: offered $UDP_RATE packets/s, $UDP_PACKETS per run${UDP_CAL:+ ($UDP_CAL)}"
echo "UDP: lost (sent - received), all runs: without $lost_off${RES[udp-with-1]:+, with $lost_on};" \
    "of them at a full socket receive buffer (Udp RcvbufErrors): without $rb_off${RES[udp-with-1]:+, with $rb_on};" \
    "of them only at the end of a run (tail): without $tail_off${RES[udp-with-1]:+, with $tail_on}"
if [[ $WITH == 1 ]]; then
    how="from the queue rule's counter"
    ((bypass_exact)) || how="estimated: received - queued"
    echo "UDP: NFQUEUE $QNUM, all 'with' runs: queue_dropped $qd, user_dropped $ud," \
        "passed uninspected (fail-open, queue full) $bypassed ($how);" \
        "queued to user space $queued for $recv_with datagrams received"
    cpus=() per=()
    for ((rep = 1; rep <= RUNS; rep++)); do
        cpus+=("${CPU[udp-with-$rep]:-?}")
        read -r _ _ c _ <<<"${QSTAT[udp-with-$rep]:-- - - -}"
        per+=("$(awk -v q="$c" -v w="${WAKE[udp-with-$rep]:-?}" 'BEGIN {if (w+0 > 0) printf "%.1f", q / w; else print "?"}')")
    done
    echo "UDP: portcullis per 'with' run, start to stop: CPU time (s) ${cpus[*]};" \
        "packets queued per packet-thread wakeup ${per[*]}"
fi
sender=()
for m in without with; do
    for ((rep = 1; rep <= RUNS; rep++)); do
        [[ -n ${RES[udp-$m-$rep]:-} ]] && sender+=("$m:$(awk '{print $5}' <<<"${RES[udp-$m-$rep]}")")
    done
done
echo "UDP: rate the iperf3 sender reached per run (packets/s): ${sender[*]}"
echo "connections: errors (timeouts, refusals), all runs: $conn_err"
if [[ $WITH == 1 ]]; then
    echo "connections: all 'with' runs: queue_dropped $conn_qd, user_dropped $conn_ud," \
        "passed uninspected (fail-open, queue full) $conn_bypassed"
fi
if [[ $WITH == 1 ]] && ((qd + ud + bypassed + conn_qd + conn_ud + conn_bypassed > 0)); then
    echo "WARNING: packets were dropped by the queue or passed it uninspected; see above"
fi

FAILED=0
