"""The client side of a C benchmark's --serve mode (tools/bench_train.c,
tools/bench_crosscoder.c), shared by the paired benchmarks
(tools/bench_train_torch.py, tools/bench_crosscoder_torch.py).

The C program sets itself up, prints any header lines and then "ready"; after
that it answers each request line with one number (the seconds of one step,
or what the request names) and stops on "quit" or at the end of its input.
"""
import subprocess

# After a moexc step its idle OpenMP workers spin for a few milliseconds
# before they sleep (libgomp's default): the paired benchmarks wait this out
# before the next step is timed, so they take nothing from it.
SETTLE_S = 0.02


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
