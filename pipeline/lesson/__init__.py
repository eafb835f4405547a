"""The textbook's concepts computed on the real model: numbers only, no plots.

- ``input_scaling``: min-max vs standardization of the pixels, outliers by z-score.
- ``activations``: sigmoid, tanh, ReLU, leaky ReLU, PReLU, softmax, SiLU with their derivatives.
- ``gradients``: backpropagation through Ultralytics' own loss, the vanishing gradient, one SGD step.
"""
