"""The offline HTML report: one photo walked from pixels to score with the model's own numbers.

``page`` computes and writes it; ``plots`` draws the figures from numbers the lower layers computed.
"""
