#!/usr/bin/env bash
# bench/inline.sh: what `portcullis run` costs on the packet path, beside
# the limits any firewall of its kind has, measured in the same run.
#
# The same traffic on up to five paths, between two network namespaces this
# script creates and deletes:
#   client pcbc<pid> 198.18.10.2/24  <-- veth -->  server pcbs<pid> 198.18.10.1/24
# Everything that filters runs in the server namespace.
#
# Paths (what the server namespace has while one measurement runs):
#   none   no rule at all
#   ct     conntrack-only: `ct state established,related accept` on input,
#          forward and output (the limit of any stateful firewall)
#   nflog  `ct state new log group G queue-threshold K`, read by a trivial
#          reader ($NFLOG_READER, default tcpdump -i nflog:G -w /dev/null)
#   nfq    an iptables NFQUEUE rule (this kernel has no nft `queue`) with the
#          selection the test names, read by the accept-all reader
#          ($NFQ_READER, default nfq_accept --quiet)
#   ctlog  the conntrack-only ruleset whose input chain also copies new flows
#          to the NFLOG reader: observing every new flow under conntrack
#   nfqct  the same reader with conntrack running (the conntrack-only table
#          loaded too): what holding costs under any stateful firewall
#   pc     the real `portcullis run`
#   pcblk  (DNS only) the same portcullis, queried for blocked names
#   pcb    another build of portcullis ($PORTCULLIS_B), for an A/B of two
#          builds in the same rounds (any test; not in the defaults)
#
# Tests (TESTS, default all):
#   conn  new TCP connections/s (connrate)             none ct nflog ctlog nfq pc
#   udp   64-byte UDP packets/s, one established flow,
#         unlimited iperf3 sender, nothing queued       none ct nflog nfq pc
#   tcp   TCP bulk throughput (iperf3, one stream)      none ct pc
#   udpq  64-byte UDP, every UDP packet queued          none nfq nfqct pc
#   dns   DNS queries/s (dnsperf -> dnsmasq)            none nfq nfqct pc pcblk
#
# Rounds are interleaved: round r measures every path of a test once, in
# an order rotated by one each round. The report gives per path the median
# and the single values, ratios to "no rule", to conntrack-only and to the
# accept-all reader, and the targets. See bench/README.md.
#
# Run as root from anywhere:  bench/inline.sh
# Settings (environment), with defaults:
#   ROUNDS=5                    interleaved rounds
#   TESTS="conn udp tcp udpq dns"
#   PATHS_CONN="none ct nflog ctlog nfq pc"  (PATHS_UDP, PATHS_TCP, PATHS_UDPQ,
#                               PATHS_DNS likewise: a subset of each test's paths)
#   CONN_COUNT=60000 CONN_CONCURRENCY=16 CONN_SECS=10
#   UDP_PACKETS=1000000         datagrams per established-flow run (iperf3 -k)
#   TCP_SECS=5                  iperf3 -t
#   UDPQ_PACKETS=1000000        datagrams per all-queued run
#   UDPQ_RATE=                  offered packets/s; empty: calibrated on the
#                               no-rule path; 0: unlimited
#   DNS_SECS=10 DNS_QPS= DNS_NAMES=5000 DNS_CLIENTS=4 DNS_THREADS=1
#   DNS_OUTSTANDING=100 DNS_MAX_QUERIES=3000000
#   UDP_MAX_SECS=30             hard time bound of one UDP run
#   NFLOG_GROUP=5 NFLOG_THRESHOLD=32
#   NFLOG_READER='tcpdump -i nflog:@GROUP@ -w /dev/null'
#   NFQ_QUEUE=7
#   NFQ_READER='<nfq_accept> --quiet --spin 50 @QUEUE@ 86400'
#   PORTCULLIS CONNRATE NFQ_ACCEPT   binaries (default
#                               ${CARGO_TARGET_DIR:-target}/release/...; built if missing)
#   PORTCULLIS_B                the build path pcb runs (required for pcb)
#   PIN=1                       client side on CPU 0, server side on CPU 1
#   KEEP_LOGS=1                 keep the work directory (kept anyway on failure)

set -Eeuo pipefail

ROUNDS=${ROUNDS:-5}
TESTS=" ${TESTS:-conn udp tcp udpq dns} "
PATHS_CONN=${PATHS_CONN:-none ct nflog ctlog nfq pc}
PATHS_UDP=${PATHS_UDP:-none ct nflog nfq pc}
PATHS_TCP=${PATHS_TCP:-none ct pc}
PATHS_UDPQ=${PATHS_UDPQ:-none nfq nfqct pc}
PATHS_DNS=${PATHS_DNS:-none nfq nfqct pc pcblk}
CONN_COUNT=${CONN_COUNT:-60000}
CONN_CONCURRENCY=${CONN_CONCURRENCY:-16}
CONN_SECS=${CONN_SECS:-10}
UDP_PACKETS=${UDP_PACKETS:-1000000}
UDP_MAX_SECS=${UDP_MAX_SECS:-30}
UDP_LEN=64
TCP_SECS=${TCP_SECS:-5}
UDPQ_PACKETS=${UDPQ_PACKETS:-1000000}
UDPQ_RATE=${UDPQ_RATE:-}
DNS_SECS=${DNS_SECS:-10}
DNS_QPS=${DNS_QPS:-}
DNS_NAMES=${DNS_NAMES:-5000}
DNS_CLIENTS=${DNS_CLIENTS:-4}
DNS_THREADS=${DNS_THREADS:-1}
DNS_OUTSTANDING=${DNS_OUTSTANDING:-100}
DNS_MAX_QUERIES=${DNS_MAX_QUERIES:-3000000}
NFLOG_GROUP=${NFLOG_GROUP:-5}
NFLOG_THRESHOLD=${NFLOG_THRESHOLD:-32}
NFLOG_READER=${NFLOG_READER:-tcpdump -i nflog:@GROUP@ -w /dev/null}
NFQ_QUEUE=${NFQ_QUEUE:-7}
KEEP_LOGS=${KEEP_LOGS:-0}
PIN=${PIN:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NS_C=pcbc$$
NS_S=pcbs$$
IF_C=vpcbc$$
IF_S=vpcbs$$
ADDR_C=198.18.10.2
ADDR_S=198.18.10.1
DNS_ANSWER=198.18.10.53
IPERF_PORT=5201
CONN_PORT=5301
TABLE=pcbench    # our nft table and the comment on our iptables rule

WORK=""
PIDS=()          # every background process this script started
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
    # Deleting a namespace removes its veth end, every rule and every
    # conntrack entry in it.
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

# stop_pid PID: SIGTERM, wait up to 15 s, then SIGKILL; 0 if it stopped
# on SIGTERM.
stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    wait_pid "$pid" 15 && return 0
    kill -KILL "$pid" 2>/dev/null || true
    wait_pid "$pid" 5 || true
    return 1
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
# The load generators and the measured side, optionally on separate CPUs.
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a=="nan" || b=="nan" || b+0==0) print "-"; else printf "%.2f", a/b}'; }

