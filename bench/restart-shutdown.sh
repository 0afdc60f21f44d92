#!/bin/bash
# Shutdown of N VMs and re-adoption of N VMs after kill -9.
N=${1:-50}
B=${VMM_BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release/vmm}
D=/tmp/vbr; rm -rf $D; mkdir -p $D
export VMM_DAEMON_SOCKET=$D/d.sock
$B daemon --socket $D/d.sock --state-dir $D/st 2>$D/log1 & P=$!
while [ ! -S $D/d.sock ]; do sleep 0.01; done
t0=$(date +%s%N)
for i in $(seq 1 $N); do $B ctl create --id v$i --mem 32M --cmdline "tiny.hold=forever" >/dev/null || echo fail $i; done
t1=$(date +%s%N); echo "create $N: $(( (t1-t0)/1000000 )) ms"
# The daemon's own CPU with N idle VMs, over 10 s (utime + stime, ticks).
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' /proc/$P/stat; }
c0=$(cpu); sleep 10; c1=$(cpu)
echo "daemon CPU with $N idle VMs: $(python3 -c "print(f'{($c1 - $c0) / $hz / 10 * 100:.2f}')") % of one core"
# GET /vms (ctl --json list), five times.
for i in 1 2 3 4 5; do
  t0=$(date +%s%N); $B ctl --json list >/dev/null; t1=$(date +%s%N)
  echo "GET /vms with $N: $(( (t1-t0)/1000 )) us"
done
kill -9 $P; wait $P 2>/dev/null; rm -f $D/d.sock
t0=$(date +%s%N)
$B daemon --socket $D/d.sock --state-dir $D/st 2>$D/log2 & P=$!
while [ ! -S $D/d.sock ]; do sleep 0.001; done
t1=$(date +%s%N); echo "restart with $N to adopt: socket up after $(( (t1-t0)/1000000 )) ms"
n=$($B ctl --json list | python3 -c 'import json,sys; print(sum(1 for v in json.load(sys.stdin) if v["state"]=="running"))')
echo "running after restart: $n"
t0=$(date +%s%N); kill -TERM $P; wait $P; t1=$(date +%s%N)
echo "SIGTERM with $N: $(( (t1-t0)/1000000 )) ms"; pgrep -c -f "vmm run" || true
rm -rf $D
