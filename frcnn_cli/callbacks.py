"""The shapes of the callbacks the library calls, defined once.

The library never prints: it reports through these, and the command line renders them (``cli/console.py``).
Training's logging steps are ``train.loop.LoopState`` values given to an ``on_log`` callback.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
"""``progress(done, total)``: ``done`` of ``total`` items (images, files) are finished."""

StepCallback = Callable[[str, str], None]
"""``on_step(name, what)``: a named step (``rpn1``, ``props1`` …, ``eval``) is ``"start"``, ``"done"`` or
``"skip"`` (already done by an earlier run)."""

OnNote = Callable[[str], None]
"""``on_note(message)`` and ``on_warning(message)``: a sentence for the person running the command, a note of
what was decided from the data or (``on_warning``) something odd but allowed."""
