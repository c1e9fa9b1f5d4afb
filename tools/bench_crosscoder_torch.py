"""Crosscoder training throughput: moexc (tools/bench_crosscoder.c) against an
identical PyTorch crosscoder.

Same widths, latents, k, designated shared latents (one tied decoder row),
batch and thread count (torch.set_num_threads). One step = encoder, BatchTopK
over the batch on scores f * sum_m ||d^m||, decoder, reconstruction loss,
AuxK when latents are dead, backward, clip_grad_norm_(1.0), Adam, dead
counters and the threshold EMA: what moexc_xc_train_step does.

The steps are paired: `bench_crosscoder --serve` keeps the C crosscoder alive
and runs one step per request, so each round times a moexc step and a PyTorch
step back to back (which one goes first alternates), after three warm-up
steps each. The host this runs on is shared and its speed drifts within
seconds; timing all of one side and then all of the other let a slow phase
fall on one side only. In a round each side runs a burst of --per-round
steps (default 2) and only the last is timed, so that neither side is timed
on caches and threads the other side's step has just let go cold. Printed:
the median pairs/s of each side, the ratio moexc / PyTorch as the median of
the per-round ratios, the range of those, and the host's median steal in a
round (the share of the CPUs the hypervisor gave to other guests; see
tools/bench_serve.py).

The PyTorch crosscoder is what a PyTorch user would write: dense einsums for
the encoder and for the decoder (the decoder multiplies the full (n x F)
activation matrix, zeros included, as the public crosscoder implementations
do), torch.topk for BatchTopK, autograd, clip_grad_norm_, torch.optim.Adam.

Without PyTorch the C side still runs and the PyTorch figures are null (with
the reason) in --json.

    /usr/bin/python3 tools/bench_crosscoder_torch.py [--c-bench build/bench_crosscoder]
        [--threads N] [--steps ROUNDS] [--per-round N] [--batch N] [--d D] [--latents F] [--k K]
        [--shared S] [--json PATH]
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_serve import CServer, SETTLE_S, StealClock, median_share  # noqa: E402

try:
    import torch
    TORCH_REASON = None
except ImportError as e:                                                    # the C side still runs
    torch = None
    TORCH_REASON = "PyTorch not available to %s: %s" % (sys.executable, e)


class CrossCoder(torch.nn.Module if torch else object):
    """BatchTopK crosscoder, two models of width d, the first ns latents tied."""

    def __init__(self, d, F, k, ns, aux_k):
        super().__init__()
        self.F, self.k, self.ns, self.aux_k = F, k, ns, aux_k
        dec = torch.randn(2, F, d)
        dec = dec / dec.norm(dim=-1, keepdim=True)
        self.dec_shared = torch.nn.Parameter(dec[0, :ns].clone())          # (ns, d), one row for both
        self.dec_excl = torch.nn.Parameter(dec[:, ns:].clone())             # (2, F - ns, d)
        w = self.decoders().detach()
        self.enc = torch.nn.Parameter(w.transpose(1, 2).clone())           # (2, d, F)
        self.b_enc = torch.nn.Parameter(torch.zeros(F))
        self.b_dec = torch.nn.Parameter(torch.zeros(2, d))
        self.register_buffer("since_fired", torch.zeros(F, dtype=torch.long))
        self.threshold = -1.0

    def decoders(self):                                                     # (2, F, d)
        shared = self.dec_shared.unsqueeze(0).expand(2, -1, -1)
        return torch.cat([shared, self.dec_excl], dim=1)

    def loss(self, x, dead_tokens):                                        # x (2, n, d)
        n = x.shape[1]
        W = self.decoders()
        # the encoder reads x - b_dec (moexc's default, option uncentred_encoder)
        pre = torch.einsum("mnd,mdf->nf", x - self.b_dec.unsqueeze(1), self.enc) + self.b_enc
        f = torch.relu(pre)
        w = W.norm(dim=-1).sum(0)                                           # (F)
        scores = (f * w).flatten()
        kept = torch.topk(scores, self.k * n, sorted=False)
        mask = torch.zeros_like(scores).scatter_(0, kept.indices, 1.0).view(n, self.F)
        f = f * mask
        xhat = torch.einsum("nf,mfd->mnd", f, W) + self.b_dec.unsqueeze(1)
        e = x - xhat
        rec = e.pow(2).sum(-1).sum(0).mean()
        loss = rec
        dead = self.since_fired >= dead_tokens
        if dead.any():
            ed = e.detach()
            pre_dead = torch.where(dead, pre, torch.full_like(pre, -1e30))
            top = torch.topk(pre_dead, min(self.aux_k, int(dead.sum())), dim=-1)
            # forward ReLU, gradient passed straight through (moexc's default, option aux_exact_relu)
            v = top.values
            f_aux = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(v).detach() + v - v.detach())
            ehat = torch.einsum("nf,mfd->mnd", f_aux, W)
            den = (ed - ed.mean(1, keepdim=True)).pow(2).sum()
            loss = loss + (ed - ehat).pow(2).sum() / den / 32.0
        with torch.no_grad():
            fired = (f > 0).any(0)
            self.since_fired = torch.where(fired, torch.zeros_like(self.since_fired), self.since_fired + n)
            mn = float(kept.values.min())
            self.threshold = mn if self.threshold < 0 else 0.999 * self.threshold + 0.001 * mn
        return loss


class TorchTwin:
    """The PyTorch crosscoder and its optimiser; step() times one training step."""

    def __init__(self, d, F, k, ns, batch):
        torch.manual_seed(1)
        self.model = CrossCoder(d, F, k, ns, d // 2)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
        g = torch.Generator().manual_seed(7)
        self.pools = [torch.randn(2, batch, d, generator=g) for _ in range(4)]
        self.steps = 0

    def step(self):
        x = self.pools[self.steps % 4]
        self.steps += 1
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=False)
        loss = self.model.loss(x, 10_000_000)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return time.perf_counter() - t0


def burst(step, n):
    """n steps back to back; the seconds of the last one (the ones before
    warm the caches and wake the threads the other side let go cold)."""
    for _ in range(n - 1):
        step()
    return step()


def paired_rounds(server, twin, steps, per_round):
    """Per round a burst of per_round moexc steps and one of PyTorch steps
    back to back (PyTorch first in odd rounds), each timed by its last step;
    twin None: moexc only. Returns both lists of step seconds and each
    round's host steal (a share of wall x CPUs, None where unknown)."""
    c_times, t_times, steal = [], [], []
    clock = StealClock()
    if twin:
        for _ in range(3):
            twin.step()                                 # warm-up (C warmed up before "ready")
    for r in range(steps):
        clock.restart()
        if twin and r % 2:
            t_times.append(burst(twin.step, per_round))
        c_times.append(burst(server.step, per_round))
        time.sleep(SETTLE_S)
        if twin and not r % 2:
            t_times.append(burst(twin.step, per_round))
        steal.append(clock.share())
    return c_times, t_times, steal


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--c-bench", default=os.path.join(os.path.dirname(__file__), "..", "build", "bench_crosscoder"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=15, help="paired rounds")
    ap.add_argument("--per-round", type=int, default=2, help="steps per side and round, the last one timed")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--latents", type=int, default=2048)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--shared", type=int, default=64)
    ap.add_argument("--json", help="also write the results here as JSON (for tools/bench_summary.py)")
    a = ap.parse_args()
    if a.steps < 1 or a.per_round < 1:
        sys.exit("bench_crosscoder_torch.py: --steps and --per-round must be >= 1")
    # the C server serves at most --steps requests
    cmd = [a.c_bench, "--threads", str(a.threads), "--steps", str(a.steps * a.per_round), "--batch", str(a.batch),
           "--d", str(a.d), "--latents", str(a.latents), "--k", str(a.k), "--shared", str(a.shared)]
    twin = None
    if torch:
        torch.set_num_threads(a.threads)
        twin = TorchTwin(a.d, a.latents, a.k, a.shared, a.batch)
    try:
        server = CServer(cmd + ["--serve"])
        try:
            c_times, t_times, steal = paired_rounds(server, twin, a.steps, a.per_round)
        finally:
            server.close()
    except (RuntimeError, OSError, ValueError) as e:
        sys.exit("bench_crosscoder_torch.py: %s" % e)
    c = a.batch / statistics.median(c_times)
    tps = a.batch / statistics.median(t_times) if twin else None
    ratios = [tt / ct for ct, tt in zip(c_times, t_times)]       # empty without PyTorch
    ratio = statistics.median(ratios) if ratios else None
    print("crosscoder training throughput: BatchTopK, d_A = d_B = %d, F %d, k %d, %d shared, batch %d, %d threads,"
          " %d paired rounds (%d moexc steps and %d PyTorch steps back to back, the last of each timed)"
          % (a.d, a.latents, a.k, a.shared, a.batch, a.threads, a.steps, a.per_round, a.per_round))
    if TORCH_REASON:
        print("(%s: no PyTorch figure)" % TORCH_REASON)
    steal_median = median_share(steal)
    print("%16s %16s %8s %16s %6s" % ("moexc pairs/s", "torch pairs/s", "ratio", "rounds' ratios", "steal"))
    print("%16.0f %16s %8s %16s %6s" % (c, "%.0f" % tps if tps else "-", "%.2fx" % ratio if ratio else "-",
                                        "%.2f-%.2f" % (min(ratios), max(ratios)) if ratios else "-",
                                        "%.0f%%" % (100 * steal_median) if steal_median is not None else "-"))
    if a.json:
        result = {"bench": "crosscoder", "threads": a.threads, "steps": a.steps, "d_a": a.d, "d_b": a.d,
                  "latents": a.latents, "k": a.k, "shared": a.shared, "batch": a.batch,
                  "torch": torch.__version__ if torch else None,
                  "reason": TORCH_REASON,
                  "moexc_pairs_per_s": c, "torch_pairs_per_s": tps,
                  "ratio": ratio, "ratio_is": "median over paired rounds of torch step s / moexc step s",
                  "moexc_step_s": c_times, "torch_step_s": t_times,
                  "host_steal_share": steal, "host_steal_share_median": steal_median}
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
