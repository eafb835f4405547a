"""Looking inside a running model: hooks, recorded tensors, folded parameters, one neuron by hand.

- ``layers``: which modules are the Conv blocks and the head. ``recorder``: ``LayerRecorder`` hooks them.
- ``channel_stats``: per-channel statistics over many photos (with the optional C kernel).
- ``fold``: BatchNorm folded into the conv weight and bias. ``trace``: the neuron, ``sum(w*x) + b -> SiLU``,
  and the head's logit -> sigmoid, each against the framework's own value.
- ``statistics``: the ``inspect`` dumps and statistics files.
"""
