"""The client side of a C benchmark's --serve mode (tools/bench_train.c,
tools/bench_crosscoder.c), shared by the paired benchmarks
(tools/bench_train_torch.py, tools/bench_crosscoder_torch.py).

The C program sets itself up, prints any header lines and then "ready"; after
that it answers each request line with one number (the seconds of one step,
or what the request names) and stops on "quit" or at the end of its input.

Also the host's steal clock (steal_seconds, StealClock), which the paired
benchmarks and tools/bench_demo.py read: on a shared VM the hypervisor gives
CPU time to other guests, and a round it steals from is slower on both sides,
PyTorch's more than moexc's (figures in README.md, "The summary").
"""
import os
import statistics
import subprocess
import time

# After a moexc step its idle OpenMP workers spin for a few milliseconds
# before they sleep (libgomp's default): the paired benchmarks wait this out
# before the next step is timed, so they take nothing from it.
SETTLE_S = 0.02


def steal_seconds():
    """CPU seconds stolen by the hypervisor so far, all CPUs (None without /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK") if fields[0] == "cpu" and len(fields) > 8 else None
    except (OSError, ValueError, IndexError):
        return None


class StealClock:
    """The steal over a stretch of wall time: share() is the CPU time stolen
    since the clock started (or last restart()) over wall time x CPUs, or None
    where /proc/stat has no steal (not Linux)."""

    def __init__(self):
        self.cpus = os.cpu_count() or 1
        self.restart()

    def restart(self):
        self.s0, self.t0 = steal_seconds(), time.perf_counter()

    def share(self):
        s1, t1 = steal_seconds(), time.perf_counter()
        if self.s0 is None or s1 is None or t1 <= self.t0:
            return None
        return (s1 - self.s0) / ((t1 - self.t0) * self.cpus)


def median_share(shares):
    """The median of the known shares (None entries left out), or None."""
    known = [x for x in shares if x is not None]
    return statistics.median(known) if known else None


class CServer:
    """One C benchmark in --serve mode (cmd includes --serve)."""

    def __init__(self, cmd, env=None):
        self.cmd = cmd
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, universal_newlines=True, env=env)
        self.header = []
        while True:
            line = self.p.stdout.readline()
            if not line:
                raise RuntimeError("%s stopped before it was ready (exit %s)" % (" ".join(cmd), self.p.wait()))
            if line.strip() == "ready":
                break
            self.header.append(line)

    def step(self, request="step"):
        """Send one request line and return the number it answers."""
        self.p.stdin.write(request + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("%s stopped (exit %s)" % (" ".join(self.cmd), self.p.wait()))
        return float(line)

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except OSError:
            pass
        return self.p.wait()
