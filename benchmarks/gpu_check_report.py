"""The markdown of ``gpu_check.py``'s results (``results.md``): the issue's targets, then one table per step."""

from __future__ import annotations

TARGETS = {"batch1": 60.0, "batched": 500.0, "ratio": 2.0}  # issue 21: VGG16 600x1000, bf16, one H100


def _num(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def targets(results: dict) -> list[dict]:
    """The issue's three inference targets against the bf16 figures (``met`` None where no GPU ran)."""
    summary = results["steps"].get("inference", {}).get("summary", {}).get("bf16")
    if not summary:
        return []
    on_gpu = results["machine"].get("gpu") is not None and not results["quick"]
    best, batch1 = summary["best"], summary["batch1"]
    rows = [("batch 1, bf16, images/s", batch1 and batch1["frcnn_images_per_s"], TARGETS["batch1"]),
            (f"best batch ({best['batch']}), bf16, images/s", best["frcnn_images_per_s"], TARGETS["batched"]),
            (f"best batch ({best['batch']}), bf16, × torchvision", best["ratio"], TARGETS["ratio"])]
    return [{"what": what, "value": value, "target": goal, "met": (value >= goal) if on_gpu and value else None}
            for what, value, goal in rows]


def _inference(step: dict) -> list[str]:
    rows = []
    for r in step.get("rows", []):
        if "error" in r:
            rows.append([r["precision"], r["batch"], r["error"], "", "", "", ""])
            continue
        rows.append([r["precision"], r["batch"], _num(r["frcnn_images_per_s"]), _num(r["torchvision_images_per_s"]),
                     _num(r["ratio"], 2), _num(r["frcnn_peak_mb"], 0), _num(r["torchvision_peak_mb"], 0)])
    lines = _table(["precision", "batch", "frcnn images/s", "torchvision images/s", "ratio", "frcnn peak MiB",
                    "torchvision peak MiB"], rows)
    size = step.get("image_size", ["?", "?"])
    on_gpu = bool(step.get("machine", {}).get("gpu"))
    memory = ("each model's own run (`max_memory_allocated`), both models' weights resident" if on_gpu else
              "the process's peak resident set (the CPU has no per-model figure)")
    lines.append(f"Network only (forward + detections; the batch already on the device), {step.get('model')} at "
                 f"{size[1]}×{size[0]}, cudnn.benchmark {step.get('cudnn_benchmark')}; peak memory: {memory}."
                 + ("" if on_gpu else " On the CPU the bf16 rows follow frcnn's policy: bf16 where the CPU "
                    "computes it natively (AVX512-BF16, AMX), float32 elsewhere."))
    for batch, syncs in (step.get("host_syncs") or {}).items():
        if syncs:
            where = ", ".join(f"{k} ×{v}" for k, v in syncs.get("where", {}).items())
            lines.append(f"Host syncs of one `Predictor.run`, batch {batch}: {syncs['count']} ({where})."
                         if "count" in syncs else f"Host syncs at batch {batch}: {syncs['error']}")
    return lines + [""]


def _training(step: dict) -> list[str]:
    rows = [[r["what"], r["error"], "", "", "", ""] if "error" in r else
            [r["what"], _num(r["images_per_s"], 2), _num(r["ms_per_image"]), _num(r["vs_torchvision"], 2),
             _num(r["peak_mb"], 0), _num(r["above_resident_mb"], 0)] for r in step.get("rows", [])]
    lines = _table(["step", "images/s", "ms/image", "× torchvision joint", "peak MiB", "MiB above resident"], rows)
    hours = step.get("schedule_hours")
    lines.append(f"{step.get('model')} at shorter side {step.get('train_scale')}, median of {step.get('steps')} steps "
                 f"after {step.get('warmup')}; 4-step VOC07 schedule at these rates: "
                 f"{'n/a (a step has no rate)' if hours is None else _num(hours) + ' h'}.")
    return lines + [""]


def _cuda_tests(step: dict) -> list[str]:
    lines = _table(["selection", "passed", "failed", "errors", "skipped", "seconds"],
                   [[f"`{step.get('command', '')}`", step.get("passed"), step.get("failed"), step.get("errors"),
                     step.get("skipped"), _num(step.get("seconds"))]])
    lines += [f"- FAILED `{f['test']}`: {f['message']}" for f in step.get("failures", [])]
    return lines + [""]


def _distributed(step: dict) -> list[str]:
    rows = [[r["run"], r["outcome"], r["expect"] or "ok", _num(r["seconds"]), r["detail"].replace("\n", " ")]
            for r in step.get("rows", [])]
    return _table(["torchrun", "outcome", "expected", "seconds", "detail"], rows)


def _sharded(step: dict) -> list[str]:
    rows = [[r["command"], r["launcher"], r["processes"], r["status"], _num(r["seconds"]), _num(r["images_per_s"]),
             r.get("detail", "")] for r in step.get("rows", [])]
    lines = _table(["command", "launcher", "processes", "outcome", "seconds", "images/s", "detail"], rows)
    lines.append(f"Whole commands over {step.get('images')} synthetic images, start-up included: with one process "
                 "torchrun runs the single-process path, so the difference is torchrun's start-up "
                 "(benchmarks/sharded_inference.py measures the work alone).")
    return lines + [""]


def _pipeline(step: dict) -> list[str]:
    rows = [[r["workers"], r["error"], ""] if "error" in r else
            [r["workers"], _num(r["first_pass_images_per_s"]), _num(r["images_per_s"])] for r in step.get("rows", [])]
    lines = _table(["loader workers", "first pass images/s", "second pass images/s"], rows)
    lines.append(f"`predict_manifest` (what `frcnn eval` runs) over {step.get('images')} synthetic JPEGs of about "
                 f"{step.get('image_size')} (varying sizes), batch {step.get('batch_size')}; the network alone on "
                 f"the same batches: {_num(step.get('network_images_per_s'))} images/s.")
    return lines + [""]


def _autotune(on: dict, off: dict) -> list[str]:
    rows = [[name, _num(s.get("shapes")), _num(s.get("first_pass_s"), 2), _num(s.get("second_pass_s"), 2)]
            for name, s in (("on", on), ("off", off)) if s]
    lines = _table(["cudnn.benchmark", "new input shapes", "first pass s", "second pass s"], rows)
    lines.append("One image per shape through `Predictor.run`, twice over (what eval pays on a set of varying sizes).")
    return lines + [""]


def _onnx(step: dict) -> list[str]:
    lines = [f"onnxruntime {step.get('onnxruntime')}, providers: {', '.join(step.get('providers') or []) or 'none'}."]
    if step.get("bench"):
        b = step["bench"]
        lines.append(f"ONNX Runtime {_num(b['onnxruntime']['images_per_s'])} images/s, torch "
                     f"{_num(b['torch']['images_per_s'])} images/s (ratio {_num(step.get('ratio'), 2)}).")
    return lines + [""]


SECTIONS = (("cuda_tests", "1. CUDA tests", _cuda_tests), ("inference", "2. Inference against torchvision", _inference),
            ("training", "3. Training", _training), ("distributed", "4. Distributed (torchrun)", _distributed),
            ("onnx", "5. ONNX Runtime", _onnx), ("pipeline", "6. Data pipeline (eval's loop)", _pipeline))


def render(results: dict) -> str:
    """``results.md`` of ``results`` (``results.json``'s content)."""
    m, steps = results["machine"], results["steps"]
    device = m.get("gpu") or f"CPU: {m.get('cpu')}"
    lines = [f"# GPU check: {device}", ""]
    if results["quick"]:
        lines += ["**Quick mode** (tiny preset at 96 px, a few runs): a smoke test of the script; the figures are "
                  "not the GPU's.", ""]
    lines += [f"torch {m.get('torch')}, torchvision {m.get('torchvision')}, CUDA {m.get('cuda')}, cuDNN "
              f"{m.get('cudnn')}; {m.get('logical_cpus')} logical CPUs ({m.get('cpu')}); {results['started']}; "
              f"{_num(results['seconds'])} s in all.", ""]
    goals = targets(results)
    if goals:
        lines += ["## Targets (issue 21)", ""]
        lines += _table(["what", "value", "target", "met"],
                        [[g["what"], _num(g["value"], 2), f"≥ {g['target']:g}",
                          "n/a (no GPU)" if g["met"] is None else ("yes" if g["met"] else "**no**")] for g in goals])
    lines += ["## Steps", ""]
    lines += _table(["step", "status", "seconds", "note"],
                    [[name, s["status"], _num(s.get("seconds")), (s.get("reason") or "").replace("\n", " ")[:200]]
                     for name, s in steps.items()])
    for key, title, section in SECTIONS:
        if key in steps and steps[key]["status"] in ("ok", "failed"):
            lines += [f"## {title}", "", *section(steps[key])]
        elif key in steps:
            lines += [f"## {title}", "", f"{steps[key]['status']}: {steps[key].get('reason', '')}", ""]
            if key == "onnx":
                lines += _onnx(steps[key])
    on, off = steps.get("autotune_on", {}), steps.get("autotune_off", {})
    if on or off:
        lines += ["## 7. cuDNN autotuning over image sizes", "", *_autotune(on, off)]
    if "sharded" in steps:
        step = steps["sharded"]
        body = _sharded(step) if step["status"] in ("ok", "failed") else [f"{step['status']}: {step.get('reason', '')}"]
        lines += ["## 8. Inference under torchrun (dump-proposals, eval)", "", *body]
    return "\n".join(lines).rstrip() + "\n"
