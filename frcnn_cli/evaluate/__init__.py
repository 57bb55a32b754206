"""Evaluation: VOC AP (``voc.py``), COCO's metrics (``coco.py``), proposal recall (``recall.py``), one run of a
detector (``run.py``) and the HTML report.

The devkit's two constants live here, light, so that the command line shows them without loading numpy.
"""

METRICS = ("11point", "area")  # VOC2007's 11-point interpolated AP, VOC2010+'s area under the envelope
IOU_THRESH = 0.5  # PASCAL VOC's overlap criterion (a match needs IoU > this)
