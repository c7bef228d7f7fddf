"""Benchmark reporting: OUT/runs/*/*/seed*/results.json in; bench.csv, bench.md and PNG plots out.

Pure functions over the results dicts `learners finetune` writes, so a report can be rebuilt at any
time (`learners bench --report-only`) and tested on constructed results without training.

Time to target: the first wall-clock training second (history `seconds`, priming included, evaluation
excluded) at which the dev metric (history `metric`) of a model the run can return reaches the task's
target (so not the primed model's evaluation: see `reached_at`). The default target is
95% of the mean over seeds of `full`'s best dev metric on that task in the same bench; `--target` sets
absolute targets instead. No `full` runs, or a mean best <= 0 (CoLA's MCC sits at 0 for the majority
class), means no default target: the report says so rather than invent one.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

from .files import replaced_atomically, write_text_atomically

DEFAULT_TARGET_FRACTION = 0.95

CSV_COLUMNS = ["task", "method", "seed", "metric_name", "metric", "best_metric", "trainable_params", "train_seconds",
               "step_ms", "peak_memory_mb", "time_to_target_s",
               # extras
               "encoder_trainable_params", "head_params", "total_params", "trainable_percent", "steps", "target"]


def run_dir(out: Path, task: str, method: str, seed: int) -> Path:
    return Path(out) / "runs" / task / method / f"seed{seed}"


def load_runs(out: Path) -> tuple[list[dict], list[Path]]:
    """(results of the finished runs under OUT/runs, run dirs without results.json: failed or killed)."""
    finished, incomplete = [], []
    for directory in sorted((Path(out) / "runs").glob("*/*/seed*")):
        path = directory / "results.json"
        if path.exists():
            finished.append(json.loads(path.read_text()))
        elif directory.is_dir():
            incomplete.append(directory)
    return finished, incomplete


def reached_at(history: list[dict], target: float | None) -> dict | None:
    """The run's first evaluation whose `metric` is >= target; None if never reached (or no target).

    Only evaluations of a model the run can return count: the learner phase's (or the whole run's without
    priming), from which the best is restored. The primed model (phase "priming": full fine-tuning,
    before everything but the learners goes back) and the just reconfigured one are not returned."""
    if target is None or not math.isfinite(target):
        return None
    for entry in history:
        metric = entry.get("metric")
        if entry.get("phase", "train") == "train" and metric is not None and math.isfinite(metric) and metric >= target:
            return entry
    return None


def time_to_target(history: list[dict], target: float | None) -> float | None:
    """The training seconds of `reached_at`'s evaluation; None if never reached (or no target)."""
    entry = reached_at(history, target)
    return None if entry is None else float(entry["seconds"])


def _finite(values) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def task_targets(results: list[dict], target: float | dict[str, float] | None = None) -> dict[str, tuple[float | None, str]]:
    """Per task: (target or None, a sentence saying where it comes from or why there is none).

    `target` is an absolute target for all tasks (float), per task (dict; tasks not named get the default),
    or None (the default: 95% of `full`'s mean best over seeds)."""
    targets = {}
    for task in dict.fromkeys(r["task"] for r in results):
        metric_name = next(r["metric_name"] for r in results if r["task"] == task)
        explicit = target.get(task) if isinstance(target, dict) else target
        if explicit is not None:
            targets[task] = (float(explicit), f"{metric_name} {explicit:g} (--target)")
            continue
        best = _finite(r["best_metric"] for r in results if r["task"] == task and r["method"] == "full")
        if not best:
            targets[task] = (None, "no target: `full` is not in this bench, so there is no default; pass --target")
            continue
        mean = statistics.mean(best)
        if mean <= 0:
            targets[task] = (None, f"no target: `full`'s mean best {metric_name} is {mean:.4f} (<= 0), so "
                                   f"{DEFAULT_TARGET_FRACTION:.0%} of it is no bar; pass --target")
            continue
        value = DEFAULT_TARGET_FRACTION * mean
        targets[task] = (value, f"{metric_name} {value:.4f} = {DEFAULT_TARGET_FRACTION:.0%} of `full`'s mean best "
                                f"{mean:.4f} over {len(best)} seed(s)")
    return targets


