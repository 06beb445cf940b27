"""The attack through joblib's backends, above all on a real dask.distributed cluster: two worker
processes on this machine.

Worker processes start slowly on a loaded machine, so the cluster is shared by the
tests of this file and every wait is generous.
"""

import importlib
import os
import signal
import threading
import time

import dask
import numpy as np
import pytest
import torch
from distributed import Client, LocalCluster, get_task_stream
from joblib import parallel_config
from torch import nn

from resistclf import ResistanceAttack
from resistclf.reports._report import parallel_backend

FIELDS = ["res_n", "res_max", "res_min", "res_mean", "flipped", "adversarial_class", "c0",
          "conf0"]
BATCH = 16
#: Seconds any single wait on the cluster may take before the test fails.
PATIENCE = 120


@pytest.fixture(scope="module")
def cluster():
    with dask.config.set({"distributed.comm.timeouts.connect": f"{PATIENCE}s",
                          "distributed.comm.timeouts.tcp": f"{PATIENCE}s"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                         dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(2, timeout=PATIENCE)
        client.run(importlib.import_module, "resistclf")  # torch and all, in both workers
        yield cluster, client


@pytest.fixture(scope="module")
def module(trained_cnn):
    return trained_cnn.module_


class Slow(nn.Module):
    """``module``, slowed down: each task lasts a while even on a fast machine."""

    def __init__(self, module, seconds):
        super().__init__()
        self.module, self.seconds = module, seconds

    def forward(self, x):
        time.sleep(self.seconds)
        return self.module(x)


def assert_identical(result, expected):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(result, name), getattr(expected, name),
                                      err_msg=name)


def attack_tasks(stream):
    """The tasks of a task stream that attacked images."""
    return [task for task in stream.data if "_attack_task" in task["key"]]


def test_dask_attack_is_identical_to_serial_and_leaves_the_module(module, cluster, digits):
    _, client = cluster
    X = torch.tensor(digits[2][:80])
    attack = ResistanceAttack(max_iter=60, batch_size=BATCH)
    serial = attack(module, X)
    state = {name: value.clone() for name, value in module.state_dict().items()}
    modes = [m.training for m in module.modules()]
    with get_task_stream(client) as stream, parallel_config(backend="dask"):
        distributed = attack(module, X)
    assert_identical(distributed, serial)
    assert all(torch.equal(value, state[name]) for name, value in module.state_dict().items())
    assert [m.training for m in module.modules()] == modes
    assert all(p.requires_grad for p in module.parameters())
    # n_jobs=None took the context's backend: one task per batch, on both workers.
    assert len(attack_tasks(stream)) == 80 // BATCH
    assert {task["worker"] for task in attack_tasks(stream)} == set(client.ncores())


def test_parallel_backend_connects_to_a_scheduler(module, cluster, digits):
    scheduler_cluster, _ = cluster
    X = torch.tensor(digits[2][:20])
    attack = ResistanceAttack(max_iter=20, batch_size=BATCH)
    with parallel_backend(scheduler=scheduler_cluster.scheduler_address) as client:
        assert client.scheduler.address == scheduler_cluster.scheduler_address
        with get_task_stream(client) as stream:
            distributed = attack(module, X)
    assert len(attack_tasks(stream)) == 2  # 20 images, fewer than a batch per worker
    assert_identical(distributed, attack(module, X))


def test_parallel_backend_without_scheduler_sets_n_jobs():
    import joblib

    with parallel_backend(n_jobs=3) as client:
        assert client is None and joblib.effective_n_jobs(None) == 3
    assert joblib.effective_n_jobs(None) == 1


def test_parallel_backend_without_dask_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed fails
    with pytest.raises(ImportError, match=r"pip install 'resistclf\[distributed\]'"), \
            parallel_backend(scheduler="tcp://127.0.0.1:1"):
        pass


class Counting(nn.Module):
    """``module``, counting its calls."""

    def __init__(self, module):
        super().__init__()
        self.module, self.calls = module, [0]

    def forward(self, x):
        self.calls[0] += 1
        return self.module(x)


def test_threading_backend_attacks_copies_of_the_module(module, digits):
    """Threads would share the module, whose mode each task changes and restores."""
    X = torch.tensor(digits[2][:64])
    attack = ResistanceAttack(max_iter=30, batch_size=BATCH)
    serial = attack(module, X)
    counted, modes = Counting(module), [m.training for m in module.modules()]
    with parallel_config(backend="threading", n_jobs=2):
        threaded = attack(counted, X)
    assert_identical(threaded, serial)
    assert counted.calls == [0], "a task ran the caller's module, shared between threads"
    assert [m.training for m in module.modules()] == modes
    assert all(p.requires_grad for p in module.parameters())


# Last: the cluster is left with a worker that its nanny is restarting.
def test_dask_attack_survives_a_killed_worker(module, cluster, digits):
    _, client = cluster
    X = torch.tensor(digits[2][:128])
    attack = ResistanceAttack(max_iter=80, batch_size=BATCH)
    serial = attack(module, X)
    slow = Slow(module, 0.002)  # eight tasks of at least 0.16 s
    pids = client.run(os.getpid)
    started, killed, attack_done = time.time(), {}, threading.Event()

    def kill_a_busy_worker_after_the_first_result():
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and not attack_done.is_set():
            finished = [task for task in client.get_task_stream(start=started)
                        if "_attack_task" in task["key"]]
            busy = [address for address, keys in client.processing().items()
                    if any("_attack_task" in key for key in keys)]
            if finished and busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed["address"] = busy[0]
                return
            time.sleep(0.02)

    client.get_task_stream(start=started)  # registers the scheduler's task-stream plugin
    killer = threading.Thread(target=kill_a_busy_worker_after_the_first_result)
    killer.start()
    try:
        with parallel_config(backend="dask"):
            result = attack(slow, X)
    finally:
        attack_done.set()
        killer.join()
    assert killed, "no worker was killed while a task ran"
    assert_identical(result, serial)
    (removal,) = [event for _, event in client.get_events("all")
                  if event.get("action") == "remove-worker"
                  and event.get("worker") == killed["address"]]
    # The killed worker had tasks; they ran again elsewhere, and no data was lost with it.
    assert removal["processing-tasks"] and not removal["lost-scattered-tasks"]
