"""Gather the JSON results of one `make bench` run into build/bench.json and
print one summary table.

Reads the fragments the benchmarks write into the build folder:

  bench_gemm.json              tools/bench_gemm.c --json
  bench_train.json             tools/bench_train_torch.py --json
  bench_crosscoder.json        tools/bench_crosscoder_torch.py --json (d 128, F 2048, k 32, batch 1024)
  bench_crosscoder_paper.json  the same at the paper-like shape (d 256, F 16384, k 64, batch 2048)
  bench_demo.json              tools/bench_demo.py --json (the tiny demo's user / wall)

and writes, besides the machine and the thread count, these ratios (each
from medians measured in that run; null with a reason in "reasons" when a
fragment or a peer is missing):

  gemm_vs_openblas_min             worst moexc / OpenBLAS over bench_gemm's shapes and thread counts
  train_dense_vs_torch             training tokens/s, moexc / PyTorch, dense model (the median of
                                   paired rounds; details: the step's fraction of the FMA peak, the
                                   ratio at the peak, see tools/bench_train_torch.py, and the
                                   quartiles of the rounds' ratios, printed as "rounds q1-q3")
  train_moe_vs_torch               the same, MoE model
  train_flops_vs_gemm              model FLOP/s of dense training (6 N + 6 L T d flop per token,
                                   see tools/bench_train.c) / the GEMM rate
  crosscoder_vs_torch              crosscoder pairs/s, moexc / PyTorch, d 128, F 2048, k 32 (the
                                   median of paired rounds, see tools/bench_crosscoder_torch.py;
                                   details: the quartiles of the rounds' ratios)
  crosscoder_paper_shape_vs_torch  the same at d 256, F 16384, k 64, batch 2048
  crosscoder_encoder_bound         moexc pairs/s at the paper-like shape / (GEMM rate / (2 (d_A + d_B) F))
  demo_cores_used                  user CPU time / wall time of the tiny demo

"The GEMM rate" is the same run's moexc 1024^3 rate of Y = X W^T (the
encoder's layout) on the bench thread count.

It also reports how steady the host was: the FMA-peak probes that the
training benchmark takes after each paired round ("host_fma_peak_gflops":
min, median, max, probes, and "slowed", how many fell under 80% of the
highest). On a shared host a slow phase lowers a round's probe along with
its steps; a run with slowed probes had such phases, which move single
ratios (the paired training ratios least: both sides of a round slow
together). And the hypervisor's steal ("host_steal_share_median": per
paired benchmark and the demo, the median share of the CPUs given to other
guests in a round or run): over 5% the summary says that the PyTorch ratios
read high, since PyTorch slows more than moexc under steal.

    /usr/bin/python3 tools/bench_summary.py [--build build] [--threads N] [--out build/bench.json]
"""
import argparse
import json
import os
import platform
import time

KEYS = ["gemm_vs_openblas_min", "train_dense_vs_torch", "train_moe_vs_torch", "train_flops_vs_gemm",
        "crosscoder_vs_torch", "crosscoder_paper_shape_vs_torch", "crosscoder_encoder_bound", "demo_cores_used"]
FRAGMENTS = {"gemm": ("bench_gemm.json", "make bench-gemm"), "train": ("bench_train.json", "make bench-train"),
             "xc": ("bench_crosscoder.json", "make bench-crosscoder"),
             "xc_paper": ("bench_crosscoder_paper.json", "make bench-crosscoder-paper"),
             "demo": ("bench_demo.json", "make bench-demo")}
GEMM_LAYOUT = "Y=XW^T"
SLOWED_BELOW = 0.8  # a probe under this fraction of the highest: a slowed round
STEAL_HIGH = 0.05   # a benchmark whose rounds lost more than this share of the CPUs to steal


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") or line.startswith("Model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None


def round_quartiles(c_steps, t_steps):
    """[q1, median, q3] of the per-round ratios PyTorch step / moexc step,
    or None: how far the rounds of one run spread around its ratio."""
    if not c_steps or not t_steps or len(c_steps) != len(t_steps):
        return None
    r = sorted(t / c for c, t in zip(c_steps, t_steps) if c and c > 0 and t)
    if len(r) < 4:
        return None
    q = lambda f: r[min(len(r) - 1, int(f * (len(r) - 1) + 0.5))]
    return [q(0.25), q(0.5), q(0.75)]