def csv_rows(results: list[dict], targets: dict[str, tuple[float | None, str]]) -> list[dict]:
    rows = []
    for r in results:
        target = targets.get(r["task"], (None, ""))[0]
        ttt = time_to_target(r["history"], target)
        row = {c: r.get(c, "") for c in CSV_COLUMNS}
        row["time_to_target_s"] = "" if ttt is None else ttt
        row["target"] = "" if target is None else round(target, 6)
        rows.append(row)
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    with replaced_atomically(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


# ---- markdown ----

def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _params(runs: list[dict]) -> str:
    counts = sorted({r["trainable_params"] for r in runs})
    percents = sorted({100 * r["trainable_params"] / r["total_params"] for r in runs})
    count = f"{counts[0]:,}" if len(counts) == 1 else f"{counts[0]:,}–{counts[-1]:,}"
    percent = f"{percents[0]:.2f}%" if len(percents) == 1 else f"{percents[0]:.2f}–{percents[-1]:.2f}%"
    return f"{count} ({percent})"


def _time_to_target_cell(runs: list[dict], target: float | None) -> str:
    if target is None:
        return "n/a (no target)"
    times = [t for t in (time_to_target(r["history"], target) for r in runs) if t is not None]
    if not times:
        return f"n/a (0/{len(runs)} reached)"
    mean = f"{statistics.mean(times):.1f}"
    return mean if len(times) == len(runs) else f"{mean} ({len(times)}/{len(runs)} reached)"


def markdown(results: list[dict], targets: dict, tasks: list[str], methods: list[str], incomplete: list[Path],
             out: Path) -> str:
    by = {(t, m): [r for r in results if r["task"] == t and r["method"] == m] for t in tasks for m in methods}
    metric_names = {t: next(r["metric_name"] for r in results if r["task"] == t) for t in tasks}
    seeds = sorted({r["seed"] for r in results})
    models = sorted({r["model"] for r in results})
    devices = sorted({r.get("device", "?") for r in results})
    lines = [
        "# learners bench",
        "",
        f"Model: {', '.join(models)}; device: {', '.join(devices)}; seeds: {', '.join(map(str, seeds))}. "
        "Dev metric: the best evaluation of each run, mean ± std (sample) over seeds. Trainable parameters: "
        "encoder + task head, as a count and a percentage of the model. Step time: each run's median step "
        "(final phase), median over runs; peak memory: max over runs (peak RSS on CPU, peak allocated on CUDA).",
        "",
        "| method | " + " | ".join(f"{t} ({metric_names[t]})" for t in tasks) + " | average | trainable params "
        "| step ms | peak memory MB |",
        "|---|" + "---|" * len(tasks) + "---|---|---|---|",
    ]
    for m in methods:
        runs = [r for t in tasks for r in by[t, m]]
        if not runs:
            continue
        cells = []
        for t in tasks:
            best = _finite(r["best_metric"] for r in by[t, m])
            cell = _mean_std(best)
            if by[t, m] and len(best) < len(seeds):
                cell += f" ({len(best)}/{len(seeds)} seeds)"
            cells.append(cell)
        task_means = [statistics.mean(b) for t in tasks if (b := _finite(r["best_metric"] for r in by[t, m]))]
        average = f"{statistics.mean(task_means):.3f}" if len(task_means) == len(tasks) else "n/a (missing tasks)"
        step_ms = statistics.median(r["step_ms"] for r in runs)
        peak = max(r["peak_memory_mb"] for r in runs)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {average} | {_params(runs)} | {step_ms:.1f} | {peak:,.0f} |")

    lines += [
        "",
        "## Time to target",
        "",
        "Wall-clock training seconds (priming included, evaluation excluded) until the dev metric first reaches "
        "the task's target; mean over the seeds that reached it, `k/n reached` when not all did.",
        "",
        "| method | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for m in methods:
        if any(by[t, m] for t in tasks):
            lines.append(f"| {m} | " + " | ".join(
                _time_to_target_cell(by[t, m], targets[t][0]) if by[t, m] else "n/a (no runs)" for t in tasks) + " |")
    lines += ["", "Targets:", ""] + [f"- {t}: {targets[t][1]}" for t in tasks]
    lines += ["", "Plots: " + ", ".join(f"`curve_{t}.png`" for t in tasks) + ", `step_time.png`, `peak_memory.png`. "
              "Curves: each seed thin, the mean over seeds thick (evaluation i of every seed averaged: mean seconds, "
              "mean metric; seeds share the evaluation schedule)."]
    if incomplete:
        lines += ["", "Incomplete runs (no results.json: failed or killed; see their log.txt):", ""]
        lines += [f"- {d.relative_to(out)}" for d in incomplete]
    return "\n".join(lines) + "\n"


# ---- plots ----

def _figure(width: float = 7, height: float = 4.5):
    from matplotlib.figure import Figure  # the object API renders PNGs with Agg, no pyplot/global backend state
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots()


def plot_curve(results: list[dict], task: str, methods: list[str], target: float | None, path: Path) -> None:
    fig, ax = _figure()
    metric_name = next(r["metric_name"] for r in results if r["task"] == task)
    colors = [f"C{i}" for i in range(10)]
    for i, m in enumerate(methods):
        runs = [r for r in results if r["task"] == task and r["method"] == m and r["history"]]
        if not runs:
            continue
        color = colors[i % len(colors)]
        for r in runs:
            ax.plot([h["seconds"] for h in r["history"]], [h["metric"] for h in r["history"]], color=color, lw=0.8, alpha=0.35)
        n = min(len(r["history"]) for r in runs)
        xs = [statistics.mean(r["history"][k]["seconds"] for r in runs) for k in range(n)]
        ys = [statistics.mean(r["history"][k]["metric"] for r in runs) for k in range(n)]
        ax.plot(xs, ys, color=color, lw=2.2, marker="o", ms=3, label=f"{m} (mean of {len(runs)})")
    if target is not None:
        ax.axhline(target, color="gray", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("training time (s, wall clock, evaluation excluded)")
    ax.set_ylabel(f"dev {metric_name}")
    ax.set_title(f"{task}: dev {metric_name} during training")
    ax.grid(alpha=0.3)
    ax.legend()
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=110)


def plot_run(results: dict, path: Path) -> None:
    """One finetune run's curves (`curves.png` in its folder): the dev metric of each evaluation (`history`) and the
    training loss of each training-log entry (`log_history`, run_log.py) against the step, on two axes."""
    fig, ax = _figure()
    metric_name = results["metric_name"]
    history = [h for h in results["history"] if h.get("metric") is not None and math.isfinite(h["metric"])]
    ax.plot([h["step"] for h in history], [h["metric"] for h in history], color="C0", marker="o", ms=3,
            label=f"dev {metric_name}")
    ax.set_xlabel("step")
    ax.set_ylabel(f"dev {metric_name}", color="C0")
    ax.grid(alpha=0.3)
    losses = [e for e in results.get("log_history", []) if "loss" in e and math.isfinite(e["loss"])]
    loss_ax = ax.twinx()
    loss_ax.plot([e["step"] for e in losses], [e["loss"] for e in losses], color="C1", lw=1.2, label="training loss")
    loss_ax.set_ylabel("training loss (mean over each logging interval)", color="C1")
    handles = ax.get_legend_handles_labels()[0] + loss_ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="best")
    ax.set_title(f"{results['task']}, {results['method']}: dev {metric_name} and training loss")
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=110)


