"""Training throughput: moexc (tools/bench_train.c) against its PyTorch twin.

Runs the C benchmark, then the identical PyTorch models (tools/torch_model.py,
same shapes, same batch, same thread count via torch.set_num_threads) through
the same optimiser step: forward + backward + clip_grad_norm_ + AdamW. Prints
tokens/s of both and the ratio C / PyTorch (medians after two warm-up steps).

    /usr/bin/python3 tools/bench_train_torch.py [--c-bench build/bench_train]
        [--threads N] [--steps N] [--batch B] [--seq T]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model as tm  # noqa: E402


def torch_tokens_per_s(kind, B, T, steps):
    model = tm.build_model({"ffn": kind})             # defaults: d 128, L 5, H 4, ctx 256
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(1)
    times = []
    for s in range(steps + 2):
        x = torch.randint(0, 256, (B, T + 1), generator=g)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        _, st = model(x[:, :-1], x[:, 1:])
        st["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if s >= 2:
            times.append(time.perf_counter() - t0)
    return B * T / statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--c-bench", default=os.path.join(os.path.dirname(__file__), "..", "build", "bench_train"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    cmd = [a.c_bench, "--threads", str(a.threads), "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    c = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 10 and f[0] == "c" and f[1] in ("dense", "moe"):
            c[f[1]] = (int(f[3]), int(f[5]), float(f[9]))
    torch.set_num_threads(a.threads)
    print("training throughput, batch %d x %d, %d threads, median of %d steps (forward+backward+clip+AdamW)"
          % (a.batch, a.seq, a.threads, a.steps))
    print("%-6s %10s %10s %14s %14s %8s" % ("model", "params", "active", "moexc tok/s", "torch tok/s", "ratio"))
    for kind in ("dense", "moe"):
        if kind not in c:
            print("%s: the C benchmark printed no result" % kind)
            continue
        tps = torch_tokens_per_s(kind, a.batch, a.seq, a.steps)
        total, active, ctps = c[kind]
        print("%-6s %10d %10d %14.0f %14.0f %7.2fx" % (kind, total, active, ctps, tps, ctps / tps))


if __name__ == "__main__":
    main()
