"""Times a plain PyTorch MoE layer (a Python loop over experts: torch.where, index_select,
SwiGLU matmuls, index_add_) forward + backward at the shape of bench_moe.cpp, in bf16 on the
current GPU, for comparison with ssmtrain_bench_moe in the same device call.

usage: python3 bench/pytorch/moe.py [--out FILE.json] [--reps N]
"""
import argparse
import json

import torch
import torch.nn.functional as F


def moe_loop(x, router, w_gate, w_up, w_down, top_k):
    """Top-k routed SwiGLU experts; returns out, the load-balancing loss and the z-loss."""
    t, e = x.shape[0], router.shape[0]
    logits = (x @ router.t()).float()                              # (t, e)
    probs = logits.softmax(-1)                                     # (t, e)
    weight, index = probs.topk(top_k, dim=-1)                      # (t, k)
    out = torch.zeros_like(x)                                      # (t, d)
    for g in range(e):
        token, slot = torch.where(index == g)
        if token.numel() == 0:
            continue
        xg = x.index_select(0, token)                              # (m, d)
        h = F.silu(xg @ w_gate[g].t()) * (xg @ w_up[g].t())        # (m, f)
        yg = (h @ w_down[g].t()) * weight[token, slot].unsqueeze(1).to(x.dtype)
        out.index_add_(0, token, yg)
    counts = torch.bincount(index.flatten(), minlength=e).float()
    aux = e * ((counts / (t * top_k)) * probs.mean(0)).sum()
    z = torch.logsumexp(logits, -1).pow(2).mean()
    return out, aux, z


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=3)
    args = parser.parse_args()
    t, d, f, e, k = 16384, 768, 1536, 16, 2
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(t, d, device=dev, dtype=dt, generator=gen).requires_grad_()
    router = (torch.randn(e, d, device=dev, dtype=dt, generator=gen) / d**0.5).requires_grad_()
    w_gate = (torch.randn(e, f, d, device=dev, dtype=dt, generator=gen) / d**0.5).requires_grad_()
    w_up = (torch.randn(e, f, d, device=dev, dtype=dt, generator=gen) / d**0.5).requires_grad_()
    w_down = (torch.randn(e, d, f, device=dev, dtype=dt, generator=gen) / f**0.5).requires_grad_()
    dout = torch.randn(t, d, device=dev, dtype=dt, generator=gen)
    params = [x, router, w_gate, w_up, w_down]

    def step():
        out, aux, z = moe_loop(x, router, w_gate, w_up, w_down, k)
        torch.autograd.backward([out, aux, z], [dout, torch.ones_like(aux), torch.ones_like(z)])
        for p in params:
            p.grad = None

    def forward():
        with torch.no_grad():
            moe_loop(x, router, w_gate, w_up, w_down, k)

    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)  # over twice the L2

    def time(fn):
        for _ in range(args.warmups):
            fn()
        times = []
        for _ in range(args.reps):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        times.sort()
        return times[len(times) // 2]

    a = t * k
    fwd_flops = 6.0 * a * d * f + 2.0 * t * d * e
    all_flops = 18.0 * a * d * f + 6.0 * t * d * e
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "shape": f"t={t} d={d} f={f} e={e} k={k}", "results": []}
    for name, fn, flops in [("pytorch loop forward bf16", forward, fwd_flops),
                            ("pytorch loop fwd+bwd bf16", step, all_flops)]:
        ms = time(fn)
        results["results"].append({"name": name, "median_ms": ms, "tflops": flops / ms / 1e9})
        print(f"{name:32s} {ms:8.3f} ms  {flops / ms / 1e9:7.1f} TFLOP/s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
