"""Training: one stage (``stage.py``, around the one loop of ``loop.py``), the paper's four steps as one
resumable run (``pipeline.py``), their schedule, validation and the data they decide from.

The package is also the public ``frcnn_cli.train(data, workdir, …)``, ``frcnn train`` from Python (its
arguments: ``api.train``; why a package is callable: ``frcnn_cli.CallablePackage``).

>>> final = frcnn_cli.train("synth/trainval.json", "run", config="tiny", device="cpu",
...                         progress=lambda s: print(s.iteration, s.total, s.losses))  # doctest: +SKIP
"""

from .. import make_callable

make_callable(__name__)
