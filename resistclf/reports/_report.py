"""Writing a report: report.md, results.json and PNG figures in one folder."""

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np


def environment():
    """Package versions and the machine, for the record."""
    import sklearn
    import skorch
    import torch
    import torchvision

    from .. import __version__

    return {
        "resistclf": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "scikit-learn": sklearn.__version__, "skorch": skorch.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads "
                   f"{torch.get_num_threads()}, CUDA {'yes' if torch.cuda.is_available() else 'no'}",
    }


def write_report(out, markdown, results, figures):
    """Write ``report.md``, ``results.json`` and each figure as ``<name>.png`` to ``out``."""
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.png", dpi=110)
        plt.close(fig)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable))
    (out / "report.md").write_text(markdown)
    print(f"Wrote {out / 'report.md'}, results.json and {len(figures)} figures.", file=sys.stderr)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def table(header, rows):
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def with_interval(value, interval, percent=False, digits=3):
    """``value [low, high]``, as a percentage if asked."""
    if value is None or np.isnan(value):
        return "n/a"
    f = (lambda v: f"{100 * v:.{max(digits - 2, 1)}f}%") if percent else (lambda v: f"{v:.{digits}f}")
    if interval is None or np.isnan(interval[0]):
        return f(value)
    return f"{f(value)} [{f(interval[0])}, {f(interval[1])}]"