# ---------------------------------------------------------------- checks
[[ $(id -u) == 0 ]] || die "run as root (network namespaces, nftables, NFQUEUE)"
for t in ip:iproute2 iperf3:iperf3 jq:jq timeout:coreutils ss:iproute2 taskset:util-linux \
    nft:nftables iptables:iptables iptables-save:iptables conntrack:conntrack; do
    command -v "${t%%:*}" >/dev/null || die "\`${t%%:*}\` is missing: apt-get install ${t#*:}"
done
if [[ $TESTS == *" dns "* ]]; then
    for t in dnsperf:dnsperf dnsmasq:dnsmasq; do
        command -v "${t%%:*}" >/dev/null || die "\`${t%%:*}\` is missing: apt-get install ${t#*:}"
    done
fi
for t in $TESTS; do
    [[ $t =~ ^(conn|udp|tcp|udpq|dns)$ ]] || die "unknown test '$t' in TESTS (conn udp tcp udpq dns)"
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"

# The paths each test may measure, and which it does (PATHS_<TEST>).
declare -A ALLOWED=([conn]="none ct nflog ctlog nfq pc pcb" [udp]="none ct nflog ctlog nfq pc pcb"
    [tcp]="none ct nflog nfq pc pcb" [udpq]="none ct nfq nfqct pc pcb" [dns]="none ct nfq nfqct pc pcblk pcb")
declare -A PATHS=([conn]=$PATHS_CONN [udp]=$PATHS_UDP [tcp]=$PATHS_TCP [udpq]=$PATHS_UDPQ [dns]=$PATHS_DNS)
NEED_PC=0 NEED_NFQ=0 NEED_NFLOG=0
for t in $TESTS; do
    for p in ${PATHS[$t]}; do
        [[ " ${ALLOWED[$t]} " == *" $p "* ]] || die "path '$p' is not one of test $t's: ${ALLOWED[$t]}"
        case $p in pc | pcblk) NEED_PC=1 ;; nfq | nfqct) NEED_NFQ=1 ;; nflog | ctlog) NEED_NFLOG=1 ;; esac
        if [[ $p == pcb ]]; then
            NEED_PC=1
            [[ -x ${PORTCULLIS_B:-} ]] || die "path pcb needs PORTCULLIS_B, an executable portcullis build"
        fi
    done
done

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PORTCULLIS=${PORTCULLIS:-$TARGET/release/portcullis}
CONNRATE=${CONNRATE:-$TARGET/release/examples/connrate}
NFQ_ACCEPT=${NFQ_ACCEPT:-$TARGET/release/examples/nfq_accept}
# --spin 50: the queue settings portcullis uses (crates/portcullis/src/path/inline.rs).
NFQ_READER=${NFQ_READER:-$NFQ_ACCEPT --quiet --spin 50 @QUEUE@ 86400}
build() { # build BINARY CARGO-ARGS...: build when missing
    local bin=$1
    shift
    [[ -x $bin ]] && return 0
    log "building $bin (cargo build --release $*)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release -q "$@") || die "could not build $bin"
    [[ -x $bin ]] || die "$bin is still missing after the build (PORTCULLIS/CONNRATE/NFQ_ACCEPT point elsewhere?)"
}
[[ $TESTS == *" conn "* ]] && build "$CONNRATE" -p portcullis-testnet --example connrate
((NEED_NFQ)) && [[ $NFQ_READER == "$NFQ_ACCEPT "* ]] && build "$NFQ_ACCEPT" -p portcullis-nfqueue --example nfq_accept
((NEED_NFLOG)) && { command -v "${NFLOG_READER%% *}" >/dev/null || die "NFLOG reader '${NFLOG_READER%% *}' is missing (tcpdump: apt-get install tcpdump)"; }
PC_EXTRA=()
if ((NEED_PC)); then
    build "$PORTCULLIS" -p portcullis
    "$PORTCULLIS" run --help >/dev/null 2>&1 || die "$PORTCULLIS has no \`run\` command"
    "$PORTCULLIS" run --help 2>&1 | grep -q -- '--quiet' && PC_EXTRA+=(--quiet)
fi

# One connrate run leaves up to CONN_COUNT conntrack entries (TIME_WAIT,
# 120 s); the table is flushed before each measurement, so one run must fit.
ct_max=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo 262144)
if [[ $TESTS == *" conn "* ]] && ((CONN_COUNT + 1000 > ct_max * 8 / 10)); then
    die "CONN_COUNT $CONN_COUNT would fill the conntrack table (nf_conntrack_max $ct_max)"
