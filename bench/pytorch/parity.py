#!/usr/bin/env python3
"""Training parity: transformers trained on ssmtrain's own batches, from ssmtrain's own init.

Inputs (see docs/hf.md): HF, the directory `ssmtrain export hf --checkpoint DUMP/init.h5` wrote;
DUMP/batches.bin from `ssmtrain train RECIPE --dump-batches DUMP`; CONFIG, the run's config.yaml.
Trains AutoModelForCausalLM(HF) on every dumped step with ssmtrain's optimizer exactly:
  AdamW (optim.lr, betas, eps, weight_decay), decay on every weight matrix, the embedding, conv1d
  and the router, none on biases, norm weights, A_log, D and dt_bias (ssmtrain's groups);
  the lr schedule of optim/schedule.cpp (linear warmup (step+1)/warmup, then cosine or wsd to
  lr * min_lr_ratio, or constant); global-norm clipping at optim.grad_clip (scale
  max/(norm+1e-6) only when norm > max); loss = mean token cross-entropy over every target of
  the step. ssmtrain resets the SSM state, the conv and attention at document starts (doc_index);
  transformers cannot, so each row is cut at its document starts and the pieces run as separate
  sequences, right-padded (a causal model's earlier positions do not see the padding, and padded
  targets are left out of the loss): the same function as ssmtrain's. The MoE auxiliary loss is
  not reproduced: run Jamba recipes with model.moe.aux_loss_coef=0 (parity.sh does).
fp32 on the CPU; on a GPU bf16 autocast with fp32 master weights and fused AdamW.
Writes OUT/losses.jsonl: {"step", "loss", "grad_norm", "lr"} per step.
Usage: parity.py --hf HF --batches DUMP/batches.bin --config RUN/config.yaml --out OUT [--steps N] [--device cpu|cuda]
"""
import argparse
import json
import math
import os
import struct
import time

import numpy as np
import torch
import transformers as tf
import yaml


def read_batches(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"SSMBATCH":
        raise SystemExit(f"{path}: not a batches.bin of `ssmtrain train --dump-batches` (magic {data[:8]!r})")
    version, _, rows, seq_len = struct.unpack_from("<IIqq", data, 8)
    if version != 1:
        raise SystemExit(f"{path}: batches.bin version {version}, this script reads version 1")
    record = 8 + 3 * 4 * rows * seq_len
    offset, steps = 32, []
    while offset + record <= len(data):
        (step,) = struct.unpack_from("<q", data, offset)
        arrays = np.frombuffer(data, dtype="<i4", count=3 * rows * seq_len, offset=offset + 8).reshape(3, rows, seq_len)
        steps.append((step, arrays[0], arrays[1], arrays[2]))
        offset += record
    if offset != len(data):
        raise SystemExit(f"{path}: {len(data) - offset} trailing bytes: a truncated step record")
    return steps


def learning_rate(s, step, total):
    lr, warmup = s["lr"], s["warmup_steps"]
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    floor = lr * s["min_lr_ratio"]
    if s["kind"] == "constant":
        return lr
    if s["kind"] == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))
    if s["kind"] == "wsd":
        decay_steps = max(1, int(round(s["decay_fraction"] * total)))
        start = total - decay_steps
        if step < start:
            return lr
        return lr + (floor - lr) * min(1.0, (step - start) / decay_steps)
    raise SystemExit(f"schedule kind {s['kind']!r} is not one of cosine, wsd, constant")


def decays(name, p):
    leaf = name.split(".")[-1]
    return not (leaf in ("bias", "A_log", "D", "dt_bias") or "norm" in name)


def segments(inputs, targets, doc_index):
    """Every row cut at its document starts: lists of (input ids, target ids)."""
    out = []
    for r in range(inputs.shape[0]):
        starts = [0] + [t for t in range(1, inputs.shape[1]) if doc_index[r, t] != doc_index[r, t - 1]] + [inputs.shape[1]]
        for a, b in zip(starts[:-1], starts[1:]):
            out.append((inputs[r, a:b], targets[r, a:b]))
    return out


def step_loss(model, batch, device, autocast):
    _, inputs, targets, doc_index = batch
    pieces = segments(inputs, targets, doc_index)
    longest = max(len(i) for i, _ in pieces)
    ids = torch.zeros(len(pieces), longest, dtype=torch.long)
    labels = torch.full((len(pieces), longest), -100, dtype=torch.long)
    for k, (i, t) in enumerate(pieces):
        ids[k, : len(i)] = torch.from_numpy(i.astype(np.int64))
        labels[k, : len(t)] = torch.from_numpy(t.astype(np.int64))
    ids, labels = ids.to(device), labels.to(device)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=autocast):
        logits = model(ids, use_cache=False).logits
    # Labels are already the next tokens (ssmtrain's targets): no shift here.
    ce = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                                           ignore_index=-100, reduction="sum")
    return ce / inputs.size


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hf", required=True)
    parser.add_argument("--batches", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=0, help="0: every dumped step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    config = yaml.safe_load(open(args.config))
    # PyYAML reads YAML 1.1, where 1e-08 (no dot) is a string: numbers are converted here.
    number = lambda v: [float(x) for x in v] if isinstance(v, list) else float(v) if isinstance(v, str) and v[:1] in "0123456789.-" else v
    optim = {k: number(v) for k, v in config["optim"].items()}
    schedule = {k: number(v) for k, v in config["schedule"].items()}
    training = config["training"]
    schedule["lr"] = optim["lr"]
    total = training["max_steps"]
    batches = read_batches(args.batches)
    if args.steps:
        batches = batches[: args.steps]
    gpu = args.device.startswith("cuda")
    torch.manual_seed(0)
    if not gpu:
        torch.use_deterministic_algorithms(True)
    model = tf.AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32).to(args.device).train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if decays(n, p)], "weight_decay": optim["weight_decay"]},
              {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=optim["lr"], betas=tuple(optim["betas"]), eps=optim["eps"], fused=gpu)
    params = [p for _, p in named]
    os.makedirs(args.out, exist_ok=True)
    print(f"parity: {type(model).__name__} on {args.device} ({'bf16 autocast' if gpu else 'fp32'}), {len(batches)} steps, "
          f"{sum(p.numel() for p in params) / 1e6:.2f}M parameters, {len(groups[0]['params'])} decayed tensors, "
          f"{len(groups[1]['params'])} not")
    with open(os.path.join(args.out, "losses.jsonl"), "w") as log:
        for batch in batches:
            step = batch[0]
            begin = time.time()
            lr = learning_rate(schedule, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss = step_loss(model, batch, args.device, gpu)
            loss.backward()
            norm = torch.sqrt(sum(p.grad.detach().double().pow(2).sum() for p in params if p.grad is not None)).item()
            clip = optim["grad_clip"]
            if clip > 0 and norm > clip:
                for p in params:
                    if p.grad is not None:
                        p.grad.mul_(clip / (norm + 1e-6))
            opt.step()
            log.write(json.dumps({"step": step, "loss": loss.item(), "grad_norm": norm, "lr": lr}) + "\n")
            log.flush()
            print(f"step {step:5d} | loss {loss.item():.6f} | norm {norm:.4f} | lr {lr:.3e} | {1000 * (time.time() - begin):.0f} ms")


if __name__ == "__main__":
    main()
