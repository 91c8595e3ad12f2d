#!/usr/bin/env python3
"""PyTorch's torch.nn.functional.cross_entropy, forward + backward, on bf16 logits of the shape
bench/bench_fused.cpp times (16384 tokens, vocab 32000 by default): median time over repeats
with the L2 cache flushed before each (as bench/harness does), and the peak memory allocated
beyond the inputs. Writes a JSON report; run it in the same device session as ssmtrain_bench_fused.
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16384)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--out", default="pytorch_cross_entropy.json")
    args = parser.parse_args()

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(1)
    logits = torch.randn(args.n, args.vocab, device=dev, generator=gen).to(torch.bfloat16).requires_grad_()
    targets = (torch.arange(args.n, device=dev, dtype=torch.int64) * 7919 + 13) % args.vocab
    l2_bytes = torch.cuda.get_device_properties(dev).L2_cache_size
    flush = torch.empty(2 * l2_bytes // 4 + 1, dtype=torch.float32, device=dev)

    def step():
        logits.grad = None
        loss = F.cross_entropy(logits, targets)
        loss.backward()
        return loss

    for _ in range(args.warmups):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.reps):
        flush.fill_(1.0)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))

    logits.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    report = {
        "format": "ssmtrain-bench-pytorch",
        "benchmark": "cross_entropy fwd+bwd",
        "device": torch.cuda.get_device_name(dev),
        "torch": torch.__version__,
        "shape": f"n={args.n} vocab={args.vocab} bf16 logits",
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "reps": args.reps,
        "extra_memory_bytes": extra,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"pytorch cross_entropy fwd+bwd {report['shape']} on {report['device']}: "
          f"median {report['median_ms']:.3f} ms, min {report['min_ms']:.3f} ms, "
          f"extra memory {extra / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