fi

WORK=$(mktemp -d /tmp/pcbench.XXXXXX)
PC_EXTRA+=(--socket "$WORK/portcullis.sock" --state-dir "$WORK/state")
mkdir -p "$WORK/state"
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

# portcullis configurations: the default policy (no file) for conn, udp
# and tcp; every UDP packet queued for udpq; a blocked domain for dns.
cat >"$WORK/udpq.json" <<'EOF'
{"inline": {"queue_all": ["UDP"]}, "scan": {"enabled": false}, "events": {"dns_queries": false}}
EOF
cat >"$WORK/dns.json" <<'EOF'
{"block": {"domain": ["blocked.bench.test"]}}
EOF
declare -A PC_CONFIG=([conn]="" [udp]="" [tcp]="" [udpq]=$WORK/udpq.json [dns]=$WORK/dns.json)
# What the accept-all reader's iptables rule selects, per test: what
# portcullis queues there.
declare -A NFQ_SELECT=([conn]="-m conntrack --ctstate NEW" [udp]="-m conntrack --ctstate NEW"
    [tcp]="-m conntrack --ctstate NEW" [udpq]="-p udp" [dns]="-p udp --dport 53")

# ---------------------------------------------------------------- counters
# qcounters Q: "queue_dropped user_dropped id_sequence" of queue Q in the
# server namespace (id_sequence: packets handed to user space so far).
qcounters() {
    in_s cat /proc/net/netfilter/nfnetlink_queue 2>/dev/null |
        awk -v q="$1" '$1 == q {print $6, $7, $8; found=1} END {exit !found}'
}

# rule_hits COMMENT: packets that hit the NFQUEUE rules carrying COMMENT
# (IPv4 + IPv6), or "-" when there is none (portcullis on a kernel with
# nft `queue`).
rule_hits() {
    local n
    n=$({ in_s iptables-save -c 2>/dev/null; in_s ip6tables-save -c 2>/dev/null; } |
        awk -v c="$1" '/-j NFQUEUE/ && index($0, c) {split(substr($1, 2), n, ":"); s += n[1]; f = 1}
             END {if (f) print s; else print "-"}')
    if [[ $n == - && $1 == portcullis ]]; then
        # portcullis' xt path: the counter of the queue rule in its own
        # table's chain nfqueue.
        n=$(in_s nft list chain inet portcullis nfqueue 2>/dev/null |
            awk '/queue num/ {for (i = 1; i < NF; i++) if ($i == "packets") {s += $(i + 1); f = 1}}
                 END {if (f) print s; else print "-"}')
    fi
    echo "$n"
}

# ---------------------------------------------------------------- paths
# path_up TEST PATH TAG / path_down: set a path up in the server namespace
# and take it down again. Sets QNUM (the queue to watch, or "") and QRULE
# (the comment on its iptables rule).
CUR_PID="" QNUM="" QRULE="" READER_TAIL=""

wait_for() { # wait_for SECS WHAT COMMAND...: until COMMAND succeeds
    local secs=$1 what=$2
    local end=$((SECONDS + secs))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "$what did not happen within $secs s"
        sleep 0.05
    done
}

ct_table() { # the conntrack-only table
    local h
    echo "table inet $TABLE {"
    for h in input forward output; do
        echo "  chain $h { type filter hook $h priority 0; policy accept; ct state established,related accept; }"
    done
    echo "}"
}

nflog_table() { # copies of new flows to NFLOG group NFLOG_GROUP, nothing else
    echo "table inet $TABLE {"
    echo "  chain input { type filter hook input priority 0; policy accept;"
    echo "    ct state new log group $NFLOG_GROUP queue-threshold $NFLOG_THRESHOLD; }"
    echo "}"
}

ctlog_table() { # the conntrack-only table, its input chain copying new flows too
    local h
    echo "table inet $TABLE {"
    for h in input forward output; do
        echo "  chain $h { type filter hook $h priority 0; policy accept; ct state established,related accept;"
        [[ $h == input ]] && echo "    ct state new log group $NFLOG_GROUP queue-threshold $NFLOG_THRESHOLD;"
        echo "  }"
    done
    echo "}"
}

# reader_ready WHAT LOG COMMAND...: the reader just started (CUR_PID) has
# bound, i.e. COMMAND succeeds; dies with its log if it exits first.
reader_ready() {
    local what=$1 rlog=$2 end=$((SECONDS + 10))
    shift 2
    until "$@" >/dev/null 2>&1; do
        kill -0 "$CUR_PID" 2>/dev/null || die "the $what exited: $(tail -3 "$rlog")"
        ((SECONDS < end)) || die "the $what did not bind within 10 s: $(tail -3 "$rlog")"
        sleep 0.05
    done
}

nflog_bound() { in_s cat /proc/net/netfilter/nfnetlink_log | awk -v g="$NFLOG_GROUP" '$1 == g {f=1} END {exit !f}'; }

path_up() {
    local test=$1 path=$2 tag=$3 cmd
    QNUM="" QRULE="" CUR_PID="" READER_TAIL=""
    case $path in
    none) ;;
    ct) ct_table | in_s nft -f - ;;
    nflog | ctlog)
        if [[ $path == nflog ]]; then nflog_table | in_s nft -f -; else ctlog_table | in_s nft -f -; fi
        read -r -a cmd <<<"${NFLOG_READER//@GROUP@/$NFLOG_GROUP}"
        bg "$WORK/reader-$tag.log" "${SRV[@]}" "${cmd[@]}"
        CUR_PID=$BG
        reader_ready "NFLOG reader (group $NFLOG_GROUP)" "$WORK/reader-$tag.log" nflog_bound
        ;;
    nfq | nfqct)
        # nfqct: the same reader with conntrack running (the conntrack-only
        # table), as it runs under any stateful firewall.
        [[ $path == nfqct ]] && ct_table | in_s nft -f -
        # shellcheck disable=SC2086 # the selection is several words
        in_s iptables -I INPUT ${NFQ_SELECT[$test]} -m comment --comment "$TABLE" \
            -j NFQUEUE --queue-num "$NFQ_QUEUE" --queue-bypass
        read -r -a cmd <<<"${NFQ_READER//@QUEUE@/$NFQ_QUEUE}"
        bg "$WORK/reader-$tag.log" "${SRV[@]}" "${cmd[@]}"
        CUR_PID=$BG
        QNUM=$NFQ_QUEUE QRULE=$TABLE
        reader_ready "accept-all reader (queue $NFQ_QUEUE)" "$WORK/reader-$tag.log" qcounters "$NFQ_QUEUE"
        ;;
    pc | pcblk | pcb)
        local args=(run --events "$WORK/events-$tag.jsonl" "${PC_EXTRA[@]}") bin=$PORTCULLIS
        [[ -n ${PC_CONFIG[$test]} ]] && args+=(--config "${PC_CONFIG[$test]}")
        [[ $path == pcb ]] && bin=$PORTCULLIS_B
        bg "$WORK/portcullis-$tag.log" "${SRV[@]}" "$bin" "${args[@]}"
        CUR_PID=$BG
        local end=$((SECONDS + 15))
        while :; do
            kill -0 "$CUR_PID" 2>/dev/null ||
                die "portcullis exited during start-up: $(tail -5 "$WORK/portcullis-$tag.log")"
            QNUM=$(awk 'match($0, /running on NFQUEUE [0-9]+/) {
                print substr($0, RSTART + 19, RLENGTH - 19); exit}' "$WORK/portcullis-$tag.log")
            [[ -n $QNUM ]] && qcounters "$QNUM" >/dev/null && break
            ((SECONDS < end)) || die "portcullis did not bind its queue within 15 s: $(tail -5 "$WORK/portcullis-$tag.log")"
            sleep 0.1
        done
        QRULE=portcullis
        ;;
    *) die "unknown path $path" ;;
    esac
}

