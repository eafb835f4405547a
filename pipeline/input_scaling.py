"""Train with another input scaling: YOLOv8's x/255 against per-channel z-score standardization.

YOLOv8 feeds the network ``x / 255`` and nothing else (no mean, no std). Many CNNs standardize instead:
``(x / 255 - mean_c) / std_c`` with the dataset's per-channel statistics. This module makes Ultralytics'
own trainer and validator do that, so the two can be trained side by side on the same data, seed and
budget (``scripts/scaling_experiment.py``) and their loss curves compared with real numbers.

Only the scaling changes: augmentation, model, loss and metrics are Ultralytics' own.

Examples:
    >>> from pipeline.input_scaling import standardized_trainer
    >>> Trainer = standardized_trainer(mean=[0.45, 0.44, 0.42], std=[0.22, 0.21, 0.23])
    >>> train("datasets/synth/data.yaml", "runs/std", trainer=Trainer, epochs=5, imgsz=224)
"""

from __future__ import annotations

from copy import copy

import torch

from pipeline import runtime  # noqa: F401  (offline env before ultralytics)


def standardized_trainer(mean, std):
    """A DetectionTrainer class whose batches (train and val) are ``(x/255 - mean) / std`` per channel.

    Args:
        mean: per-channel (R, G, B) means of ``x/255`` over the dataset (``preprocess.dataset_channel_stats``).
        std: per-channel standard deviations, same source.
    """
    from ultralytics.models.yolo.detect import DetectionTrainer, DetectionValidator

    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def standardize(img: torch.Tensor) -> torch.Tensor:
        return (img - m.to(img)) / s.to(img)

    class StandardizedValidator(DetectionValidator):
        def preprocess(self, batch):
            batch = super().preprocess(batch)  # x / 255 on the device
            batch["img"] = standardize(batch["img"])
            return batch

    class StandardizedTrainer(DetectionTrainer):
        scaling = {"mean": list(map(float, mean)), "std": list(map(float, std))}

        def preprocess_batch(self, batch):
            batch = super().preprocess_batch(batch)  # x / 255 (and multi-scale resizing, if on)
            batch["img"] = standardize(batch["img"])
            return batch

        def get_validator(self):
            super().get_validator()  # keeps whatever bookkeeping the parent does (loss names)
            return StandardizedValidator(self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks)

    return StandardizedTrainer
