"""Spreading a collection's banks over a Ray cluster (optional extra: pip install ddcodec[ray]).

One actor per GPU, each fitting whole banks with the same engine as a serial run; with no GPU
in the cluster, CPU actors instead. The driver keeps every actor busy with one bank and writes
each bank's files as soon as it returns (ddcodec.collection). Fault handling is Ray's: a dead
actor is restarted and its bank retried (max_restarts, max_task_retries), so a worker that
dies costs only its own bank's time; after the retries run out the bank is reported failed
and the rest of the job goes on.
"""
import logging
import os
from dataclasses import replace

from .collection import BankJob, run_bank
from .errors import ConfigError

RETRIES = 3
FAULT_ENV = "DDCODEC_FAULT_ONCE"  # tests: a path; the first worker to claim it dies mid-bank


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'ddcodec[ray]'") from None
    return ray


class BankWorker:
    """Fits banks on one device. Made a Ray actor by ray_runner (ray.remote(...)(BankWorker))."""

    def __init__(self, device: str, threads: int, fault_marker: str = ""):
        import torch
        if device == "cpu":
            torch.set_num_threads(threads)
        self.device = device
        self.fault_marker = fault_marker

    def ready(self) -> bool:  # returns once the cluster has placed this actor
        return True

    def run(self, job: BankJob):
        if self.fault_marker:  # fault injection for the tests: die once, mid-job
            try:
                os.close(os.open(self.fault_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                os._exit(1)
            except FileExistsError:
                pass
        return job, run_bank(replace(job, settings=replace(job.settings, device=self.device)))


def ray_runner(address=None, workers: int = 0, cpus_per_worker: int = 1, init_options=None):
    """A runner for collection.encode_collection that fits banks on Ray actors.

    address: None starts a local Ray instance (stopped again afterwards); "auto" or
    "ray://host:port" joins a running cluster. workers: 0 means one per GPU, or with no GPUs
    one per cpus_per_worker CPUs."""
    ray = _ray()

    def run(jobs):
        if not jobs:  # everything done before: no need to start or join a cluster
            return
        started = not ray.is_initialized()
        if started:
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, **(init_options or {}))
            except (ConnectionError, RuntimeError, ValueError) as e:  # an address that is wrong or down
                raise ConfigError(f"cannot start or reach Ray at {address or 'a local instance'}: {e}") from None
        try:
            yield from _run(ray, jobs, workers, cpus_per_worker)
        finally:
            if started:
                ray.shutdown()
    return run


def _run(ray, jobs, workers, cpus_per_worker):
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus and jobs[0].settings.device in ("auto", "cuda"):
        n, resources, device = workers or gpus, {"num_gpus": 1}, "cuda"
    else:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        largest = max((int(node.get("Resources", {}).get("CPU", 0)) for node in ray.nodes() if node.get("Alive")),
                      default=cpus)
        if cpus_per_worker > largest:  # no node could ever place one: Ray would wait for it forever
            raise ConfigError(f"a worker needs {cpus_per_worker} CPUs and no Ray node has more than {largest}")
        n = workers or max(1, cpus // cpus_per_worker)
        resources, device = {"num_cpus": cpus_per_worker}, "cpu"
    actor_cls = ray.remote(max_restarts=RETRIES, max_task_retries=RETRIES, **resources)(BankWorker)
    fault = os.environ.get(FAULT_ENV, "")
    actors = [actor_cls.remote(device, cpus_per_worker, fault) for _ in range(min(n, len(jobs)))]
    try:
        yield from _dispatch(ray, actors, jobs)
    finally:  # actors the cluster never placed still hold a request for resources: drop them
        for actor in actors:
            try:
                ray.kill(actor)
            except ray.exceptions.RayError:  # already gone
                pass


def _dispatch(ray, actors, jobs):
    """Hand banks to actors as each proves it is running. More actors than the cluster can
    place (--workers above its GPUs or CPUs) wait for resources that the running ones hold
    until the end: a bank sent to one of those at the start would never run, and the job
    would hang. So an actor gets its first bank only once its ready() call returns."""
    queue = list(reversed(jobs))
    starting = {actor.ready.remote(): actor for actor in actors}  # placement probes
    running = {}  # future -> (actor, job)
    while running or (queue and starting):
        [done], _ = ray.wait(list(running) + list(starting), num_returns=1)
        if done in starting:
            actor = starting.pop(done)
            try:
                ray.get(done)
            except ray.exceptions.RayError:  # it never came up: the others go on
                continue
        else:
            actor, job = running.pop(done)
            try:
                yield ray.get(done)
            except ray.exceptions.RayError as e:  # retries exhausted: this bank fails, the job goes on
                yield job, _failed(job, f"worker failed: {type(e).__name__}")
                if isinstance(e, ray.exceptions.RayActorError):
                    actor = None  # out of restarts: send nothing more to it
        if actor is not None and queue:
            job = queue.pop()
            running[actor.run.remote(job)] = (actor, job)
    for job in reversed(queue):  # every actor died for good
        yield job, _failed(job, "no Ray worker left")


def _failed(job, reason: str) -> list:
    return job.pending([(s, o, None, reason, {}) for s, o in zip(job.sources, job.outputs)])
