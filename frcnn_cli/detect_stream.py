"""``frcnn detect`` on any number of images, one process or many (``torchrun``): found lazily, run chunk by
chunk, results appended, resumable with ``--out``.

Rank 0 finds the images (``data.discovery.ImageSource``: one directory read at a time) and plans each chunk of
about ``per_rank`` images a rank: it skips the images whose entries a killed run left (``detect_results``),
batches the others as one process would, and cuts the batches into consecutive shares balanced by file size
(``sharding.split_chunk``). Each rank detects its share (``detect.detect_images``: the one detection loop),
draws its images itself, and sends its entries (JSON lines) to rank 0 in the exchange that ends the chunk,
whose answer carries the next chunk's plan. Rank 0 then writes the chunk's entries in order
(``ResultsLog.append``) and hands each to ``on_result`` while the ranks run the next chunk. Memory stays flat:
no list of every image, no result kept after it is written. Shapes: N ranks.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .callbacks import OnNote, Progress
from .data.discovery import FoundImage, ImageSource
from .detect import OutputNames, detect_images, draw_detections
from .detect_results import ResultsLog
from .errors import DataError
from .inference import Predictor
from .sharding import RankGroup, batches_of, capture, split_chunk

CHUNK_IMAGES = 1024  # images a rank detects between two exchanges


@dataclass
class DetectSummary:
    """What a detect run did (rank 0): ``images`` entries written, of which ``unreadable`` could not be read (the
    first one's message in ``first_error``)."""

    images: int = 0
    unreadable: int = 0
    first_error: str | None = None


@dataclass
class _Chunk:
    """Rank 0's record of a planned chunk: its images in order, each with the entry a killed run left or None."""

    found: list[FoundImage]
    kept: list[str | None]
    shares: list = field(default_factory=list)  # per rank: batches of (position, path, drawing or None)


class ChunkPlanner:
    """Rank 0: the chunks of ``source``, each ``size`` images (a multiple of the batch size), with the entries of
    ``previous`` (a killed run's, in key order) taken up and the rest shared among ``world`` ranks."""

    def __init__(self, source: ImageSource, previous: Iterator[tuple[tuple, str]], out_dir: Path | None, *,
                 world: int, batch_size: int, per_rank: int) -> None:
        self._images, self._previous = iter(source), previous
        self._next_old = next(self._previous, None)
        self._roots = _output_roots(source.roots)
        self._names = OutputNames(out_dir, walk_order=True) if out_dir is not None else None
        self.world, self.batch_size = world, batch_size
        self.size = max(1, per_rank // batch_size) * batch_size * world
        self.planned: deque[_Chunk] = deque()

    def next_shares(self) -> list | None:
        """The next chunk's shares (``shares[r]``: rank r's batches), or None when every image is planned."""
        found = [image for _, image in zip(range(self.size), self._images)]
        if not found:
            return None
        chunk = _Chunk(found, [self._taken_up(image.key) for image in found])
        todo = [(i, str(image.path), self._drawing(image)) for i, image in enumerate(found) if chunk.kept[i] is None]
        batches = batches_of(todo, self.batch_size)
        costs = [sum(_file_size(path) for _, path, _ in batch) for batch in batches]
        chunk.shares = split_chunk(batches, costs, self.world)
        self.planned.append(chunk)
        return chunk.shares

    def _taken_up(self, key: tuple) -> str | None:
        """The entry the killed run left for ``key`` (entries of images no longer found are passed over)."""
        while self._next_old is not None and self._next_old[0] < key:
            self._next_old = next(self._previous, None)
        if self._next_old is not None and self._next_old[0] == key:
            return self._next_old[1]
        return None

    def _drawing(self, image: FoundImage) -> str | None:
        """Where ``image`` is drawn (``OutputNames`` in walk order; a file named on the command line is pinned)."""
        if self._names is None:
            return None
        rel = self._roots[image.key[0]].joinpath(*image.key[1:])
        return str(self._names(rel, pin=len(image.key) == 1))


def _output_roots(roots: Sequence[Path]) -> list[Path]:
    """Each argument's path relative to the arguments' deepest common folder (a file's: to its folder's)."""
    folders = [r if r.is_dir() else r.parent for r in roots]
    common = Path(os.path.commonpath([str(f) for f in folders]))
    return [r.relative_to(common) for r in roots]


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def detect_share(predictor: Predictor, share: list, *, batch_size: int, score_thresh: float,
                 classes_filter: Sequence[str] | None, progress: Progress | None = None) -> list[tuple[int, str]]:
    """One rank's share of a chunk: its images detected (``detect_images``), drawn where a drawing is asked for
    (not the unreadable ones), as ``(position, entry as a JSON line)``."""
    tasks = [task for batch in share for task in batch]
    if not tasks:
        return []
    results = detect_images(predictor, [path for _, path, _ in tasks], batch_size=batch_size,
                            score_thresh=score_thresh, classes_filter=classes_filter, progress=progress)
    for (_, _, drawing), result in zip(tasks, results):
        if drawing is not None and "error" not in result:
            draw_detections(result["image"], result["detections"], drawing, classes=predictor.classes)
    return [(pos, json.dumps(r, ensure_ascii=False, allow_nan=False)) for (pos, _, _), r in zip(tasks, results)]


def stream_detections(predictor: Predictor, source: ImageSource | None, group: RankGroup, *,
                      out_dir: Path | None = None, digest: str = "", batch_size: int = 1, score_thresh: float = 0.5,
                      classes_filter: Sequence[str] | None = None, per_rank: int | None = None,
                      on_result: Callable[[dict], None] | None = None, progress: Progress | None = None,
                      on_note: OnNote | None = None) -> DetectSummary | None:
    """Detect every image of ``source`` (given on rank 0; None elsewhere) with the ranks of ``group`` (module
    docstring); with ``out_dir`` the drawings and ``out_dir/detections.json`` (resumable: ``digest`` says what
    the results depend on, ``detect_results.detect_digest``). ``on_result(entry)`` gets each image's entry on rank
    0, in order. Returns rank 0's ``DetectSummary``; None on the others."""
    per_rank = CHUNK_IMAGES if per_rank is None else per_rank
    log = planner = None
    if group.is_main:
        log = ResultsLog(out_dir, digest, on_note=on_note) if out_dir is not None else None
        planner = ChunkPlanner(source, log.previous() if log else iter(()), out_dir, world=group.world,
                               batch_size=batch_size, per_rank=per_rank)
    writer = _Writer(planner, log, on_result, progress)
    try:
        shares = group.from_main(planner.next_shares if planner else None)
        while shares is not None:
            def step(shares=shares) -> list:
                writer.write_planned()
                tick = writer.ticker(group) if group.is_main else None
                return detect_share(predictor, shares[group.rank], batch_size=batch_size, score_thresh=score_thresh,
                                    classes_filter=classes_filter, progress=tick)

            values, shares = group.gather(capture(step), reply=lambda values: writer.received(values))
        group.gather(capture(writer.finish))
    finally:
        if log is not None:
            log.close()
    return writer.summary if group.is_main else None


class _Writer:
    """Rank 0's side of the stream: the entries of each chunk in order, into the results file and ``on_result``."""

    def __init__(self, planner: ChunkPlanner | None, log: ResultsLog | None, on_result, progress) -> None:
        self.planner, self.log, self.on_result, self.progress = planner, log, on_result, progress
        self.summary = DetectSummary()
        self._received: deque[list] = deque()

    def received(self, values: list) -> list | None:
        """The ranks' entries of the oldest chunk in flight are in; plan the next one (the exchange's answer)."""
        self._received.append([entry for part in values for entry in part])
        return self.planner.next_shares()

    def write_planned(self) -> None:
        """Write the chunk whose entries came in at the last exchange (rank 0; nothing elsewhere)."""
        if not self._received:
            return
        chunk, new = self.planner.planned.popleft(), dict(self._received.popleft())
        rows = [(image.key, kept if kept is not None else new[i])
                for i, (image, kept) in enumerate(zip(chunk.found, chunk.kept))]
        if self.log is not None:
            self.log.append(rows)
        for _, line in rows:
            entry = json.loads(line)
            self.summary.images += 1
            if "error" in entry:
                self.summary.unreadable += 1
                self.summary.first_error = self.summary.first_error or entry["error"]
            if self.on_result is not None:
                self.on_result(entry)
        if self.progress is not None:
            self.progress(self.summary.images, self._found())

    def ticker(self, group: RankGroup) -> Progress | None:
        """Rank 0's progress within a chunk, estimated from its own pace."""
        if self.progress is None or not self.planner.planned:
            return None
        start, size = self.summary.images, len(self.planner.planned[-1].found)
        return lambda done, total: self.progress(start + min(done * group.world, size - 1), self._found())

    def finish(self) -> None:
        self.write_planned()
        if self.log is not None:
            self.log.finish()

    def _found(self) -> int:
        return self.summary.images + sum(len(c.found) for c in self.planner.planned)


def check_roots_apart(roots: Sequence[Path], out_dir: Path) -> None:
    """A ``DataError`` when the drawn copies of an argument's images would replace the images themselves
    (``--out`` the images' own folder): the drawing of ``root/x`` is ``out_dir/<root relative to the arguments'
    common folder>/x``, so they collide exactly when that folder is ``root`` (a file: its folder)."""
    for root, rel in zip(roots, _output_roots(roots)):
        target = (out_dir / rel).resolve()
        if target == root.resolve():
            raise DataError(f"--out {out_dir} would replace the images of {root} by their drawn copies; give --out "
                            "a folder of its own, not the images' folder")
