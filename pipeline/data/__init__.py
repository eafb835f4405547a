"""Datasets and the model's input: everything before the network sees a tensor.

- ``synth``: the embedded synthetic damage generator. ``labels``: data.yaml and the one YOLO label parser.
- ``check``, ``duplicates``, ``outliers``: what is wrong or unusual in a dataset. ``coco``: CarDD's COCO
  JSON to YOLO. ``dataset_view``: the links-only view that training reads.
- ``preprocess``: the exact tensor Ultralytics' predictor builds from a photo (letterbox, RGB, x/255).
"""
