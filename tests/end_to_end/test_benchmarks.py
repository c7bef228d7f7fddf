"""benchmarks/gpu_step_time.py on the tiny size: a table row per method, a failed method keeps its row."""

import argparse
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_step_time  # noqa: E402
import step_time_memory  # noqa: E402


def in_process_worker(method, batch_size, length, steps, warmup, arch=None, precision="no", compile=False,
                      options=None, label=None, timeout=None, model=None, repeat_batches=False, profile=None,
                      compile_mode=None):
    """run_worker without the fresh process (seconds saved per method; peak memory is then not per method)."""
    if label == "lora":
        raise RuntimeError("boom")
    args = argparse.Namespace(worker=method, batch_size=batch_size, length=length, steps=steps, warmup=warmup,
                              arch=arch, precision=precision, compile=compile, options=json.dumps(options),
                              label=label, model=model, repeat_batches=repeat_batches, profile=profile,
                              compile_mode=compile_mode)
    return step_time_memory.worker(args)


@pytest.mark.slow
def test_gpu_step_time_prints_a_row_per_method(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(gpu_step_time, "run_worker", in_process_worker)
    status = gpu_step_time.main(["--sizes", "tiny", "--batch-sizes", "2", "--steps", "1", "--warmup", "0",
                                 "--precision", "no", "--output", str(tmp_path / "steps")])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "full", "bitfit", "lora", "learners", "learners-nocache", "learners-filling", "learners-cached", "learners-all",
                         "learners-top3-cached", "learners-top4", "learners-top4-cached", "learners-top4-noad-cached",
                         "learners-skip1-noad-cached", "learners-upper-half"}
    # each row is printed as its method finishes (a run stopped at a time limit keeps it)
    finished = [json.loads(line.split(": ", 1)[1]) for line in out.splitlines() if line.startswith("  tiny batch 2: ")]
    assert [r["method"] for r in finished] == list(gpu_step_time.VARIANTS)
    # the cached variants ask for the cache by size (the CLI leaves its default off on a GPU): every timed step hits
    cached = next(r for r in finished if r["method"] == "learners-cached")
    assert gpu_step_time.VARIANTS["learners-cached"][1]["frozen_prefix_cache_mb"] > 0 and cached["prefix_cache"]["hits"] > 0
    assert "failed: boom" in rows["lora"] and status == 1  # one failure keeps the others
    assert rows["full"].count("1.00x") == 3
    assert rows["learners-all"].split("|")[2].strip() == "4/4"  # learners in every block of the tiny model
    assert rows["learners"].split("|")[2].strip() == rows["learners-cached"].split("|")[2].strip() == "3/4"  # skip-1
    assert rows["learners-top3-cached"].split("|")[2].strip() == "3/4" and "failed" not in rows["learners-top3-cached"]
    assert rows["learners-top4"].split("|")[2].strip() == rows["learners-top4-cached"].split("|")[2].strip() == "4/4"
    assert rows["learners-skip1-noad-cached"].split("|")[2].strip() == "3/4" and "failed" not in rows["learners-skip1-noad-cached"]
    assert rows["learners-upper-half"].split("|")[2].strip() == "2/4"  # the tiny model's upper two blocks
    assert [gpu_step_time.num_blocks(a) for a in ("minilm-l6", "distilbert-base", "bert-base")] == [6, 6, 12]
    assert "torch" in out and (tmp_path / "steps.md").exists() and (tmp_path / "steps.json").exists()


def test_step_time_times_a_later_epoch_from_the_frozen_prefix_cache():
    """learners:top-1:nofd:cached: the warm-up steps fill the cache, every timed step (and the operator and FLOP
    counts' steps) hits."""
    name, options, repeat = step_time_memory.method_spec("learners:top-1:nofd:cached")
    row = in_process_worker(name, 2, 8, steps=3, warmup=2, arch="tiny", options=options, repeat_batches=repeat)
    assert row["learner_layers"] == "1/4" and row["prefix_cache"] == {"hits": 5 * 2, "misses": 2 * 2}
    name, options, repeat = step_time_memory.method_spec("learners:top-1:nofd")
    row = in_process_worker(name, 2, 8, steps=3, warmup=2, arch="tiny", options=options, repeat_batches=repeat)
    assert row["prefix_cache"] == {"hits": 0, "misses": 7 * 2}  # new batches every step: a first epoch
    assert step_time_memory.method_spec("learners:top-1:nofd:nocache")[1]["frozen_prefix_cache_mb"] == 0