def load(build, name):
    """(fragment, None) or (None, reason)."""
    file, target = FRAGMENTS[name]
    path = os.path.join(build, file)
    try:
        with open(path) as f:
            frag = json.load(f)
    except OSError:
        return None, "%s missing (%s writes it)" % (path, target)
    except ValueError as e:
        return None, "%s unreadable: %s" % (path, e)
    frag["written"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(path)))
    return frag, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(os.path.dirname(__file__), "..", "build"),
                    help="folder with the bench_*.json fragments (default build/)")
    ap.add_argument("--threads", type=int, default=2, help="the bench thread count (BENCH_THREADS)")
    ap.add_argument("--out", help="where to write the summary (default <build>/bench.json)")
    a = ap.parse_args()
    out = a.out or os.path.join(a.build, "bench.json")
    res = {k: None for k in KEYS}
    reasons, details = {}, {}
    frag = {}
    for name in FRAGMENTS:
        frag[name], why = load(a.build, name)
        if why:
            details[name] = {"missing": why}
        else:
            details[name] = frag[name]

    def need(key, name, *fields):
        """The value at frag[name][fields...], or None with reasons[key] set."""
        f = frag[name]
        if f is None:
            reasons[key] = details[name]["missing"]
            return None
        v = f
        for fld in fields:
            v = v.get(fld) if isinstance(v, dict) else None
            if v is None:
                reasons[key] = f.get("reason") or "%s has no %s" % (FRAGMENTS[name][0], ".".join(fields))
                return None
        return v

    def same_threads(key, name):
        f = frag[name]
        if f is not None and f.get("threads") != a.threads:
            reasons[key] = "%s ran on %s threads, not %d" % (FRAGMENTS[name][0], f.get("threads"), a.threads)
            return False
        return f is not None

    # GEMM
    res["gemm_vs_openblas_min"] = need("gemm_vs_openblas_min", "gemm", "min_ratio_vs_openblas")
    gemm_rate = None
    if same_threads("gemm_rate", "gemm"):
        gemm_rate = need("gemm_rate", "gemm", "gemm_1024", GEMM_LAYOUT, "moexc_gflops")
    elif frag["gemm"] is None:
        reasons["gemm_rate"] = details["gemm"]["missing"]
    # training
    for kind in ("dense", "moe"):
        key = "train_%s_vs_torch" % kind
        if same_threads(key, "train"):
            res[key] = need(key, "train", "models", kind, "ratio")
            m = (frag["train"]["models"] or {}).get(kind) or {}
            for field in ("ratio_at_peak", "moexc_fraction_of_peak", "ratio_same_env"):
                details["train_%s_%s" % (kind, field)] = m.get(field)
            details["train_%s_ratio_quartiles" % kind] = round_quartiles(m.get("moexc_step_s"), m.get("torch_step_s"))
        elif frag["train"] is None:
            reasons[key] = details["train"]["missing"]
    key = "train_flops_vs_gemm"
    gflops = need(key, "train", "models", "dense", "moexc_gflops")
    if gflops is not None and gemm_rate is not None and same_threads(key, "train"):
        res[key] = gflops / gemm_rate
        moe = (frag["train"]["models"].get("moe") or {}).get("moexc_gflops")
        details["train_moe_flops_vs_gemm"] = moe / gemm_rate if moe else None
    elif gflops is not None and gemm_rate is None:
        reasons[key] = "no GEMM rate: " + reasons.get("gemm_rate", "?")
    # crosscoder
    for key, name in (("crosscoder_vs_torch", "xc"), ("crosscoder_paper_shape_vs_torch", "xc_paper")):
        if same_threads(key, name):
            res[key] = need(key, name, "ratio")
            details["%s_ratio_quartiles" % key] = round_quartiles(frag[name].get("moexc_step_s"),
                                                                  frag[name].get("torch_step_s"))
        elif frag[name] is None:
            reasons[key] = details[name]["missing"]
    key = "crosscoder_encoder_bound"
    pairs = need(key, "xc_paper", "moexc_pairs_per_s")
    if pairs is not None and gemm_rate is not None and same_threads(key, "xc_paper"):
        x = frag["xc_paper"]
        flop_per_pair = 2.0 * (x["d_a"] + x["d_b"]) * x["latents"]
        bound = gemm_rate * 1e9 / flop_per_pair
        res[key] = pairs / bound
        details["crosscoder_encoder_bound_pairs_per_s"] = bound
    elif pairs is not None and gemm_rate is None:
        reasons[key] = "no GEMM rate: " + reasons.get("gemm_rate", "?")
    # the demo
    key = "demo_cores_used"
    if same_threads(key, "demo"):
        res[key] = need(key, "demo", "user_over_wall")
    elif frag["demo"] is None:
        reasons[key] = details["demo"]["missing"]
    reasons.pop("gemm_rate", None)
    # the host's steadiness: the training rounds' FMA-peak probes
    probes = []
    if frag["train"] is not None:
        for m in (frag["train"].get("models") or {}).values():
            probes += [p for p in ((m or {}).get("peak_gflops") or []) if p]
    host = None
    if probes:
        probes.sort()
        host = {"min": probes[0], "median": probes[len(probes) // 2], "max": probes[-1], "probes": len(probes),
                "slowed": sum(1 for p in probes if p < SLOWED_BELOW * probes[-1])}
    # and the hypervisor's steal in each paired benchmark's rounds (median share of the CPUs)
    steal = {}
    for name, kinds in (("train", ("dense", "moe")), ("xc", (None,)), ("xc_paper", (None,)), ("demo", (None,))):
        for kind in kinds:
            f = frag[name]
            if f is not None and kind:
                f = (f.get("models") or {}).get(kind)
            share = (f or {}).get("steal_share_median" if name == "demo" else "host_steal_share_median")
            if share is not None:
                steal[name + ("_" + kind if kind else "")] = share

    summary = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "system": platform.system(),
                           "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
               "threads": a.threads, "gemm_rate_gflops": gemm_rate,
               "gemm_rate_is": "moexc %s at 1024^3 on %d threads, this run" % (GEMM_LAYOUT, a.threads),
               "host_fma_peak_gflops": host, "host_steal_share_median": steal or None}
    summary.update(res)
    summary["reasons"] = {k: reasons[k] for k in KEYS if res[k] is None and k in reasons}
    summary["details"] = details
    with open(out, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")

    m = summary["machine"]
    print("\nmake bench summary: %s, %s cores, %d threads (medians of this run; written to %s)"
          % (m["cpu"], m["cores"], a.threads, out))
    if gemm_rate:
        print("GEMM rate (moexc %s, 1024^3, %d threads): %.1f GFLOP/s" % (GEMM_LAYOUT, a.threads, gemm_rate))
    if host:
        print("host: FMA peak %.1f / %.1f / %.1f GFLOP/s (min / median / max of %d probes between training rounds; "
              "%d under 80%% of the highest)" % (host["min"], host["median"], host["max"], host["probes"], host["slowed"]))
    if any(k != "demo" for k in steal):
        print("host steal (median share of the CPUs given to other guests in a round): %s%s"
              % (", ".join("%s %.0f%%" % (k, 100 * v) for k, v in steal.items()),
                 "; over %.0f%%: PyTorch slows more than moexc under steal, so the ratios read high"
                 % (100 * STEAL_HIGH) if max(v for k, v in steal.items() if k != "demo") > STEAL_HIGH else ""))
    print("%-34s %8s  %s" % ("key", "value", "what"))

    def rounds(key):
        """the quartiles of a paired benchmark's per-round ratios"""
        q = details.get("%s_ratio_quartiles" % key)
        return " (rounds %.2f-%.2f)" % (q[0], q[2]) if q else ""

    def at_peak(kind):
        """what the training ratio is measured against: the step's fraction of
        the FMA peak, and the ratio a step at the peak would have"""
        f, c = details.get("train_%s_moexc_fraction_of_peak" % kind), details.get("train_%s_ratio_at_peak" % kind)
        q = details.get("train_%s_ratio_quartiles" % kind)
        rounds = "; rounds %.2f-%.2f" % (q[0], q[2]) if q else ""
        return " (%.0f%% of the FMA peak; %.2f at the peak%s)" % (100 * f, c, rounds) if f and c else ""
    what = {"gemm_vs_openblas_min": "worst moexc / OpenBLAS GEMM" +
            (" (%s)" % frag["gemm"]["min_ratio_case"] if frag["gemm"] and frag["gemm"].get("min_ratio_case") else ""),
            "train_dense_vs_torch": "dense LM training tokens/s, moexc / PyTorch" + at_peak("dense"),
            "train_moe_vs_torch": "MoE LM training tokens/s, moexc / PyTorch" + at_peak("moe"),
            "train_flops_vs_gemm": "dense training model FLOP/s / GEMM rate",
            "crosscoder_vs_torch": "crosscoder pairs/s / PyTorch, d 128 F 2048 k 32 batch 1024" +
                                   rounds("crosscoder_vs_torch"),
            "crosscoder_paper_shape_vs_torch": "the same, d 256 F 16384 k 64 batch 2048" +
                                               rounds("crosscoder_paper_shape_vs_torch"),
            "crosscoder_encoder_bound": "pairs/s at the paper shape / encoder-GEMM bound",
            "demo_cores_used": "tiny demo user CPU time / wall time" +
                               (" (host steal %.0f%% of the CPUs)" % (100 * frag["demo"]["steal_share_median"])
                                if frag["demo"] and frag["demo"].get("steal_share_median") is not None else "")}
    for k in KEYS:
        v = res[k]
        print("%-34s %8s  %s" % (k, "%.3f" % v if v is not None else "null",
                                 what[k] if v is not None else "(%s)" % summary["reasons"].get(k, "?")))


if __name__ == "__main__":
    main()
