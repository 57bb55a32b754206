"""Evaluation: VOC AP (``voc.py``), COCO's metrics (``coco.py``), proposal recall (``recall.py``), one run of a
detector (``run.py``) and the HTML report.

The package is also the public ``frcnn_cli.evaluate(predictor, data, …)``, ``frcnn eval --model`` from Python
(its arguments: ``run.evaluate``; why a package is callable: ``frcnn_cli.CallablePackage``). The devkit's two
constants live here, light, so that the command line shows them without loading numpy.

>>> predictor = frcnn_cli.load_predictor("run/final.pt", "cpu")  # doctest: +SKIP
>>> frcnn_cli.evaluate(predictor, "synth/test.json").voc["map"]  # doctest: +SKIP
0.944
"""

from .. import make_callable

METRICS = ("11point", "area")  # VOC2007's 11-point interpolated AP, VOC2010+'s area under the envelope
IOU_THRESH = 0.5  # PASCAL VOC's overlap criterion (a match needs IoU > this)

make_callable(__name__)
