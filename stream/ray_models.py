"""`run --ray`: the models of a cluster as one Ray Serve deployment, and what a stream's actor calls.

``FrameModels`` is a Serve deployment (one replica per GPU, or per CPU node: ``ModelPlacement``). Each
replica loads the run's engine once and keeps the heavy parts only: the whole-frame encoder and the
face stage's two models. Its methods, ``encode`` and ``observe`` (``FaceModel.observe``: detect where
asked, crop, classify), are ``@serve.batch``-ed, so the frames that streams on any node send at about
the same time run in one model call; a request is one actor's batch (a list), the batch handler
concatenates the requests and splits the answer.

What stays with each stream is on its actor (stream/ray_actor.py): sampling, the detection schedule,
the temporal head and the sessions. There, ``RemoteEncoder`` (an ``ImageEncoder``) and
``RemoteFaceModel`` (a ``FaceModel`` whose ``observe`` is the replicas') stand in for the local models,
so the stream's ``Pipeline`` is the in-process one: one call per batch for the faces, one for CLIP. A
call that fails because a replica died (its node went away) is sent again, up to ``RETRY_S``, while
Serve starts a replacement.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from affectstream.engine.face_engine import DetectionSchedule, FaceModel, FaceObservation, Given
from affectstream.engine.faces import FaceBox
from affectstream.engine.runtime import EngineChoice
from affectstream.errors import ConfigError, MissingExtraError, PipelineError

log = logging.getLogger(__name__)


def app_name(host: str, port: int | None, pid: int) -> str:
    """The Serve application of one run: per host and server port, so that runs on one cluster keep
    their own models and a run started again after a kill -9 replaces the one it left (Serve
    applications outlive their driver); per process where there is no fixed port."""
    return f"affectstream-{host}-{port}" if port else f"affectstream-{host}-pid{pid}"
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


@dataclass(frozen=True)
class ModelsInfo:
    """What a replica runs: the encoder's attributes, the detector's (name, device), the face stage's info."""

    encoder: EncoderInfo | None
    detector: tuple[str, str] | None
    faces: dict[str, str] | None


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
        self._faces = engine.faces
        self._lock = threading.Lock()  # one model call at a time: the replica's cores are its own

    def info(self) -> ModelsInfo:
        """What the replica runs, as it resolved it (``auto`` device and detector on its own node)."""
        encoder, faces = self._encoder, self._faces
        return ModelsInfo(
            None if encoder is None else EncoderInfo(encoder.name, int(encoder.embed_dim), int(encoder.image_size),
                                                     str(encoder.device)),
            None if faces is None else (faces.detector.name, faces.detector.device),
            None if faces is None else dict(faces.info))

    async def _locked(self, work: Callable[[], _T]) -> _T:
        """One model call at a time, in a thread: while a batch runs, the next requests gather in
        serve.batch's queue."""

        def locked() -> _T:
            with self._lock:
                return work()

        return await asyncio.to_thread(locked)

    async def _run(self, requests: Sequence[Sequence[Any]], call: Callable[[list[Any]], Sequence[Any]]) -> list[list[Any]]:
        flat, sizes = _flatten(requests)
        return _split(await self._locked(lambda: call(flat) if flat else []), sizes)

    async def encode(self, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        if self._encoder is None:
            raise PipelineError("this run's models have no whole-frame encoder")
        encoder = self._encoder
        return await self._run(requests, lambda images: list(encoder.encode(images)))

    async def observe(self, requests: list[list[tuple[np.ndarray, Given]]]) -> list[FaceReply]:
        """``FaceModel.observe`` over the frames of every request (a request's rows of ``Given`` point
        into its own frames: they are moved to the batch's rows here)."""
        if self._faces is None:
            raise PipelineError("this run's models have no face stage")
        faces = self._faces
        images: list[np.ndarray] = []
        given: list[Given] = []
        for request in requests:
            start = len(images)
            for image, boxes in request:
                images.append(image)
                given.append(boxes + start if isinstance(boxes, int) else boxes)

        def work() -> tuple[list[Any], list[Any], dict[str, float]]:
            observed, found = faces.observe(images, given) if images else ([], [])
            return observed, found, dict(faces.last_stage_ms)

        observed, found, stage_ms = await self._locked(work)
        sizes = [len(request) for request in requests]
        return [FaceReply(tuple(o), tuple(f), stage_ms) for o, f in zip(_split(observed, sizes), _split(found, sizes))]


@dataclass(frozen=True)
class FaceReply:
    """One request's answer: per frame its observations and its boxes, and the batch's stage times."""

    observed: tuple[tuple[FaceObservation, ...], ...]
    boxes: tuple[list[FaceBox], ...]
    stage_ms: dict[str, float]


def deploy(choice: EngineChoice, placement: ModelPlacement, app: str) -> Any:
    """Start the deployment on the connected cluster (Serve without its HTTP proxy: the streams'
    actors call it through handles); its handle. A replica without a GPU reserved runs on the CPU,
    whatever its node has (Ray does not hide the GPUs from it)."""
    serve = import_serve()
    if not placement.gpus and choice.device == "auto":
        choice = replace(choice, device="cpu")
    # A request is one actor's batch (up to --max-batch frames): a batch's size is counted in frames.
    def batch(most: int) -> Any:
        return serve.batch(max_batch_size=most, batch_wait_timeout_s=placement.max_wait_ms / 1000,
                           batch_size_fn=len_of_requests)

    frames = placement.max_batch

    class FrameModels(FrameModelsImpl):
        # serve.batch wraps methods of the class Serve builds, so each is batched on its replica.
        encode = batch(frames)(FrameModelsImpl.encode)
        observe = batch(frames)(FrameModelsImpl.observe)

    options: dict[str, Any] = {"num_cpus": placement.cpus}
    if placement.gpus:
        options["num_gpus"] = placement.gpus
    deployment = serve.deployment(
        FrameModels, name="FrameModels", num_replicas=placement.replicas, ray_actor_options=options,
        max_ongoing_requests=max(64, placement.max_batch * 4), health_check_period_s=2, health_check_timeout_s=10)
    serve.start(http_options={"location": "NoServer"})
    return serve.run(deployment.bind(choice), name=app, route_prefix=None)


def shutdown(app: str) -> None:
    try:
        import_serve().delete(app)
    except Exception:  # the cluster may be gone already: nothing to delete
        log.debug("the models' deployment could not be deleted", exc_info=True)


def call(handle: Any, method: str, items: list[Any], deadline_s: float = RETRY_S, single: bool = False) -> Any:
    """``handle.METHOD(items)``, sent again while the replicas are being replaced (a node died); a list
    per item, or (``single``) the request's one answer."""
    if not items and not single:
        return []
    deadline = time.monotonic() + deadline_s
    delay = 0.2
    while True:
        try:
            answer = getattr(handle, method).remote(items).result(timeout_s=max(0.1, deadline - time.monotonic()))
            return answer if single else list(answer)
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


class RemoteFaceModel(FaceModel):
    """The face stage on a stream actor: the detection schedule, the crop policy and what the pipeline
    reads stay here; ``observe`` (the two models) runs on the deployment's replicas, in one call."""

    def __init__(self, faces: FaceModel, handle: Any, detector: tuple[str, str]) -> None:
        super().__init__(_Elsewhere(*detector), _Elsewhere(faces.expression_name, ""),
                         faces.expression_name, faces.policy, faces.thresholds,
                         DetectionSchedule(faces.schedule.min_interval_s))
        self._handle = handle

    def observe(self, images: Sequence[np.ndarray], given: Sequence[Given]
                ) -> tuple[list[tuple[FaceObservation, ...]], list[list[FaceBox]]]:
        reply = call(self._handle, "observe", list(zip(images, given)), single=True)
        self.last_stage_ms = dict(reply.stage_ms)
        return list(reply.observed), list(reply.boxes)


@dataclass
class _Elsewhere:
    """A model that runs on the replicas: its name for ``FaceModel.info``; called here, it says so."""

    name: str
    device: str

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceBox]]:
        raise PipelineError(f"{self.name} runs on the model replicas: call RemoteFaceModel.observe")

    def classify_ours(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        raise PipelineError(f"{self.name} runs on the model replicas: call RemoteFaceModel.observe")