# pc_cpu / pc_wakeups: CPU seconds (user + system, all threads) portcullis
# used, and voluntary context switches of its main (packet) thread: about
# one per batch it waited for.
pc_cpu() {
    local stat
    stat=$(cat "/proc/$CUR_PID/stat" 2>/dev/null) || { echo "?"; return; }
    awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($12 + $13) / hz}' <<<"${stat##*) }"
}
pc_wakeups() {
    awk '/^voluntary_ctxt_switches/ {print $2; f = 1} END {if (!f) print "?"}' \
        "/proc/$CUR_PID/status" 2>/dev/null || echo "?"
}
# pc_status: the daemon's own counters (`portcullis status --json`):
# "received queue_dropped user_dropped uninspected overruns events_dropped
# probes_dropped observed observed_lost" (received: held in the queue;
# observed: copied through NFLOG), or "?" for what it does not report.
pc_status() {
    timeout 5 "$PORTCULLIS" status --json --socket "$WORK/portcullis.sock" 2>/dev/null |
        jq -r '[.queue.received, .queue.queue_dropped, .queue.user_dropped, .queue.uninspected,
                .queue.overruns, .events_dropped, .packets.probes_dropped,
                .observed.received, .observed.lost] |
               map(if . == null then "?" else tostring end) | join(" ")' 2>/dev/null || echo "? ? ? ? ? ? ? ? ?"
}

path_down() {
    local path=$1
    case $path in
    none) ;;
    ct) in_s nft delete table inet "$TABLE" ;;
    nflog | ctlog)
        stop_pid "$CUR_PID" || log "  (the NFLOG reader needed SIGKILL)"
        READER_TAIL=$(grep -E 'captured|dropped by kernel' "$WORK/reader-$TAG.log" | paste -sd, - || true)
        in_s nft delete table inet "$TABLE"
        ;;
    nfq | nfqct)
        stop_pid "$CUR_PID" || log "  (the accept-all reader needed SIGKILL)"
        # shellcheck disable=SC2086
        in_s iptables -D INPUT ${NFQ_SELECT[$TEST]} -m comment --comment "$TABLE" \
            -j NFQUEUE --queue-num "$NFQ_QUEUE" --queue-bypass
        # iptables-nft leaves its `ip filter` table behind, with empty base
        # chains that every later packet of every path would cross (2-3 %
        # of all-queued UDP, measured): remove it once nothing is in it.
        if [[ -z $(in_s iptables -S | grep -v '^-P ' || true) ]]; then
            in_s nft delete table ip filter
        fi
        [[ $path == nfqct ]] && in_s nft delete table inet "$TABLE"
        ;;
    pc | pcblk | pcb)
        stop_pid "$CUR_PID" || die "portcullis did not stop within 15 s of SIGTERM"
        ;;
    esac
    CUR_PID=""
    # Nothing of any path may be left: the next measurement would not be
    # what it says.
    local left
    left=$(in_s nft list tables 2>/dev/null | grep -E "inet ($TABLE|portcullis)$" || true)
    [[ -z $left ]] || die "after path $path: nft table(s) left behind: $left"
    if { in_s iptables-save; in_s ip6tables-save; } 2>/dev/null | grep -q -- '-j NFQUEUE'; then
        die "after path $path: an iptables NFQUEUE rule was left behind"
    fi
    left=$(in_s nft list ruleset | grep -vE '^[[:space:]]*(table .*\{|chain .*\{|type .*;|\}|)[[:space:]]*$' || true)
    [[ -z $left ]] || die "after path $path: rules were left behind: $(head -3 <<<"$left")"
    # iptables-nft leaves its tables and base chains behind, empty; they
    # still cost a hook traversal per packet: "no rule" means none.
    in_s nft flush ruleset
}

