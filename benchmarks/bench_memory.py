"""Past one machine and larger than memory: two measurements, run by hand.

``memory``: a memory-mapped array larger than a memory limit is attacked (by
``ResistanceAttack`` and by ``ResistanceClassifier``) with bounded peak memory.

``overhead``: the attack on a dask ``LocalCluster`` of two single-threaded worker
processes, against the serial run on the same images (and joblib's loky with two
workers, for reference).

    python benchmarks/bench_memory.py memory --array-gib 2 --limit-gib 1.5
    python benchmarks/bench_memory.py overhead --images 512

What bounds memory. A memory map's pages are file-backed: the kernel reads them into
the page cache when they are touched and drops them whenever memory runs short. They
count in the resident set size (RSS, and its peak VmHWM) without being the process's to
keep, so a peak RSS near the array's size says nothing about what the attack needs. What
a process cannot give back is its anonymous memory (RssAnon): heap, tensors, copies. The
``memory`` benchmark therefore attacks in a child process whose data segment is capped
with ``RLIMIT_DATA``, which since Linux 4.7 counts private writable mappings (the heap,
anonymous mmaps, hence every NumPy and torch buffer) but not read-only shared file
mappings such as ``np.load(path, mmap_mode="r")``. Under the cap, loading the array whole
fails with MemoryError (the control); the attack must run. A thread samples RssAnon
every 5 ms for its peak. Linux only.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GIB = 2**30
MIB = 2**20


def status():
    """Memory fields of /proc/self/status, in bytes."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith("kB"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


class PeakAnonymous:
    """Samples RssAnon every ``interval`` seconds while in the ``with`` block."""

    def __init__(self, interval=0.005):
        self.interval, self.peak = interval, 0

    def __enter__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status()["RssAnon"])

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, status()["RssAnon"])
            time.sleep(self.interval)


def write_images(path, n_images, shape, seed=0):
    """A float32 .npy file of ``n_images`` uniform random images, written a slice at a time."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                       shape=(n_images, *shape))
    rng = np.random.default_rng(seed)
    for start in range(0, n_images, 256):
        images[start:start + 256] = rng.random((min(256, n_images - start), *shape),
                                               dtype=np.float32)
    images.flush()
    del images


def small_net(channels, n_classes=10):
    """A cheap net for large images: one strided convolution, pooling and a linear layer."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 8, 7, stride=4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(8 * 16, n_classes))


def memory_child(path, limit, batch_size, max_iter):
    """Attack the memory-mapped ``path`` with the data segment capped at ``limit`` bytes."""
    import torch

    from resistclf import AttackCache, ResistanceAttack, ResistanceClassifier

    X = np.load(path, mmap_mode="r")
    module = small_net(X.shape[1])
    attack = ResistanceAttack(max_iter=max_iter, batch_size=batch_size)
    attack(module, torch.from_numpy(np.array(X[:2])))  # thread pools and kernels, before the cap
    labels = np.random.default_rng(0).integers(2, size=64)
    baseline = status()
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        np.array(X)
        control = "loaded whole: the cap does not bind"
    except MemoryError as exc:
        control = f"MemoryError: {exc}"
    row = {"baseline": baseline, "limit": limit, "array_bytes": X.nbytes,
           "array_shape": list(X.shape), "control": control, "runs": {}}

    def measure(name, function):
        start = time.perf_counter()
        with PeakAnonymous() as peak:
            value = function()
        row["runs"][name] = {"seconds": round(time.perf_counter() - start, 1),
                             "peak_anonymous": peak.peak, "vm_hwm": status()["VmHWM"],
                             "rss_file_after": status()["RssFile"]}
        return value

    result = measure("ResistanceAttack()(module, memmap)", lambda: attack(module, X))
    clf = ResistanceClassifier(module, attack=attack, cv="prefit", random_state=0).fit(
        np.array(X[:64]), labels)
    features = measure("ResistanceClassifier.transform(memmap)", lambda: clf.transform(X))
    clf.set_params(cache=AttackCache())
    measure("ResistanceClassifier(cache=AttackCache()).transform(memmap)",
            lambda: clf.transform(X))
    row["n_results"] = [len(result), len(features)]
    print(json.dumps(row))


