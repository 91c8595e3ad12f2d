#!/usr/bin/env python3
# End-to-end training speed of ssmtrain beside the reference stack (PyTorch + the Mamba authors'
# kernels, set up by the anchor scripts), in one run on one GPU: the rows of the end-to-end
# speed issue. For each row ssmtrain trains STEPS steps of one micro-batch (bf16, vocab 32000)
# and reports the median tokens/s, ms per step and MFU of steps 4..STEPS (1-based) and the peak memory;
# where the anchor is present (ANCHOR=dir holding bench.py, with its extensions built) the
# reference trains the same shapes in the same process tree and the ratio is printed.
#   OUT=dir [STEPS=15] [ANCHOR=.anchor] [ROWS=name,name] python3 bench/side_by_side.py DATA_DIR
# Writes $OUT/side_by_side.json (GPU name, commit, every figure) and prints a table.
import json, os, statistics, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.environ.get("OUT", os.path.join(ROOT, "build", "out"))
STEPS = int(os.environ.get("STEPS", "15"))
ANCHOR = os.environ.get("ANCHOR", os.path.join(ROOT, ".anchor"))
BINARY = os.environ.get("SSMTRAIN", os.path.join(ROOT, "build", "ssmtrain"))

# name, recipe, seq_len, micro-batch, extra --set, the anchor's result key
ROWS = [
    ("mamba1-130m", "mamba1-130m", 2048, 8, [], "e2e_mamba1_130m_b8_l2048"),
    ("mamba2-130m", "mamba2-130m", 2048, 8, [], "e2e_mamba2_130m_b8_l2048"),
    ("hybrid-mamba2-130m", "hybrid-mamba2-130m", 2048, 8, [], "e2e_hybrid_mamba2_attn_4_12_20_b8_l2048"),
    ("jamba-small-mlp2", "jamba-small", 2048, 8, ["model.mlp.multiplier=2"], "e2e_hf_jamba_bf16_weights_b8_l2048"),
    ("mamba1-130m-32k", "mamba1-130m", 32768, 1, [], "e2e_mamba1_130m_b1_l32768"),
    ("mamba2-130m-32k", "mamba2-130m", 32768, 1, [], "e2e_mamba2_130m_b1_l32768"),
    ("hybrid-mamba2-130m-32k", "hybrid-mamba2-130m", 32768, 1, [], "e2e_hybrid_mamba2_attn_4_12_20_b1_l32768"),
]


def ssmtrain_row(name, recipe, seq, batch, extra, data):
    run_dir = os.path.join(OUT, "side_by_side_runs")
    sets = [f"model.vocab_size=32000", f"training.seq_len={seq}", f"training.micro_batch={batch}",
            f"training.global_batch_tokens={seq * batch}", f"training.max_steps={STEPS}", "training.token_budget=0",
            "schedule.warmup_steps=1", "training.eval_every=0", f"eval.perplexity_tokens={seq * batch}",
            "logging.every=1", f"run.name={name}", f"run.output_dir={run_dir}", f"data.train={data}",
            "run.overwrite=true"] + extra
    cmd = [BINARY, "train", os.path.join(ROOT, "recipes", recipe + ".yaml"), "--resume", "none"]
    for s in sets:
        cmd += ["--set", s]
    log = os.path.join(OUT, f"side_by_side-{name}.log")
    t = time.time()
    with open(log, "w") as f:
        status = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=900)
    rows = []
    try:
        rows = [json.loads(l) for l in open(os.path.join(run_dir, name, "metrics.jsonl")) if '"tokens_per_s"' in l]
    except OSError:
        pass
    steady = [r for r in rows if r.get("step", 0) >= 3] or rows
    med = lambda k: statistics.median(r[k] for r in steady) if steady else None
    return {"exit_status": status, "seq_len": seq, "micro_batch": batch, "steps_timed": len(steady),
            "tokens_per_s": med("tokens_per_s"), "ms_per_step": med("ms"), "mfu": med("mfu"),
            "peak_mem_gib": max((r["mem_gib"] for r in rows), default=None), "wall_s": time.time() - t,
            "log": os.path.basename(log)}


