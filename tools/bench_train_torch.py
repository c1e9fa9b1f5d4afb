"""Training throughput: moexc (tools/bench_train.c) against its PyTorch twin.

Runs the identical PyTorch models (tools/torch_model.py, same shapes, same
batch, same thread count via torch.set_num_threads) through the same optimiser
step as the C benchmark: forward + backward + clip_grad_norm_ + AdamW. The
PyTorch side is what a PyTorch user would write: nn.Linear layers, attention
as a masked softmax of Q K^T, a MoE that loops over the experts on the tokens
routed to each (index_add back), autograd, clip_grad_norm_, torch.optim.AdamW
(PyTorch's defaults, no torch.compile).

The steps are paired: `bench_train --serve` keeps both C models alive and
runs one step per request, so each round times a moexc step and a PyTorch step
back to back (which one goes first alternates). The host this runs on is
shared and its speed drifts by 2x within a minute; a slow phase then slows
both sides of a round's ratio. Printed: median tokens/s of each side, and the
ratio as the median of the per-round ratios (after two warm-up steps each),
with the model FLOP/s of the moexc step (flops_per_token of bench_train.c:
6 N + 6 L T d). Each round also measures the fp32 FMA peak (bench_train's
"peak"), for two more columns: the fraction of the peak the moexc step
reaches, and the ratio moexc would reach at the peak (PyTorch's step time x
peak / the step's model FLOPs): no fp32 implementation of the same step can
beat PyTorch by more than that in this run.

Environment. Each side runs as fast as it runs here: PyTorch under the
environment this script is given (make bench passes OMP_WAIT_POLICY=passive
and OPENBLAS_THREAD_TIMEOUT=4: without them PyTorch's OpenMP team and
OpenBLAS's own threads spin against each other and its 2-thread steps are
2x slower than with them), moexc under the OpenMP defaults, with no variable
set (what a program using the header gets). A second moexc process under the
given environment is timed in the same rounds and reported beside it
("moexc, same env"): OMP_WAIT_POLICY=passive puts OpenMP's idle threads to
sleep, and waking them for each of the ~110 parallel regions of a step costs
moexc about 10%.

Each round also reads the host's steal clock (tools/bench_serve.py): the
"steal" column is the median share of the CPUs the hypervisor gave to other
guests during a round. PyTorch slows more than moexc under steal, so a run
with steal reads high ratios.

Without PyTorch the C side still runs and the PyTorch columns are null (with
the reason) in --json.

    /usr/bin/python3 tools/bench_train_torch.py [--c-bench build/bench_train]
        [--threads N] [--steps N] [--batch B] [--seq T] [--json PATH]
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import CServer, SETTLE_S, StealClock, median_share  # noqa: E402


class TorchTwin:
    """One PyTorch model and its optimiser; step() times one training step."""

    def __init__(self, torch, tm, kind, B, T):
        self.torch, self.B, self.T = torch, B, T
        self.model = tm.build_model({"ffn": kind})        # defaults: d 128, L 5, H 4, ctx 256
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                     lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
        self.gen = torch.Generator().manual_seed(1)

    def step(self):
        x = self.torch.randint(0, 256, (self.B, self.T + 1), generator=self.gen)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        _, st = self.model(x[:, :-1], x[:, 1:])
        st["loss"].backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return time.perf_counter() - t0


def paired_rounds(servers, twin, kind, steps):
    """Per round: one step of each C server and one PyTorch step back to back
    (PyTorch goes last and first in turn), then the FMA peak. Returns a list of
    step times per server, the PyTorch step times (twin None: C only), the
    peaks and each round's host steal (a share of wall x CPUs, None where
    unknown)."""
    c_times = [[] for _ in servers]
    t_times, peaks, steal = [], [], []
    clock = StealClock()
    if twin:
        for _ in range(2):
            twin.step()                                 # warm-up (C warmed up in --serve)
    for r in range(steps):
        clock.restart()
        if twin and r % 2:
            t_times.append(twin.step())
        for i, c in enumerate(servers):
            c_times[i].append(c.step(kind))
            time.sleep(SETTLE_S)
        if twin and not r % 2:
            t_times.append(twin.step())
        steal.append(clock.share())
        peaks.append(servers[0].step("peak"))
    return c_times, t_times, peaks, steal


def parse_c(out):
    """The C benchmark's "c <model> key value ..." lines, as {model: {key: number}}."""
    c = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "c" and f[1] in ("dense", "moe") and len(f) % 2 == 0:
            c[f[1]] = {f[i]: float(f[i + 1]) for i in range(2, len(f), 2)}
    return c


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--c-bench", default=os.path.join(os.path.dirname(__file__), "..", "build", "bench_train"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json", help="also write the results here as JSON (for tools/bench_summary.py)")
    a = ap.parse_args()
    cmd = [a.c_bench, "--threads", str(a.threads), "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq),
           "--serve"]
    torch = tm = None
    torch_reason = None
    try:
        import torch
        import torch_model as tm
        torch.set_num_threads(a.threads)
    except ImportError as e:
        torch_reason = "PyTorch not available to %s: %s" % (sys.executable, e)
    env_default = dict(os.environ)
    env_default.pop("OMP_WAIT_POLICY", None)
    servers = [CServer(cmd, env_default)]
    same_env = os.environ.get("OMP_WAIT_POLICY") is not None
    if same_env:
        servers.append(CServer(cmd))
    c = parse_c("".join(servers[0].header))
    result = {"bench": "train", "threads": a.threads, "batch": a.batch, "seq": a.seq, "steps": a.steps,
              "paired": True, "torch": torch.__version__ if torch else None, "reason": torch_reason,
              "torch_env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_CORETYPE")
                            if k in os.environ},
              "moexc_env": "OpenMP defaults (OMP_WAIT_POLICY unset)", "models": {}}
    print("training throughput, batch %d x %d, %d threads, %d paired rounds (a moexc step and a PyTorch step back to back;"
          " forward+backward+clip+AdamW)" % (a.batch, a.seq, a.threads, a.steps))
    print("PyTorch env: %s; moexc: OpenMP defaults%s" % (
        " ".join("%s=%s" % kv for kv in sorted(result["torch_env"].items())) or "as given",
        "; \"same env\": moexc under PyTorch's env" if same_env else ""))
    if torch_reason:
        print("(%s: the PyTorch columns are empty)" % torch_reason)
    print("%-6s %10s %12s %12s %8s %9s %8s %9s %11s %6s" % ("model", "active", "moexc tok/s", "torch tok/s", "ratio",
                                                           "same env", "GFLOP/s", "of peak", "ratio@peak", "steal"))
    tokens = a.batch * a.seq
    for kind in ("dense", "moe"):
        if kind not in c:
            print("%s: the C benchmark printed no result" % kind)
            result["models"][kind] = None
            continue
        r = c[kind]
        step_flops = r["flops_per_token"] * tokens
        twin = TorchTwin(torch, tm, kind, a.batch, a.seq) if torch else None
        c_times, t_times, peaks, steal = paired_rounds(servers, twin, kind, a.steps)
        ctps = tokens / statistics.median(c_times[0])
        tps = tokens / statistics.median(t_times) if twin else None
        ratio = statistics.median([tt / ct for ct, tt in zip(c_times[0], t_times)]) if twin else None
        ratio_same = (statistics.median([tt / ct for ct, tt in zip(c_times[1], t_times)])
                      if twin and same_env else None)
        of_peak = statistics.median([step_flops / ct * 1e-9 / pk for ct, pk in zip(c_times[0], peaks)])
        at_peak = (statistics.median([tt * pk * 1e9 / step_flops for tt, pk in zip(t_times, peaks)])
                   if twin else None)
        gflops = ctps * r["flops_per_token"] * 1e-9
        steal_median = median_share(steal)
        print("%-6s %10d %12.0f %12s %8s %9s %8.1f %8.0f%% %11s %6s" % (
            kind, r["active"], ctps, "%.0f" % tps if tps else "-", "%.2fx" % ratio if ratio else "-",
            "%.2fx" % ratio_same if ratio_same else "-", gflops, 100 * of_peak,
            "%.2fx" % at_peak if at_peak else "-", "%.0f%%" % (100 * steal_median) if steal_median is not None else "-"))
        result["models"][kind] = {"params": int(r["params"]), "active": int(r["active"]),
                                  "moexc_tokens_per_s": ctps, "torch_tokens_per_s": tps,
                                  "ratio": ratio, "ratio_is": "median over rounds of torch step s / moexc step s",
                                  "ratio_same_env": ratio_same,
                                  "moexc_fraction_of_peak": of_peak, "ratio_at_peak": at_peak,
                                  "moexc_step_s": c_times[0], "moexc_same_env_step_s": c_times[1] if same_env else None,
                                  "torch_step_s": t_times, "peak_gflops": peaks,
                                  "host_steal_share": steal, "host_steal_share_median": steal_median,
                                  "flops_per_token": r["flops_per_token"], "moexc_gflops": gflops}
        del twin
    for server in servers:
        server.close()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
