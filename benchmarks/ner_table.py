"""The table of benchmarks/run_ner_grid.sh: best dev entity F1 per method (mean ± std over seeds, and each seed),
and time to target priced by a side-by-side step table.

    python benchmarks/ner_table.py OUT --step-table OUT/step_time.md [--task custom] [--reference full]

OUT is a `learners bench` folder (OUT/runs/TASK/METHOD/seedN/results.json). The target is `learners bench`'s: 95% of
the reference method's mean best (report.task_targets); a run reaches it at its first evaluation at or above it
(report.reached_at: the learner phase's evaluations only). The runs' own seconds come from a machine busy with
other work, so, as docs/journal.md#skip-1-default does, this counts optimizer steps to the target and prices each
method's steps by its step time over full fine-tuning's in one side-by-side table (benchmarks/step_time_memory.py,
its "vs first, same precision" column; `learners` is priced at its first-epoch row, and with a `learners:cached` row
at that one after the first epoch, as the frozen-prefix cache serves the later epochs). Time to target is then the
median run's steps x price, as a multiple of the reference's median run's steps (full-step units); and, as `learners
bench` draws its curves, the step at which the mean over seeds of the dev metric first reaches the target (the seeds
share one evaluation schedule), priced the same way.
"""

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from learners.harness.report import DEFAULT_TARGET_FRACTION, load_runs, reached_at, task_targets  # noqa: E402


def step_ratios(path: Path) -> dict[str, float]:
    """{method label: its step time / the first method's, same precision} from step_time_memory.py's table."""
    ratios = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 5 and cells[5].endswith("x") and cells[1] != "method":
            ratios.setdefault(cells[1], float(cells[5].rstrip("x")))
    return ratios


def priced_steps(run: dict, steps: int, ratios: dict[str, float]) -> float | None:
    """`steps` of `run` in full-step units (None: its method has no row in the step table)."""
    method = run["method"]
    if method not in ratios:
        return None
    later = ratios.get(f"{method}:cached", ratios[method])
    per_epoch = math.ceil(run["train_examples"] / run.get("effective_batch_size", run["batch_size"]))
    first = min(steps, per_epoch)
    return first * ratios[method] + (steps - first) * later


def quality_rows(by_method: dict[str, dict[int, dict]]) -> list[str]:
    lines = ["| method | best dev entity F1, mean ± std (seeds) | per seed | trainable params |", "|---|---|---|---|"]
    for method, runs in by_method.items():
        values = [runs[s]["best_metric"] for s in sorted(runs)]
        spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
        seeds = ", ".join(f"{s}: {runs[s]['best_metric']:.4f}" for s in sorted(runs))
        params = next(iter(runs.values()))["trainable_params"]
        lines.append(f"| {method} | {statistics.mean(values):.4f}{spread} ({len(values)}) | {seeds} | {params:,} |")
    return lines


def mean_curve_step(runs: dict[int, dict], target: float | None) -> int | None:
    """The first step at which the mean over `runs` of the dev metric is >= target (evaluations of the returnable
    model, report.reached_at's; evaluation i of every run averaged); None if never."""
    curves = [[e for e in r.get("history", []) if e.get("phase", "train") == "train" and e.get("metric") is not None]
              for r in runs.values()]
    mean = [{"step": c[0]["step"], "metric": statistics.mean(e["metric"] for e in c)}
            for c in zip(*curves) if len({e["step"] for e in c}) == 1]
    entry = reached_at(mean, target)
    return None if entry is None else int(entry["step"])


def target_rows(by_method: dict, target: float | None, ratios: dict[str, float], reference: str) -> list[str]:
    lines = ["| method | reached | steps to target (median; per seed) | x full's time (priced) | mean curve: step, "
             "x full's |", "|---|---|---|---|---|"]
    curve = {m: mean_curve_step(runs, target) for m, runs in by_method.items()}
    curve_priced = {m: priced_steps(next(iter(by_method[m].values())), s, ratios) for m, s in curve.items()
                    if s is not None}
    medians = {}
    for method, runs in by_method.items():
        reached = {s: reached_at(r.get("history", []), target) for s, r in sorted(runs.items())}
        hits = {s: int(e["step"]) for s, e in reached.items() if e is not None}
        cell = ", ".join(f"{s}: {hits[s] if s in hits else 'never'}" for s in reached)
        if hits:
            steps = statistics.median_low(hits.values())
            run = runs[next(s for s in hits if hits[s] == steps)]
            medians[method] = (steps, priced_steps(run, steps, ratios))
        lines.append([method, f"{len(hits)}/{len(runs)}", f"{medians[method][0] if method in medians else '-'}; {cell}"])
    base, curve_base = medians.get(reference, (None, None))[1], curve_priced.get(reference)
    for i, row in enumerate(lines[2:], 2):
        priced = medians.get(row[0], (None, None))[1]
        ratio = "never" if row[0] not in medians else "-" if priced is None or not base else f"{priced / base:.2f}x"
        step, priced = curve[row[0]], curve_priced.get(row[0])
        mean_cell = "never" if step is None else f"{step}, " + (
            "-" if priced is None or not curve_base else f"{priced / curve_base:.2f}x")
        lines[i] = f"| {' | '.join(row)} | {ratio} | {mean_cell} |"
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="the bench folder (OUT of run_ner_grid.sh)")
    p.add_argument("--step-table", help="step_time_memory.py's output, side by side (default: OUT/step_time.md)")
    p.add_argument("--task", default="custom", help="the task's name under OUT/runs (default custom)")
    p.add_argument("--reference", default="full", help="the method whose mean best sets the target (default full)")
    args = p.parse_args(argv)
    results = [r for r in load_runs(Path(args.out))[0] if r["task"] == args.task]
    if not results:
        sys.exit(f"no finished runs of task {args.task} under {args.out}/runs")
    by_method: dict[str, dict[int, dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], {})[int(r["seed"])] = r
    reference = [{**r, "method": "full"} for r in results if r["method"] == args.reference]
    target = task_targets(reference).get(args.task, (None, ""))[0] if reference else None
    table = Path(args.step_table or Path(args.out) / "step_time.md")
    ratios = step_ratios(table) if table.is_file() else {}
    lines = quality_rows(by_method) + ["", f"Time to target: {DEFAULT_TARGET_FRACTION:.0%} of {args.reference}'s mean "
                                       f"best = {'-' if target is None else f'{target:.4f}'}; steps priced by "
                                       f"{table if ratios else 'no step table (no pricing)'}", ""]
    print("\n".join(lines + target_rows(by_method, target, ratios, args.reference)))


if __name__ == "__main__":
    main()
