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
points on the frontier (no other point is both faster and at least as good).
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
    args = p.parse_args()
    ratios = json.loads(Path(args.step_ratios).read_text())
    points = []
    for spec in args.points:
        label, _, where = spec.partition("=")
        if label not in ratios:
            sys.exit(f"no step ratio for {label!r} in {args.step_ratios}")
        points.append({"label": label, "ratio": ratios[label], "tasks": task_means(where)})
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


def plot(points: list[dict], frontier: set[str], tasks: list[str], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    span = max(q["quality"] for q in points) - min(q["quality"] for q in points) or 1.0
    placed = []
    for pt in points:
        learner = pt["label"].startswith("learners")
        ax.scatter(pt["ratio"], pt["quality"], marker="o" if learner else "s", s=40,
                   color="tab:blue" if learner else "tab:gray", edgecolor="black" if pt["label"] in frontier else "none")
        # points at (almost) the same place get their labels stacked downwards instead of printed over each other
        near = sum(abs(r - pt["ratio"]) < 0.02 and abs(q - pt["quality"]) < 0.02 * span for r, q in placed)
        placed.append((pt["ratio"], pt["quality"]))
        ax.annotate(pt["label"], (pt["ratio"], pt["quality"]), textcoords="offset points", xytext=(5, 4 - 8 * near),
                    fontsize=7)
    front = sorted((pt for pt in points if pt["label"] in frontier), key=lambda q: q["ratio"])
    ax.plot([q["ratio"] for q in front], [q["quality"] for q in front], color="black", linewidth=0.8, linestyle="--")
    ax.set_xlabel("training step time / full fine-tuning's (batch 32 x 128, this CPU)")
    ax.set_ylabel(f"best dev metric, mean over {', '.join(tasks)}")
    ax.set_title("Speed-quality frontier (outlined: on the frontier)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
