"""Training with standardized inputs: the network really receives (x/255 - mean)/std, in training and validation."""

import pytest
import torch

from pipeline.lesson.input_scaling import standardized_trainer
from pipeline.model.load import load_model
from pipeline.model.train import train


PIXELS = torch.randint(0, 256, (2, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _first_inputs(trainer_cls, synth_data, out):
    """Train one tiny epoch; return what the stem saw first in training, what the run's validator makes of
    fixed pixels, and the metrics."""
    seen = {}

    def on_train_start(trainer):
        def hook(module, args):
            if module.training:
                seen.setdefault("train", args[0].detach().clone())

        seen["handle"] = trainer.model.model[0].register_forward_pre_hook(hook)

    def on_train_end(trainer):
        seen.pop("handle").remove()  # before the final checkpoint copies the model
        seen["val"] = trainer.validator.preprocess({"img": PIXELS.clone()})["img"]
        seen["validator"] = type(trainer.validator)

    extra = {"trainer": trainer_cls} if trainer_cls else {}
    metrics = train(synth_data, out, epochs=1, imgsz=96, batch=8, nbs=8, workers=0, device="cpu", val=True,
                    callbacks={"on_train_start": on_train_start, "on_train_end": on_train_end}, **extra)
    return seen, metrics


def test_standardized_batches_reach_the_network(synth_data, tmp_path):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    std_seen, std_metrics = _first_inputs(standardized_trainer(mean, std), synth_data, tmp_path / "std")
    raw_seen, _ = _first_inputs(None, synth_data, tmp_path / "raw")
    assert set(std_seen) == set(raw_seen) == {"train", "val", "validator"}
    raw, st = raw_seen["train"], std_seen["train"]
    assert raw.min() >= 0 and raw.max() <= 1  # YOLOv8's own x/255
    assert st.min() < 0  # standardized inputs go negative
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(raw_seen["val"], PIXELS.float() / 255)
    torch.testing.assert_close(std_seen["val"], (PIXELS.float() / 255 - m) / s)  # validation scales the same way
    # the run's mAP50 is what Ultralytics' validation loop gives for its best.pt, with the same standardization
    best = load_model(tmp_path / "std" / "weights" / "best.pt")
    val = best.val(validator=std_seen["validator"], data=str(synth_data), imgsz=96, batch=8, device="cpu", plots=False,
                   verbose=False, project=str(tmp_path), name="val")
    assert std_metrics["mAP50"] == pytest.approx(float(val.box.map50), abs=1e-4)
