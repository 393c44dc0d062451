"""
Loss curves from train_int4 logs (-o DIR writes DIR/main.log with lines "s:STEP trl:LOSS" and "s:STEP tel:LOSS").

    python3 scripts/plot.py out/main.log [more logs ...] -o loss.png

Each log is one curve pair (train, val), labelled by its folder name. Needs matplotlib.
"""
import argparse
import os
import sys


def read_log(path):
    train, val = [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 2 or not parts[0].startswith("s:"):
                continue
            step = int(parts[0][2:])
            kind, value = parts[1].split(":")
            (train if kind == "trl" else val).append((step, float(value)))
    return train, val


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+")
    parser.add_argument("-o", "--output", default="loss.png")
    parser.add_argument("--ymax", type=float, default=None)
    args = parser.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for path in args.logs:
        if not os.path.exists(path):
            sys.exit(f"{path}: no such log")
        train, val = read_log(path)
        label = os.path.basename(os.path.dirname(os.path.abspath(path)))
        if train:
            line, = ax.plot(*zip(*train), alpha=0.4, linewidth=0.8, label=f"{label} train")
            if val:
                ax.plot(*zip(*val), color=line.get_color(), marker="o", markersize=3, label=f"{label} val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    if args.ymax:
        ax.set_ylim(top=args.ymax)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
