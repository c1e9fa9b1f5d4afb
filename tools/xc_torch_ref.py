#!/usr/bin/env python3
"""Write tests/fixtures/xc_ref_*.safetensors: a small BatchTopK and an L1
crosscoder (SPEC §4) evaluated by PyTorch autograd, the second witness (next
to finite differences) for test_crosscoder.c.

Each file holds the inputs x_a (n, d_a), x_b (n, d_b), the parameters in
moexc's flat layout "params" (P), the dead-latent mask "dead" (F), and the
expected "loss", "rec", "penalty", "aux" (1 each) and gradient "grads" (P).
Metadata: variant, n_latents, k, n_shared, d_a, d_b, lambda_f, lambda_ratio,
aux_k, aux_alpha, uncentred_encoder, aux_exact_relu. Inputs are in normalised units (scales 1).
The BatchTopK file uses moexc's default centred encoder (it reads x - b_dec),
the L1 file the uncentred one (it reads x), so both forms are covered. The
BatchTopK file's AuxK passes the gradient straight through the ReLU at
selected negative pre-activations (moexc's default, aux_exact_relu 0).

    /usr/bin/python3 tools/xc_torch_ref.py [out_dir]
"""
import json
import os
import sys

import numpy as np
import torch


def crosscoder_loss(p, xa, xb, cfg, dead):
    """moexc's loss: reconstruction + decoder-norm penalty + alpha * AuxK."""
    F, ns, da, db, k = cfg["n_latents"], cfg["n_shared"], cfg["d_a"], cfg["d_b"], cfg["k"]
    n = xa.shape[0]
    o = 0
    enc_a = p[o:o + da * F].view(da, F); o += da * F
    enc_b = p[o:o + db * F].view(db, F); o += db * F
    b_enc = p[o:o + F]; o += F
    dec_a = p[o:o + F * da].view(F, da); o += F * da
    dec_bx = p[o:o + (F - ns) * db].view(F - ns, db); o += (F - ns) * db
    b_dec_a = p[o:o + da]; o += da
    b_dec_b = p[o:o + db]; o += db
    dec_b = torch.cat([dec_a[:ns], dec_bx], 0) if ns else dec_bx     # shared rows: one parameter
    if cfg["uncentred_encoder"]:
        pre = xa @ enc_a + xb @ enc_b + b_enc                     # SPEC's f = ReLU(sum_m x^m W_enc^m + b_enc)
    else:
        pre = (xa - b_dec_a) @ enc_a + (xb - b_dec_b) @ enc_b + b_enc   # centred: x^m - b_dec^m
    f = torch.relu(pre)
    na, nb = dec_a.norm(dim=1), dec_b.norm(dim=1)
    if cfg["variant"] == "batchtopk":
        scores = (f * (na + nb)).detach().flatten()
        idx = torch.topk(scores, k * n).indices
        mask = torch.zeros_like(scores)
        mask[idx] = 1.0
        f = f * mask.view(n, F)
    xha = f @ dec_a + b_dec_a
    xhb = f @ dec_b + b_dec_b
    ea, eb = xa - xha, xb - xhb
    rec = (ea.pow(2).sum() + eb.pow(2).sum()) / n
    lam = cfg["lambda_f"]
    pen = torch.zeros(())
    if lam > 0:
        w = torch.cat([cfg["lambda_ratio"] * na[:ns], (na + nb)[ns:]])
        pen = lam * (f * w).sum() / n
    aux = torch.zeros(())
    dead_idx = torch.nonzero(dead > 0).flatten()
    if cfg["variant"] == "batchtopk" and cfg["aux_k"] > 0 and len(dead_idx) > 0:
        ead, ebd = ea.detach(), eb.detach()                        # the target is a constant
        pd = pre[:, dead_idx]
        kk = min(cfg["aux_k"], len(dead_idx))
        top = torch.topk(pd.detach(), kk, dim=1).indices
        m = torch.zeros_like(pd).scatter_(1, top, 1.0)
        if cfg["aux_exact_relu"]:
            fa = torch.relu(pd) * m
        else:                                                      # value ReLU, gradient straight through
            fa = (pd + (torch.relu(pd) - pd).detach()) * m
        eha, ehb = fa @ dec_a[dead_idx], fa @ dec_b[dead_idx]
        num = (ead - eha).pow(2).sum() + (ebd - ehb).pow(2).sum()
        den = (ead - ead.mean(0)).pow(2).sum() + (ebd - ebd.mean(0)).pow(2).sum()
        aux = num / den
    loss = rec + pen + cfg["aux_alpha"] * aux
    return loss, rec, pen, aux


def write_st(path, tensors, meta):
    header = {"__metadata__": {k: str(v) for k, v in meta.items()}}
    offset, blobs = 0, []
    for name, arr in tensors:
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for b in blobs:
            f.write(b)


def make(path, cfg, seed):
    g = torch.Generator().manual_seed(seed)
    F, ns, da, db, n = cfg["n_latents"], cfg["n_shared"], cfg["d_a"], cfg["d_b"], cfg["n"]
    P = da * F + db * F + F + F * da + (F - ns) * db + da + db
    p = (torch.randn(P, generator=g, dtype=torch.float64) * 0.4).float()
    p[da * F + db * F:da * F + db * F + F] = 0.1                  # b_enc: most pre-activations positive
    xa = torch.randn(n, da, generator=g)
    xb = 2.0 * torch.randn(n, db, generator=g)
    dead = torch.zeros(F)
    dead[torch.randperm(F, generator=g)[:F // 3]] = 1.0
    p.requires_grad_(True)
    loss, rec, pen, aux = crosscoder_loss(p, xa, xb, cfg, dead)
    loss.backward()
    one = lambda t: np.array([float(t)], dtype=np.float32)          # noqa: E731
    write_st(path, [("x_a", xa.numpy()), ("x_b", xb.numpy()), ("params", p.detach().numpy()),
                    ("dead", dead.numpy()), ("loss", one(loss)), ("rec", one(rec)), ("penalty", one(pen)),
                    ("aux", one(aux)), ("grads", p.grad.numpy())], cfg)
    print("%s: loss %.6f (rec %.6f, penalty %.6f, aux %.6f), %d parameters" % (path, loss, rec, pen, aux, P))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures"
    base = dict(n=16, n_latents=24, k=3, n_shared=4, d_a=8, d_b=8, lambda_f=0.3, lambda_ratio=0.2,
                aux_k=4, aux_alpha=0.25, variant="batchtopk", uncentred_encoder=0,
                aux_exact_relu=0)
    make(os.path.join(out, "xc_ref_batchtopk.safetensors"), base, 1)
    l1 = dict(base, variant="l1", n_shared=0, d_b=6, lambda_f=0.5, aux_k=-1, uncentred_encoder=1)
    make(os.path.join(out, "xc_ref_l1.safetensors"), l1, 2)


if __name__ == "__main__":
    main()