# ---------------------------------------------------------------- measurements
# Each sets OUT="value detail..." (they run in this shell, so that the pids
# of what they start stay in PIDS).

wait_listen() { # wait_listen PROTO PORT
    local flag=-Hltn
    [[ $1 == udp ]] && flag=-Hlun
    wait_for 10 "a listener on $ADDR_S:$2/$1" bash -c "ip netns exec $NS_S ss $flag 'sport = :$2' | grep -q ."
}

# TCP bulk throughput: OUT="Gbit/s" (receiver side).
m_tcp() {
    local tag=$1
    bg "$WORK/iperf3-s-$tag.json" timeout $((TCP_SECS + 20)) \
        "${SRV[@]}" iperf3 -s -1 -J -B "$ADDR_S" -p "$IPERF_PORT"
    local spid=$BG
    wait_listen tcp "$IPERF_PORT"
    timeout $((TCP_SECS + 15)) "${CLI[@]}" \
        iperf3 -c "$ADDR_S" -p "$IPERF_PORT" -t "$TCP_SECS" -J >"$WORK/iperf3-c-$tag.json" 2>&1 ||
        die "iperf3 TCP client failed ($tag): $(tail -3 "$WORK/iperf3-c-$tag.json")"
    wait_pid "$spid" 10 || die "iperf3 server did not finish ($tag)"
    OUT=$(jq -r '.end.sum_received.bits_per_second / 1e9 | . * 1000 | floor / 1000' "$WORK/iperf3-c-$tag.json")
}

# udp_rcvbuf_errors: datagrams the server namespace dropped at a full
# socket receive buffer (/proc/net/snmp, Udp RcvbufErrors).
udp_rcvbuf_errors() {
    in_s cat /proc/net/snmp | awk '$1 == "Udp:" {
        if (!n) {for (i = 2; i <= NF; i++) col[$i] = i; n = 1} else print $col["RcvbufErrors"]}'
}

# m_udp TAG RATE PACKETS: 64-byte UDP on one flow at RATE packets/s (0:
# as fast as iperf3 sends), PACKETS datagrams, at most UDP_MAX_SECS:
# OUT="delivered_pps received lost rcvbuf_errors sender_pps tail".
# lost = sent (client) - received (server); tail = the part of it sent
# after the last datagram the server counted (in flight or queued when
# iperf3 ended the test, or lost there).
m_udp() {
    local tag=$1 rate=$2 packets=$3 rb0 rb1
    rb0=$(udp_rcvbuf_errors)
    local bps=$((rate * UDP_LEN * 8))
    bg "$WORK/iperf3-s-$tag.json" timeout $((UDP_MAX_SECS + 10)) \
        "${SRV[@]}" iperf3 -s -1 -J -B "$ADDR_S" -p "$IPERF_PORT"
    local spid=$BG
    wait_listen tcp "$IPERF_PORT"
    # -w 4M: socket buffers on both ends (capped by net.core.rmem_max).
    timeout "$UDP_MAX_SECS" "${CLI[@]}" \
        iperf3 -c "$ADDR_S" -p "$IPERF_PORT" -u -l "$UDP_LEN" -b "$bps" -k "$packets" -w 4M -J \
        >"$WORK/iperf3-c-$tag.json" 2>&1 ||
        die "iperf3 UDP client failed or took over UDP_MAX_SECS=$UDP_MAX_SECS s ($tag): $(tail -3 "$WORK/iperf3-c-$tag.json")"
    wait_pid "$spid" 10 || die "iperf3 server did not finish ($tag)"
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

# DNS queries/s: OUT="qps completed lost noerror nxdomain".
m_dns() {
    local tag=$1 names=$2 qps=()
    [[ -n $DNS_QPS ]] && qps=(-Q "$DNS_QPS")
    timeout $((DNS_SECS + 20)) "${CLI[@]}" dnsperf -s "$ADDR_S" -d "$names" -l "$DNS_SECS" \
        -n $(((DNS_MAX_QUERIES + DNS_NAMES - 1) / DNS_NAMES)) -c "$DNS_CLIENTS" -T "$DNS_THREADS" \
        -q "$DNS_OUTSTANDING" -t 2 "${qps[@]}" >"$WORK/dnsperf-$tag.txt" 2>&1 ||
        die "dnsperf failed ($tag): $(tail -3 "$WORK/dnsperf-$tag.txt")"
    OUT=$(awk '
        /Queries per second:/ {qps = $4}
        /Queries completed:/ {done = $3}
        /Queries lost:/ {lost = $3}
        /Response codes:/ {for (i = 3; i <= NF; i++) {if ($i == "NOERROR") ok = $(i+1) + 0; if ($i == "NXDOMAIN") nx = $(i+1) + 0}}
        END {if (qps == "") exit 1; printf "%d %d %d %d %d\n", qps, done, lost, ok, nx}' \
        "$WORK/dnsperf-$tag.txt") || die "no result from dnsperf ($tag): $(tail -3 "$WORK/dnsperf-$tag.txt")"
}

# ---------------------------------------------------------------- one measurement
declare -A RES QSTAT PCSTAT PCCPU READER
# measure TEST PATH ROUND: set PATH up, run TEST once, take PATH down; the
# queue counters are read around the traffic (not around start/stop).
measure() {
    TEST=$1 PATH_=$2
    local round=$3
    TAG="$TEST-$PATH_-$round"
    local tag=$TAG key="$TEST:$PATH_:$round"
    # Every measurement starts from an empty conntrack table.
    in_s conntrack -F >/dev/null 2>&1 || true
    path_up "$TEST" "$PATH_" "$tag"
    local before="" after=""
    if [[ -n $QNUM ]]; then
        before="$(qcounters "$QNUM") $(rule_hits "$QRULE")" || die "cannot read the queue counters"
    fi
    case $TEST in
    conn) m_conn "$tag" ;;
    udp) m_udp "$tag" 0 "$UDP_PACKETS" ;;
    tcp) m_tcp "$tag" ;;
    udpq) m_udp "$tag" "$UDPQ_RATE" "$UDPQ_PACKETS" ;;
    dns) if [[ $PATH_ == pcblk ]]; then m_dns "$tag" "$WORK/names-blocked.txt"; else m_dns "$tag" "$WORK/names-allowed.txt"; fi ;;
    esac
    RES[$key]=$OUT
    if [[ -n $QNUM ]]; then
        after="$(qcounters "$QNUM") $(rule_hits "$QRULE")" || die "cannot read the queue counters"
        local qd0 ud0 id0 rh0 qd1 ud1 id1 rh1 bypass=-
        read -r qd0 ud0 id0 rh0 <<<"$before"
        read -r qd1 ud1 id1 rh1 <<<"$after"
        # Sent to the queue but never handed to user space: let through
        # uninspected (fail-open on a full queue; counted nowhere else).
        [[ $rh0 != - && $rh1 != - ]] && bypass=$(((rh1 - rh0) - (id1 - id0)))
        QSTAT[$key]="$((qd1 - qd0)) $((ud1 - ud0)) $((id1 - id0)) $bypass"
    fi
    if [[ $PATH_ == pc || $PATH_ == pcblk || $PATH_ == pcb ]]; then
        PCSTAT[$key]=$(pc_status)
        PCCPU[$key]="$(pc_cpu) $(pc_wakeups)"
    fi
    path_down "$PATH_"
    READER[$key]=$READER_TAIL
    log "  round $round $(printf '%-6s' "$PATH_") $(describe "$key")"
}

