"""Dump PyTorch reference values for tests/test_model.c.

    /usr/bin/python3 tools/torch_ref.py            (writes tests/fixtures/model_*)

Three cases on one tiny shape (V 64, d 32, H 2, L 2, B 2, T 16):
  dense   SwiGLU h_ff 128, tied head
  moe     E 4, k 2, h_e 32, raw gate, Switch loss alpha 0.1, z-loss 0.01
  moe_renorm  the same weights with the renormalised gate
Weights come from torch.manual_seed and are written as moexc checkpoints
(model_dense.safetensors, model_moe.safetensors) that moexc_model_load reads.
The references are computed in float64 from those float32 weights and stored
(as float32) in model_<case>_ref.safetensors: inputs, targets, logits, router
probabilities and choices per MoE layer, and "grad.<param>" for every
parameter; the four loss terms are metadata strings with 17 digits.
Top-k routing is discontinuous, so the weights are re-drawn until every
token's k-th and (k+1)-th router probabilities differ by > 1e-3.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model as tm  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
B, T = 2, 16
BASE = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=2, context=16, init_std=0.1)
DENSE = dict(BASE, ffn="dense", d_ff=128, tied_head=1, seed=1)
MOE = dict(BASE, ffn="moe", n_experts=4, top_k=2, d_expert=32, gate="raw", lb_alpha=0.1, z_loss=0.01, seed=2)
MIN_GAP = 1e-3


def make_weights(cfg, seed):
    torch.manual_seed(seed)
    m = tm.build_model(cfg, dtype=torch.float32, init=False)
    with torch.no_grad():
        std = m.config["init_std"]
        out_std = std / np.sqrt(2 * m.config["n_layers"])
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape))   # gains near 1, not exactly 1: tests their gradient
            elif name.endswith("attn.wo.weight") or "w_down" in name:
                p.copy_(torch.randn(p.shape) * out_std)
            else:
                p.copy_(torch.randn(p.shape) * std)
    return m


def routing_gap(model):
    gaps = []
    for blk in model.layers:
        if blk.is_moe:
            s, _ = torch.sort(blk.moe.last_probs, dim=-1, descending=True)
            k = blk.moe.k
            gaps.append(float((s[:, k - 1] - s[:, k]).min()))
    return min(gaps) if gaps else 1.0


def reference(cfg, weights_path, inputs, targets):
    """Forward + backward in float64 from the float32 checkpoint."""
    m = tm.build_model(cfg, dtype=torch.float64, init=False)
    tm.load_moexc(m, weights_path)
    logits, st = m(inputs, targets)
    st["loss"].backward()
    out = {"inputs": inputs.float(), "targets": targets.float(),
           "logits": logits.detach().reshape(B * T, -1).float()}
    for l, blk in enumerate(m.layers):
        if blk.is_moe:
            out["router_probs.%d" % l] = blk.moe.last_probs.float()
            out["router_choice.%d" % l] = blk.moe.last_choice.float()
    for name, p in m.named_parameters():
        out["grad." + name] = p.grad.float()
    meta = {k: "%.17g" % float(v) for k, v in st.items()}
    return out, meta, routing_gap(m)


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(1234)
    inputs = torch.randint(0, BASE["vocab_size"], (B, T), generator=g)
    targets = torch.randint(0, BASE["vocab_size"], (B, T), generator=g)

    dense = make_weights(DENSE, 10)
    p_dense = os.path.join(OUT, "model_dense.safetensors")
    tm.save_moexc(dense, p_dense)
    ref, meta, _ = reference(DENSE, p_dense, inputs, targets)
    tm.write_safetensors(os.path.join(OUT, "model_dense_ref.safetensors"), ref, meta)
    print("dense: loss %s" % meta["loss"])

    p_moe = os.path.join(OUT, "model_moe.safetensors")
    for seed in range(20, 60):
        moe = make_weights(MOE, seed)
        tm.save_moexc(moe, p_moe)
        ref_raw, meta_raw, gap_raw = reference(MOE, p_moe, inputs, targets)
        ref_rn, meta_rn, gap_rn = reference(dict(MOE, gate="renorm"), p_moe, inputs, targets)
        if min(gap_raw, gap_rn) > MIN_GAP:
            break
    else:
        raise SystemExit("no seed gives a top-k margin above %g" % MIN_GAP)
    print("moe (seed %d, top-k margin %.4f): raw loss %s (lb %s, z %s); renorm loss %s"
          % (seed, min(gap_raw, gap_rn), meta_raw["loss"], meta_raw["lb"], meta_raw["z"], meta_rn["loss"]))
    tm.write_safetensors(os.path.join(OUT, "model_moe_raw_ref.safetensors"), ref_raw, meta_raw)
    tm.write_safetensors(os.path.join(OUT, "model_moe_renorm_ref.safetensors"), ref_rn, meta_rn)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT) if f.startswith("model_"))
    print("fixtures: %d bytes" % total)


if __name__ == "__main__":
    main()
