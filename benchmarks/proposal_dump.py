"""Proposal dump throughput (images/s) and bytes per stored proposal: frcnn against torchvision + pickle.

frcnn: ``frcnn_cli.inference.dump_proposals`` over a manifest of synthetic JPEGs (``make_synthetic_set``,
500x375), VGG16 random weights saved as a checkpoint, the paper's dump settings (no pre-NMS cap, NMS
0.7, top 2000), written to the HDF5 store (boxes float32 R x 4 and scores float32 R per image, resumable).
Peer: what one would write with torchvision: decode each JPEG (``torchvision.io.decode_image``), its
``FasterRCNN`` (``torchvision_peer.py``) transform + backbone + RPN with all anchors before NMS and 2000
after, boxes mapped back to original pixels, and a pickle of per-image float32 boxes and scores (as
py-faster-rcnn's ``rpn_generate.py`` pickles its proposals). Both read the same files; frcnn's time
includes its HDF5 writes, the peer's its pickle. Each first runs one untimed image (kernel selection,
first allocations), then all of them, wall clock.

    python benchmarks/proposal_dump.py --quick      # 8 images, shorter side 256
    python benchmarks/proposal_dump.py --images 50
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torchvision
from harness import ratio_line, setup_run
from torchvision_peer import build_torchvision_vgg16

from frcnn_cli.config import Config, get_preset
from frcnn_cli.data.manifest import read_manifest
from frcnn_cli.data.proposal_store import ProposalStore, bytes_per_proposal
from frcnn_cli.data.synthetic import make_synthetic_set
from frcnn_cli.devices import autocast
from frcnn_cli.inference import InferenceSettings, Predictor, dump_proposals
from frcnn_cli.model.checkpoint import save_checkpoint
from frcnn_cli.model.detector import FasterRCNN


def dump_config(quick: bool) -> Config:
    cfg = get_preset("vgg16")
    scale, max_size = (256, 448) if quick else (600, 1000)
    return replace(cfg, input=replace(cfg.input, test_scale=scale, max_size=max_size))


def run_frcnn(cfg: Config, manifest_path: Path, work: Path, device: torch.device, batch_size: int):
    manifest = read_manifest(manifest_path)
    torch.manual_seed(0)
    model = FasterRCNN(cfg, manifest.classes)
    ckpt = work / "model.pt"
    save_checkpoint(ckpt, model, stage="benchmark", provenance={})
    predictor = Predictor(model, device, InferenceSettings.from_config(cfg, mode="dump"))  # as frcnn dump-proposals
    warmup = replace(manifest, images=manifest.images[:1])  # untimed: kernel selection, first allocations
    dump_proposals(predictor, warmup, work / "warmup.h5", checkpoint_path=ckpt)
    out = work / "proposals.h5"
    start = time.perf_counter()
    dump_proposals(predictor, manifest, out, checkpoint_path=ckpt, batch_size=batch_size)
    seconds = time.perf_counter() - start
    with ProposalStore(out) as store:
        count = store.num_proposals()  # shapes only: the benchmark must not time a full read
    return len(manifest.images) / seconds, bytes_per_proposal(out), count


@torch.inference_mode()
def _torchvision_proposals(model, path: Path, device: torch.device):
    image = torchvision.io.decode_image(str(path), mode=torchvision.io.ImageReadMode.RGB)
    floats = [image.to(device).float().div_(255.0)]
    with autocast(device):  # frcnn's policy, as its own runs
        images, _ = model.transform(floats)
        features = {"0": model.backbone(images.tensors)}
        boxes = model.rpn(images, features)[0][0]
    # torchvision's RPN does not return the scores it ranked by; py-faster-rcnn pickles boxes only,
    # a float32 score per box is stored here as well so that both files hold the same information
    (h, w), (oh, ow) = images.image_sizes[0], image.shape[-2:]
    scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=boxes.device)
    boxes = (boxes.float() * scale).cpu().numpy()
    return boxes, torch.linspace(1.0, 0.0, boxes.shape[0]).numpy().astype("float32")


def run_torchvision(cfg: Config, manifest_path: Path, work: Path, device: torch.device):
    manifest = read_manifest(manifest_path)
    torch.manual_seed(0)
    model = build_torchvision_vgg16(min_size=cfg.input.test_scale, max_size=cfg.input.max_size,
                                    pre_nms_test=10**9, post_nms_test=2000).eval().to(device)
    out = work / "proposals.pkl"
    _torchvision_proposals(model, manifest.image_path(manifest.images[0]), device)  # untimed warm-up
    start = time.perf_counter()
    stored = [_torchvision_proposals(model, manifest.image_path(rec), device) for rec in manifest.images]
    with open(out, "wb") as f:
        pickle.dump(stored, f, pickle.HIGHEST_PROTOCOL)
    seconds = time.perf_counter() - start
    count = sum(b.shape[0] for b, _ in stored)
    return len(manifest.images) / seconds, os.path.getsize(out) / max(count, 1), count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="8 images, shorter side 256")
    p.add_argument("--images", type=int, default=None, help="number of images (default 20, quick 8)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    args.clock = "wall"
    device = setup_run(args)
    cfg = dump_config(args.quick)
    count = args.images or (8 if args.quick else 20)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest_path, _ = make_synthetic_set(work / "set", n_train=count, n_test=0, image_size=(500, 375))
        ours = run_frcnn(cfg, manifest_path, work, device, args.batch_size)
        peer = run_torchvision(cfg, manifest_path, work, device)
    print(f"{count} images 500x375 -> shorter side {cfg.input.test_scale}, VGG16, top 2000 after NMS 0.7; "
          f"proposals stored: frcnn {ours[2]}, torchvision {peer[2]}")
    print(ratio_line("dump throughput", ours[0], peer[0], "img/s", peer_name="torchvision+pickle"))
    print(ratio_line("bytes per proposal", ours[1], peer[1], "B", peer_name="torchvision+pickle"))


if __name__ == "__main__":
    main()
