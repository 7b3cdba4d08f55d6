"""The cost curves' results (``bench_cost_curves.py``): ratios of SOD to TRL's trainers, the issue's targets, the
memory fit, merging of separate runs, and the plot. CPU seconds, or on CUDA synchronized wall seconds."""

from __future__ import annotations

import statistics
from pathlib import Path

from cost_setup import TRAINERS


def step_times(r: dict) -> list[float]:
    """A child's measured step times: CPU seconds, or on CUDA synchronized wall seconds."""
    return r["wall_s"] if r.get("clock") == "cuda_wall" else r["cpu_s"]


def forward_times(grpo: dict, default: float = 0.0) -> list[float]:
    """The GRPO child's teacher-forward times, on the same clock as ``step_times``."""
    key = "teacher_forward_s" if grpo.get("clock") == "cuda_wall" else "teacher_forward_cpu_s"
    return grpo.get(key + "_all", [grpo.get(key, default)])


def spread(values: list[float], digits: int = 2) -> str:
    """``median`` of one value, ``median [min-max]`` of several."""
    median = f"{statistics.median(values):.{digits}f}"
    return median if len(values) < 2 else f"{median} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def merge_points(points: list[dict], new: dict) -> list[dict]:
    """``points`` with ``new`` merged in: per trainer, a measured (or OOM) result of ``new`` replaces the old one,
    a skipped one does not; the ratios are recomputed."""
    for p in points:
        if (p["axis"], p["point"]) == (new["axis"], new["point"]):
            results = dict(p["results"])
            for kind, r in new["results"].items():
                if kind not in results or not r.get("skipped"):
                    results[kind] = r
            return [q for q in points if q is not p] + [{**p, "results": results, "ratios": ratios(results)}]
    return points + [new]


def ratios(results: dict) -> dict:
    """SOD over TRL's trainers (CPU time and peak memory), and SOD over GRPO + one teacher forward (the ratio of
    medians; with several measured steps also its widest range: min SOD / max budget .. max SOD / min budget)."""
    sod, grpo, dist = (results.get(k, {}) for k in TRAINERS)

    def cpu(r):  # CPU seconds, or synchronized GPU wall seconds on CUDA
        return statistics.median(step_times(r)) if "cpu_s" in r else None

    def mem(r):
        return r.get("extra_peak_mib") if "extra_peak_mib" in r else None

    out = {}
    if cpu(sod) and cpu(grpo):
        out["time_sod_over_grpo"] = cpu(sod) / cpu(grpo)
        forwards = forward_times(grpo)
        budget = cpu(grpo) + statistics.median(forwards)
        out["time_sod_over_grpo_plus_teacher"] = cpu(sod) / budget
        s, g = step_times(sod), step_times(grpo)
        if len(s) > 1 or len(g) > 1:
            out["time_sod_over_grpo_plus_teacher_range"] = [min(s) / (max(g) + max(forwards)),
                                                            max(s) / (min(g) + min(forwards))]
    if cpu(sod) and cpu(dist):
        out["time_sod_over_distillation"] = cpu(sod) / cpu(dist)
    if mem(sod) and mem(grpo):
        out["memory_sod_over_grpo"] = mem(sod) / mem(grpo)
    if mem(sod) and mem(dist):
        out["memory_sod_over_distillation"] = mem(sod) / mem(dist)
    if "parts_cpu_s" in sod:
        parts = sod["parts_cpu_s"]
        out["sod_overhead_share"] = parts["sod_overhead"] / max(cpu(sod), 1e-9)
    return out


def targets(points: list[dict]) -> dict:
    """The issue's four targets, met or not, with the numbers they rest on."""
    length = [p for p in points if p["axis"] == "length"]
    turns = [p for p in points if p["axis"] == "turns"]

    def values(ps, key):
        return [(p["point"]["length"], p["point"]["turns"], p["point"]["group"], p["ratios"].get(key)) for p in ps]

    mem_grpo = values(length, "memory_sod_over_grpo")
    mem_dist = [v for v in values(length, "memory_sod_over_distillation") if v[0] >= 8192]
    time_budget = values(length, "time_sod_over_grpo_plus_teacher")
    turn_budget = values(turns, "time_sod_over_grpo_plus_teacher")

    def all_le(vs, bound):  # over the measured points (a skipped point is listed as None in "values")
        known = [v[-1] for v in vs if v[-1] is not None]
        return bool(known) and all(x <= bound for x in known)

    def not_growing(vs, slack=1.10):  # None: fewer than two measured points on the axis
        known = [v[-1] for v in vs if v[-1] is not None]
        return None if len(known) < 2 else known[-1] <= known[0] * slack

    on_length, on_turns = not_growing(time_budget), not_growing(turn_budget)

    def ranges(ps):
        return [(p["point"]["length"], p["point"]["turns"], p["point"]["group"],
                 p["ratios"].get("time_sod_over_grpo_plus_teacher_range")) for p in ps]

    return {
        "memory_le_1.2x_grpo_every_length": {"met": all_le(mem_grpo, 1.2), "values": mem_grpo},
        "memory_le_0.5x_distillation_from_8k": {"met": all_le(mem_dist, 0.5), "values": mem_dist},
        "time_le_grpo_plus_teacher_forward_every_length": {"met": all_le(time_budget, 1.0), "values": time_budget},
        "time_ratio_not_growing_1k_to_16k_and_1_to_16_turns": {
            "met": (False if False in (on_length, on_turns) else None if None in (on_length, on_turns) else True),
            "met_length": on_length, "met_turns": on_turns,
            "rule": "last point's ratio <= 1.10 x the first point's, on both axes (ratios of median step times)",
            "length_values": time_budget, "turn_values": turn_budget,
            "length_ranges": ranges(length), "turn_ranges": ranges(turns)},
        "rollout_throughput_ge_trl_tool_loop_at_8_turns": {"met": None, "see": "bench_rollout_vs_trl.py"},
    }


