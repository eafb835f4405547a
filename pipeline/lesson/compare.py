"""The seed's contrast on real training: the same few epochs with SiLU, sigmoid and ReLU, each run watched.

The report's activation variants compare gradient flow at initialisation (``lesson.gradients``); here each
variant *trains*: Ultralytics' own trainer, the same data, seed and recipe, the only difference every Conv
block's activation, swapped in the trainer's model and its EMA before the first step (activations have no
parameters, so every variant starts from the same weights). Each run is filmed by ``TrainingWatch`` into
``OUT/<variant>/watch.jsonl``; ``pipeline.report.film.write_compare`` draws them side by side.

Examples:
    >>> from pipeline.lesson.compare import train_variants
    >>> runs = train_variants("datasets/synth/data.yaml", "runs/acts", epochs=3, imgsz=96)
    >>> sorted(runs)
    ['relu', 'sigmoid', 'silu']
"""

from __future__ import annotations

from pathlib import Path

from pipeline.lesson.gradients import VARIANTS, swap_activation
from pipeline.model.train import train
from pipeline.probe.watch import TrainingWatch, read_watch

#: The variants trained by default: YOLOv8's own SiLU, the saturating sigmoid, and ReLU.
COMPARED = ("silu", "sigmoid", "relu")


def swap_callbacks(activation: str) -> dict:
    """``{event: fn}`` that swaps every Conv block's activation for ``activation`` before training starts.

    It runs at ``on_pretrain_routine_end``: after Ultralytics built the model and its EMA copy, before the
    first batch, so the trained model, the EMA it validates and the checkpoints all use ``activation``.

    Examples:
        >>> train("data.yaml", "runs/sigmoid", callbacks=swap_callbacks("sigmoid"))  # doctest: +SKIP
    """
    make = VARIANTS[activation]

    def swap(trainer) -> None:
        models = [trainer.model, *([trainer.ema.ema] if trainer.ema else [])]
        for m in models:
            if swap_activation(m, make()) == 0:
                raise ValueError("no Conv block found to swap")

    return {"on_pretrain_routine_end": swap}


def _merge(*dicts) -> dict:
    """One ``{event: [fn, ...]}`` from several (``train`` runs each function of an event, in order)."""
    events: dict[str, list] = {}
    for d in dicts:
        for event, fn in d.items():
            events.setdefault(event, []).append(fn)
    return events


def train_variants(data, out, variants=COMPARED, every_batches: int | None = None, **overrides) -> dict[str, list]:
    """Train one watched run per activation into ``out/<variant>``; return ``{variant: watch records}``.

    Args:
        data: dataset YAML. out: folder for the runs.
        variants: names from ``lesson.gradients.VARIANTS``.
        every_batches: the watch's record frequency (``None``: its default points and every epoch).
        overrides: Ultralytics train arguments, the same for every variant (``epochs``, ``imgsz``, ``seed`` ...).
    """
    out = Path(out)
    runs = {}
    for name in variants:
        with TrainingWatch(every_batches=every_batches) as watch:
            callbacks = _merge(swap_callbacks(name), watch.callbacks())
            train(data, out / name, callbacks=callbacks, overwrite=True, **overrides)
        runs[name] = read_watch(out / name / "watch.jsonl")
    return runs
