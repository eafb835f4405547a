"""The channel atlas: what each Conv block channel of the detector looks for, over a whole dataset.

``build`` runs ``pipeline.analysis.atlas.AtlasPass`` over the photos and writes ``atlas.json``, the crops
(``crops``) and the offline HTML atlas (``page``). The format is documented in docs/atlas.md; readers
below this package (the explorer, the report) use ``pipeline.analysis.atlas_format``.

Examples:
    >>> from pipeline.atlas.build import build_atlas
    >>> build_atlas("best.pt", ["../shared/data/cardd-sample/data.yaml"], "runs/atlas", imgsz=320)
"""
