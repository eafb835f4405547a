"""YOLOv8 itself: loading weights safely, training, predicting, and the batched engine.

- ``load``: ``load_model`` (``yolov8n.yaml`` by default, never a download; pickles refused unless trusted),
  ``detection_model`` and ``model_stride``.
- ``train``, ``predict``: the two Ultralytics routes, kept offline and atomic.
- ``engine`` (+ ``backends``, ``detections``): folder prediction with decode-ahead threads and ONNX Runtime.
"""
