"""Input files a new user's tools write, read by every reader that shares their format: JSON nested past
Python's limit, Windows separators, a state file edited by hand. Each is read, or refused by one ``Error:``
line naming the file; never a traceback.

(The second probe of issue 31: variants of its items on the other readers that share their code.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from frcnn_cli.cli.main import cli


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


DEEP = "[" * 100_000 + "]" * 100_000  # json.loads: RecursionError, not a JSONDecodeError


@pytest.mark.parametrize("reader", ["manifest", "coco", "proposals"])
def test_json_nested_past_pythons_limit_is_a_clean_error(reader, tmp_path, synth_set, assert_clean_error):
    """A RecursionError traceback from `prepare coco` (and the other JSON readers) on a file of nested arrays."""
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP, encoding="utf-8")
    args = {"manifest": ["prepare", "merge", deep, synth_set[1], "--out", tmp_path / "m.json"],
            "coco": ["prepare", "coco", "--annotations", deep, "--images", tmp_path, "--out", tmp_path / "m.json"],
            "proposals": ["prepare", "proposals", "--from", deep, "--data", synth_set[1], "--out",
                          tmp_path / "p.h5"]}[reader]
    assert_clean_error(_run(*args), str(deep), "nests its JSON too deeply")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.json"]


@pytest.mark.parametrize(("state", "needle"), [
    ('{"format": "frcnn-run", "version": "1"}', '"version" is missing or not a version number'),
    ('{"format": "frcnn-run", "version": 1, "done": ["rpn1"]}', '"manifest_hash" is missing'),
    ('{"format": "frcnn-run", "version": 1, "manifest_hash": "x", "config": {}, "done": "rpn1"}',
     '"done" is missing or not a list'),
    ('{"format": "frcnn-run", "version": 1, "manifest_hash": "x", "config": {}, "done": ["rpn3"]}',
     '"done" names a step other than'),
])
def test_a_run_state_edited_by_hand_is_a_clean_error(state, needle, tmp_path, synth_set, train_options,
                                                      monkeypatch, assert_clean_error):
    """A string version was `TypeError: '>' not supported`, a state without its hash `KeyError: 'manifest_hash'`:
    tracebacks, for a file users edit to redo a step."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "state.json").write_text(state, encoding="utf-8")
    monkeypatch.setattr("frcnn_cli.train.pipeline._run_step", lambda *a, **k: pytest.fail("a step ran"))
    result = _run("train", "--data", synth_set[0], "--workdir", run, *train_options(), "--iters", "1")
    assert_clean_error(result, f"{run / 'state.json'}: {needle}", "delete it to start the run afresh")
    assert (run / "state.json").read_text(encoding="utf-8") == state


@pytest.fixture()
def alarm():
    """A test that would wait for ever fails after 30 s instead."""
    import signal

    def expired(*_args):
        raise TimeoutError("waited for ever")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_named_like_a_photo_is_an_unreadable_image_not_a_hang(tmp_path, synth_set, tiny_checkpoint, alarm):
    """`detect photos/` with a FIFO `x.jpg` among the photos waited for ever for a writer; given by name, it was
    "x.jpg does not exist"."""
    import os
    import shutil

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(Path(synth_set[1]).parent / "JPEGImages" / "000000.jpg", photos / "a.jpg")
    os.mkfifo(photos / "x.jpg")
    result = _run("detect", photos, "--model", tiny_checkpoint(), "--out", tmp_path / "drawn", "--set",
                  "runtime.num_workers=0", "--device", "cpu")
    assert result.exit_code == 1, result.output
    assert f"image {photos / 'x.jpg'} is a named pipe (FIFO), not an image file" in result.output
    assert (tmp_path / "drawn" / "a.jpg").is_file()
    result = _run("detect", photos / "x.jpg", "--model", tiny_checkpoint(), "--set", "runtime.num_workers=0")
    assert "does not exist" not in result.output and "is a named pipe (FIFO)" in result.output


def test_a_bad_csv_row_is_named_by_its_line_in_the_file(tmp_path):
    """Blank lines were not counted: the bad row on line 5 was called "row 3"."""
    from frcnn_cli.data.proposal_files import read_proposal_file
    from frcnn_cli.errors import DataError

    path = tmp_path / "p.csv"
    path.write_text("image_id,x1,y1,x2,y2\n\n000000,1,1,5,5\n\n000001,1,1,5\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.csv, line 5: expected"):
        read_proposal_file(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
@pytest.mark.parametrize("reader", ["class file", "split file", "manifest", "coco", "proposals json", "proposals csv",
                                    "toml"])
def test_text_files_written_as_utf16_with_a_byte_order_mark_are_read(reader, encoding, tmp_path, synth_set):
    """Windows PowerShell 5's `>` writes UTF-16 with a byte-order mark: `Get-ChildItem -Name > classes.txt` was
    "cannot read the class file … 'utf-8' codec can't decode byte 0xff in position 0"."""
    from coco_data import write_coco_set

    from frcnn_cli.config_io import load_config_file
    from frcnn_cli.data.coco import prepare_coco
    from frcnn_cli.data.folder import prepare_folder
    from frcnn_cli.data.manifest import read_manifest
    from frcnn_cli.data.name_lists import read_class_file
    from frcnn_cli.data.proposal_files import read_proposal_file

    def recode(path: Path) -> Path:
        text = path.read_text(encoding="utf-8")
        path.write_bytes(("\ufeff" + text).encode(encoding))  # "utf-16"/"utf-32" write their own mark
        if encoding in ("utf-16", "utf-32"):
            path.write_bytes(text.encode(encoding))
        return path

    voc = Path(synth_set[1]).parent
    if reader == "class file":
        assert read_class_file(recode(_write(tmp_path / "c.txt", "car\r\nbottle\r\n"))) == ["car", "bottle"]
    elif reader == "split file":
        split = recode(_write(tmp_path / "s.txt", "000001\n000002\n"))
        manifest = prepare_folder(voc / "JPEGImages", voc / "Annotations", split_file=split, name="s")
        assert sorted(rec.id for rec in manifest.images) == ["000001", "000002"]
    elif reader == "manifest":
        copy = recode(_write(tmp_path / "m.json", Path(synth_set[1]).read_text(encoding="utf-8")))
        assert read_manifest(copy).images == read_manifest(synth_set[1]).images
    elif reader == "coco":
        ann, images = write_coco_set(tmp_path / "coco")
        assert len(prepare_coco(recode(ann), images).images) == 4
    elif reader.startswith("proposals"):
        text = '{"a": [[1, 2, 3, 4]]}' if reader.endswith("json") else "a,1,2,3,4\n"
        found = read_proposal_file(recode(_write(tmp_path / f"p.{reader[-4:].strip()}", text)))
        assert found.boxes["a"].tolist() == [[1, 2, 3, 4]]
    else:
        cfg, _ = load_config_file(recode(_write(tmp_path / "c.toml", 'preset = "tiny"\n[rpn]\nnms_thresh = 0.6\n')))
        assert cfg.rpn.nms_thresh == 0.6


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
