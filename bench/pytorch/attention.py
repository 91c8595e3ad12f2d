"""Times torch.nn.functional.scaled_dot_product_attention (causal, bf16) at the shapes of
bench/bench_attention.cpp, forward and forward + backward, with the same method as the C++
harness (CUDA events, an L2 flush before each timed run, median of the reps) and the bf16 GEMM
ceiling of the same GPU, and writes a JSON report.

Usage: python3 bench/pytorch/attention.py [--out FILE.json] [--reps N] [--warmups N]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F

SHAPES = [(8, 12, 2048, 64), (2, 12, 8192, 64)]  # (b, h, l, dh)


def time_ms(fn, reps, warmups, flush):
    for _ in range(warmups):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        flush.zero_()  # evict the inputs from L2, outside the timed region
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return {"median_ms": statistics.median(times), "min_ms": min(times),
            "mean_ms": sum(times) / len(times), "reps": reps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_attention_pytorch.json")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=3)
    args = parser.parse_args()

    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    flush = torch.empty(2 * props.L2_cache_size // 4 + 1, dtype=torch.float32, device=dev)

    g = 8192
    a = torch.randn(g, g, dtype=torch.bfloat16, device=dev)
    bm = torch.randn(g, g, dtype=torch.bfloat16, device=dev)
    gemm = time_ms(lambda: a @ bm, args.reps, args.warmups, flush)
    gemm_tflops = 2 * g ** 3 / (gemm["median_ms"] * 1e-3) / 1e12
    del a, bm

    results = []
    for b, h, l, dh in SHAPES:
        # (b, h, l, dh) views of (b, l, h, dh) storage, the layout ssmtrain uses.
        q, k, v, dout = (torch.randn(b, l, h, dh, dtype=torch.bfloat16, device=dev).transpose(1, 2)
                         for _ in range(4))
        for t in (q, k, v):
            t.requires_grad_(True)
        fwd_flops = 2.0 * 2.0 * b * h * l * l * dh / 2.0
        shape = f"b={b} h={h} l={l} dh={dh} causal"

        def forward():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def forward_backward():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            o.backward(dout)

        for name, fn, flops in (("torch sdpa forward bf16", forward, fwd_flops),
                                ("torch sdpa fwd+bwd bf16", forward_backward, 3.5 * fwd_flops)):
            t = time_ms(fn, args.reps, args.warmups, flush)
            tflops = flops / (t["median_ms"] * 1e-3) / 1e12
            results.append({"name": name, "shape": shape, "ms": t["median_ms"], "min_ms": t["min_ms"],
                            "mean_ms": t["mean_ms"], "flops": flops, "tflops": tflops,
                            "fraction_of_gemm_peak": tflops / gemm_tflops})
            print(f"{name:28s} {shape:32s} {t['median_ms']:8.3f} ms {tflops:7.1f} TFLOP/s "
                  f"({100 * tflops / gemm_tflops:.0f}% of GEMM)")

    report = {"benchmark": "attention_pytorch", "format": "ssmtrain-bench", "format_version": 1,
              "device": {"name": props.name, "sm_count": props.multi_processor_count},
              "torch_version": torch.__version__, "cudnn_version": torch.backends.cudnn.version(),
              "ceilings": {"gemm_bf16": {"m": g, "n": g, "k": g, "ms": gemm["median_ms"],
                                         "tflops": gemm_tflops}},
              "results": results}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"gemm bf16 {gemm_tflops:.0f} TFLOP/s; wrote {args.out}")


if __name__ == "__main__":
    main()