def test_step_time_specs_keep_their_meaning_under_the_cli_defaults():
    """"learners" is the CLI's default; a spec naming layers has dropout everywhere unless it says nofd/noad/noapd,
    as before the default turned the frozen part's and the learner blocks' attention dropout off."""
    assert step_time_memory.method_spec("learners") == ("learners", None, False)
    options = step_time_memory.method_spec("learners:all")[1]
    assert options["frozen_dropout"] is options["attention_dropout"] is options["attention_probs_dropout"] is True
    options = step_time_memory.method_spec("learners:skip-1:nofd:noad:cached")[1]
    assert (options["layers"], options["frozen_dropout"], options["attention_dropout"]) == ("skip-1", False, False)
    assert options["attention_probs_dropout"] is True


@pytest.mark.slow
def test_step_time_times_activation_checkpointing():
    """:ckpt recomputes the learner blocks' forward in backward: more matmul FLOPs, the same trainable parameters."""
    name, options, repeat = step_time_memory.method_spec("learners:top-2:nofd:noad:cached:ckpt")
    assert options["activation_checkpointing"] is True
    checkpointed = in_process_worker(name, 2, 8, steps=1, warmup=1, arch="tiny", options=options, repeat_batches=repeat)
    name, options, repeat = step_time_memory.method_spec("learners:top-2:nofd:noad:cached")
    plain = in_process_worker(name, 2, 8, steps=1, warmup=1, arch="tiny", options=options, repeat_batches=repeat)
    assert checkpointed["trainable"] == plain["trainable"]
    assert checkpointed["gflops"] > plain["gflops"]


@pytest.mark.slow
def test_step_time_sets_the_learner_size():
    """learners:all:ratio=R times learners of that size: half the ratio, half the learner neurons."""
    rows = {}
    for spec in ("learners:all:ratio=0.25", "learners:all:ratio=0.125"):
        name, options, repeat = step_time_memory.method_spec(spec)
        rows[spec] = in_process_worker(name, 2, 8, steps=1, warmup=0, arch="tiny", options=options)
    head = rows["learners:all:ratio=0.25"]["trainable"] - 2 * (rows["learners:all:ratio=0.25"]["trainable"]
                                                              - rows["learners:all:ratio=0.125"]["trainable"])
    # tiny: 4 blocks, hidden 64, FFN 256: a learner neuron is a row of W1 (64), its bias and a column of W2 (64)
    assert rows["learners:all:ratio=0.25"]["trainable"] - head == 4 * 64 * (64 + 1 + 64)
    # :nob2:noln freezes each block's FFN output bias (64) and output LayerNorm (64 + 64), which train by default
    name, options, _ = step_time_memory.method_spec("learners:all:ratio=0.125:nob2:noln")
    row = in_process_worker(name, 2, 8, steps=1, warmup=0, arch="tiny", options=options)
    assert rows["learners:all:ratio=0.125"]["trainable"] - row["trainable"] == 4 * (64 + 64 + 64)
    assert step_time_memory.method_spec("learners:all:b2:ln")[1]["train_layer_norm"] is True


