"""What one photo does inside the model, computed once and asked questions: the layer every page reads.

``run`` holds ``PhotoRun`` (one decode, one recorded forward pass of a fused copy, the named extra passes:
gradients, LayerCAM, dataset statistics, a neuron's effect on the top box), ``thread`` follows a detection
back to one neuron on its path, ``effect`` measures how much a neuron mattered to a logit (gradient x
activation, and the logit with it zeroed), and ``cam`` computes EigenCAM and LayerCAM. Nothing here draws or writes HTML: ``report`` renders these
numbers into the page, ``explore`` serves them to the browser.

Examples:
    >>> from pipeline.analysis.run import PhotoRun
    >>> run = PhotoRun(load_model("best.pt"), "photo.jpg", imgsz=640, conf=0.25)
    >>> run.detections[0]["score"]
"""
