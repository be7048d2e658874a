#!/usr/bin/env bash
# bench/bans.sh: how long `portcullis ban` takes, end to end (control
# socket, kernel set update), with an empty conntrack table and with a full
# one, and whether the banned peer's connections end. Bans end open
# connections by deleting their conntrack entries (crates/kernel, modules
# conntrack and flow_ender), which walks the whole table: this measures
# that the ban itself does not wait for it.
#
# Two namespaces joined by veth (198.18.30.0/24, 2001:2:0:30::/64), made
# and deleted here; the daemon runs in the server one with its own state
# directory and socket. Per round and table size: the table is filled with
# ENTRIES unreplied UDP flows (one datagram each, from as many source
# ports of two client addresses, to one server port: no scan), then one
# IPv4 and one IPv6 address are banned, each timed. Rounds alternate the
# empty and the full table.
#
# Run as root:  bench/bans.sh
# Settings (environment): ROUNDS=5 ENTRIES=128000 (at most 128,000: two
# addresses x 64,000 ports) PORTCULLIS (default
# ${CARGO_TARGET_DIR:-target}/release/portcullis; built if missing)

set -Eeuo pipefail

ROUNDS=${ROUNDS:-5}
ENTRIES=${ENTRIES:-128000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
PORTCULLIS=${PORTCULLIS:-$TARGET/release/portcullis}
NS_S=pcbans-s$$
NS_C=pcbans-c$$
WORK=$(mktemp -d /tmp/pcbans.XXXXXX)
PC_PID=""

log() { printf '%s\n' "$*" >&2; }
die() {
    log "bans.sh: error: $*"
    exit 1
}
((EUID == 0)) || die "run as root (network namespaces, nftables)"
((ENTRIES <= 128000)) || die "ENTRIES is at most 128000"
for t in ip nft conntrack python3; do
    command -v "$t" >/dev/null || die "$t is missing (apt-get install iproute2 nftables conntrack python3)"
done

cleanup() {
    if [[ -n $PC_PID ]]; then
        kill "$PC_PID" 2>/dev/null || true
        wait "$PC_PID" 2>/dev/null || true
    fi
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    [[ -n ${KEEP_LOGS:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

if [[ ! -x $PORTCULLIS ]]; then
    (cd "$ROOT" && cargo build --release -p portcullis) >&2
fi

ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add vc netns "$NS_C" type veth peer name vs netns "$NS_S"
ip -n "$NS_S" addr add 198.18.30.1/24 dev vs
ip -n "$NS_S" addr add 2001:2:0:30::1/64 dev vs nodad
for a in 198.18.30.2/24 198.18.30.3/24 2001:2:0:30::2/64 2001:2:0:30::3/64; do
    ip -n "$NS_C" addr add "$a" dev vc nodad 2>/dev/null || ip -n "$NS_C" addr add "$a" dev vc
done
for n in "$NS_S" "$NS_C"; do
    ip -n "$n" link set lo up
done
ip -n "$NS_S" link set vs up
ip -n "$NS_C" link set vc up

# fill FAMILY COUNT: COUNT unreplied UDP flows into the server namespace.
cat >"$WORK/fill.py" <<'EOF'
import socket, sys
fam, count = sys.argv[1], int(sys.argv[2])
if fam == "4":
    af, dst, srcs = socket.AF_INET, "198.18.30.1", ["198.18.30.2", "198.18.30.3"]
else:
    af, dst, srcs = socket.AF_INET6, "2001:2:0:30::1", ["2001:2:0:30::2", "2001:2:0:30::3"]
sent = 0
for src in srcs:
    for port in range(1024, 65024):
        if sent == count:
            break
        s = socket.socket(af, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, port))
        s.sendto(b"x", (dst, 9))
        s.close()
        sent += 1
print(sent)
EOF

mkdir -p "$WORK/state"
ip netns exec "$NS_S" "$PORTCULLIS" run --state-dir "$WORK/state" --socket "$WORK/sock" \
    --events "$WORK/events.jsonl" >"$WORK/portcullis.log" 2>&1 &
PC_PID=$!
for _ in $(seq 1 100); do
    grep -q "running on" "$WORK/portcullis.log" && break
    kill -0 "$PC_PID" 2>/dev/null || die "portcullis exited: $(tail -3 "$WORK/portcullis.log")"
    sleep 0.1
done
grep -q "bans end open connections by deleting their conntrack entries" "$WORK/portcullis.log" ||
    die "this kernel's bans do not delete conntrack entries: $(grep 'kernel rules' "$WORK/portcullis.log")"

# ban ADDR: seconds `portcullis ban` took.
ban() {
    local t0 t1
    t0=$(date +%s.%N)
    "$PORTCULLIS" ban "$1" --for 10m --socket "$WORK/sock" >/dev/null
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}'
}
median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

declare -A T
n=0
for r in $(seq 1 "$ROUNDS"); do
    for size in 0 "$ENTRIES"; do
        ip netns exec "$NS_S" conntrack -F 2>/dev/null || true
        if ((size > 0)); then
            half=$((size / 2))
            ip netns exec "$NS_C" python3 "$WORK/fill.py" 4 "$half" >/dev/null
            ip netns exec "$NS_C" python3 "$WORK/fill.py" 6 "$((size - half))" >/dev/null
        fi
        have=$(ip netns exec "$NS_S" conntrack -C)
        n=$((n + 1))
        v4=$(ban "198.18.31.$n")
        v6=$(ban "2001:2:0:31::$n")
        T[$size,4]+="$v4 "
        T[$size,6]+="$v6 "
        log "round $r, $have conntrack entries: IPv4 ban $v4 s, IPv6 ban $v6 s"
    done
done
# A peer with flows of its own: the full table again, then a ban of the
# client address that sent the IPv4 half; how long until its entries are
# gone (the flow-ending thread's pass, after the ban returned).
ip netns exec "$NS_S" conntrack -F 2>/dev/null || true
half=$((ENTRIES / 2))
ip netns exec "$NS_C" python3 "$WORK/fill.py" 4 "$half" >/dev/null
ip netns exec "$NS_C" python3 "$WORK/fill.py" 6 "$((ENTRIES - half))" >/dev/null
have=$(ip netns exec "$NS_S" conntrack -C)
l0=$(date +%s.%N)
mine=$(ip netns exec "$NS_S" conntrack -L -s 198.18.30.2 2>/dev/null | wc -l)
listing=$(awk -v a="$l0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
t0=$(date +%s.%N)
took=$(ban 198.18.30.2)
left=$mine
while ((left > 0)); do
    left=$(ip netns exec "$NS_S" conntrack -L -s 198.18.30.2 2>/dev/null | wc -l)
    awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {exit !(b - a > 30)}' && break
done
gone=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
# The flow-ending thread's record: every pass through, none failed.
sleep 1.5
status=$("$PORTCULLIS" status --socket "$WORK/sock" | grep -E "open connections ended" || true)

echo
echo "portcullis ban, end to end (s), median of $ROUNDS rounds (single values in round order)"
for size in 0 "$ENTRIES"; do
    for fam in 4 6; do
        # shellcheck disable=SC2086
        printf '  %7s entries, IPv%s: %s  [%s]\n' "$size" "$fam" \
            "$(printf '%s\n' ${T[$size,$fam]} | median)" "${T[$size,$fam]% }"
    done
done
echo "a peer with $mine of the $have entries: the ban returned in $took s; $left of its entries left after $gone s (polled with conntrack -L, which took $listing s to list them before the ban)"
echo "  status: ${status:-no kernel ops line}"
