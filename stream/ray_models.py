"""`run --ray`: the models of a cluster as one Ray Serve deployment, and what a stream's actor calls.

``FrameModels`` is a Serve deployment (one replica per GPU, or per CPU node: ``ModelPlacement``). Each
replica loads the run's engine once and keeps the heavy parts only: the whole-frame encoder, the face
detector and the expression classifier. Its three methods are ``@serve.batch``-ed, so the frames that
streams on any node send at about the same time are run in one model call; a request is one actor's
batch (a list), the batch handler concatenates the requests and splits the answer.

What stays with each stream is on its actor (stream/ray_actor.py): sampling, the detection schedule,
crops, the temporal head and the sessions. There, ``RemoteEncoder``, ``RemoteDetector`` and
``RemoteClassifier`` stand in for the local models (engine/interfaces.py's ``ImageEncoder``,
engine/faces.py's ``FaceDetector``, face_engine's ``ExpressionModel``), so the stream's ``Pipeline`` is
the in-process one. A call that fails because a replica died (its node went away) is sent again, up to
``RETRY_S``, while Serve starts a replacement.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from affectstream.engine.face_engine import CropPolicy
from affectstream.engine.runtime import EngineChoice
from affectstream.errors import ConfigError, MissingExtraError, PipelineError

log = logging.getLogger(__name__)

APP_NAME = "affectstream-models"
RETRY_S = 30.0  # how long a call waits for a replica before the batch fails (Serve restarts dead ones)
_T = TypeVar("_T")


def import_serve() -> Any:
    try:
        from ray import serve
    except ImportError:
        raise MissingExtraError("ray[serve]", "ray", "a run on a Ray cluster (--ray)") from None
    return serve


@dataclass(frozen=True)
class ModelPlacement:
    """How many model replicas the cluster runs, and what each one takes of a node."""

    replicas: int = 1
    gpus: float = 0.0  # per replica: 1 a whole GPU, 0.25 four replicas on one GPU, 0 the CPU
    cpus: float = 1.0  # per replica
    max_batch: int = 32  # frames of all streams in one model call
    # How long a replica waits for more requests after the first: short, because each request is an
    # actor's batch that waited --max-wait-ms already; requests that come while a batch runs join the next.
    max_wait_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--ray-replicas must be >= 1, got {self.replicas}")
        if self.gpus < 0 or self.cpus < 0:
            raise ConfigError(f"--ray-gpus and --ray-cpus are >= 0, got {self.gpus:g} and {self.cpus:g}")
        if self.max_batch < 1:
            raise ConfigError(f"the replicas' batch must be >= 1 frame, got {self.max_batch}")


@dataclass(frozen=True)
class EncoderInfo:
    """What a stream's pipeline reads of its encoder (``ImageEncoder``'s attributes)."""

    name: str
    embed_dim: int
    image_size: int
    device: str


def len_of_requests(requests: Sequence[Sequence[Any]]) -> int:
    return sum(len(request) for request in requests)


def _flatten(requests: Sequence[Sequence[_T]]) -> tuple[list[_T], list[int]]:
    flat = [item for request in requests for item in request]
    return flat, [len(request) for request in requests]


def _split(rows: Sequence[Any], sizes: Sequence[int]) -> list[list[Any]]:
    out, start = [], 0
    for size in sizes:
        out.append(list(rows[start:start + size]))
        start += size
    return out


class FrameModelsImpl:
    """The body of the deployment (Serve wraps it in ``deployment``); see the module docstring."""

    def __init__(self, choice: EngineChoice) -> None:
        from affectstream.engine.runtime import load_engine

        engine = load_engine(choice)
        self._encoder = engine.encoder
        self._detector = engine.faces.detector if engine.faces is not None else None
        self._classifier = engine.faces.classifier if engine.faces is not None else None
        self._lock = threading.Lock()  # one model call at a time: the replica's cores are its own
        self.batches: list[int] = []  # frames per model call, newest last (for tests and the bench)

    def info(self) -> EncoderInfo | None:
        encoder = self._encoder
        if encoder is None:
            return None
        return EncoderInfo(encoder.name, int(encoder.embed_dim), int(encoder.image_size), str(encoder.device))

    def batch_sizes(self) -> list[int]:
        return list(self.batches[-1000:])

    async def _run(self, requests: Sequence[Sequence[Any]], call: Callable[[list[Any]], Sequence[Any]]) -> list[list[Any]]:
        flat, sizes = _flatten(requests)

        def locked() -> Sequence[Any]:
            with self._lock:
                self.batches.append(len(flat))
                return call(flat) if flat else []

        # In a thread: while a batch runs, the next requests gather in serve.batch's queue.
        return _split(await asyncio.to_thread(locked), sizes)

    async def encode(self, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        if self._encoder is None:
            raise PipelineError("this run's models have no whole-frame encoder")
        encoder = self._encoder
        return await self._run(requests, lambda images: list(encoder.encode(images)))

    async def detect(self, requests: list[list[np.ndarray]]) -> list[list[Any]]:
        if self._detector is None:
            raise PipelineError("this run's models have no face detector")
        detector = self._detector
        return await self._run(requests, detector.detect)

    async def classify(self, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        if self._classifier is None:
            raise PipelineError("this run's models have no expression classifier")
        classifier = self._classifier
        return await self._run(requests, lambda crops: list(classifier.classify_ours(crops)))


def deploy(choice: EngineChoice, placement: ModelPlacement) -> Any:
    """Start the deployment on the connected cluster (Serve without its HTTP proxy: the streams'
    actors call it through handles); its handle."""
    serve = import_serve()
    # A request is one actor's batch: a batch's size is counted in frames (crops), not requests. An
    # actor's batch has up to --max-batch frames, each with up to CropPolicy.max_faces crops.
    def batch(most: int) -> Any:
        return serve.batch(max_batch_size=most, batch_wait_timeout_s=placement.max_wait_ms / 1000,
                           batch_size_fn=len_of_requests)

    frames, crops = placement.max_batch, placement.max_batch * CropPolicy().max_faces

    class FrameModels(FrameModelsImpl):
        # serve.batch wraps methods of the class Serve builds, so each is batched on its replica.
        encode = batch(frames)(FrameModelsImpl.encode)
        detect = batch(frames)(FrameModelsImpl.detect)
        classify = batch(crops)(FrameModelsImpl.classify)

    options: dict[str, Any] = {"num_cpus": placement.cpus}
    if placement.gpus:
        options["num_gpus"] = placement.gpus
    deployment = serve.deployment(
        FrameModels, name="FrameModels", num_replicas=placement.replicas, ray_actor_options=options,
        max_ongoing_requests=max(64, placement.max_batch * 4), health_check_period_s=2, health_check_timeout_s=10)
    serve.start(http_options={"location": "NoServer"})
    return serve.run(deployment.bind(choice), name=APP_NAME, route_prefix=None)


def shutdown() -> None:
    try:
        import_serve().delete(APP_NAME)
    except Exception:  # the cluster may be gone already: nothing to delete
        log.debug("the models' deployment could not be deleted", exc_info=True)


def call(handle: Any, method: str, items: list[Any], deadline_s: float = RETRY_S) -> list[Any]:
    """``handle.METHOD(items)``, sent again while the replicas are being replaced (a node died)."""
    if not items:
        return []
    deadline = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            return list(getattr(handle, method).remote(items).result(timeout_s=deadline_s))
        except Exception as error:  # RayActorError, ActorUnavailableError, a timeout: Serve is replacing it
            if isinstance(error, PipelineError) or time.monotonic() + delay > deadline:
                raise
            log.warning("the models' %s failed (%s); trying again in %.1f s", method, type(error).__name__, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


class RemoteEncoder:
    """An ``ImageEncoder`` whose model runs on the deployment's replicas."""

    def __init__(self, handle: Any, info: EncoderInfo) -> None:
        self._handle = handle
        self.name = f"ray:{info.name}"
        self.embed_dim = info.embed_dim
        self.image_size = info.image_size
        self.device = info.device

    @property
    def last_stage_ms(self) -> Mapping[str, float]:
        return {}  # timed as a whole by the pipeline (the remote call, queueing at the replica included)

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        rows = call(self._handle, "encode", list(images))
        return np.stack(rows) if rows else np.zeros((0, self.embed_dim), np.float32)


class RemoteDetector:
    """A ``FaceDetector`` on the deployment's replicas."""

    def __init__(self, handle: Any, name: str, device: str) -> None:
        self._handle = handle
        self.name = name
        self.device = device

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Any]]:
        return call(self._handle, "detect", list(images))


class RemoteClassifier:
    """An ``ExpressionModel`` on the deployment's replicas."""

    def __init__(self, handle: Any, labels: int) -> None:
        self._handle = handle
        self._labels = labels

    def classify_ours(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        rows = call(self._handle, "classify", list(crops))
        return np.stack(rows) if rows else np.zeros((0, self._labels), np.float32)