def run_memory(args):
    folder = Path(args.folder or tempfile.mkdtemp(prefix="resistclf-memory-"))
    shape = (3, args.image_size, args.image_size)
    n_images = int(args.array_gib * GIB) // (4 * int(np.prod(shape)))
    path = folder / "images.npy"
    print(f"Writing {n_images} images of shape {shape} ({n_images * 4 * np.prod(shape) / GIB:.2f}"
          f" GiB) to {path}...", file=sys.stderr)
    write_images(path, n_images, shape)
    try:
        completed = subprocess.run(
            [sys.executable, __file__, "memory-child", str(path), str(int(args.limit_gib * GIB)),
             str(args.batch_size), str(args.max_iter)],
            capture_output=True, text=True, check=True)
    finally:
        path.unlink()
        if not args.folder:
            folder.rmdir()
    row = json.loads(completed.stdout.splitlines()[-1])
    print(f"Array: {row['array_bytes'] / GIB:.2f} GiB, shape {tuple(row['array_shape'])}, "
          f"memory-mapped read-only. Data-segment cap (RLIMIT_DATA): {row['limit'] / GIB:.2f} "
          f"GiB; the process held {row['baseline']['VmData'] / GIB:.2f} GiB of it (imports, "
          f"thread pools) and {row['baseline']['RssAnon'] / MIB:.0f} MiB of anonymous memory "
          "before the attack.")
    print(f"Control, np.array(memmap) under the cap: {row['control']}")
    print(f"Batches of {args.batch_size} images ({args.batch_size * row['array_bytes'] / row['array_shape'][0] / MIB:.0f} MiB), "
          f"{args.max_iter} steps; {os.cpu_count()} CPU cores.\n")
    print("| run | wall time | peak anonymous memory (RssAnon) | above the baseline "
          "| peak RSS (VmHWM, with page cache) |")
    print("|---|---|---|---|---|")
    for name, run in row["runs"].items():
        print(f"| `{name}` | {run['seconds']} s | {run['peak_anonymous'] / MIB:.0f} MiB | "
              f"{(run['peak_anonymous'] - row['baseline']['RssAnon']) / MIB:.0f} MiB | "
              f"{run['vm_hwm'] / MIB:.0f} MiB |")


def run_overhead(args):
    import torch
    from distributed import Client, LocalCluster
    from joblib import parallel_config
    from sklearn.base import clone

    from resistclf import ResistanceAttack
    from resistclf.models import SimpleCNN

    torch.manual_seed(0)
    module = SimpleCNN()
    X = torch.rand(args.images, 1, 28, 28)
    attack = ResistanceAttack(max_iter=args.max_iter, batch_size=args.batch_size)
    threads = torch.get_num_threads()

    def serial(n_threads):
        torch.set_num_threads(n_threads)
        try:
            return attack(module, X)
        finally:
            torch.set_num_threads(threads)

    def dask():
        with parallel_config(backend="dask"):
            return attack(module, X)

    runs = {f"serial, {threads} torch threads": lambda: serial(threads),
            "serial, 1 torch thread": lambda: serial(1),
            "joblib loky, n_jobs=2": lambda: clone(attack).set_params(n_jobs=2)(module, X),
            "dask LocalCluster, 2 workers x 1 thread": dask}
    times = {name: [] for name in runs}
    expected = serial(threads).res_n
    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        started = time.perf_counter() - start
        start = time.perf_counter()
        assert np.array_equal(dask().res_n, expected)
        first = time.perf_counter() - start
        # Round robin, so that every way of running meets the same load on a shared machine.
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                assert np.array_equal(run().res_n, expected), f"{name} differs from serial"
                times[name].append(time.perf_counter() - start)
    n_tasks = -(-args.images // args.batch_size)
    print(f"{args.images} random 28x28 images, reference SimpleCNN (random weights), "
          f"{args.max_iter} steps, batch_size={args.batch_size} ({n_tasks} tasks); "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end. "
          "Results identical to serial in every run.\n")
    print(f"LocalCluster start (2 worker processes): {started:.1f} s; its first attack, while "
          f"the workers import torch: {first:.1f} s.\n")
    print("| run | wall time (median) | runs, in rounds | vs serial |")
    print("|---|---|---|---|")
    reference = statistics.median(next(iter(times.values())))
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median:.1f} s | {', '.join(f'{s:.1f}' for s in seconds)} | "
              f"{median / reference:.2f}x |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser("memory", help="attack a memory map larger than a cap")
    memory.add_argument("--array-gib", type=float, default=2.0)
    memory.add_argument("--limit-gib", type=float, default=1.5)
    memory.add_argument("--image-size", type=int, default=224)
    memory.add_argument("--batch-size", type=int, default=32)
    memory.add_argument("--max-iter", type=int, default=2)
    memory.add_argument("--folder", help="where to write the array (default: a temporary "
                                         "folder, removed afterwards)")
    overhead = commands.add_parser("overhead", help="dask LocalCluster against serial")
    overhead.add_argument("--images", type=int, default=512)
    overhead.add_argument("--max-iter", type=int, default=100)
    overhead.add_argument("--batch-size", type=int, default=64)
    overhead.add_argument("--repeats", type=int, default=3, help="rounds of runs")
    child = commands.add_parser("memory-child")
    for name in ("path", "limit", "batch_size", "max_iter"):
        child.add_argument(name)
    args = parser.parse_args()
    if args.command == "memory":
        run_memory(args)
    elif args.command == "overhead":
        run_overhead(args)
    else:
        memory_child(args.path, int(args.limit), int(args.batch_size), int(args.max_iter))


if __name__ == "__main__":
    main()