def memory_fit(points: list[dict], ram_gib: float) -> dict:
    """Per trainer, a line through peak MiB vs tokens per step on the length axis (points of 8k tokens per step and
    more), and the tokens per step at which it would reach the machine's RAM (extrapolated when not reached)."""
    out = {}
    for kind in TRAINERS:
        xs, ys = [], []
        for p in points:
            r = p["results"].get(kind, {})
            # TRL's kernels tile 4,096 tokens at a time: below that their buffers grow with the tokens, then stop
            if (p["axis"] == "length" and "extra_peak_mib" in r and "baseline_rss_mib" in r
                    and r["tokens_per_step"] >= 8192):
                xs.append(r["tokens_per_step"])
                ys.append(r["extra_peak_mib"] + r["baseline_rss_mib"])
        if len(xs) < 2:
            continue
        mx, my = statistics.mean(xs), statistics.mean(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        intercept = my - slope * mx
        oom_tokens = (ram_gib * 1024 - intercept) / slope if slope > 0 else float("inf")
        out[kind] = {"mib_per_1k_tokens": slope * 1024, "intercept_mib": intercept,
                     "tokens_per_step_at_ram": oom_tokens}
    return out


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gpu = any(r.get("clock") == "cuda_wall" for p in points for r in p["results"].values())
    axes_names = ("length", "turns", "group")
    x_of = {"length": lambda p: p["length"], "turns": lambda p: p["turns"], "group": lambda p: p["group"]}
    labels = {"length": "completion tokens per trajectory (4 turns, group 2)",
              "turns": "assistant turns (1k tokens per trajectory, group 2)",
              "group": "trajectories per step (256 tokens, 4 turns)"}
    names = {"sod": "SODTrainer", "trl_grpo": "TRL GRPOTrainer", "trl_distillation": "TRL DistillationTrainer"}
    fig, grid = plt.subplots(2, 3, figsize=(15, 8.5))
    for column, axis in enumerate(axes_names):
        ps = [p for p in points if p["axis"] == axis]
        for kind, marker in zip(TRAINERS, ("o", "s", "^")):
            xs, ts, ms = [], [], []
            for p in ps:
                r = p["results"].get(kind, {})
                if "cpu_s" in r:
                    xs.append(x_of[axis](p["point"]))
                    ts.append(statistics.median(step_times(r)))
                    ms.append(r["extra_peak_mib"] / 1024)
            grid[0, column].plot(xs, ts, marker=marker, label=names[kind])
            grid[1, column].plot(xs, ms, marker=marker, label=names[kind])
        grpos = [(p, p["results"]["trl_grpo"]) for p in ps if "cpu_s" in p["results"].get("trl_grpo", {})
                 and forward_times(p["results"]["trl_grpo"], default=None) != [None]]
        xs = [x_of[axis](p["point"]) for p, _ in grpos]
        budget = [statistics.median(step_times(g)) + statistics.median(forward_times(g)) for _, g in grpos]
        grid[0, column].plot(xs, budget, linestyle="--", color="gray", label="GRPO + one teacher forward")
        units = (((0, "step seconds (GPU, synchronized wall)"), (1, "extra peak CUDA memory allocated (GiB)"))
                 if gpu else ((0, "step CPU seconds (1 thread)"), (1, "extra peak RSS of the step (GiB)")))
        for row, unit in units:
            ax = grid[row, column]
            ax.set_xlabel(labels[axis])
            ax.set_ylabel(unit)
            if axis != "group":
                ax.set_xscale("log", base=2)
            ticks = sorted({x_of[axis](p["point"]) for p in ps})
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t // 1024}k" if t >= 1024 else str(t) for t in ticks])
            ax.minorticks_off()
            ax.grid(alpha=0.3)
        grid[0, column].set_title(f"step time vs {axis}")
        grid[1, column].set_title(f"peak memory vs {axis}")
    grid[0, 0].legend(fontsize=8)
    title = ("Qwen3-0.6B-shaped student / 4B-shaped teacher, bf16 (GPU)" if gpu else
             "student hidden 64 / teacher hidden 128 (CPU, shared machine)")
    fig.suptitle(f"One training step on fixed trajectories, vocab 151,936, {title}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
