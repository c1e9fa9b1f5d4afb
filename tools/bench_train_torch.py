"""Training throughput: moexc (tools/bench_train.c) against its PyTorch twin.

Runs the C benchmark, then the identical PyTorch models (tools/torch_model.py,
same shapes, same batch, same thread count via torch.set_num_threads) through
the same optimiser step: forward + backward + clip_grad_norm_ + AdamW. The
PyTorch side is what a PyTorch user would write: nn.Linear layers, attention
as a masked softmax of Q K^T, a MoE that loops over the experts on the tokens
routed to each (index_add back), autograd, clip_grad_norm_, torch.optim.AdamW
(PyTorch's defaults, no torch.compile). Prints tokens/s of both and the ratio
C / PyTorch (medians after two warm-up steps), and the model FLOP/s of the
moexc step (flops_per_token of bench_train.c: 6 N + 6 L T d).

Without PyTorch the C side still runs and the PyTorch columns are null (with
the reason) in --json.

    /usr/bin/python3 tools/bench_train_torch.py [--c-bench build/bench_train]
        [--threads N] [--steps N] [--batch B] [--seq T] [--json PATH]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def torch_tokens_per_s(torch, tm, kind, B, T, steps):
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
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--json", help="also write the results here as JSON (for tools/bench_summary.py)")
    a = ap.parse_args()
    cmd = [a.c_bench, "--threads", str(a.threads), "--steps", str(a.steps), "--batch", str(a.batch), "--seq", str(a.seq)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    c = parse_c(out)
    torch = tm = None
    torch_reason = None
    try:
        import torch
        import torch_model as tm
        torch.set_num_threads(a.threads)
    except ImportError as e:
        torch_reason = "PyTorch not available to %s: %s" % (sys.executable, e)
    result = {"bench": "train", "threads": a.threads, "batch": a.batch, "seq": a.seq, "steps": a.steps,
              "torch": torch.__version__ if torch else None, "reason": torch_reason, "models": {}}
    print("training throughput, batch %d x %d, %d threads, median of %d steps (forward+backward+clip+AdamW)"
          % (a.batch, a.seq, a.threads, a.steps))
    if torch_reason:
        print("(%s: the PyTorch columns are empty)" % torch_reason)
    print("%-6s %10s %10s %14s %14s %8s %12s" % ("model", "params", "active", "moexc tok/s", "torch tok/s", "ratio",
                                                 "moexc GFLOP/s"))
    for kind in ("dense", "moe"):
        if kind not in c:
            print("%s: the C benchmark printed no result" % kind)
            result["models"][kind] = None
            continue
        r = c[kind]
        tps = torch_tokens_per_s(torch, tm, kind, a.batch, a.seq, a.steps) if torch else None
        ctps = r["tokens_per_s"]
        gflops = ctps * r["flops_per_token"] * 1e-9
        print("%-6s %10d %10d %14.0f %14s %8s %12.1f" % (kind, r["params"], r["active"], ctps,
                                                        "%.0f" % tps if tps else "-",
                                                        "%.2fx" % (ctps / tps) if tps else "-", gflops))
        result["models"][kind] = {"params": int(r["params"]), "active": int(r["active"]),
                                  "moexc_tokens_per_s": ctps, "torch_tokens_per_s": tps,
                                  "ratio": ctps / tps if tps else None,
                                  "flops_per_token": r["flops_per_token"], "moexc_gflops": gflops}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
