"""Mutation testing: how many planted bugs the test suite catches, module by module (mutmut 3).

mutmut changes the library one small edit at a time (``<`` for ``<=``, ``None`` for a value,
``and`` for ``or``, a dropped argument...) and runs the tests on each such *mutant*; a mutant the
tests let pass *survives*. The score of a module is the fraction of its mutants that the tests
kill. Run by hand, not in CI: it is CPU-heavy (the attack's module alone has about a thousand
mutants).

Usage::

    pip install -c constraints.txt -e ".[test,mutation]"
    python benchmarks/mutation.py                 # every module below, one after the other
    python benchmarks/mutation.py metrics _cache  # some of them
    python benchmarks/mutation.py --report        # only rewrite the report from past runs

Each module runs in its own copy of the project (the files git tracks, plus uncommitted
changes) under ``build/mutation/<module>/``, whose ``setup.cfg`` mutates that module alone and
selects the tests written for it (``TESTS`` below). mutmut copies that copy into ``mutants/``,
runs the selected tests once to learn which tests reach which function, then runs, for each
mutant, the tests that reach the mutated function, stopping at the first failure, in a process
forked from the one that ran them all (so the trained nets of the fixtures are ready).
Hypothesis runs its ``mutation`` profile (tests/conftest.py): fixed examples, no shrinking;
and the quickest test files run first (``QUICK_FIRST`` there).
``OMP_NUM_THREADS=1``: one thread a test process, two processes at a time (``--max-children``).
A run that is stopped resumes where it left off, and a new run checks the survivors again (after
new tests); ``--fresh`` starts the module over, as it must after the library code changed.

Results go to ``build/mutation/report.md`` and ``report.json``: per module the mutants killed,
survived, timed out and not reached, the score, the wall time, and the diff of every survivor.
To look at one survivor in place: ``cd build/mutation/<module> && mutmut show <name>``.

Left out of mutation, on purpose (``SKIPPED_FUNCTIONS``): functions whose output is a speed
choice, not a number the library reports (``batch_size="auto"``'s timing and memory estimate).
Error messages are not mutated (``do_not_mutate_patterns``): the tests
match each message's key phrase, not its every word.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "mutation"
MUTMUT = [str(Path(sys.executable).with_name("mutmut"))]

#: The tests each module's mutants are run against.
TESTS = {
    "_attack": ["tests/test_attack_reference.py", "tests/test_attack_settings.py",
                "tests/test_properties.py",
                # test_attack.py's tests whose code paths the files above do not take
                *(f"tests/test_attack.py::test_attack_{name}" for name in [
                    "never_flipped_is_marked", "does_not_modify_input",
                    "restores_module_state_after_exception",
                    "restores_module_state_and_computes_no_parameter_gradients",
                    "runs_under_no_grad", "verbose_shows_progress", "invalid_settings_raise",
                    "early_exit_refuses_traces", "bad_input_raises", "rank_out_of_range_raises",
                    "bfloat16_is_close_to_float32",
                    "channels_last_agrees_and_restores_the_weights",
                    "n_jobs_gives_identical_results",
                    "auto_batch_size_respects_memory_budget"])],
    "_estimator": ["tests/test_estimator_cases.py", "tests/test_estimator.py",
                   "tests/test_properties.py", "tests/test_cache.py", "tests/test_common.py"],
    "metrics": ["tests/test_metrics.py"],
    "_cache": ["tests/test_cache.py"],
    "callbacks": ["tests/test_callbacks.py"],
    "scores": ["tests/test_scores.py"],
}
#: Functions whose mutants are not run (see the module docstring), as mutmut names them.
SKIPPED_FUNCTIONS = {
    "_attack": ["xǁResistanceAttackǁ_auto_batch_size", "x__memory_budget",
                "x__bytes_per_image"],
}
#: Lines whose expressions are not mutated: the text of error messages and warnings.
MESSAGE_LINES = [
    r'^\s*f?"[^"]*"\s*\)?,?\s*$',  # a line that is only (part of) a string
    r"raise \w+\(",
    r"warnings\.warn\(",
    r"stacklevel=",  # which caller a warning names
]
STATUSES = ["killed", "survived", "timeout", "no tests", "suspicious", "segfault",
            "skipped", "not checked", "caught by type check"]


def config(module):
    """The [mutmut] section that mutates ``module`` against its tests."""
    lines = ["[mutmut]", "source_paths = resistclf/", "only_mutate =",
             f"    resistclf/{module}.py", "pytest_add_cli_args_test_selection ="]
    lines += [f"    {test}" for test in TESTS[module]]
    lines += ["pytest_add_cli_args = -p no:cacheprovider -o addopts= -W ignore",
              # Each mutant's tests run in a process forked from the one that ran them all
              # once, which has the digits CNN trained already (see tests/conftest.py).
              "process_isolation = fork",
              # A mutant's tests get (time they took unmutated + 30 s) x 10 before they count
              # as timed out: setting up fixtures (training the digits CNN) is not in mutmut's
              # estimate, and the machine may be shared.
              "timeout_constant = 30", "timeout_multiplier = 10",
              "do_not_mutate_patterns ="]
    lines += [f"    {pattern}" for pattern in MESSAGE_LINES]
    return "\n".join(lines) + "\n"


def prepare(module, fresh):
    """A copy of the project in build/mutation/<module>, configured for that module."""
    folder = WORK / module
    if fresh and folder.exists():
        shutil.rmtree(folder)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        source, target = ROOT / name, folder / name
        if source.is_file() and (not target.exists()
                                 or target.read_bytes() != source.read_bytes()):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    setup = (ROOT / "setup.cfg").read_text()
    setup = re.sub(r"\n\[mutmut\].*", "", setup, flags=re.S)  # the copy's own section
    (folder / "setup.cfg").write_text(setup.rstrip() + "\n\n" + config(module))
    return folder


def mutant_names(folder, module):
    """The module's mutants to run: those not run yet and the survivors (the tests may have
    changed since), but not those in SKIPPED_FUNCTIONS."""
    meta = json.loads((folder / "mutants" / "resistclf" / f"{module}.py.meta").read_text())
    return [name for name, exit_code in meta["exit_code_by_key"].items()
            if exit_code in (None, 0, 5, 33) and not skipped(module, name)]


def skipped(module, name):
    return any(f".{function}__mutmut_" in name for function in SKIPPED_FUNCTIONS.get(module, []))


def environment():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYPOTHESIS_PROFILE": "mutation",
           "RESISTCLF_MUTATION": "1"}
    env.pop("PYTHONPATH", None)  # the tests must import the mutated copy
    return env


def run(module, max_children, fresh):
    folder = prepare(module, fresh)
    start = time.perf_counter()
    # A name that matches no mutant: mutmut generates the mutants, runs the tests once to
    # map tests to functions, and stops there. Then the mutants still to run are named.
    subprocess.run([*MUTMUT, "run", "--max-children", str(max_children),
                    f"resistclf.{module}.x_generate_only__mutmut_0"],
                   cwd=folder, env=environment(), check=False, stderr=subprocess.DEVNULL)
    names = mutant_names(folder, module)
    if names:
        subprocess.run([*MUTMUT, "run", "--max-children", str(max_children), *names],
                       cwd=folder, env=environment(), check=False)
    timings = WORK / "seconds.json"
    past = json.loads(timings.read_text()) if timings.exists() else {}
    seconds = past.get(module, 0) * (not fresh) + time.perf_counter() - start
    timings.write_text(json.dumps({**past, module: round(seconds)}, indent=1))


def results(module):
    """Status of every mutant of ``module``, and the diff of each survivor."""
    folder = WORK / module
    meta_path = folder / "mutants" / "resistclf" / f"{module}.py.meta"
    if not meta_path.exists():
        return None
    listed = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=folder,
                            capture_output=True, text=True, env=environment())
    status = {}
    for line in listed.stdout.splitlines():
        name, _, state = line.strip().rpartition(": ")
        if name.startswith(f"resistclf.{module}."):
            status[name] = "skipped" if skipped(module, name) else state
    survivors = {}
    for name, state in status.items():
        if state in ("survived", "no tests"):
            shown = subprocess.run([*MUTMUT, "show", name], cwd=folder, capture_output=True,
                                   text=True, env=environment())
            survivors[name] = shown.stdout.strip()
    counts = {state: sum(s == state for s in status.values()) for state in STATUSES}
    counts = {state: n for state, n in counts.items() if n}
    run_on = sum(n for state, n in counts.items() if state not in ("skipped", "not checked"))
    score = counts.get("killed", 0) + counts.get("timeout", 0)
    return {"counts": counts, "score": score / run_on if run_on else None,
            "survivors": survivors}


def score_text(score):
    return "-" if score is None else f"{100 * score:.1f}%"


def report():
    timings = WORK / "seconds.json"
    seconds = json.loads(timings.read_text()) if timings.exists() else {}
    found = {module: results(module) for module in TESTS}
    found = {module: r for module, r in found.items() if r is not None}
    (WORK / "report.json").write_text(json.dumps(
        {module: {**r, "seconds": seconds.get(module)} for module, r in found.items()},
        indent=1))
    lines = ["# Mutation testing", "",
             "Score: mutants killed (a test failed, or the run timed out) over mutants run.", "",
             "| module | mutants run | killed | survived | score | wall time |",
             "| --- | --- | --- | --- | --- | --- |"]
    for module, r in found.items():
        c = r["counts"]
        run_on = sum(n for state, n in c.items() if state not in ("skipped", "not checked"))
        lines.append(f"| {module} | {run_on} | {c.get('killed', 0) + c.get('timeout', 0)} | "
                     f"{c.get('survived', 0) + c.get('no tests', 0)} | "
                     f"{score_text(r['score'])} | {seconds.get(module, '?')} s |")
    for module, r in found.items():
        lines += ["", f"## {module}: survivors", ""]
        for name, diff in r["survivors"].items():
            lines += [f"### {name}", "", "```diff", diff, "```", ""]
    (WORK / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:6 + len(found)]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", choices=[*TESTS, []], default=[])
    parser.add_argument("--max-children", type=int, default=2)
    parser.add_argument("--fresh", action="store_true", help="start the modules over")
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    args = parser.parse_args()
    if not args.report:
        for module in args.modules or [m for m in TESTS if (ROOT / TESTS[m][0]).exists()]:
            run(module, args.max_children, args.fresh)
    report()


if __name__ == "__main__":
    main()