# describe KEY: one line about one measurement.
describe() {
    local key=$1 f s
    read -r -a f <<<"${RES[$key]}"
    case ${key%%:*} in
    tcp) s="${f[0]} Gbit/s" ;;
    udp | udpq) s="${f[0]} packets/s, received ${f[1]}, lost ${f[2]} (rcvbuf ${f[3]}, tail ${f[5]}), sender ${f[4]}/s" ;;
    conn) s="${f[0]} connections/s, ${f[1]} done, ${f[2]} errors" ;;
    dns) s="${f[0]} queries/s, ${f[1]} completed, ${f[2]} lost, NOERROR ${f[3]}, NXDOMAIN ${f[4]}" ;;
    esac
    if [[ -n ${QSTAT[$key]:-} ]]; then
        read -r -a f <<<"${QSTAT[$key]}"
        s+=" | queue: dropped ${f[0]}, user_dropped ${f[1]}, queued ${f[2]}, uninspected ${f[3]}"
    fi
    if [[ -n ${PCSTAT[$key]:-} ]]; then
        read -r -a f <<<"${PCSTAT[$key]}"
        s+=" | portcullis: held ${f[0]}, queue_dropped ${f[1]}, user_dropped ${f[2]}, uninspected ${f[3]}, overruns ${f[4]}, events_dropped ${f[5]}, probes_dropped ${f[6]}, observed ${f[7]:-?}, observed lost ${f[8]:-?}"
        read -r -a f <<<"${PCCPU[$key]}"
        s+=", CPU ${f[0]} s, wakeups ${f[1]}"
    fi
    [[ -n ${READER[$key]:-} ]] && s+=" | reader: ${READER[$key]}"
    echo "$s"
}

# run_test TEST: ROUNDS rounds; round r measures every path once, starting
# (r-1) places further along the list.
run_test() {
    local test=$1 r i n
    local -a paths
    read -r -a paths <<<"${PATHS[$test]}"
    n=${#paths[@]}
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < n; i++)); do
            measure "$test" "${paths[$(((i + r - 1) % n))]}" "$r"
        done
    done
}

# ---------------------------------------------------------------- run
log "portcullis inline benchmark: $(nproc) cores, load average at start $LOAD, $ROUNDS rounds"
log "work directory $WORK"

if [[ $TESTS == *" conn "* ]]; then
    log "new TCP connections (connrate, $CONN_COUNT x $CONN_CONCURRENCY threads, <= $CONN_SECS s)"
    bg "$WORK/connrate-server.txt" timeout 3600 "${SRV[@]}" "$CONNRATE" server "$ADDR_S:$CONN_PORT" --max-secs 3500
    CONN_SERVER=$BG
    wait_listen tcp "$CONN_PORT"
    run_test conn
    stop_pid "$CONN_SERVER" || true
fi

if [[ $TESTS == *" udp "* ]]; then
    log "64-byte UDP, one established flow, unlimited sender ($UDP_PACKETS datagrams per run)"
    run_test udp
fi

if [[ $TESTS == *" tcp "* ]]; then
    log "TCP bulk (iperf3 -t $TCP_SECS)"
    run_test tcp
fi

UDPQ_CAL=""
if [[ $TESTS == *" udpq "* ]]; then
    if [[ -z $UDPQ_RATE ]]; then
        # Offered rate: what the no-rule path delivers without loss.
        log "64-byte UDP, all queued: calibrating the offered rate on the no-rule path"
        m_udp cal-max 0 $((UDPQ_PACKETS / 2))
        read -r max _ lost _ <<<"$OUT"
        log "  unlimited sender: $max packets/s delivered ($lost lost)"
        rate=$((max * 9 / 10 / 1000 * 1000))
        ((rate > 0)) || rate=1000
        for try in 1 2 3 4 5; do
            m_udp "cal-$try" "$rate" $((UDPQ_PACKETS / 2))
            read -r got _ lost _ <<<"$OUT"
            log "  offered $rate/s: $got/s delivered, $lost lost"
            ((lost * 1000 <= UDPQ_PACKETS / 2)) && break
            rate=$((rate * 85 / 100))
        done
        UDPQ_RATE=$rate
        UDPQ_CAL="calibrated: unlimited sender delivered $max/s on the no-rule path; offered 90 % of that, less 15 % per try losing > 0.1 %"
    fi
    log "64-byte UDP, every UDP packet queued: $UDPQ_PACKETS datagrams per run at ${UDPQ_RATE}/s (0: unlimited)"
    run_test udpq
