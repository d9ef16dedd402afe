"""Fault injection: a small training run is killed, has its checkpoints damaged, runs out of disk,
is signalled and diverges; a table says what was injected, expected and seen, and whether the run
ended bitwise where an uninterrupted one ends.

    python -m benchmarks.faults [--kills 20] [--steps 300] [--only kill,corrupt,disk-full,signal,diverge]
                                [--out docs/results/faults.md] [--seed 0] [--keep]

Runs are ``launch.main`` on the smoke experiment shrunk to 25k parameters (faults_lib.SMALL_RUN);
the reference is that command run twice. kill: SIGKILLs at seeded moments (start-up, after a
step, while a '*.orbax-checkpoint-tmp' folder exists); corrupt: the final checkpoint's largest
array file truncated / zeroed / one byte inverted; disk-full: the workdir on a tmpfs too small for
the third checkpoint; signal: SIGTERM and SIGINT mid-run; diverge: config.optimizer.lr 1e6 and
100. Each resumes with the same command. Not a test: about 10 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

from benchmarks import faults_lib as lib
from lm.fileio import write_atomically

SCENARIOS = ("kill", "corrupt", "disk-full", "signal", "diverge")
RUN_TIMEOUT_S = 300
YES_NO = {True: "yes", False: "no"}
TMPFS_LIMIT_S = 150  # a run that hangs on the full disk is killed after this, and copied out


@dataclasses.dataclass
class Row:
    scenario: str
    injected: str
    expected: str
    seen: str
    equal: str
    unloadable: str
    seconds: float = 0.0
    met: bool = False  # everything in ``expected`` was seen


class Bench:
    """The benchmark's folder, seeded randomness, the reference run and the report's details."""

    def __init__(self, args, root: str):
        self.steps, self.every, self.root = args.steps, args.checkpoint_every, root
        self.rng = random.Random(args.seed)
        self.reference = ""
        self.startup_s = 10.0
        self.details: list[str] = []
        self.began = time.monotonic()

    def workdir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def command(self, workdir: str, extra=()) -> list[str]:
        return lib.train_command(workdir, self.steps, self.every, extra)

    def start(self, workdir: str, label: str, extra=()) -> lib.Training:
        os.makedirs(os.path.join(self.root, "logs"), exist_ok=True)
        return lib.Training(self.command(workdir, extra), workdir,
                            os.path.join(self.root, "logs", label))

    def train(self, workdir: str, label: str, extra=(), timeout: float = RUN_TIMEOUT_S) -> lib.Outcome:
        return self.start(workdir, label, extra).wait(timeout)

    def compare(self, workdir: str) -> lib.Comparison:
        return lib.compare(workdir, self.reference, self.steps)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.0f} s] {text}", flush=True)


def unloadable_text(*workdirs: str) -> str:
    bad = {f"{os.path.basename(w)}/{step}": why for w in workdirs
           for step, why in lib.inspect(os.path.join(w, "checkpoints"))[0].items()}
    return str(len(bad)) + (f" ({'; '.join(f'{k}: {v}' for k, v in bad.items())})" if bad else "")


def reference(bench: Bench) -> list[Row]:
    bench.say(f"reference: {bench.steps} steps, a checkpoint every {bench.every}")
    proc = bench.start(bench.workdir("reference"), "reference")
    first = proc.wait(RUN_TIMEOUT_S)
    if first.returncode != 0:
        raise SystemExit(f"the reference run failed ({lib.summarize(first)}); see "
                         f"{proc.log_prefix}.err")
    bench.reference, bench.startup_s = proc.workdir, proc.first_row_s or bench.startup_s
    bench.say(f"reference: {first.seconds:.1f} s, first step logged after {bench.startup_s:.1f} s")
    second_dir = bench.workdir("reference-again")
    second = bench.train(second_dir, "reference-again")
    comparison = bench.compare(second_dir)
    bench.say(f"reference again: {comparison.describe()}")
    return [Row("reference", "none: the same command twice", "exit 0; the two runs bitwise equal",
                f"{lib.summarize(first)}; again: {lib.summarize(second)}; {comparison.describe()}",
                YES_NO[comparison.equal], unloadable_text(bench.reference, second_dir),
                met=second.returncode == 0 and comparison.equal)]


@dataclasses.dataclass
class Kill:
    kind: str
    target: float
    landed: bool = False
    at_step: int = -1
    during_save: tuple = ()
    started_from: Optional[int] = None
    exit: str = ""
    unloadable: dict = dataclasses.field(default_factory=dict)  # step -> why, right after the kill


def kill_plan(rng: random.Random, count: int, steps: int, every: int) -> list[Kill]:
    """``count`` kills: 40% while a checkpoint is written, 20% during start-up (at a random share
    of the reference's start-up time, at the latest at the first step), the rest after a random
    step; the step targets are sorted, so the kills spread over the run."""
    saves, startups = -(-count * 2 // 5), count // 5
    kinds = ["save"] * saves + ["startup"] * startups + ["step"] * (count - saves - startups)
    rng.shuffle(kinds)
    targets = iter(sorted(rng.uniform(1, steps - 1.5 * every) for _ in kinds))
    return [Kill(kind, rng.uniform(0.2, 1.0) if kind == "startup" else next(targets))
            for kind in kinds]


def moment_reached(bench: Bench, proc: lib.Training, kill: Kill) -> bool:
    if kill.kind == "startup":  # a fraction of the reference's start-up time, or the first step
        return time.monotonic() - proc.started >= kill.target * bench.startup_s or proc.last_step() >= 0
    return proc.last_step() >= kill.target and (kill.kind == "step" or bool(proc.fresh_tmp_dirs()))


def inject_kill(bench: Bench, proc: lib.Training, kill: Kill) -> lib.Outcome:
    """Waits for ``kill``'s moment, sends SIGKILL, and notes where the run was."""
    kill.landed = proc.wait_until(lambda: moment_reached(bench, proc, kill), RUN_TIMEOUT_S)
    if kill.landed:
        time.sleep(bench.rng.uniform(0, {"startup": 0, "save": 0.03}.get(kill.kind, 0.2)))
        proc.send(signal.SIGKILL)
        if kill.kind == "startup":  # from here on: the seconds after the launch
            kill.target = time.monotonic() - proc.started
    outcome = proc.wait(RUN_TIMEOUT_S)
    kill.at_step, kill.during_save = proc.last_step(), tuple(proc.fresh_tmp_dirs())
    kill.started_from, kill.exit = outcome.resumed_from(), outcome.exit_text()
    kill.unloadable = lib.inspect(proc.checkpoints)[0]
    bench.startup_s = min(bench.startup_s, proc.first_row_s or bench.startup_s)  # the fastest seen
    return outcome


def kills(bench: Bench, count: int) -> list[Row]:
    workdir = bench.workdir("kill")
    plan = kill_plan(bench.rng, count, bench.steps, bench.every)
    for number, kill in enumerate(plan, 1):
        outcome = inject_kill(bench, bench.start(workdir, f"kill-{number:02d}"), kill)
        bench.say(f"kill {number}/{count} ({kill.kind}): {'landed' if kill.landed else 'missed'} "
                  f"at step {kill.at_step} (started from {kill.started_from}), "
                  f"{kill.exit}{', during a save' if kill.during_save else ''}; "
                  f"unloadable checkpoints: {kill.unloadable or 0}")
        if not kill.landed and outcome.returncode == 0:
            break  # the run finished before this kill's moment
    final = bench.train(workdir, "kill-final")
    comparison = bench.compare(workdir)
    landed = [k for k in plan if k.landed]
    saving = sum(bool(k.during_save) for k in landed)
    left = sorted(lib.tmp_dirs(os.path.join(workdir, "checkpoints")))
    bench.details += kill_details(plan, final, left)
    seen = (f"{len(landed)} kills landed ({saving} during a save, "
            f"{sum(k.at_step < 0 for k in landed)} before the process's first step); every one "
            f"{'/'.join(sorted({k.exit for k in landed}))}; final run {lib.summarize(final)} from "
            f"step {final.resumed_from()}; {comparison.describe()}; {len(left)} orbax temporary "
            f"folders left in checkpoints/")
    bench.say(f"kill: {seen}")
    return [Row("kill -9", f"{count} SIGKILLs (seed-drawn moments), the same command after each",
                "each restart resumes from the latest checkpoint; bitwise equal", seen,
                YES_NO[comparison.equal], f"{sum(len(k.unloadable) for k in plan)} right after the kills; "
                f"{unloadable_text(workdir)} at the end", met=len(landed) == count and final.returncode == 0
                and comparison.equal and not any(k.unloadable for k in plan))]


def kill_details(plan: list[Kill], final: lib.Outcome, left: list[str]) -> list[str]:
    lines = ["### kill -9, one launch per row", "", "| # | moment | started from step | last step logged "
             "| orbax temporary folder left | exit | unloadable checkpoints |", "|---|---|---|---|---|---|---|"]
    for number, k in enumerate(plan, 1):
        moment = (f"{k.target:.1f} s after the launch" if k.kind == "startup" else
                  f"{'the first save after' if k.kind == 'save' else ''} step {k.target:.0f}".strip())
        started = "-" if k.started_from is None else k.started_from
        lines.append(f"| {number} | {moment}{'' if k.landed else ' (missed)'} | {started} | {k.at_step} "
                     f"| {', '.join(k.during_save) or '-'} | {k.exit} | {cell(k.unloadable or 0)} |")
    lines += [f"| final | - | {final.resumed_from()} | - | {', '.join(left) or '-'} | "
              f"{final.exit_text()} | - |", ""]
    return lines


def corrupt(bench: Bench) -> list[Row]:
    rows = []
    for how in ("truncate", "zero", "flip"):
        started = time.monotonic()
        workdir = bench.workdir(f"corrupt-{how}")
        shutil.copytree(bench.reference, workdir)
        step_dir = os.path.join(workdir, "checkpoints", str(bench.steps))
        target = lib.largest_data_file(step_dir)
        what = lib.damage(target, how)
        outcome = bench.train(workdir, f"corrupt-{how}")
        comparison = bench.compare(workdir)
        moved = sorted(os.listdir(bad)) if os.path.isdir(bad := os.path.join(workdir, "checkpoints.bad")) else []
        seen = (f"{lib.summarize(outcome)}; checkpoints.bad/: {', '.join(moved) or 'none'}; "
                f"started from step {outcome.resumed_from()}; {comparison.describe()}")
        bench.say(f"corrupt ({how}): {seen}")
        rows.append(Row(f"corrupt: {how}", f"final checkpoint (step {os.path.basename(step_dir)}) "
                        f"of a finished run, {os.path.relpath(target, step_dir)}: {what}; the same command again",
                        "one line with 'moved aside' naming the damage; the step folder in "
                        "checkpoints.bad/; resumes from the previous step; bitwise equal",
                        seen, YES_NO[comparison.equal], unloadable_text(workdir), time.monotonic() - started,
                        met=outcome.returncode == 0 and "moved aside" in outcome.stdout + outcome.stderr
                        and bool(moved) and outcome.resumed_from() == bench.steps - bench.every and comparison.equal))
    return rows


def disk_full(bench: Bench) -> list[Row]:
    checkpoint = lib.pages(os.path.join(bench.reference, "checkpoints", str(bench.steps)))
    size_kib = (64 * 1024 + int(2.5 * checkpoint)) // 1024
    mount, copy = bench.workdir("tmpfs"), bench.workdir("disk-full")
    os.makedirs(mount, exist_ok=True)
    command = lib.on_tmpfs(bench.command(os.path.join(mount, "run")), mount, size_kib, copy, TMPFS_LIMIT_S)
    bench.say(f"disk full: a checkpoint takes {checkpoint // 1024} KiB; tmpfs of {size_kib} KiB")
    full = lib.Training(command, copy, os.path.join(bench.root, "logs", "disk-full")).wait(RUN_TIMEOUT_S)
    injected = (f"workdir on a {size_kib} KiB tmpfs (a checkpoint: {checkpoint // 1024} KiB); "
                f"then the workdir copied to a normal disk and the same command again there")
    expected = ("exit 2, stderr one 'error:' line naming the failed write (No space left on "
                "device) and the intact previous checkpoint; the resumed copy bitwise equal")
    if full.returncode == 97 or not os.path.isdir(copy):
        problem = "no tmpfs" if full.returncode == 97 else "the workdir was not copied out"
        return [Row("disk full", injected, expected, f"{problem}: {lib.summarize(full)}", "no", "-")]
    lines = lib.stderr_lines(full)
    checkpoints = os.path.join(copy, "checkpoints")
    left = (f"checkpoints left {lib.step_dirs(checkpoints)}, temporary "
            f"{sorted(lib.tmp_dirs(checkpoints)) or 'none'}")
    unloadable_before = unloadable_text(copy)
    resumed = bench.train(copy, "disk-full-resume")
    comparison = bench.compare(copy)
    hung = f"no exit within {TMPFS_LIMIT_S} s (killed); " if full.returncode == 137 else ""
    seen = (f"{hung}{lib.summarize(full)}; stderr {len(lines)} line(s), the first "
            f"{(lines or [''])[0][:160]!r}; {left}; resume: {lib.summarize(resumed)} "
            f"from step {resumed.resumed_from()}; {comparison.describe()}")
    bench.say(f"disk full: {seen}")
    one_line = len(lines) == 1 and lines[0].startswith("error:") and lib.NO_SPACE in lines[0]
    return [Row("disk full", injected, expected, seen, YES_NO[comparison.equal],
                f"{unloadable_before} after ENOSPC; {unloadable_text(copy)} after the resume",
                met=full.returncode == 2 and one_line and comparison.equal)]


def signals(bench: Bench) -> list[Row]:
    rows = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        started = time.monotonic()
        name = sig.name.lower()
        workdir = bench.workdir(name)
        target = bench.rng.randint(bench.steps // 3, 2 * bench.steps // 3)
        proc = bench.start(workdir, name)
        proc.wait_until(lambda: proc.last_step() >= target, RUN_TIMEOUT_S)
        sent_at = proc.last_step()
        proc.send(sig)
        stopped = proc.wait(120)
        last, saved = proc.last_step(), (lib.step_dirs(proc.checkpoints) or [None])[-1]
        last_words = (lib.stderr_lines(stopped) or ["(stderr empty)"])[-1][:160]
        resumed = bench.train(workdir, f"{name}-resume")
        comparison = bench.compare(workdir)
        seen = (f"sent after step {sent_at}; {lib.summarize(stopped)}; last stderr line {last_words!r}; "
                f"last step logged {last}, latest checkpoint {saved}"
                f"{' (the current step)' if saved == last else ''}; resume: "
                f"{lib.summarize(resumed)} from step {resumed.resumed_from()}; {comparison.describe()}")
        bench.say(f"{sig.name}: {seen}")
        rows.append(Row(sig.name, f"{sig.name} after a random step in the middle third, then the "
                        f"same command again", "finishes the step, saves it, exits 0 with a "
                        "message; resumes from that step; bitwise equal", seen,
                        YES_NO[comparison.equal], unloadable_text(workdir), time.monotonic() - started,
                        met=stopped.returncode == 0 and saved == last == resumed.resumed_from()
                        and comparison.equal))
    return rows


def diverge(bench: Bench) -> list[Row]:
    rows = []
    for lr, when in (("1e6", "at once"), ("100", "after a few checkpoints")):
        started, workdir = time.monotonic(), bench.workdir(f"diverge-{lr}")
        outcome = bench.train(workdir, f"diverge-{lr}", extra=(f"--config.optimizer.lr={lr}",))
        checkpoints = os.path.join(workdir, "checkpoints")
        unloadable, bad = lib.inspect(checkpoints)
        metrics = lib.jsonl(os.path.join(workdir, "metrics.jsonl"))
        losses = [r["train/loss"] for r in metrics if "train/loss" in r]
        skips = [r["train/skips"] for r in metrics if isinstance(r.get("train/skips"), (int, float))]
        seen = (f"{lib.summarize(outcome)}; stderr {len(lib.stderr_lines(outcome))} line(s); "
                f"spikes.jsonl: {lib.spike_events(workdir)}; most train/skips logged: "
                f"{int(max(skips)) if skips else 'not logged'}; checkpoints left "
                f"{lib.step_dirs(checkpoints)}, with NaN/Inf: {sorted(bad) or 'none'}; train/loss "
                f"non-finite (null) in {losses.count(None)} of {len(losses)} rows")
        bench.say(f"diverge (lr {lr}): {seen}")
        kept = bool(lib.step_dirs(checkpoints)) == (lr != "1e6") and not bad and not unloadable
        errors = [line for line in lib.stderr_lines(outcome) if line.startswith("error:")]
        rows.append(Row(f"diverging lr {lr}", f"--config.optimizer.lr={lr} (diverges {when})",
                        "steps skipped, rollbacks to the last good checkpoint with batches skipped, "
                        "then exit 2 with one 'error:' line; spikes.jsonl records it; every "
                        "checkpoint left finite, " + ("none written before the divergence" if lr == "1e6"
                                                      else "at least one"), seen, "n/a",
                        unloadable_text(workdir), time.monotonic() - started, met=outcome.returncode == 2
                        and len(errors) == 1 and os.path.exists(os.path.join(workdir, "spikes.jsonl")) and kept))
    return rows


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(rows: list[Row]) -> str:
    lines = ["| scenario | injected | expected | seen | as expected | final state bitwise equal to the "
             "uninterrupted run | unloadable checkpoints | wall time |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        values = (r.scenario, r.injected, r.expected, r.seen, YES_NO[bool(r.met)], r.equal, r.unloadable)
        lines.append(f"| {' | '.join(cell(v) for v in values)} | {r.seconds:.0f} s |")
    return "\n".join(lines)


def report(rows: list[Row], bench: Bench, argv: list[str]) -> str:
    head = [f"# Fault injection ({datetime.date.today().isoformat()}, {os.cpu_count()} CPU cores)",
            "", f"Command: `python -m benchmarks.faults {' '.join(argv)}`, on {revision()}.", "",
            f"Runs: {bench.steps} steps of the small run in benchmarks/faults_lib.py "
            f"(`SMALL_RUN`), a checkpoint every {bench.every} steps (async, 3 kept). Bitwise equal: "
            f"every array of the final checkpoint (read back with orbax, no target) byte for byte "
            f"against the uninterrupted reference, the data position, and train/loss at every step. "
            f"Unloadable: step folders left in checkpoints/ that orbax cannot restore.", ""]
    return "\n".join(head + [table(rows), ""] + bench.details)


def revision() -> str:
    """The code measured: the checkout's commit, and whether tracked files differ from it."""
    git = ["git", "-C", str(lib.ROOT)]
    head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if head.returncode:
        return f"the files under {lib.ROOT} (not a git checkout)"
    dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return f"commit {head.stdout.strip()}" + (" with uncommitted changes" if dirty else "")


def parse_args(argv: list[str]):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("kills", 20), ("steps", 300), ("checkpoint_every", 10), ("seed", 0)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)} (the reference always runs)")
    parser.add_argument("--out", default="", help="also write the report (markdown) here")
    parser.add_argument("--keep", action="store_true", help="keep the runs' folders")
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def run_scenarios(bench: Bench, args) -> list[Row]:
    runners = {"reference": lambda: reference(bench), "kill": lambda: kills(bench, args.kills),
               "corrupt": lambda: corrupt(bench), "disk-full": lambda: disk_full(bench),
               "signal": lambda: signals(bench), "diverge": lambda: diverge(bench)}
    rows = []
    for name in ("reference", *(name for name in SCENARIOS if name in args.only.split(","))):
        started, new = time.monotonic(), runners[name]()
        for row in new:  # rows without a time of their own share the scenario's
            row.seconds = row.seconds or (time.monotonic() - started) / len(new)
        rows += new
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv := sys.argv[1:] if argv is None else argv)
    os.environ.update(JAX_PLATFORMS="cpu")  # this process reads the checkpoints back
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notes on read-only readers
    root = tempfile.mkdtemp(prefix="lm-faults-")
    bench = Bench(args, root)
    bench.say(f"runs under {root}")
    try:
        rows = run_scenarios(bench, args)
    finally:
        lib.end_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    text = report(rows, bench, argv)
    print("\n" + table(rows), flush=True)
    if args.out:
        write_atomically(args.out, text)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
