#!/usr/bin/env python3
"""Both loss curves of a parity run in one SVG, and how far apart they are.

Reads ssmtrain's metrics.jsonl (its step records: {"step", "loss", ...}) and parity.py's
losses.jsonl, writes OUT.svg (step on x, loss in nats on y, a legend, the title and the mean
absolute difference over steps 100-300, or over every common step when the run is shorter) and
prints the mean and max |ssmtrain - PyTorch| and the steps they cover. No plotting library: the
SVG is written by hand, so the script needs only Python.
Usage: plot_parity.py --ssmtrain RUN/metrics.jsonl --pytorch OUT/losses.jsonl --out parity.svg [--title TEXT]
"""
import argparse
import json
from xml.sax.saxutils import escape


def losses(path):
    out = {}
    for line in open(path):
        record = json.loads(line)
        if "loss" in record and not record.get("skipped") and "eval" not in record:
            out[int(record["step"])] = float(record["loss"])
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ssmtrain", required=True)
    parser.add_argument("--pytorch", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--title", default="Training parity: ssmtrain vs PyTorch (transformers)")
    args = parser.parse_args()
    ours, theirs = losses(args.ssmtrain), losses(args.pytorch)
    common = sorted(set(ours) & set(theirs))
    if not common:
        raise SystemExit(f"{args.ssmtrain} and {args.pytorch} share no step")
    window = [s for s in common if 100 <= s <= 300] or common
    diffs = [abs(ours[s] - theirs[s]) for s in window]
    mean, worst = sum(diffs) / len(diffs), max(diffs)
    span = f"steps {window[0]}-{window[-1]}"
    summary = f"mean |ssmtrain - PyTorch| over {span}: {mean:.3g} nats (max {worst:.3g})"
    print(summary)

    width, height, left, right, top, bottom = 820, 480, 70, 20, 60, 55
    xs = [s for s in common]
    lo = min(min(ours[s], theirs[s]) for s in common)
    hi = max(max(ours[s], theirs[s]) for s in common)
    pad = 0.05 * (hi - lo or 1.0)
    lo, hi = lo - pad, hi + pad
    x0, x1 = xs[0], xs[-1] if xs[-1] > xs[0] else xs[0] + 1
    px = lambda s: left + (s - x0) / (x1 - x0) * (width - left - right)
    py = lambda v: top + (hi - v) / (hi - lo) * (height - top - bottom)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="15">{escape(args.title)}</text>',
             f'<text x="{width / 2}" y="42" text-anchor="middle">{escape(summary)}</text>']
    for k in range(6):  # y grid and labels
        v = lo + k * (hi - lo) / 5
        parts.append(f'<line x1="{left}" y1="{py(v):.1f}" x2="{width - right}" y2="{py(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3f}</text>')
    for k in range(6):  # x labels
        s = x0 + k * (x1 - x0) / 5
        parts.append(f'<text x="{px(s):.1f}" y="{height - bottom + 18}" text-anchor="middle">{s:.0f}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="none" stroke="#444"/>')
    parts.append(f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">step</text>')
    parts.append(f'<text transform="translate(18 {(top + height - bottom) / 2}) rotate(-90)" text-anchor="middle">training loss (nats)</text>')
    for name, series, colour, dash in (("ssmtrain", ours, "#1f77b4", ""), ("PyTorch (transformers)", theirs, "#d62728", ' stroke-dasharray="6 4"')):
        points = " ".join(f"{px(s):.1f},{py(series[s]):.1f}" for s in common)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"{dash}/>')
    for k, (name, colour) in enumerate((("ssmtrain", "#1f77b4"), ("PyTorch (transformers)", "#d62728"))):
        y = top + 16 + 18 * k
        parts.append(f'<line x1="{width - right - 190}" y1="{y}" x2="{width - right - 160}" y2="{y}" stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{width - right - 154}" y="{y + 4}">{escape(name)}</text>')
    parts.append("</svg>")
    with open(args.out, "w") as f:
        f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