fi

if [[ $TESTS == *" dns "* ]]; then
    log "DNS (dnsperf -> dnsmasq, $DNS_NAMES names, <= $DNS_SECS s${DNS_QPS:+, <= $DNS_QPS q/s})"
    for ((i = 0; i < DNS_NAMES; i++)); do echo "n$i.allowed.bench.test A"; done >"$WORK/names-allowed.txt"
    for ((i = 0; i < DNS_NAMES; i++)); do echo "n$i.blocked.bench.test A"; done >"$WORK/names-blocked.txt"
    # Answers every name under bench.test itself: no upstream, no cache
    # misses; runs as root in the foreground so that we hold its pid.
    bg "$WORK/dnsmasq.log" timeout 7200 "${SRV[@]}" dnsmasq --keep-in-foreground --conf-file=/dev/null \
        --user=root --pid-file= --no-resolv --no-hosts --no-poll --bind-interfaces \
        --listen-address="$ADDR_S" --except-interface=lo --address="/bench.test/$DNS_ANSWER" \
        --log-facility=- --dns-forward-max=1000
    DNSMASQ=$BG
    wait_listen udp 53
    run_test dns
    stop_pid "$DNSMASQ" || true
fi

# ---------------------------------------------------------------- report
declare -A NAME=([none]="no rule" [ct]="conntrack-only" [nflog]="NFLOG reader" [nfq]="accept-all NFQUEUE reader"
    [nfqct]="reader + conntrack" [ctlog]="conntrack + NFLOG reader" [pc]="portcullis" [pcblk]="portcullis, blocked names"
    [pcb]="portcullis B (\$PORTCULLIS_B)")
declare -A TITLE=(
    [conn]="new TCP connections/s (connrate, $CONN_COUNT x $CONN_CONCURRENCY threads, <= $CONN_SECS s)"
    [udp]="64-byte UDP packets/s, one established flow, nothing queued (iperf3 -u -l 64, unlimited, $UDP_PACKETS per run)"
    [tcp]="TCP bulk throughput, Gbit/s (iperf3, one stream, -t $TCP_SECS)"
    [udpq]="64-byte UDP packets/s, every UDP packet queued (offered ${UDPQ_RATE:-?}/s, $UDPQ_PACKETS per run)"
    [dns]="DNS queries/s (dnsperf -c $DNS_CLIENTS -q $DNS_OUTSTANDING -l $DNS_SECS${DNS_QPS:+ -Q $DNS_QPS} -> dnsmasq, $DNS_NAMES names)")
declare -A FMT=([conn]="%d" [udp]="%d" [tcp]="%.2f" [udpq]="%d" [dns]="%d")
# Targets: "TEST PATH REFERENCE MIN-RATIO [zero-drops]".
TARGETS=(
    "conn pc ct 0.95"
    "conn pc ctlog 0.95"
    "udp pc ct 0.95"
    "tcp pc ct 0.97"
    "udpq pc nfq 0.95 zero-drops"
    "dns pc nfq 0.95"
    "dns pcblk nfq 0.95"
    "udpq pc nfqct 0.95"
    "dns pc nfqct 0.95"
)