def plot_bars(results: list[dict], tasks: list[str], methods: list[str], key: str, ylabel: str, title: str,
              aggregate, path: Path) -> None:
    fig, ax = _figure(max(5.0, 1.5 + 0.6 * len(tasks) * max(1, len(methods))))
    width = 0.8 / max(1, len(methods))
    top = 0.0
    for i, m in enumerate(methods):
        values = []
        for t in tasks:
            v = [r[key] for r in results if r["task"] == t and r["method"] == m]
            values.append(aggregate(v) if v else math.nan)  # no runs: no bar (not a zero one)
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(tasks))]
        bars = ax.bar(xs, values, width, label=m, color=f"C{i % 10}")
        ax.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.0f}" if v >= 100 else f"{v:.1f}" for v in values], fontsize=8)
        top = max([top, *_finite(values)])
    ax.set_ylim(0, 1.25 * top or 1)  # headroom for the legend
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_xlim(-0.5, len(tasks) - 0.5)
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="upper left", ncols=len(methods))
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, dpi=110)


def _ordered(found: list[str], preferred: list[str] | None) -> list[str]:
    preferred = [x for x in (preferred or []) if x in found]
    return preferred + sorted(x for x in found if x not in preferred)


def build_report(out: Path, target: float | dict[str, float] | None = None, tasks: list[str] | None = None,
                 methods: list[str] | None = None, seeds: list[int] | None = None) -> list[Path]:
    """Write OUT/bench.csv, OUT/bench.md and the PNGs from the finished runs under OUT/runs.

    tasks/methods/seeds, when given, restrict the report to those runs and set the order."""
    out = Path(out)
    results, incomplete = load_runs(out)
    results = [r for r in results if (not tasks or r["task"] in tasks) and (not methods or r["method"] in methods)
               and (seeds is None or r["seed"] in seeds)]
    if not results:
        return []
    tasks = _ordered(list(dict.fromkeys(r["task"] for r in results)), tasks)
    methods = _ordered(list(dict.fromkeys(r["method"] for r in results)), methods)
    order = {(t, m): i for i, (t, m) in enumerate((t, m) for t in tasks for m in methods)}
    results.sort(key=lambda r: (order[r["task"], r["method"]], r["seed"]))
    targets = task_targets(results, target)

    written = [out / "bench.csv", out / "bench.md"]
    write_csv(csv_rows(results, targets), written[0])
    write_text_atomically(written[1], markdown(results, targets, tasks, methods, incomplete, out))
    for t in tasks:
        written.append(out / f"curve_{t}.png")
        plot_curve(results, t, methods, targets[t][0], written[-1])
    on_cuda = any(r.get("device") == "cuda" for r in results)
    written.append(out / "step_time.png")
    plot_bars(results, tasks, methods, "step_ms", "median step time (ms)",
              "Training step time (median over seeds)", statistics.median, written[-1])
    written.append(out / "peak_memory.png")
    plot_bars(results, tasks, methods, "peak_memory_mb",
              "peak GPU memory allocated (MB)" if on_cuda else "peak process RSS (MB)",
              "Peak memory (max over seeds)", max, written[-1])
    return written
