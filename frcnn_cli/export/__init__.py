"""Deployment: a detector checkpoint as one ONNX or TorchScript graph, and exported files run behind the
``Predictor`` interface (docs/deploying.md).

- ``graph.py``: ``DeployedDetector``, the traceable whole detector (image in, detections out), and its
  single-image equivalents of the library's input pipeline, proposal layer and post-processing;
- ``writer.py``: ``export_model`` (trace, write to a temporary file, check against the checkpoint, rename);
- ``verify.py``: the check images and the comparison of detections;
- ``metadata.py``: ``ExportMetadata``, what a file says about itself (classes, config, settings, hash);
- ``runtime.py``: ``exported_format``, ``OnnxRunner`` (ONNX Runtime), ``TorchScriptRunner``;
- ``batches.py``: decoded-image batches (the graph resizes by itself);
- ``predictor.py``: ``ExportedPredictor`` and ``load_exported``, which ``inference.load_predictor`` uses.
"""