vals() { # vals TEST PATH -> the single values, in round order
    local r
    for ((r = 1; r <= ROUNDS; r++)); do
        [[ -n ${RES[$1:$2:$r]:-} ]] && awk '{print $1}' <<<"${RES[$1:$2:$r]}"
    done
    return 0
}
med() { vals "$1" "$2" | median; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN {if (v=="nan") print "-"; else printf f "\n", v}'; }
measured() { [[ " ${PATHS[$1]} " == *" $2 "* && $TESTS == *" $1 "* ]]; }
drops() { # drops TEST PATH -> "queue_dropped user_dropped queued uninspected" summed over rounds
    local r a b c d qd=0 ud=0 q=0 un=0 exact=1
    for ((r = 1; r <= ROUNDS; r++)); do
        [[ -n ${QSTAT[$1:$2:$r]:-} ]] || continue
        read -r a b c d <<<"${QSTAT[$1:$2:$r]}"
        qd=$((qd + a)) ud=$((ud + b)) q=$((q + c))
        if [[ $d == - ]]; then exact=0; else un=$((un + d)); fi
    done
    ((exact)) || un="$un(+?)"
    echo "$qd $ud $q $un"
}

echo
echo "portcullis inline benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(uname -r), $(nproc) cores"
echo "load average at start: $LOAD; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
[[ $PIN == 1 ]] && echo "pinned: client side on CPU 0, server side (servers, readers, portcullis) on CPU 1"
echo "each figure: median of $ROUNDS interleaved rounds (single values in round order in brackets)"
echo "NFLOG reader: ${NFLOG_READER//@GROUP@/$NFLOG_GROUP}; accept-all reader: ${NFQ_READER//@QUEUE@/$NFQ_QUEUE}"

for test in $TESTS; do
    echo
    echo "${TITLE[$test]}"
    printf '  %-28s %10s  %-44s %7s %7s %7s %7s\n' path median "rounds" "/none" "/ct" "/nfq" "/nfq+ct"
    for p in ${PATHS[$test]}; do
        m=$(med "$test" "$p")
        singles=$(vals "$test" "$p" | while read -r v; do fmt "$v" "${FMT[$test]}"; done | tr '\n' ' ')
        rn=- rc=- rq=- rqc=-
        measured "$test" none && rn=$(ratio "$m" "$(med "$test" none)")
        measured "$test" ct && rc=$(ratio "$m" "$(med "$test" ct)")
        measured "$test" nfq && rq=$(ratio "$m" "$(med "$test" nfq)")
        measured "$test" nfqct && rqc=$(ratio "$m" "$(med "$test" nfqct)")
        printf '  %-28s %10s  %-44s %7s %7s %7s %7s\n' "${NAME[$p]}" "$(fmt "$m" "${FMT[$test]}")" \
            "[${singles% }]" "$rn" "$rc" "$rq" "$rqc"
    done
    # Losses and queue counters, summed over the rounds.
    for p in ${PATHS[$test]}; do
        extra=""
        case $test in
        udp | udpq)
            lost=0 rb=0 tl=0
            for ((r = 1; r <= ROUNDS; r++)); do
                [[ -n ${RES[$test:$p:$r]:-} ]] || continue
                read -r _ _ a b _ c <<<"${RES[$test:$p:$r]}"
                lost=$((lost + a)) rb=$((rb + b)) tl=$((tl + c))
            done
            extra="datagrams lost $lost (at a full receive buffer $rb, at the end $tl)"
            ;;
        conn)
            e=0
            for ((r = 1; r <= ROUNDS; r++)); do
                [[ -n ${RES[$test:$p:$r]:-} ]] && e=$((e + $(awk '{print $3}' <<<"${RES[$test:$p:$r]}")))
            done
            extra="connection errors $e"
            ;;
        dns)
            l=0 ok=0 nx=0
            for ((r = 1; r <= ROUNDS; r++)); do
                [[ -n ${RES[$test:$p:$r]:-} ]] || continue
                read -r _ _ a b c <<<"${RES[$test:$p:$r]}"
                l=$((l + a)) ok=$((ok + b)) nx=$((nx + c))
            done
            extra="queries lost $l, answers NOERROR $ok, NXDOMAIN $nx"
            ;;
        esac
        if [[ $p == nfq || $p == nfqct || $p == pc || $p == pcblk || $p == pcb ]]; then
            read -r a b c d <<<"$(drops "$test" "$p")"
            extra+="${extra:+; }queue: queue_dropped $a, user_dropped $b, passed uninspected $d, handed to user space $c"
        fi
        if [[ $p == pc || $p == pcblk || $p == pcb ]]; then
            st=() cpu=()
            for ((r = 1; r <= ROUNDS; r++)); do
                [[ -n ${PCSTAT[$test:$p:$r]:-} ]] || continue
                read -r -a f <<<"${PCSTAT[$test:$p:$r]}"
                st+=("${f[1]}/${f[2]}/${f[3]}/${f[4]}/${f[5]}/${f[6]}/${f[0]}/${f[7]:-?}/${f[8]:-?}")
                read -r -a f <<<"${PCCPU[$test:$p:$r]}"
                cpu+=("${f[0]}")
            done
            extra+="; portcullis' own counters per round (queue_dropped/user_dropped/uninspected/overruns/events_dropped/probes_dropped/held/observed/observed_lost): ${st[*]}; CPU s: ${cpu[*]}"
        fi
        if [[ $p == nflog || $p == ctlog ]]; then
            # What tcpdump says at exit, per round: captured/dropped by kernel.
            rd=()
            for ((r = 1; r <= ROUNDS; r++)); do
                [[ -n ${RES[$test:$p:$r]:-} ]] || continue
                rd+=("$(awk -v RS=, '/captured/ {c = $1} /dropped by kernel/ {d = $1} END {printf "%s/%s", c == "" ? "?" : c, d == "" ? "?" : d}' <<<"${READER[$test:$p:$r]:-}")")
            done
            extra+="${extra:+; }reader per round, captured/dropped by kernel (tcpdump's count; ? if the reader reports none): ${rd[*]:-?}"
        fi
        [[ -n $extra ]] && echo "  ${NAME[$p]}: $extra"
    done
    [[ $test == udpq && -n $UDPQ_CAL ]] && echo "  offered rate $UDPQ_CAL"
done

echo
echo "targets"
warn=0 shown=0
for t in "${TARGETS[@]}"; do
    read -r test p ref min cond <<<"$t"
    measured "$test" "$p" && measured "$test" "$ref" || continue
    shown=1
    r=$(ratio "$(med "$test" "$p")" "$(med "$test" "$ref")")
    v=$(awk -v r="$r" -v t="$min" 'BEGIN {
        if (r == "-") print "no figure";
        else if (r + 0 >= t + 0) printf "met (%.2f >= %.2f, %+.2f)", r, t, r - t;
        else printf "MISSED by %.2f (%.2f < %.2f; %.0f %% short)", t - r, r, t, (t - r) / t * 100}')
    if [[ $cond == zero-drops ]]; then
        read -r a b _ d <<<"$(drops "$test" "$p")"
        if [[ $a == 0 && $b == 0 && $d == "0(+?)" ]]; then
            v="$v; zero drops: queue counters 0, packets passed uninspected not countable (no iptables queue rule)"
        elif [[ $a != 0 || $b != 0 || $d != 0 ]]; then
            v="$v; zero drops MISSED (queue_dropped $a, user_dropped $b, uninspected $d)"
            warn=1
        else
            v="$v; zero drops met"
        fi
    fi
    printf '  %-5s %-27s >= %s x %-26s %s\n' "$test" "${NAME[$p]}" "$min" "${NAME[$ref]}" "$v"
done
((shown)) || echo "  none: no test measured both a target's path and its reference"
((warn)) && echo "WARNING: packets were dropped by the queue or passed it uninspected; see above"

FAILED=0
