"""``resistclf verify DIR``: recompute every number of a report from its per-image arrays.

A report folder holds ``results.json`` and ``per_image.npz`` (read with
``allow_pickle=False``): every per-image measurement the analysis used. The command that
wrote the report (``results.json``'s ``command``) recomputes its analysis from those arrays
alone, with no attack and no network, and every number it gives is compared with the one in
``results.json``: after a round trip through JSON they must agree to a relative 1e-9.
Settings (the attack, the seed, the number of resamples), wall times and the environment are
read, not recomputed.

With ``--rewrite``, a report whose numbers all agree is written again, in the current
code's words and figures, from those arrays: its Markdown and the figures that need
neither the images nor the net (a new presentation without a new attack). A report whose
numbers differ is left as it is.
"""

import json
import math
import sys
from importlib import import_module
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed, effective_n_jobs

#: Floats may differ in their last bits only (another BLAS or thread count summing in
#: another order); any real change to a number is far larger.
RELATIVE_TOLERANCE = 1e-9
#: Commands whose reports carry per-image arrays, and so can be verified.
VERIFIABLE = ("shift", "reproduce", "study", "adversarial", "compare", "dynamics")


def verify(folder):
    """The differences between a report's ``results.json`` and its recomputation.

    Parameters
    ----------
    folder : path
        A report folder with ``results.json`` and ``per_image.npz``.

    Returns
    -------
    differences : list of str
        One line per number that differs (its path, the report's value and the
        recomputed one); empty when every number agrees.

    Raises
    ------
    ValueError
        If the folder lacks either file, or its command keeps no per-image arrays.
    """
    results, arrays, module = _read(Path(folder))
    return _compare(results, module.recompute(results, arrays))


def _read(folder):
    """A report's ``results.json``, its arrays, and the module of the command that wrote it."""
    for name in ("results.json", "per_image.npz"):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} has no {name}: only a report written with its "
                             "per-image arrays can be verified; regenerate it.")
    results = json.loads((folder / "results.json").read_text())
    command = results.get("command")
    if command not in VERIFIABLE:
        raise ValueError(f"{folder}/results.json names command {command!r}; verify knows "
                         f"{list(VERIFIABLE)}.")
    with np.load(folder / "per_image.npz", allow_pickle=False) as arrays:
        arrays = dict(arrays)
    return results, arrays, import_module(f"resistclf.reports.{command}")


def _compare(results, recomputed):
    """One line per number of ``recomputed`` that ``results`` does not hold to the bit."""
    recomputed = json.loads(json.dumps(recomputed, default=_plain))
    return [line for key, value in recomputed.items()
            for line in _differences(results.get(key), value, key)]


def rewrite(folder):
    """Verify a report, then write its Markdown and array-drawn figures again.

    Parameters, returns and errors are those of :func:`verify`; the report is rewritten
    only where no number differs. A command whose report cannot be redrawn from its
    arrays alone raises a ValueError.
    """
    from ._report import write_report

    folder = Path(folder)
    results, arrays, module = _read(folder)
    if not hasattr(module, "rewrite"):
        raise ValueError(f"{folder}: the {results['command']} command verifies its numbers "
                         "but cannot rewrite its report; rerun the command.")
    recomputed, markdown, figures = module.rewrite(results, arrays)
    differences = _compare(results, recomputed)
    if not differences:
        write_report(folder, markdown, results, figures)
    return differences


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _differences(saved, recomputed, path):
    if isinstance(recomputed, dict):
        if not isinstance(saved, dict) or set(saved) != set(recomputed):
            return [f"{path}: the report holds {_short(saved)}, recomputed {_short(recomputed)}"]
        return [line for key in recomputed
                for line in _differences(saved[key], recomputed[key], f"{path}.{key}")]
    if isinstance(recomputed, list):
        if not isinstance(saved, list) or len(saved) != len(recomputed):
            return [f"{path}: the report holds {_short(saved)}, recomputed {_short(recomputed)}"]
        return [line for i, (a, b) in enumerate(zip(saved, recomputed))
                for line in _differences(a, b, f"{path}[{i}]")]
    same = saved == recomputed or (
        isinstance(saved, float) and isinstance(recomputed, float)
        and (math.isnan(saved) and math.isnan(recomputed)
             or math.isclose(saved, recomputed, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-15)))
    return [] if same else [f"{path}: the report holds {saved!r}, recomputed {recomputed!r}"]


def _short(value):
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def _verify_or_explain(folder, again=False):
    try:
        return (rewrite if again else verify)(folder), None
    except ValueError as exc:
        return None, str(exc)


def main(args):
    """Entry point of ``resistclf verify``: exit 1 on any difference."""
    # One report per core; a report that parallelises its own analysis runs it alone there.
    outcomes = Parallel(n_jobs=min(len(args.folders), effective_n_jobs(-1)))(
        delayed(_verify_or_explain)(folder, args.rewrite) for folder in args.folders)
    failed = False
    for folder, (differences, problem) in zip(args.folders, outcomes):
        if problem is not None:
            print(f"{folder}: cannot verify: {problem}", file=sys.stderr)
            failed = True
            continue
        if differences:
            failed = True
            print(f"{folder}: {len(differences)} numbers differ from their recomputation"
                  + (" (report left as it is)" if args.rewrite else "") + ":",
                  file=sys.stderr)
            for line in differences[:20]:
                print(f"  {line}", file=sys.stderr)
        else:
            print(f"{folder}: every number recomputed from per_image.npz agrees"
                  + ("; report.md and its array-drawn figures rewritten." if args.rewrite
                     else "."))
    if failed:
        sys.exit(1)
