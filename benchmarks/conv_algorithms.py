"""VGG16's 3x3 convolutions one by one: oneDNN's direct convolution (what torchvision runs) against frcnn's
Winograd F(2x2, 3x3) and F(4x4, 3x3) (``frcnn_cli.model.winograd``), time and accuracy; with ``--bf16`` also
oneDNN's direct convolution under bf16 autocast, and per layer the faster path under bf16 (Winograd F(4x4) in
float32 or the bf16 convolution) beside the one frcnn takes on this kind of CPU (``winograd.bf16_conv_path``).

Each layer at the map size of a 600x800 input, batch 1, channels-last, random weights (He init) and
ReLU'd random inputs; median of ``--runs`` after one warm-up, in the same process. The error is the
largest absolute difference from a float64 convolution, relative to the largest float64 output.

    python benchmarks/conv_algorithms.py --threads 1 --clock cpu
    python benchmarks/conv_algorithms.py --threads 1 --clock cpu --bf16 --runs 1
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial

import torch
import torch.nn.functional as F
from harness import Stopwatch, setup_run

from frcnn_cli.devices import cpu_bf16_kind
from frcnn_cli.model.winograd import MIN_CHANNELS, bf16_conv_path, kernel_transform, winograd_conv3x3

# (name, in channels, out channels, height, width) at a 600x800 input
LAYERS = [("conv1_2", 64, 64, 600, 800), ("conv2_1", 64, 128, 300, 400), ("conv2_2", 128, 128, 300, 400),
          ("conv3_1", 128, 256, 150, 200), ("conv3_2", 256, 256, 150, 200), ("conv4_1", 256, 512, 75, 100),
          ("conv4_2", 512, 512, 75, 100), ("conv5_1", 512, 512, 38, 50)]


def timed(fn, runs: int) -> float:
    fn()
    samples = []
    for _ in range(runs):
        watch = Stopwatch(torch.device("cpu"))
        fn()
        watch.lap("t")
        samples.append(watch.laps["t"])
    return statistics.median(samples)


def relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).abs().max() / exact.abs().max())


def bf16_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return F.conv2d(x, weight, bias, padding=1)


def bf16_columns(name: str, x, weight_cl, bias, exact, direct: float, f4: float, runs: int) -> str:
    """Time, ratio and error of the bf16 convolution; the fastest of the bf16 convolution, the float32 direct one
    and (from ``MIN_CHANNELS``) Winograd F(4x4) in float32; and the path frcnn takes under bf16 on this CPU."""
    c, k = weight_cl.shape[1], weight_cl.shape[0]
    seconds = timed(partial(bf16_conv, x, weight_cl, bias), runs)
    error = relative_error(bf16_conv(x, weight_cl, bias), exact)
    eligible = min(c, k) >= MIN_CHANNELS  # the others run as autocast casts them: bf16
    paths = {"bf16": seconds, "float32": direct, **({"winograd": f4} if eligible else {})}
    faster = min(paths, key=paths.get)
    ours = bf16_conv_path(cpu_bf16_kind(), c, k) if eligible else "bf16"
    return f" {1000 * seconds:9.1f} {seconds / direct:7.2f} {error:.1e}  {faster:8s} {ours}"


@torch.inference_mode()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--bf16", action="store_true", help="also the bf16 convolution and the path under bf16")
    args = p.parse_args()
    args.device = "cpu"
    setup_run(args)
    head = (f"{'layer':8s} {'C->K':>9s} {'map':>8s} {'direct ms':>10s} {'F2 ms':>8s} {'F2/dir':>7s} {'F4 ms':>8s} "
            f"{'F4/dir':>7s}  error direct / F2 / F4 (frcnn uses F4 from {MIN_CHANNELS} channels)")
    if args.bf16:
        head += (f" {'bf16 ms':>9s} {'bf16/dir':>7s} bf16 error  faster   frcnn's path under bf16 "
                 f"(CPU kind {cpu_bf16_kind()})")
    print(head)
    for name, c, k, h, w in LAYERS:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, h, w, generator=gen).relu_().contiguous(memory_format=torch.channels_last)
        weight = torch.randn(k, c, 3, 3, generator=gen) * (2.0 / (9 * c)) ** 0.5
        bias = torch.randn(k, generator=gen) * 0.1
        weight_cl = weight.contiguous(memory_format=torch.channels_last)
        exact = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
        direct = timed(partial(F.conv2d, x, weight_cl, bias, padding=1), args.runs)
        errors = [relative_error(F.conv2d(x, weight_cl, bias, padding=1), exact)]
        times = []
        for tile in (2, 4):
            u = kernel_transform(weight, tile)
            times.append(timed(partial(winograd_conv3x3, x, u, bias, tile), args.runs))
            errors.append(relative_error(winograd_conv3x3(x, u, bias, tile), exact))
        line = (f"{name:8s} {c:>4d}->{k:<4d} {h:>3d}x{w:<4d} {1000 * direct:10.1f} {1000 * times[0]:8.1f} "
                f"{times[0] / direct:7.2f} {1000 * times[1]:8.1f} {times[1] / direct:7.2f}  "
                + " / ".join(f"{e:.1e}" for e in errors))
        if args.bf16:
            line += bf16_columns(name, x, weight_cl, bias, exact, direct, times[1], args.runs)
        print(line, flush=True)


if __name__ == "__main__":
    main()
