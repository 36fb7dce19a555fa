"""Where a training step's time goes, before and after a change, in one run.

    python -m bench.step_profile [--before fb9ed1b] [--rounds 3] [--steps 8] [--paper-steps 2] [--no-doc]

Exports the `--before` commit's tree to a temporary folder (`git archive`) and runs
bench/step_harness.py against it and against this tree, alternating (before, after, before, ...)
for `--rounds` rounds at the demo setting, so both see the same machine conditions; then once each
at the paper setting (DINOv2-S + DPT student at a 512 x 1024 crop, random weights) and at the demo's
teacher self-training setting. The whole-step time is the median over every timed step of every
round; each piece's time is its median over the rounds. Writes <out>/step_profile.json and the
"step_profile" section of docs/benchmarks.md. Run it on an otherwise idle machine: on a shared
2-core box, another process's threads stretch every timing by whole multiples.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.benchmarks_doc import write_section

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).resolve().parent / "step_harness.py"
ORDER = ("data", "backbone", "neck", "decoder", "embedding head", "matching", "point sampling", "set loss (rest)",
         "L_con", "optimizer")


def export_tree(commit: str, into: Path) -> Path:
    """The files of `commit` under `into` (no .git): an importable tree of that version."""
    archive = into / "tree.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit], cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def harness(tree: Path, setting: str, steps: int, repeats: int, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    subprocess.run([sys.executable, str(HARNESS), "--setting", setting, "--steps", str(steps), "--repeats", str(repeats),
                    "--json", str(out)], env=env, check=True, cwd=tree)
    return json.loads(out.read_text())


def combine(runs: list[dict]) -> dict:
    """Rounds of one (tree, setting): every step time pooled; each piece's median over the rounds."""
    pieces = {name: {kind: statistics.median(r["pieces"][name][kind] for r in runs if name in r["pieces"])
                     for kind in ("forward", "forward+backward")}
              for name in ORDER if any(name in r["pieces"] for r in runs)}
    steps = [s for r in runs for s in r["steps_ms"]]
    return {"step_ms": statistics.median(steps), "steps": len(steps), "pieces": pieces, "batch": runs[0]["batch"]}


def table(title: str, before: dict, after: dict) -> list[str]:
    lines = [f"**{title}** (batch {after['batch']}; ms, medians; forward / forward + backward of each piece alone)", "",
             "| piece | before: fwd | before: fwd + bwd | after: fwd | after: fwd + bwd |", "|---|---:|---:|---:|---:|"]
    for name in ORDER:
        b, a = before["pieces"].get(name), after["pieces"].get(name)
        cell = lambda p, k: "-" if p is None else f"{p[k]:.1f}"  # noqa: E731
        lines.append(f"| {name} | {cell(b, 'forward')} | {cell(b, 'forward+backward')} | {cell(a, 'forward')} | "
                     f"{cell(a, 'forward+backward')} |")
    total = lambda r: sum(p["forward+backward"] for p in r["pieces"].values())  # noqa: E731
    lines.append(f"| sum of the pieces | | {total(before):.1f} | | {total(after):.1f} |")
    lines.append(f"| **whole step** ({before['steps']} / {after['steps']} steps) | | **{before['step_ms']:.1f}** | | "
                 f"**{after['step_ms']:.1f}** |")
    lines += ["", f"Whole step, before / after: **{before['step_ms'] / after['step_ms']:.2f}x**.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="fb9ed1b", help="the commit to compare with (default: before issue 27)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed demo steps per round")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each piece")
    parser.add_argument("--paper-steps", type=int, default=2, help="0 skips the paper setting")
    parser.add_argument("--out", default=str(REPO / "runs" / "step_profile"))
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"before": export_tree(args.before, Path(tmp)), "after": REPO}
        plan = [("demo", args.steps, args.repeats)] * args.rounds + [("teacher", max(2, args.steps // 2), 3)]
        if args.paper_steps:
            plan.append(("paper", args.paper_steps, 1))
        for i, (setting, steps, repeats) in enumerate(plan):
            for name, tree in trees.items():  # alternating: both trees see the same conditions
                r = harness(tree, setting, steps, repeats, out / f"{name}-{setting}-{i}.json")
                results.setdefault(setting, {}).setdefault(name, []).append(r)
                print(f"[{setting} {name}] step {r['step_ms']:.0f} ms", flush=True)
    combined = {s: {name: combine(runs) for name, runs in by_tree.items()} for s, by_tree in results.items()}
    (out / "step_profile.json").write_text(json.dumps({"before": args.before, "results": combined}, indent=1))
    lines = [f"Command: `python -m bench.step_profile --before {args.before} --rounds {args.rounds} --steps {args.steps} "
             f"--paper-steps {args.paper_steps}` ({platform.machine()}, {os.cpu_count()} cores, 2 torch threads; "
             f"'before' is commit {args.before}, 'after' this tree). A step draws its batch, runs the objective "
             "(forward), backward, gradient clipping and AdamW, as train/loop.py does; the pieces are timed alone on "
             "that step's tensors. A distillation step runs no teacher: its pseudo-labels come from the labeling pass.",
             ""]
    titles = {"demo": "Demo student, distillation step (configs/default.yaml)",
              "teacher": "Demo teacher, self-training step (configs/default.yaml)",
              "paper": "Paper student, distillation step (configs/cityscapes_10pct.yaml, 512 x 1024 crop, random weights)"}
    for setting in ("demo", "teacher", "paper"):
        if setting in combined:
            lines += table(titles[setting], combined[setting]["before"], combined[setting]["after"])
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        print(f"wrote {write_section('step_profile', text)}")


if __name__ == "__main__":
    main()