def test_frontier_keeps_the_points_no_other_beats_on_speed_and_quality(tmp_path, monkeypatch, capsys):
    import frontier
    points = [{"label": "full", "ratio": 1.0, "quality": 0.70}, {"label": "a", "ratio": 0.5, "quality": 0.68},
              {"label": "b", "ratio": 0.6, "quality": 0.67}, {"label": "c", "ratio": 0.4, "quality": 0.60},
              {"label": "d", "ratio": 0.5, "quality": 0.68}]
    assert frontier.on_frontier(points) == {"full", "a", "c", "d"}  # b: a is faster and better; a, d tie

    def write(bench, method, task, seed, best):
        run = bench / "runs" / task / method / f"seed{seed}"
        run.mkdir(parents=True)
        (run / "results.json").write_text(json.dumps({"task": task, "method": method, "seed": seed, "best_metric": best}))

    write(tmp_path / "b1", "full", "cola", 0, 0.30), write(tmp_path / "b1", "full", "cola", 1, 0.20)
    write(tmp_path / "b1", "full", "rte", 0, 0.60)
    write(tmp_path / "b2", "learners", "cola", 0, 0.24)  # no rte: the mean is over cola only
    write(tmp_path / "b3", "full", "cola", 1, 0.99), write(tmp_path / "b3", "full", "cola", 2, 0.40)  # seed 1: b1's
    (tmp_path / "ratios.json").write_text(json.dumps({"full": 1.0, "learners top-3": 0.45}))
    monkeypatch.setattr(sys, "argv", ["frontier.py", "--step-ratios", str(tmp_path / "ratios.json"), "--output",
                                      str(tmp_path / "f"), f"full={tmp_path / 'b1'}:full+{tmp_path / 'b3'}:full",
                                      f"learners top-3={tmp_path / 'b2'}:learners"])
    frontier.main()
    table = (tmp_path / "f.md").read_text()
    assert "| full | 1.00x | 0.300 | 0.300 | 3 | yes |" in table  # seeds 0, 1 of b1 and 2 of b3 pooled
    assert "| learners top-3 | 0.45x | 0.240 | 0.240 | 1 | yes |" in table
    assert (tmp_path / "f.png").stat().st_size > 0


def test_seed_table_pools_seeds_and_times_the_pooled_target(tmp_path, capsys):
    import seed_table

    def write(bench, method, task, seed, best, history=None):
        run = bench / "runs" / task / method / f"seed{seed}"
        run.mkdir(parents=True)
        r = {"task": task, "method": method, "seed": seed, "metric_name": "accuracy", "best_metric": best}
        (run / "results.json").write_text(json.dumps(r if history is None else {**r, "history": history}))

    def evals(*points, phase="train"):
        return [{"step": step, "seconds": seconds, "metric": metric, "phase": phase} for step, seconds, metric in points]

    write(tmp_path / "old", "full", "rte", 0, 0.60, evals((10, 50.0, 0.60)))
    write(tmp_path / "new", "full", "rte", 0, 0.99)  # seed 0 again: the first source's counts
    write(tmp_path / "new", "full", "rte", 1, 0.40, evals((10, 40.0, 0.40)))  # mean 0.50 -> target 0.475
    write(tmp_path / "new", "learners", "rte", 0, 0.52,
          evals((5, 20.0, 0.58), phase="priming") + evals((10, 45.0, 0.46), (20, 90.0, 0.52)))
    write(tmp_path / "new", "learners", "rte", 1, 0.45, evals((10, 45.0, 0.45)))
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "bench.csv").write_text("task,method,seed,metric_name,best_metric\nrte,learners,2,accuracy,0.50\n")
    seed_table.main(["--output", str(tmp_path / "t"), f"full={tmp_path / 'old'}:full+{tmp_path / 'new'}:full",
                     f"learners={tmp_path / 'new'}:learners+{tmp_path / 'csv'}:learners"])
    table = (tmp_path / "t.md").read_text()
    assert "| full | 0.500 ± 0.141 (2) | 0.500 |" in table
    assert "| learners | 0.490 ± 0.036 (3) | 0.490 |" in table
    assert "rte 0.4750" in table
    assert "| full | 1/2, 50 s (10 steps) |" in table
    assert "| learners | 1/2, 90 s (20 steps) |" in table  # not the primed model's 0.58 at 20 s; seed 2 has no history

    # --mean-over names the mean's tasks: a point without runs on one of them has no mean, the others keep theirs
    write(tmp_path / "new", "full", "cola", 0, 0.30)
    seed_table.main(["--output", str(tmp_path / "m"), "--mean-over", "cola,rte", f"full={tmp_path / 'new'}:full",
                     f"learners={tmp_path / 'new'}:learners"])
    table = (tmp_path / "m.md").read_text()
    assert "| point | cola | rte | mean over cola, rte |" in table
    assert "| full | 0.300 (1) | 0.695 ± 0.417 (2) | 0.498 |" in table
    assert "| learners | - | 0.485 ± 0.049 (2) | - |" in table


