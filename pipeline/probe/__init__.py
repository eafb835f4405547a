"""Looking inside a running model: hooks, recorded tensors, folded parameters, one neuron by hand.

- ``layers``: which modules are the Conv blocks and the head. ``recorder``: ``LayerRecorder`` hooks them.
- ``channel_stats``: per-channel statistics over many photos (with the optional C kernel).
- ``fold``: BatchNorm folded into the conv weight and bias. ``trace``: the neuron, ``sum(w*x) + b -> SiLU``,
  and the head's logit -> sigmoid, each against the framework's own value. ``logit``: the head's final 1x1
  convs by hand, a logit as ``sum_c w_c * x_c + b`` at one anchor, and one DFL side to its box edge.
- ``statistics``: the ``inspect`` dumps and statistics files.
"""
