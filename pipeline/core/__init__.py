"""The floor every other layer stands on: the offline Ultralytics runtime, safe file I/O, the shared facts.

- ``runtime``: keeps Ultralytics offline and its settings inside the project (imported before Ultralytics).
- ``io``: reading photos (decoded in full, one-line ``InputError``), atomic writes with the user's umask,
  output folders that never hold an input.
- ``facts``: class names, the outlier threshold, the sigmoid and its inverse: each stated once.
"""
