"""How many cores the demo keeps busy: user CPU time over wall time of
`moexc_demo --preset tiny` runs (the child's own rusage, from os.wait4).

Runs the demo --runs times into a temporary folder with --threads N and
prints, per run, wall, user and system seconds, user / wall and, where
/proc/stat has it (Linux), the CPU time the hypervisor gave to other guests
during the run ("steal", all CPUs together, as a share of wall x CPUs): on a
shared VM a stolen core caps user / wall whatever the demo does. The summary
value is the median user / wall. Idle OpenMP threads should sleep while this
runs (make bench-demo sets OMP_WAIT_POLICY=passive): a busy-waiting thread
adds user time without doing work, and would inflate the figure.

    /usr/bin/python3 tools/bench_demo.py [--demo build/moexc_demo] [--threads N]
        [--runs N] [--preset tiny] [--json PATH]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import median_share, steal_seconds  # noqa: E402


def run_once(demo, preset, threads, out):
    """(wall, user, sys, steal) seconds of one demo run (steal None where unknown); raises on failure."""
    s0 = steal_seconds()
    t0 = time.perf_counter()
    p = subprocess.Popen([demo, "--preset", preset, "--threads", str(threads), "--out", out],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    s1 = steal_seconds()
    p.returncode = 0                                   # reaped by wait4; keeps Popen from waiting again
    code = os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status >> 8
    if code != 0:
        raise RuntimeError("%s exited with %d: %s" % (demo, code, err.decode(errors="replace").strip()[-500:]))
    return wall, ru.ru_utime, ru.ru_stime, (s1 - s0 if s0 is not None and s1 is not None else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default=os.path.join(os.path.dirname(__file__), "..", "build", "moexc_demo"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--json", help="also write the results here as JSON (for tools/bench_summary.py)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="moexc_bench_demo.")
    runs, reason = [], None
    try:
        for r in range(a.runs):
            runs.append(run_once(a.demo, a.preset, a.threads, os.path.join(tmp, "r%d" % r)))
    except (OSError, RuntimeError) as e:
        reason = str(e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("demo cores used: moexc_demo --preset %s --threads %d, %d runs, OMP_WAIT_POLICY=%s"
          % (a.preset, a.threads, a.runs, os.environ.get("OMP_WAIT_POLICY", "(unset)")))
    cpus = os.cpu_count() or 1
    shares = [st / (w * cpus) if st is not None else None for w, _, _, st in runs]   # steal per run
    print("%4s %8s %8s %8s %10s %8s" % ("run", "wall s", "user s", "sys s", "user/wall", "steal"))
    for i, ((w, u, s, _), sh) in enumerate(zip(runs, shares)):
        print("%4d %8.2f %8.2f %8.2f %10.2f %8s" % (i + 1, w, u, s, u / w, "%.0f%%" % (100 * sh) if sh is not None else "-"))
    ratio = statistics.median(u / w for w, u, _, _ in runs) if runs and not reason else None
    steal = median_share(shares) if not reason else None
    if reason:
        print("failed: %s" % reason)
    else:
        print("median user/wall: %.2f" % ratio)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"bench": "demo", "preset": a.preset, "threads": a.threads,
                       "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                       "load_average_after": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                       "cpus": cpus,
                       "runs": [{"wall_s": w, "user_s": u, "sys_s": s, "steal_s": st} for w, u, s, st in runs],
                       "user_over_wall": ratio, "steal_share_median": steal, "reason": reason}, f, indent=1)
            f.write("\n")
    if reason:
        sys.exit(1)


if __name__ == "__main__":
    main()
