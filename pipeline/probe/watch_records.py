"""``watch.jsonl`` read back: each record held to its schema (docs/film.md) before anything draws it.

``pipeline.probe.watch`` writes the records and reads the lines back (a torn last line skipped);
``record_problem`` says what is wrong with one record (a list where ``blocks`` belongs, a string for
``epoch``, a probe size past ``MAX_IMGSZ``), and ``read_records`` leaves such records out with one warning
for the file, or refuses a file that holds no good record at all.

Examples:
    >>> from pipeline.probe.watch_records import read_records
    >>> records = read_records("runs/w/watch.jsonl")
"""

from __future__ import annotations


from pipeline.core.errors import warn_input
from pipeline.core.facts import MAX_IMGSZ
from pipeline.core.io import InputError
from pipeline.core.readback import is_number, json_key, json_kind
from pipeline.probe.watch import read_watch_lines


# ------------------------------------------------------------------------------------------------
# Reading a watch.jsonl back: every record's schema (docs/film.md) checked once, before any drawing
# ------------------------------------------------------------------------------------------------





def _check_count(where: str, v, low: int = 0, high: int | None = None) -> str | None:
    if isinstance(v, bool) or not isinstance(v, int):
        return f"{where} is {json_kind(v)}, not a whole number"
    if v < low or (high is not None and v > high):
        return f"{where} is {v}, not from {low} to {high}" if high is not None else f"{where} is {v}, below {low}"
    return None


def _check_numbers(where: str, v, length: int) -> str | None:
    if not isinstance(v, list) or len(v) != length or not all(is_number(x) for x in v):
        return f"{where} is not a list of {length} finite numbers"
    return None


def _check_number_map(where: str, v, nullable: bool) -> str | None:
    """A mapping of names to finite numbers (or null where ``nullable``)."""
    if not isinstance(v, dict):
        return f"{where} is {json_kind(v)}, not a mapping"
    for k, x in v.items():
        if not (is_number(x) or (nullable and x is None)):
            return f"{where}[{json_key(k)}] is {json_kind(x)}, not a finite number{' or null' if nullable else ''}"
    return None


def _check_probe(probe) -> str | None:
    if not isinstance(probe, dict):
        return f"'probe' is {json_kind(probe)}, not a mapping"
    for k in ("logit", "sigmoid"):
        if k not in probe:
            return f"'probe' has no {k!r}"
        if not (probe[k] is None or is_number(probe[k])):
            return f"probe[{k!r}] is {json_kind(probe[k])}, not a finite number or null"
    for k in ("class_name", "image", "path"):
        if (k in probe or k == "class_name") and not isinstance(probe.get(k), str):
            return f"probe[{k!r}] is {json_kind(probe.get(k)) if k in probe else 'missing'}, not a string"
    imgsz = probe.get("imgsz")
    if not (isinstance(imgsz, list) and len(imgsz) == 2
            and all(not isinstance(v, bool) and isinstance(v, int) and 1 <= v <= MAX_IMGSZ for v in imgsz)):
        return f"probe['imgsz'] is not [h, w], two whole numbers from 1 to {MAX_IMGSZ}"
    problem = _check_numbers("probe['box']", probe.get("box"), 4)
    if problem:
        return problem
    for k in ("class_id", "anchor"):
        if k in probe and (problem := _check_count(f"probe[{k!r}]", probe[k])):
            return problem
    if "neuron" in probe:
        neuron = probe["neuron"]
        if not isinstance(neuron, dict):
            return f"probe['neuron'] is {json_kind(neuron)}, not a mapping"
        if "block" in neuron and not isinstance(neuron["block"], str):
            return f"probe['neuron']['block'] is {json_kind(neuron['block'])}, not a string"
        for k in ("channel", "y", "x"):
            if k in neuron and (problem := _check_count(f"probe['neuron'][{k!r}]", neuron[k])):
                return problem
        if "z" in neuron and not (neuron["z"] is None or is_number(neuron["z"])):
            return f"probe['neuron']['z'] is {json_kind(neuron['z'])}, not a finite number or null"
    return None


