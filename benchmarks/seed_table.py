"""Seeds pooled across bench dirs: best dev metric per task (mean, std, seeds) and time to target.

    python benchmarks/seed_table.py --output docs/benchmarks/cpu-layers/seeds \
        "full=docs/benchmarks/cola-3seeds:full+docs/benchmarks/cpu/all:full+docs/benchmarks/cpu-layers/baselines:full" \
        "learners=docs/benchmarks/cpu/all:learners+docs/benchmarks/cpu-layers/all:learners" ...

A CPU grid spans sessions, so one method's seeds of one task sit in several bench dirs. Each point is
LABEL=BENCH_DIR:METHOD: the finished runs of METHOD under BENCH_DIR/runs/TASK/METHOD/seed*/ (the layout
`learners bench` writes), or the rows of BENCH_DIR/bench.csv where no runs are kept; several sources joined
by + pool their seeds (a task and seed found twice counts once, from the first source).

Time to target as `learners bench` defines it, over the pooled seeds: a task's target is 95% of the
--reference point's mean best (default `full`); a run reaches it at the first evaluation at or above it
(training seconds, priming included, evaluation excluded; and optimizer steps) of a model the run can
return (the primed model's evaluation does not count). Only runs whose
results.json (with its history) is kept can say; bench.csv rows count as unknown. Seconds come from
whatever else the machine ran at the time: compare them only across runs made under the same load.
Writes OUTPUT.md.
"""

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from learners.harness.report import DEFAULT_TARGET_FRACTION, load_runs, reached_at, task_targets  # noqa: E402


def bench_runs(bench_dir: str, method: str) -> dict[str, dict[int, dict]]:
    """{task: {seed: run}} of `method`'s finished runs in `bench_dir` (results.json, else bench.csv rows)."""
    results, _ = load_runs(Path(bench_dir))
    if not results and (Path(bench_dir) / "bench.csv").is_file():  # an older bench kept only its CSV
        with open(Path(bench_dir) / "bench.csv") as f:
            results = [{**row, "best_metric": float(row["best_metric"]), "seed": int(row["seed"])}
                       for row in csv.DictReader(f)]
    by_task: dict[str, dict[int, dict]] = {}
    for r in results:
        if r["method"] == method:
            by_task.setdefault(r["task"], {})[int(r["seed"])] = r
    return by_task


def pooled_runs(sources: str) -> dict[str, dict[int, dict]]:
    """{task: {seed: run}} over the sources "DIR:METHOD+DIR:METHOD..."; a (task, seed) found in several
    sources counts once, from the first."""
    merged: dict[str, dict[int, dict]] = {}
    for source in sources.split("+"):
        bench_dir, _, method = source.rpartition(":")
        for task, seeds in bench_runs(bench_dir, method).items():
            for seed, run in seeds.items():
                merged.setdefault(task, {}).setdefault(seed, run)
    return merged


def first_reaching(run: dict, target: float) -> tuple[int, float] | None | str:
    """(step, training seconds) of the run's first evaluation at or above `target` (of a model the run can
    return: `report.reached_at`); None if it never reached it; "unknown" where the run kept no history."""
    if "history" not in run:
        return "unknown"
    entry = reached_at(run["history"], target)
    return None if entry is None else (int(entry["step"]), float(entry["seconds"]))


def quality_cell(runs: dict[int, dict]) -> str:
    values = [r["best_metric"] for r in runs.values()]
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread} ({len(values)})"


def target_cell(runs: dict[int, dict], target: float | None) -> str:
    """"k/n, median s (steps)": how many known runs reached the target, and the median of those that did."""
    if target is None:
        return "no target"
    reached = [first_reaching(r, target) for r in runs.values()]
    known = [x for x in reached if x != "unknown"]
    if not known:
        return "unknown"
    hits = [x for x in known if x is not None]
    cell = f"{len(hits)}/{len(known)}"
    if hits:
        cell += (f", {statistics.median(s for _, s in hits):.0f} s ({statistics.median(step for step, _ in hits):.0f} "
                 "steps)")
    return cell


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("points", nargs="+", help="LABEL=BENCH_DIR:METHOD, or several joined by + (their seeds pooled)")
    p.add_argument("--reference", default="full", help="the point whose mean best sets each task's target (default full)")
    p.add_argument("--output", required=True, help="path prefix of the .md written")
    p.add_argument("--mean-over", help="the tasks of the mean column, e.g. cola,mrpc,rte,stsb (default: the tasks every "
                                       "point has); a point without runs on one of them has no mean")
    args = p.parse_args(argv)
    points = {}
    for spec in args.points:
        label, _, where = spec.partition("=")
        points[label] = pooled_runs(where)
    tasks = sorted({t for runs in points.values() for t in runs})
    if not tasks:
        sys.exit("no finished runs in these sources")
    # `learners bench`'s rule (report.task_targets), with the reference point's pooled runs in `full`'s part
    reference = [{**r, "method": "full"} for seeds in points.get(args.reference, {}).values() for r in seeds.values()]
    found = task_targets(reference)
    targets = {task: found.get(task, (None, ""))[0] for task in tasks}
    common = args.mean_over.split(",") if args.mean_over else [t for t in tasks if all(t in runs for runs in points.values())]
    header = f"| point | {' | '.join(tasks)} |"
    rule = "|---|" + "---|" * len(tasks)
    lines = ["Best dev metric: mean ± std over seeds (seeds)", "", header[:-1] + f"| mean over {', '.join(common)} |",
             rule + "---|"]
    for label, runs in points.items():
        cells = [quality_cell(runs[t]) if t in runs else "-" for t in tasks]
        mean = statistics.mean(statistics.mean(r["best_metric"] for r in runs[t].values()) for t in common) \
            if common and all(t in runs for t in common) else None
        lines.append(f"| {label} | {' | '.join(cells)} | {'-' if mean is None else f'{mean:.3f}'} |")
    lines += ["", f"Time to target ({DEFAULT_TARGET_FRACTION:.0%} of `{args.reference}`'s mean best: "
              + ", ".join(f"{t} {'-' if targets[t] is None else f'{targets[t]:.4f}'}" for t in tasks)
              + "): runs that reached it / runs with a history, and their median training seconds (steps)",
              "", header, rule]
    for label, runs in points.items():
        lines.append(f"| {label} | {' | '.join(target_cell(runs[t], targets[t]) if t in runs else '-' for t in tasks)} |")
    Path(f"{args.output}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
