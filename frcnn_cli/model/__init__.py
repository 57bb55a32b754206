"""The model package, ordered like the data flow: backbones → anchors → rpn → roi_head → postprocess."""
