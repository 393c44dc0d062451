"""
INT4 telemetry curves from train_int4 -p int4 -qstats N -o DIR (DIR/qstats.log): per step, the activation
and weight quantization errors with and without the Hadamard transform, the outlier ratio, and the LSS kept
fraction, each averaged over the quantized linear layers (dashed: the worst layer).

    python3 scripts/plot_qstats.py out/run/qstats.log -o qstats.png
"""
import argparse
import collections
import sys


def read(path):
    rows = collections.defaultdict(list)  # step -> list of dicts
    with open(path) as f:
        for line in f:
            fields = dict(item.split(":", 1) for item in line.split())
            if "s" not in fields:
                continue
            rows[int(fields["s"])].append({k: float(v) for k, v in fields.items() if k not in ("s", "l", "lin")})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("-o", "--output", default="qstats.png")
    args = parser.parse_args()
    rows = read(args.log)
    if not rows:
        sys.exit(f"{args.log}: no telemetry lines")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = sorted(rows)
    panels = [("activation error", ["xerr", "xerr_plain"]), ("weight error", ["werr", "werr_plain"]),
              ("outlier ratio max|v|/s", ["xout", "wout"]), ("LSS kept fraction", ["kept"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 4))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            mean = [sum(r[key] for r in rows[s]) / len(rows[s]) for s in steps]
            worst = [max(r[key] for r in rows[s]) for s in steps]
            line, = ax.plot(steps, mean, label=key)
            ax.plot(steps, worst, linestyle="--", color=line.get_color(), alpha=0.5)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
