"""For bench/checkpoint.sh: whether a resumed run's final checkpoint has the same bits as the
uninterrupted run's (every dataset of /model, /optim and /train), and the save cost and
throughput figures from the runs' metrics.jsonl. Prints one JSON object.
    python3 compare_checkpoints.py NAME FULL_RUN RESUMED_RUN SAVE50_RUN NOSAVE_RUN"""
import json
import os
import statistics
import sys

import h5py
import numpy as np


def datasets(path):
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def rows(run):
    return [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]


def throughput(run):
    """Tokens/s over steps 2.. of a run: the step times plus the time saves blocked the loop."""
    r = rows(run)
    steps = [x for x in r if "tokens_per_s" in x and x["step"] >= 2]
    blocked = sum(x["save_blocked_ms"] for x in r if "save_blocked_ms" in x and x["step"] < r[-1]["step"])
    tokens = sum(x["tokens_per_s"] * x["ms"] / 1000 for x in steps)
    seconds = sum(x["ms"] for x in steps) / 1000 + blocked / 1000
    return tokens / seconds, statistics.median(x["tokens_per_s"] for x in steps), blocked


name, full, resumed, save50, nosave = sys.argv[1:6]
last = "checkpoints/step_00000020.h5"
a, b = datasets(os.path.join(full, last)), datasets(os.path.join(resumed, last))
differing = [k for k in a if k not in b or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes()]
max_abs = max((float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64))))
               for k in differing if k in b and a[k].shape == b[k].shape), default=0.0)
losses_a = [x["loss"] for x in rows(full) if "loss" in x and x["step"] >= 10]
losses_b = [x["loss"] for x in rows(resumed) if "loss" in x]
saves = [x for x in rows(save50) if "save_blocked_ms" in x]
with_saves, with_saves_median, blocked = throughput(save50)
without, without_median, _ = throughput(nosave)
print(json.dumps({
    "recipe": name,
    "datasets_compared": len(a),
    "datasets_differing": len(differing),
    "bit_exact": not differing and len(a) == len(b),
    "first_differing": differing[:5],
    "max_abs_difference": max_abs,
    "logged_losses_equal_from_step_10": losses_a == losses_b,
    "checkpoint_bytes": os.path.getsize(os.path.join(full, last)),
    "save_blocked_ms": [x["save_blocked_ms"] for x in saves],
    "tokens_per_s_saving_every_50": with_saves,
    "tokens_per_s_without_saves": without,
    "median_step_tokens_per_s_saving_every_50": with_saves_median,
    "median_step_tokens_per_s_without_saves": without_median,
    "throughput_ratio": with_saves / without,
}))