def anchor_results(rows):
    """Runs the reference's e2e (and jamba) modes at the shapes of the rows measured; {} when the
    reference stack is absent."""
    bench = os.path.join(ANCHOR, "bench.py")
    if not os.path.exists(bench) or not os.path.exists("/tmp/anchor_built"):
        print(f"note: no reference stack ({bench} or its build missing): ssmtrain only", flush=True)
        return {}
    env = dict(os.environ, OUT=OUT, PYTHONUNBUFFERED="1",
               PYTHONPATH=f"{ANCHOR}/mamba:{ANCHOR}/cc1d:" + os.environ.get("PYTHONPATH", ""))
    merged = {}
    shapes = sorted({(r["seq_len"], r["micro_batch"]) for r in rows})
    for seq, batch in shapes:
        jamba = any(r["recipe"] == "jamba-small" and r["seq_len"] == seq for r in rows)
        modes = "e2e,jamba" if jamba else "e2e"
        log = os.path.join(OUT, f"side_by_side-anchor-{modes.replace(',', '_')}-b{batch}-l{seq}.log")
        with open(log, "w") as f:
            subprocess.call([sys.executable, bench, modes, "--seq", str(seq), "--batch", str(batch)],
                            stdout=f, stderr=subprocess.STDOUT, env=env, timeout=900)
        path = os.path.join(OUT, f"anchor_{modes.replace(',', '_')}_b{batch}_l{seq}.json")
        if os.path.exists(path):
            merged.update(json.load(open(path)))
    return merged


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__ or "usage: side_by_side.py DATA_DIR")
    data = sys.argv[1]
    os.makedirs(OUT, exist_ok=True)
    wanted = set(os.environ["ROWS"].split(",")) if os.environ.get("ROWS") else None
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                         text=True).stdout.strip().splitlines()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    results = []
    for name, recipe, seq, batch, extra, key in ROWS:
        if wanted and name not in wanted:
            continue
        r = ssmtrain_row(name, recipe, seq, batch, extra, data)
        r.update(name=name, recipe=recipe, extra=extra, anchor_key=key)
        print(f"ssmtrain {name:26s} {r['tokens_per_s'] or 0:10.0f} tok/s  {r['ms_per_step'] or 0:7.1f} ms  "
              f"{r['peak_mem_gib'] or 0:6.2f} GiB  mfu {r['mfu'] or 0:.3f}  (exit {r['exit_status']})", flush=True)
        results.append(r)
    reference = anchor_results(results)
    for r in results:
        ref = reference.get(r["anchor_key"])
        if ref:
            r["reference"] = ref
            if r["tokens_per_s"]:
                r["ratio_tokens_per_s"] = r["tokens_per_s"] / ref["tokens_per_s"]
    doc = {"format": "ssmtrain-bench-side-by-side", "version": 1, "device": gpu[0] if gpu else "unknown",
           "commit": commit, "steps": STEPS, "reference_present": bool(reference),
           "reference_meta": {k: v for k, v in reference.items() if not isinstance(v, dict)}, "rows": results}
    with open(os.path.join(OUT, "side_by_side.json"), "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\n{doc['device']}, commit {commit}")
    print(f"{'row':26s} {'ssmtrain tok/s':>15s} {'GiB':>6s} {'reference tok/s':>16s} {'GiB':>6s} {'ratio':>6s}")
    for r in results:
        ref = r.get("reference", {})
        print(f"{r['name']:26s} {r['tokens_per_s'] or 0:15.0f} {r['peak_mem_gib'] or 0:6.2f} "
              f"{ref.get('tokens_per_s', 0):16.0f} {ref.get('peak_mem_GiB', 0):6.2f} {r.get('ratio_tokens_per_s', 0):6.2f}")


if __name__ == "__main__":
    main()
