"""Feature extraction on a Ray cluster, through Ray Data.

The shard plan becomes a Ray dataset of shard indices; ``map_batches`` hands them, one at a time, to
a pool of actors that each build the encoder once and call the same ``run_shard`` as the local path.
Every worker writes its shard straight into the output directory (temporary name, then rename), so
that directory must be reachable under the same path from every node (NFS, a mounted bucket, or a
single machine). The driver only collects the per-shard statistics, in completion order, and writes
the index and manifest at the end, exactly as a local run does. Resuming works the same way: the plan
handed to Ray holds only the shards that are not complete on disk.

``--ray local`` starts a Ray instance in this process (for one machine with several GPUs, or tests);
any other value is the address of a running cluster (``ray://host:10001`` or ``host:6379``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affectstream.errors import ConfigError, MissingExtraError
from affectstream.training.extract import (
    EncoderRecipe,
    ExtractConfig,
    FrameLabeler,
    ShardJob,
    ShardRunner,
    run_shard,
)
from affectstream.training.extract_summary import ShardStats

log = logging.getLogger(__name__)


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (Ray Data is a separate part of the ray[data] extra)
    except ImportError:
        raise MissingExtraError("ray", "ray", "extraction on a Ray cluster (--ray)") from None
    return ray


class ShardWorker:
    """A Ray Data actor: builds the encoder once, then computes and writes the shards it is given."""

    def __init__(self, jobs: dict[int, ShardJob], out: str, recipe: EncoderRecipe, config: ExtractConfig,
                 labeler: FrameLabeler) -> None:
        self.jobs = jobs
        self.out = Path(out)
        self.config = config
        self.labeler = labeler
        self.encoder = recipe.build()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [run_shard(self.jobs[int(index)], self.out, self.encoder, self.config, self.labeler)
                   for index in batch["shard"]]
        return {"shard": np.asarray(batch["shard"]), "stats": np.asarray([r.to_json() for r in results])}


def _connect(ray: Any, address: str, workers: int) -> bool:
    """Start or join Ray; True when this call started it (and must shut it down)."""
    if ray.is_initialized():
        return False
    if address == "local":
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def ray_runner(out: Path, recipe: EncoderRecipe, config: ExtractConfig, labeler: FrameLabeler, address: str,
               workers: int = 1) -> ShardRunner:
    """A ``ShardRunner`` that runs the pending shards on ``workers`` Ray actors."""
    if workers < 1:
        raise ConfigError(f"--ray-workers must be >= 1, got {workers}")
    out = Path(out).resolve()  # workers see the path as given: make it absolute
    ray = import_ray()  # fail before planning if the extra is missing

    def run(jobs: Sequence[ShardJob]) -> Iterator[ShardStats]:
        if not jobs:
            return
        started_here = _connect(ray, address, workers)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False  # the driver's tqdm bar shows progress
            dataset = ray.data.from_items([{"shard": job.index} for job in jobs])
            gpus = 1 if recipe.device.startswith("cuda") else 0
            mapped = dataset.map_batches(
                ShardWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(workers, len(jobs))),
                num_gpus=gpus,
                fn_constructor_kwargs={"jobs": {job.index: job for job in jobs}, "out": str(out), "recipe": recipe,
                                       "config": config, "labeler": labeler},
            )
            for row in mapped.iter_rows():
                yield ShardStats.from_json(str(row["stats"]))
        finally:
            if started_here:
                ray.shutdown()

    return run
