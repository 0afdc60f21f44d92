#!/usr/bin/env bash
# Measures the static guest agent on this host, against the host's real
# /proc, /dev/kmsg and cgroup2 mount, reporting to the example host over a
# Unix socket: binary size, RSS once idle, and system calls per summary
# period in the steady state (strace -c -f attached after start-up).
#
#   guest-agent/measure-host.sh [periods] [interval_ms]
#
# Needs root (/dev/kmsg) and strace. Takes periods * interval (default
# 12 * 5 s = 60 s), plus start-up.
set -euo pipefail
cd "$(dirname "$0")/.."
periods=${1:-12}
interval=${2:-5000}
cgroup_root=/sys/fs/cgroup
[[ -f $cgroup_root/cgroup.controllers ]] || cgroup_root=/sys/fs/cgroup/unified

agent=$(guest-agent/build-static.sh)
cargo build --release -p guest-agent --example host >&2
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

target/release/examples/host "$dir/h.sock" -q 2>"$dir/host.log" &
pids+=($!)
for _ in $(seq 50); do [[ -S $dir/h.sock ]] && break; sleep 0.1; done

"$agent" --unix "$dir/h.sock" --cgroup-root "$cgroup_root" --interval-ms "$interval" &
agent_pid=$!
pids+=("$agent_pid")
# Start-up alone, counted in a separate run that ends after 300 ms.
strace -f -c -o "$dir/startup.txt" "$agent" --unix "$dir/h.sock" --cgroup-root "$cgroup_root" \
    --interval-ms "$interval" --run-for-ms 300
echo "start-up (a separate run of 300 ms: the whole kernel log, one summary):"
sed 's/^/  /' "$dir/startup.txt"
# Start-up (the whole kernel log is read once) and two periods.
sleep "$(( 2 * interval / 1000 + 1 ))"

echo "binary: $agent, $(stat -c %s "$agent") bytes"
file "$agent" | sed 's/^[^:]*: /  /'
echo "memory of the running agent (pid $agent_pid) after start-up:"
grep -E '^(VmRSS|VmHWM|RssAnon|RssFile|VmData|VmStk)' "/proc/$agent_pid/status" | sed 's/^/  /'
echo "kernel log on this host: $(dmesg 2>/dev/null | wc -l) lines (read once at start-up)"

secs=$(( periods * interval / 1000 ))
echo "strace -c -f for $secs s ($periods periods of $interval ms):"
timeout -s INT "$secs" strace -c -f -p "$agent_pid" -o "$dir/strace.txt" || true
sed 's/^/  /' "$dir/strace.txt"
total=$(awk '$NF == "total" { print $(NF - 1) }' "$dir/strace.txt")
echo "syscalls per period: $(awk -v t="$total" -v p="$periods" 'BEGIN { printf "%.1f", t / p }')"
