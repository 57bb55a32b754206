"""How big the synthetic set (``data/synthetic.py``) is by default: the demo's and ``frcnn prepare synth``'s.

Apart from the drawing code so that the command line shows these defaults in ``--help`` without loading
numpy and PIL.
"""

DEFAULT_TRAIN = 200  # images in the trainval split
DEFAULT_TEST = 60
DEFAULT_SEED = 0