def record_problem(r) -> str | None:
    """What is wrong with one watch.jsonl record for the film (docs/film.md's schema), or ``None``: it is fine.

    Every key the film reads is checked for its type here, once, so drawing never meets a list where a
    mapping belongs (an ``AttributeError`` traceback) or a string where a number belongs (a ``TypeError``).

    Examples:
        >>> record_problem({"epoch": "a", "batch": 1})
        "'epoch' is a str, not a whole number"
    """
    if not isinstance(r, dict):
        return f"the record is {json_kind(r)}, not a JSON object"
    for k in ("epoch", "batch"):
        if k not in r:
            return f"no {k!r}"
        if problem := _check_count(repr(k), r[k]):
            return problem
    if "step" in r and r["step"] is not None and (problem := _check_count("'step'", r["step"])):
        return problem
    if r.get("kind") not in ("batch", "epoch"):
        return f"'kind' is {json_kind(r.get('kind')) if 'kind' in r else 'missing'}, not \"batch\" or \"epoch\""
    if not is_number(r.get("epoch_progress")):
        return f"'epoch_progress' is {json_kind(r.get('epoch_progress')) if 'epoch_progress' in r else 'missing'}, " \
               "not a finite number"
    if "batches_per_epoch" in r and (problem := _check_count("'batches_per_epoch'", r["batches_per_epoch"], 1)):
        return problem
    for k in ("lr", "grad_first_last", "mAP50"):
        if k in r and not (r[k] is None or is_number(r[k])):
            return f"{k!r} is {json_kind(r[k])}, not a finite number or null"
    for k in ("first_block", "last_block"):
        if not isinstance(r.get(k), str):
            return f"{k!r} is {json_kind(r.get(k)) if k in r else 'missing'}, not a string"
    if "loss" in r and r["loss"] is not None and (problem := _check_number_map("'loss'", r["loss"], nullable=True)):
        return problem
    if "ap50" in r and r["ap50"] is not None and (problem := _check_number_map("'ap50'", r["ap50"], nullable=False)):
        return problem
    blocks = r.get("blocks")
    if not isinstance(blocks, dict):
        what = json_kind(blocks) if "blocks" in r else "missing"
        return f"'blocks' is {what}, not a mapping of Conv block paths to numbers"
    if not blocks:
        return "'blocks' holds no block"
    for b, row in blocks.items():
        if problem := _check_number_map(f"blocks[{json_key(b)}]", row, nullable=True):
            return problem
    return _check_probe(r.get("probe"))


#: At most this many line numbers are listed in the warning on left-out records.
LISTED_LINES = 5


def read_records(path) -> list[dict]:
    """The film's records of a ``watch.jsonl``: ``read_watch``, each record's schema checked (``record_problem``).

    A record of the wrong shape (a list where ``blocks`` belongs, a string for ``epoch``) is left out like a
    torn line, with one warning for the file naming the first such line, what is wrong with it, and the count.

    Raises:
        InputError: every line that parses is of the wrong shape (one line naming the first).
    """
    records, bad = [], []
    for n, r in read_watch_lines(path):
        problem = record_problem(r)
        if problem is None:
            records.append(r)
        else:
            bad.append((n, problem))
    if bad:
        n, problem = bad[0]
        more = ""
        if len(bad) > 1:
            listed = ", ".join(str(m) for m, _ in bad[:LISTED_LINES]) + (", ..." if len(bad) > LISTED_LINES else "")
            more = f" ({len(bad)} records left out in all: lines {listed})"
        if not records:
            raise InputError(path, f"holds no record the film can draw: line {n}: {problem}{more}")
        warn_input(path, f"line {n}: {problem}: record left out{more}")
    return records