@pytest.mark.slow
def test_step_time_times_a_priming_step_of_each_scope():
    rows = {}
    for spec in ("full", "priming:all", "priming:ffn"):
        name, options, repeat = step_time_memory.method_spec(spec)
        rows[spec] = in_process_worker(name, 2, 8, steps=1, warmup=0, arch="tiny", options=options, repeat_batches=repeat)
    assert step_time_memory.method_spec("priming") == ("learners", {"selection": "priming", "priming_scope": "all"}, False)
    assert rows["priming:all"]["trainable"] == rows["full"]["trainable"] == rows["full"]["total"]
    assert 0 < rows["priming:ffn"]["trainable"] < rows["full"]["trainable"]  # the FFNs and the head only


def test_layer_grid_queues_only_the_runs_not_kept(tmp_path):
    """A fresh clone must not repeat a run whose results.json (or, for the default and the baselines, a
    bench.csv row) is kept under docs/: the grid lists only what is missing."""
    import subprocess

    keep = tmp_path / "keep"
    (keep / "all-random/runs/cola/learners/seed0").mkdir(parents=True)
    (keep / "all-random/runs/cola/learners/seed0/results.json").write_text("{}")
    csv = tmp_path / "bench.csv"
    csv.write_text("task,method,seed,metric_name\ncola,full,1,mcc\ncola,learners,0,mcc\n")
    env = {"PATH": "/usr/bin:/bin", "DRY_RUN": "1", "SEEDS": "0,1", "TASKS": "cola", "BASELINES": "full",
           "ONLY": "all all-random", "KEEP": str(keep), "ALSO_KEPT": str(csv), "OUT": str(tmp_path / "out")}
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "run_layer_grid.sh"
    listed = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True).stdout
    out = tmp_path / "out"
    assert sorted(listed.splitlines()) == sorted([
        f"--tasks cola --methods full --seeds 0 --output-dir {out}/baselines",
        f"--tasks cola --methods learners --learner-layers all --selection priming --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout --seeds 1 --output-dir {out}/all",
        f"--tasks cola --methods learners --learner-layers all --selection random --ratio 0.0625 --no-train-ffn-output-bias --no-train-layer-norm --frozen-dropout --attention-dropout --seeds 1 --output-dir {out}/all-random",
    ])
    assert not out.exists(), "a dry run writes nothing"


def test_every_grid_configuration_names_its_size_and_selection():
    """A grid spans sessions: a configuration that took its learner size, selection or b2/LayerNorm training from
    the defaults would run its missing seeds under whatever the defaults are now (the default size moved
    1/16 -> 1/8, the selection priming -> random, b2 and LayerNorm off -> on, dropout in the frozen part and the
    learner blocks' attention on -> off) and pool them with seeds run under
    the old ones."""
    script = (Path(__file__).resolve().parents[2] / "benchmarks" / "run_layer_grid.sh").read_text()
    configs = script.split("CONFIGS='", 1)[1].split("'", 1)[0].splitlines()
    assert len(configs) > 10
    for line in configs:
        name, flags = line.split("|", 1)
        assert "--ratio " in flags and "--selection " in flags, name
        assert ("--train-ffn-output-bias" in flags) != ("--no-train-ffn-output-bias" in flags), name
        assert ("--train-layer-norm" in flags) != ("--no-train-layer-norm" in flags), name
        assert ("--frozen-dropout" in flags) != ("--no-frozen-dropout" in flags), name
        assert ("--attention-dropout" in flags) != ("--no-attention-dropout" in flags), name


@pytest.mark.slow
def test_gpu_step_time_profiles_each_method_into_its_own_op_table(monkeypatch, tmp_path):
    """--profile-dir: after the timed steps, torch.profiler's op table per method (the CPU's on this machine)."""
    monkeypatch.setattr(gpu_step_time, "run_worker", in_process_worker)
    status = gpu_step_time.main(["--sizes", "tiny", "--batch-sizes", "2", "--steps", "1", "--warmup", "0",
                                 "--precision", "no", "--methods", "bitfit,learners", "--profile-dir", str(tmp_path)])
    assert status == 0
    tables = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(tables) == {"tiny_2_bitfit.txt", "tiny_2_learners.txt"}
    for text in tables.values():
        assert text.startswith("3 training steps, CPU") and "Self CPU" in text and "aten::addmm" in text
    # the learner slices written back into the full weights after each optimizer step (one foreach copy into the
    # leading slices, the learner neurons coming first): learners' alone
    assert "aten::_foreach_copy_" in tables["tiny_2_learners.txt"] and "aten::_foreach_copy_" not in tables["tiny_2_bitfit.txt"]
