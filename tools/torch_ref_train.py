"""PyTorch reference for moexc's training loop (tests/test_train.c, test_torch_parity).

For a tiny dense and a tiny MoE model it writes, under tests/fixtures/:
  train_init_<kind>.safetensors    initial weights (moexc model format)
  train_final_<kind>.safetensors   weights after STEPS optimiser steps
  train_losses_<kind>.txt          per step: loss ce lb lr grad_norm
The run mirrors moexc_trainer exactly: the same token stream, the same batch
windows (SplitMix64 stream, start = u mod n_starts), gradient accumulation,
torch.nn.utils.clip_grad_norm_, torch.optim.AdamW with weight decay on the
matrices only, and a LambdaLR schedule (linear warm-up, cosine to min_lr).

    /usr/bin/python3 tools/torch_ref_train.py [outdir]
"""
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model as tm  # noqa: E402

# Shared with tests/test_train.c: keep in sync.
TEXT = (b"The quick brown fox jumps over the lazy dog. int main(void) { return 0; } "
        b"Energy is conserved: dE/dt = 0. Once upon a time a small robot learned to read.\n")
OPT = dict(lr=1e-2, min_lr_ratio=0.1, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1,
           grad_clip=0.5, warmup_steps=3, total_steps=10, batch_size=2, seq_len=16, grad_accum=2, seed=7)
CONFIGS = {
    "dense": dict(d_model=16, n_heads=2, n_layers=2, context=16, ffn="dense", d_ff=64, seed=11),
    "moe": dict(d_model=16, n_heads=2, n_layers=2, context=16, ffn="moe", n_experts=4, top_k=2,
                d_expert=32, seed=12),
}
MASK64 = (1 << 64) - 1


class SplitMix64:
    """moexc_rng: state += golden gamma; output = mix(state)."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)


def lr_at(step, o):
    """moexc_train_lr: linear warm-up, then cosine from lr to min_lr_ratio * lr."""
    lr, W, S = o["lr"], o["warmup_steps"], o["total_steps"]
    lr_min = o["min_lr_ratio"] * lr
    if step < W:
        return lr * (step + 1) / W
    span = max(1, S - W)
    s = min(step - W, span)
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * s / span))


def run(kind, outdir):
    o = OPT
    torch.manual_seed(0)
    model = tm.build_model(CONFIGS[kind])
    tm.save_moexc(model, os.path.join(outdir, "train_init_%s.safetensors" % kind))
    tokens = torch.tensor(list(TEXT), dtype=torch.long)
    T, B, A = o["seq_len"], o["batch_size"], o["grad_accum"]
    n_starts = len(TEXT) - T            # one run of training tokens (no held-out split)
    rng = SplitMix64(o["seed"])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_at(s, o) / o["lr"])
    lines = []
    for step in range(o["total_steps"]):
        opt.zero_grad(set_to_none=False)
        tot = {"loss": 0.0, "ce": 0.0, "lb": 0.0}
        for _ in range(A):
            starts = [rng.u64() % n_starts for _ in range(B)]
            x = torch.stack([tokens[s:s + T] for s in starts])
            y = torch.stack([tokens[s + 1:s + T + 1] for s in starts])
            _, st = model(x, y)
            (st["loss"] / A).backward()
            for k in tot:
                tot[k] += st[k].item() / A
        lr = opt.param_groups[0]["lr"]
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"]).item()
        opt.step()
        sched.step()
        lines.append("%d %.9g %.9g %.9g %.9g %.9g" % (step, tot["loss"], tot["ce"], tot["lb"], lr, gnorm))
    tm.save_moexc(model, os.path.join(outdir, "train_final_%s.safetensors" % kind))
    with open(os.path.join(outdir, "train_losses_%s.txt" % kind), "w") as f:
        f.write("# step loss ce lb lr grad_norm (tools/torch_ref_train.py, torch %s)\n" % torch.__version__)
        f.write("\n".join(lines) + "\n")
    print(kind, "final loss %.6f" % tot["loss"])


if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(1)
    for kind in CONFIGS:
        run(kind, out)
