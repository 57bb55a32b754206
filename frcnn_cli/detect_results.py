"""``detect --out DIR``'s results file while it grows, and how the next run takes up what a killed one wrote.

``DIR/detections.json.partial`` holds a header line, ``{"format": "frcnn-detect-partial", "version": 1,
"digest": …}`` (``detect_digest``: the model, the settings and the inputs), then one line per image in the order
the images are found, ``KEY<TAB>ENTRY``: the image's key (``data.discovery``) as JSON and its entry of
``detections.json``. Rank 0 appends a chunk's lines at a time and flushes them to disk, so a kill loses the
chunks in flight only; ``finish`` writes ``detections.json`` from it (atomically, line by line: the same bytes
as ``detect.detections_json``) and removes it.

Taking up (``ResultsLog``): a ``.partial`` of the same digest becomes ``detections.json.previous``, which the new
run reads in step with the images it finds (``previous``: lines in key order), keeping the entries of images
still there and running only the others; a file of another digest is discarded with a note. If a run that took
one up is killed too, its ``.partial`` and the older ``.previous`` are joined first.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from .atomic import atomic_path, fsync_dir
from .callbacks import OnNote
from .config_io import config_to_dict
from .errors import FrcnnError

FORMAT, VERSION = "frcnn-detect-partial", 1
DETECTIONS_FILE = "detections.json"
_log = logging.getLogger(__name__)


def detect_digest(model_hash: str, settings, *, inputs: Sequence[str], score_thresh: float,
                  classes: Sequence[str] | None, batch_size: int) -> str:
    """What a detect run's results depend on: the model file's hash, the predictor's ``settings``, the inputs as
    given, the threshold, the class filter and the batch size (images of a batch are padded together)."""
    record = {"model": model_hash, "config": config_to_dict(settings.config), "detections": repr(settings.detections),
              "ablation": repr(settings.ablation), "inputs": [str(p) for p in inputs], "score_thresh": score_thresh,
              "classes": list(classes) if classes is not None else None, "batch_size": batch_size}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode("utf-8")).hexdigest()


def _rows(path: Path) -> Iterator[tuple[tuple, str]]:
    """``(key, entry)`` of each whole line of a results file after its header (a line cut by a kill ends it)."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 (a generator holds it)
    except FileNotFoundError:
        return
    with f:
        f.readline()
        for line in f:
            key, tab, entry = line.rstrip("\n").partition("\t")
            if not line.endswith("\n") or not tab:
                return
            try:
                yield tuple(json.loads(key)), entry
            except ValueError:
                return


class ResultsLog:
    """The results file of ``detect --out out_dir`` being written (module docstring); rank 0 only."""

    def __init__(self, out_dir: Path, digest: str, *, on_note: OnNote | None = None) -> None:
        self.path = Path(out_dir) / DETECTIONS_FILE
        self.partial = self.path.with_name(DETECTIONS_FILE + ".partial")
        self.previous_path = self.path.with_name(DETECTIONS_FILE + ".previous")
        self.digest, self._note = digest, on_note or _log.warning
        self._take_up()
        self._file = self._open(self.partial)
        self.appended = 0  # lines written by this run

    def _header(self) -> str:
        return json.dumps({"format": FORMAT, "version": VERSION, "digest": self.digest}) + "\n"

    def _open(self, path: Path):
        try:
            f = open(path, "w", encoding="utf-8")  # noqa: SIM115 (closed by finish or close)
            f.write(self._header())
            f.flush()
            return f
        except OSError as exc:
            raise FrcnnError(f"cannot write {path}: {exc.strerror or exc}; free some space or choose another "
                             "--out") from exc

    def _matches(self, path: Path) -> bool:
        try:
            with open(path, encoding="utf-8") as f:
                return f.readline() == self._header()
        except (OSError, UnicodeDecodeError):
            return False

    def _take_up(self) -> None:
        for path in (self.partial, self.previous_path):
            if path.exists() and not self._matches(path):
                self._note(f"discarding the unfinished results {path}: they were made with another model, settings "
                           "or inputs; running every image again")
                path.unlink()
        try:
            if self.partial.exists() and self.previous_path.exists():
                self._join()
            elif self.partial.exists():
                os.replace(self.partial, self.previous_path)
        except OSError as exc:
            raise FrcnnError(f"cannot take up the results in {self.partial}: {exc.strerror or exc}; free some "
                             "space or choose another --out") from exc

    def _join(self) -> None:
        """A taken-up run killed too: its ``.partial``, then the older ``.previous``'s lines after its last."""
        joined = self.previous_path.with_name(DETECTIONS_FILE + ".joined")
        with open(joined, "w", encoding="utf-8") as f:
            f.write(self._header())
            last = None
            for key, entry in _rows(self.partial):
                f.write(f"{json.dumps(list(key), ensure_ascii=False)}\t{entry}\n")
                last = key
            for key, entry in _rows(self.previous_path):
                if last is None or key > last:
                    f.write(f"{json.dumps(list(key), ensure_ascii=False)}\t{entry}\n")
        os.replace(joined, self.previous_path)
        self.partial.unlink()

    def previous(self) -> Iterator[tuple[tuple, str]]:
        """What the killed run wrote, ``(key, entry)`` in key order (nothing when there was none)."""
        return _rows(self.previous_path)

    def append(self, rows: Sequence[tuple[tuple, str]]) -> None:
        """Add ``(key, entry)`` lines (in key order, after those written) and put them on disk."""
        try:
            self._file.write("".join(f"{json.dumps(list(k), ensure_ascii=False)}\t{e}\n" for k, e in rows))
            self._file.flush()
            os.fsync(self._file.fileno())
            self.appended += len(rows)
        except OSError as exc:
            raise FrcnnError(f"cannot write {self.partial}: {exc.strerror or exc}; free some space or choose "
                             "another --out, then rerun the same command: the images done so far are kept") from exc

    def finish(self) -> Path:
        """``detections.json`` from the lines written (atomically), then the working files removed."""
        self._file.close()
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            n = 0
            for _, entry in _rows(self.partial):
                out.write(("[\n" if n == 0 else ",\n") + entry)
                n += 1
            out.write("\n]\n" if n else "[]\n")
        self.partial.unlink()
        self.previous_path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
        return self.path

    def close(self) -> None:
        """Stop writing (after a failure): the lines written stay for the next run; a file this run wrote no
        line to is removed (a ``.previous`` it took up stays)."""
        if not self._file.closed:
            self._file.close()
            if not self.appended:
                self.partial.unlink(missing_ok=True)
