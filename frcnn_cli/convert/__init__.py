"""Models from other frameworks into frcnn's files: ``caffe`` (py-faster-rcnn's and ImageNet Caffe models)."""
