"""PyTorch twin of moexc's two language models (SPEC.md section 1).

Importable by other tools (parity tests, PyTorch benchmarks):

    import torch_model as tm
    cfg = tm.resolve_config({"d_model": 64, "ffn": "moe"})
    model = tm.build_model(cfg)                 # same parameter names as moexc
    tm.load_moexc(model, "model.safetensors")   # or tm.load_model(path) -> model
    logits, stats = model(inputs, targets)      # stats: loss, ce, lb, z (tensors)
    tm.save_moexc(model, "out.safetensors")     # readable by moexc_model_load

The math is exactly moexc's: byte embedding, pre-norm blocks with RMSNorm
(eps 1e-6), causal attention with rotate-half RoPE (theta 10000), SwiGLU or a
top-k MoE (ties: lowest index) with raw or renormalised gates, the Switch
load-balancing loss alpha E sum_i f_i P_i with f_i = count_i / (k N) held
constant, optional router z-loss, final RMSNorm, LM head (optionally tied).

The `safetensors` package is not needed: read_safetensors / write_safetensors
are a tiny json + numpy implementation of the format.
"""
import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- configuration (mirrors moexc_model_config; zero = default) -------------
CONFIG_KEYS = ["vocab_size", "d_model", "n_heads", "n_layers", "context", "ffn", "d_ff",
               "n_experts", "top_k", "d_expert", "gate", "lb_alpha", "z_loss", "tied_head",
               "init_std", "seed"]
FLOAT_KEYS = {"lb_alpha", "z_loss", "init_std"}
FFN_DENSE, FFN_MOE = 0, 1
GATE_RAW, GATE_RENORM = 0, 1


