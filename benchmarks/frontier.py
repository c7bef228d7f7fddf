"""The speed-quality frontier: learner configurations against full fine-tuning, LoRA and BitFit.

    python benchmarks/frontier.py --step-ratios docs/benchmarks/step_ratios.json \
        --output docs/benchmarks/frontier \
        "full=docs/benchmarks/cpu/all:full" "lora=docs/benchmarks/cpu/all:lora" \
        "learners top-3=docs/benchmarks/cpu2/top3:learners" ...

Each point is LABEL=BENCH_DIR:METHOD: the finished runs of METHOD under BENCH_DIR/runs/TASK/METHOD/seed*/
(the layout `learners bench` writes), or the rows of BENCH_DIR/bench.csv where no runs are kept; several
sources joined by + pool their seeds (a task and seed found twice counts once, from the first source). Quality is the mean over seeds of the best dev metric per task, then
the mean over the tasks that every point has (so points are compared on the same tasks). Speed is the
step-time ratio to full fine-tuning measured side by side by benchmarks/step_time_memory.py at a fixed
shape (JSON {LABEL: ratio}); run-to-run step times inside fine-tunings vary with sequence length and
machine load, so they are not used. Writes OUTPUT.md (a table) and OUTPUT.png (the plot), and marks the
points on the frontier (no other point is both faster and at least as good). --names (JSON {LABEL: words})
gives each point the name a user reads in the plot (the labels stay the table's keys); in the plot every point
is numbered and its name stands in a key beside the axes, in the order of the points' quality, so that no two
names overlap however close the points are.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_table import pooled_runs  # noqa: E402


def task_means(sources: str) -> dict[str, tuple[float, int]]:
    """{task: (mean best metric over seeds, number of seeds)} over the sources "DIR:METHOD+DIR:METHOD..."
    (pooled as in seed_table.py: a (task, seed) found in several sources counts once, from the first)."""
    return {task: (statistics.mean(r["best_metric"] for r in seeds.values()), len(seeds))
            for task, seeds in pooled_runs(sources).items()}


def on_frontier(points: list[dict]) -> set[str]:
    """Labels that no other point beats on both axes (faster or as fast, and better or as good, one strictly)."""
    best = set()
    for p in points:
        dominated = any(q is not p and q["ratio"] <= p["ratio"] and q["quality"] >= p["quality"]
                        and (q["ratio"] < p["ratio"] or q["quality"] > p["quality"]) for q in points)
        if not dominated:
            best.add(p["label"])
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="+", help="LABEL=BENCH_DIR:METHOD, or several joined by + (their seeds pooled)")
    p.add_argument("--step-ratios", required=True, help="JSON {LABEL: step time / full's step time}")
    p.add_argument("--output", required=True, help="path prefix of the .md and .png written")
    p.add_argument("--names", help="JSON {LABEL: the point's name in plain words, for the plot}")
    args = p.parse_args()
    ratios = json.loads(Path(args.step_ratios).read_text())
    names = json.loads(Path(args.names).read_text()) if args.names else {}
    points = []
    for spec in args.points:
        label, _, where = spec.partition("=")
        if label not in ratios:
            sys.exit(f"no step ratio for {label!r} in {args.step_ratios}")
        points.append({"label": label, "name": names.get(label, label), "ratio": ratios[label],
                       "tasks": task_means(where)})
    common = sorted(set.intersection(*(set(pt["tasks"]) for pt in points)))
    if not common:
        sys.exit("the points share no task with finished runs")
    for pt in points:
        pt["quality"] = statistics.mean(pt["tasks"][t][0] for t in common)
    frontier = on_frontier(points)
    lines = [f"| configuration | step vs full | {' | '.join(common)} | mean | seeds | on the frontier |",
             "|---|---|" + "---|" * len(common) + "---|---|---|"]
    for pt in sorted(points, key=lambda q: q["ratio"]):
        cells = " | ".join(f"{pt['tasks'][t][0]:.3f}" for t in common)
        seeds = "/".join(str(pt["tasks"][t][1]) for t in common)
        lines.append(f"| {pt['label']} | {pt['ratio']:.2f}x | {cells} | {pt['quality']:.3f} | {seeds} | "
                     f"{'yes' if pt['label'] in frontier else ''} |")
    Path(f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(points, frontier, common, Path(f"{args.output}.png"))


def spread(ys: list[float], gap: float, low: float = 0.0, high: float = 1.0) -> list[float]:
    """Positions as near as may be to ys (sorted ascending) with at least `gap` between neighbours, inside
    [low, high] where len(ys) gaps fit: pushed up from the bottom where they crowd, then down from the top."""
    out = []
    for y in ys:
        out.append(max(y, low, out[-1] + gap) if out else max(y, low))
    for i in range(len(out) - 1, -1, -1):
        out[i] = min(out[i], high, out[i + 1] - gap) if i + 1 < len(out) else min(out[i], high)
    return out


def plot(points: list[dict], frontier: set[str], tasks: list[str], path: Path) -> None:
    """Each point numbered on the axes; its number and name in a key to the right, in the order of the points'
    quality and spread so that no two names overlap, with a thin line from the key to the point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(points, key=lambda q: (q["ratio"], -q["quality"]))
    number = {pt["label"]: i + 1 for i, pt in enumerate(order)}
    fig = plt.figure(figsize=(11, max(5.0, 0.26 * len(points) + 1.2)), dpi=110)
    ax = fig.add_axes([0.07, 0.1, 0.5, 0.82])
    lo = min(q["quality"] for q in points)
    hi = max(q["quality"] for q in points)
    pad = (hi - lo) * 0.06 or 0.01
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlim(min(q["ratio"] for q in points) - 0.05, max(q["ratio"] for q in points) + 0.05)
    front = sorted((pt for pt in points if pt["label"] in frontier), key=lambda q: q["ratio"])
    ax.plot([q["ratio"] for q in front], [q["quality"] for q in front], color="black", linewidth=0.8,
            linestyle="--", zorder=1)
    for pt in points:
        learner = pt["label"].startswith("learners")
        default = "(default)" in pt["name"]
        ax.scatter(pt["ratio"], pt["quality"], marker="o" if learner else "s", s=110 if default else 80, zorder=2,
                   color=("tab:orange" if default else "tab:blue") if learner else "tab:gray",
                   edgecolor="black" if pt["label"] in frontier else "none")
    # the key: one line per point, ordered by quality (best at the top), spread to a fixed gap
    by_quality = sorted(points, key=lambda q: (q["quality"], -q["ratio"]))
    to_axes = lambda y: (y - (lo - pad)) / ((hi + pad) - (lo - pad))  # noqa: E731
    gap = min(0.045, 1.0 / max(1, len(points) - 1))
    ys = spread([to_axes(q["quality"]) for q in by_quality], gap)
    for pt, y in zip(by_quality, ys):
        on = pt["label"] in frontier
        text = f"{number[pt['label']]:>2}  {pt['name']}  ({pt['ratio']:.2f}x, {pt['quality']:.3f})"
        ax.annotate(text, xy=(pt["ratio"], pt["quality"]), xycoords="data", xytext=(1.04, y),
                    textcoords="axes fraction", va="center", fontsize=7.5, fontweight="bold" if on else "normal",
                    arrowprops=dict(arrowstyle="-", color="0.8", linewidth=0.5, shrinkA=0, shrinkB=5))
        ax.annotate(str(number[pt["label"]]), (pt["ratio"], pt["quality"]), textcoords="offset points",
                    xytext=(0, 0), ha="center", va="center", fontsize=6, color="white", fontweight="bold", zorder=3)
    ax.set_xlabel("training step time / full fine-tuning's (batch 32 x 128, this CPU)")
    ax.set_ylabel(f"best dev metric, mean over {', '.join(tasks)}")
    ax.set_title("Speed and quality of each configuration\n(up and left is better; outlined and bold: on the "
                 "frontier, no other point is faster and as good)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