def resolve_config(cfg=None):
    """Fill in moexc's defaults and validate, as moexc_model_config_resolve does.
    "ffn" may be 0/1 or "dense"/"moe"; "gate" 0/1 or "raw"/"renorm"."""
    c = {k: 0 for k in CONFIG_KEYS}
    c.update(cfg or {})
    if isinstance(c["ffn"], str):
        c["ffn"] = {"dense": FFN_DENSE, "moe": FFN_MOE}[c["ffn"]]
    if isinstance(c["gate"], str):
        c["gate"] = {"raw": GATE_RAW, "renorm": GATE_RENORM}[c["gate"]]
    c["vocab_size"] = c["vocab_size"] or 256
    c["d_model"] = c["d_model"] or 128
    c["n_heads"] = c["n_heads"] or 4
    c["n_layers"] = c["n_layers"] or 5
    c["context"] = c["context"] or 256
    c["d_ff"] = c["d_ff"] or 4 * c["d_model"]
    c["n_experts"] = c["n_experts"] or 8
    c["top_k"] = c["top_k"] or 2
    c["d_expert"] = c["d_expert"] or 2 * c["d_model"]
    c["lb_alpha"] = float(c["lb_alpha"] or 0.01)
    c["z_loss"] = float(c["z_loss"])
    c["init_std"] = float(c["init_std"] or 0.02)
    if c["d_model"] % c["n_heads"] or (c["d_model"] // c["n_heads"]) % 2:
        raise ValueError("d_model must be divisible by n_heads with an even head width")
    if not 1 <= c["top_k"] <= c["n_experts"]:
        raise ValueError("top_k must be in [1, n_experts]")
    if c["ffn"] == FFN_MOE and c["gate"] == GATE_RENORM and c["top_k"] == 1:
        raise ValueError("the renormalised gate with top_k = 1 gives the router no gradient")
    return c


# ---- layers ------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):  # y = g * x / sqrt(mean(x^2) + eps)
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def rope_tables(context, dh, theta=10000.0):
    """cos, sin (context, dh/2) of t * theta^(-2i/dh), computed in float64 as moexc does."""
    i = torch.arange(dh // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * i / dh)
    ang = torch.arange(context, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x, cos, sin):
    """x (B, H, T, dh); rotate-half pairing: dim i with i + dh/2."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class Attention(nn.Module):
    def __init__(self, d, n_heads, context):
        super().__init__()
        self.h, self.dh = n_heads, d // n_heads
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        cos, sin = rope_tables(context, self.dh)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = (w(x).view(B, T, self.h, self.dh).transpose(1, 2) for w in (self.wq, self.wk, self.wv))
        cos, sin = self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        s = (q @ k.transpose(-2, -1)) / math.sqrt(self.dh)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        p = torch.softmax(s.masked_fill(mask, float("-inf")), dim=-1)
        y = (p @ v).transpose(1, 2).reshape(B, T, d)
        return self.wo(y)


class SwiGLU(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.w_gate = nn.Linear(d, h, bias=False)
        self.w_up = nn.Linear(d, h, bias=False)
        self.w_down = nn.Linear(h, d, bias=False)

    def forward(self, u):  # W_down(silu(W_gate u) * W_up u)
        return self.w_down(F.silu(self.w_gate(u)) * self.w_up(u))


class Experts(nn.Module):
    """E SwiGLU experts stored as (E, h, d), (E, h, d), (E, d, h) like moexc."""

    def __init__(self, E, d, h):
        super().__init__()
        self.w_gate = nn.Parameter(torch.empty(E, h, d))
        self.w_up = nn.Parameter(torch.empty(E, h, d))
        self.w_down = nn.Parameter(torch.empty(E, d, h))

    def expert(self, e, u):
        return (F.silu(u @ self.w_gate[e].t()) * (u @ self.w_up[e].t())) @ self.w_down[e].t()


def topk_lowest_index(p, k):
    """Indices of the k largest entries per row, descending, ties to the lowest index."""
    _, idx = torch.sort(p, dim=-1, descending=True, stable=True)
    return idx[..., :k]


class MoE(nn.Module):
    def __init__(self, d, E, k, h, gate, lb_alpha, z_loss):
        super().__init__()
        self.E, self.k, self.gate = E, k, gate
        self.lb_alpha, self.z_loss = lb_alpha, z_loss
        self.router = nn.Linear(d, E, bias=False)
        self.experts = Experts(E, d, h)
        self.last_probs = self.last_choice = None

    def forward(self, u):
        B, T, d = u.shape
        x = u.reshape(-1, d)
        N = x.shape[0]
        z = self.router(x)                                   # (N, E)
        p = torch.softmax(z, dim=-1)
        choice = topk_lowest_index(p.detach(), self.k)       # (N, k)
        w = p.gather(1, choice)
        if self.gate == GATE_RENORM:
            w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.E):                              # dropless: every token reaches its k experts
            tok, slot = (choice == e).nonzero(as_tuple=True)
            if tok.numel():
                y = self.experts.expert(e, x[tok]) * w[tok, slot].unsqueeze(1)
                out = out.index_add(0, tok, y)
        self.last_probs, self.last_choice = p.detach(), choice
        counts = torch.bincount(choice.reshape(-1), minlength=self.E).to(x.dtype)
        f = counts / (self.k * N)                            # constant: no gradient
        P = p.mean(0)
        lb = self.lb_alpha * self.E * (f * P).sum() if self.lb_alpha > 0 else x.new_zeros(())
        lse = torch.logsumexp(z, dim=-1)
        zl = self.z_loss * (lse ** 2).mean() if self.z_loss > 0 else x.new_zeros(())
        return out.view(B, T, d), lb, zl


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["d_model"]
        self.attn_norm = RMSNorm(d)
        self.attn = Attention(d, c["n_heads"], c["context"])
        self.ffn_norm = RMSNorm(d)
        self.is_moe = c["ffn"] == FFN_MOE
        if self.is_moe:
            self.moe = MoE(d, c["n_experts"], c["top_k"], c["d_expert"], c["gate"],
                           max(c["lb_alpha"], 0.0), c["z_loss"])
        else:
            self.ffn = SwiGLU(d, c["d_ff"])

    def forward(self, x):
        h = x + self.attn(self.attn_norm(x))
        if self.is_moe:
            y, lb, zl = self.moe(self.ffn_norm(h))
        else:
            y, lb, zl = self.ffn(self.ffn_norm(h)), None, None
        self.last_ffn_out = y
        return h + y, lb, zl


class Transformer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c = self.config = resolve_config(cfg)
        self.tok_emb = nn.Embedding(c["vocab_size"], c["d_model"])
        self.layers = nn.ModuleList([Block(c) for _ in range(c["n_layers"])])
        self.norm = RMSNorm(c["d_model"])
        if not c["tied_head"]:
            self.lm_head = nn.Linear(c["d_model"], c["vocab_size"], bias=False)

    def init_weights(self, seed=None):
        """SPEC init: N(0, std); attention out and FFN down std/sqrt(2L); gains 1.
        (Not bit-identical to moexc's own init, which uses its own generator.)"""
        g = torch.Generator().manual_seed(self.config["seed"] if seed is None else seed)
        std = self.config["init_std"]
        out_std = std / math.sqrt(2 * self.config["n_layers"])
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0)
                else:
                    s = out_std if name.endswith("attn.wo.weight") or "w_down" in name else std
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * s)
        return self

    def forward(self, inputs, targets=None):
        """inputs, targets (B, T) int64. Returns logits (B, T, V) and a dict of
        loss tensors (loss = ce + lb + z); the dict is empty without targets."""
        x = self.tok_emb(inputs)
        lbs, zls = [], []
        for blk in self.layers:
            x, lb, zl = blk(x)
            if lb is not None:
                lbs.append(lb)
                zls.append(zl)
        x = self.norm(x)
        W = self.tok_emb.weight if self.config["tied_head"] else self.lm_head.weight
        logits = x @ W.t()
        if targets is None:
            return logits, {}
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        lb = torch.stack(lbs).sum() if lbs else ce.new_zeros(())
        zl = torch.stack(zls).sum() if zls else ce.new_zeros(())
        return logits, {"loss": ce + lb + zl, "ce": ce, "lb": lb, "z": zl}


def build_model(cfg=None, dtype=torch.float32, init=True):
    """A Transformer for a config dict (moexc field names; missing/zero = default)."""
    m = Transformer(cfg).to(dtype)
    if init:
        m.init_weights()
    return m


def count_params(model):
    """(total, active) like moexc_model_count_params."""
    c = model.config
    total = sum(p.numel() for p in model.parameters())
    if c["ffn"] != FFN_MOE:
        return total, total
    per_expert = 3 * c["d_expert"] * c["d_model"]
    return total, total - c["n_layers"] * (c["n_experts"] - c["top_k"]) * per_expert


# ---- safetensors without the safetensors package ------------------------------
def write_safetensors(path, tensors, metadata=None):
    """tensors: ordered dict name -> numpy array / torch tensor (stored as F32)."""
    header, blobs, off = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().numpy()
        a = np.ascontiguousarray(t, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    """Returns (dict name -> numpy array, metadata dict): float32 arrays, and
    int64 ones for I64 tensors (a crosscoder checkpoint's train.since_fired)."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base, out = 8 + n, {}
    for name, e in header.items():
        dt = {"F32": "<f4", "I64": "<i8"}.get(e["dtype"])
        if dt is None:
            raise ValueError("%s: tensor %s has dtype %s, only F32 and I64 are supported" % (path, name, e["dtype"]))
        b, t = e["data_offsets"]
        out[name] = np.frombuffer(raw[base + b:base + t], dtype=dt).reshape(e["shape"]).copy()
    return out, meta


def config_metadata(cfg):
    """The moexc checkpoint metadata for a resolved config."""
    meta = {"moexc.format": "model", "moexc.version": "1"}
    for k in CONFIG_KEYS:
        v = cfg[k]
        meta["moexc.config." + k] = ("%.9g" % float(np.float32(v))) if k in FLOAT_KEYS else str(int(v))
    return meta


def config_from_metadata(meta):
    if meta.get("moexc.format") != "model":
        raise ValueError("not a moexc model checkpoint")
    return {k: (float(meta["moexc.config." + k]) if k in FLOAT_KEYS else int(meta["moexc.config." + k]))
            for k in CONFIG_KEYS}


def save_moexc(model, path, extra_metadata=None):
    """Write a checkpoint moexc_model_load reads (parameters + resolved config)."""
    meta = config_metadata(model.config)
    meta.update(extra_metadata or {})
    write_safetensors(path, {k: v.float() for k, v in model.state_dict().items()}, meta)


def load_moexc(model, path):
    """Copy a moexc checkpoint's tensors into model (shapes checked)."""
    tensors, _ = read_safetensors(path)
    sd = model.state_dict()
    with torch.no_grad():
        for name, p in sd.items():
            if name not in tensors:
                raise KeyError("%s: tensor %s missing" % (path, name))
            if tuple(tensors[name].shape) != tuple(p.shape):
                raise ValueError("%s: tensor %s shape %s, expected %s" % (path, name, tensors[name].shape, tuple(p.shape)))
            p.copy_(torch.from_numpy(tensors[name]).to(p.dtype))
    return model


def load_model(path, dtype=torch.float32):
    """Build a model from a moexc checkpoint (config from its metadata)."""
    _, meta = read_safetensors(path)
    return load_moexc(build_model(config_from_metadata(meta), dtype=dtype, init=False), path)
