"""Streaming per-channel atlas statistics of one Conv block: top-k photos, class sums, an activation histogram.

``ChannelAtlas`` is fed one photo's SiLU output ``a`` (and ``z``) at a time and keeps, per channel, only
fixed-size tables, so its memory does not depend on the number of photos:

- **top-k**: the ``k`` photos where the channel fires most, each at its strongest position (``value``, ``z``,
  photo index, ``y``, ``x``). One entry per photo, as the Deep Visualization Toolbox shows top-9 *images*: k
  neighbouring positions of the same blob would show one thing k times. Each photo's maximum is one
  ``amax`` per channel; merging with the running table is one ``torch.topk`` over ``k + 1`` values per channel.
- **class sums**: the sum of ``a`` and the cell count inside each class's labelled boxes and outside all boxes
  (one matrix product of the map with the photo's box masks), for the class selectivity.
- **histogram**: counts of ``a`` in ``BINS`` fixed bins, over all photos, over labelled photos and over each
  class's box cells. The dataset-wide top quantile and the Dissection IoU need a threshold that is only known
  once every photo has been seen; a second pass would double the time, a reservoir would make the IoU an
  estimate. With fixed bin edges the threshold is taken *at a bin edge* (the lowest edge with at most a
  ``quantile`` share of values above it) and the IoU at that threshold is exact: intersection = the class
  histogram's tail, union = the labelled tail + box cells - intersection. Edges are evenly spaced in
  ``asinh(a / EDGE_SCALE)``, so bins are ~0.02 wide near 0 and ~3% of the value at large activations; one edge
  is 0, so the share of active cells (``a >= 0``, i.e. ``z >= 0``) is read exactly off the same histogram.

Everything is additive (sums, counts) or a top-k, so two ``ChannelAtlas`` of disjoint photo sets merge
exactly (``state`` / ``absorb``): the merged tables equal those of one pass over both sets.

Examples:
    >>> acc = ChannelAtlas(channels=16, classes=6, k=9)
    >>> acc.update(a, z, photo=0, masks=masks)     # a, z: 1x16xHxW; masks: 6xHxW bool or None (no labels)
    >>> cells = BoxCells(masks)                      # once per photo and map size: blocks of one size share it
    >>> acc.update(a, z, photo=0, masks=cells)
    >>> acc.top_values()[3]                          # channel 3's k best values, highest first
"""

from __future__ import annotations

import functools
import math

import torch

from pipeline.probe.channel_stats import _channel_stats  # the compiled kernel, or None (torch computes the same)

#: Photos whose per-channel best wait to be merged into the top-k table at once (``ChannelAtlas._flush``).
PENDING = 64
#: Histogram bins of SiLU(z) per channel; with the edges below ~3% of the value wide at large activations.
BINS = 256
#: SiLU(z) >= -0.2785 always; the lowest edge sits just below that minimum.
EDGE_LOW = -0.3
#: Activations are binned evenly in asinh(a / EDGE_SCALE) up to EDGE_HIGH (larger values share the last bin).
EDGE_SCALE = 0.05
EDGE_HIGH = 1000.0


def bin_edges(bins: int = BINS) -> torch.Tensor:
    """The ``bins + 1`` fixed edges (float64, increasing, one of them exactly 0) the histograms use.

    Examples:
        >>> e = bin_edges(); float(e[0]), float(e[-1]), bool((e == 0).any())
        (-0.3, 1000.0, True)
    """
    lo, hi = math.asinh(EDGE_LOW / EDGE_SCALE), math.asinh(EDGE_HIGH / EDGE_SCALE)
    # the bins below 0 and above it in proportion to their asinh span, so that 0 is an edge of its own
    neg = max(1, round(bins * -lo / (hi - lo)))
    u = torch.cat([torch.linspace(lo, 0, neg + 1, dtype=torch.float64)[:-1],
                   torch.linspace(0, hi, bins - neg + 1, dtype=torch.float64)])
    e = torch.sinh(u) * EDGE_SCALE
    e[neg] = 0.0  # sinh(0) is 0 already; written out because the activity count relies on it
    return e


def bin_lookup(inner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tables that bin a float32 by its top 16 bits: ``(base, edge)``, 65536 entries each.

    The top 16 bits of a float32 (sign, exponent, 7 mantissa bits) name a cell of values at most 2^-7 (0.8%)
    of their size wide. Bins are wider than that wherever a cell can reach them (~3% of the value at large
    activations, 0.02 near 0, where cells are far narrower), so at most one inner edge falls inside a cell:
    a value's bin is ``base`` (the bin of the cell's lowest value), plus one if it is at or above ``edge``
    (that inner edge, or NaN where the cell holds none: nothing compares >= NaN). Equal, value for value, to
    ``torch.bucketize(x, inner, right=True)``; ``tests/test_atlas.py`` checks every edge and its neighbours.

    Raises:
        ValueError: a cell holds two edges (bins narrower than the cells), so the tables could not be exact.
    """
    patterns = torch.arange(65536, dtype=torch.int64) << 16
    first = patterns.to(torch.int32).view(torch.float32)  # each cell's two ends (in value order: either way)
    last = (patterns | 0xFFFF).to(torch.int32).view(torch.float32)
    low, high = torch.minimum(first, last), torch.maximum(first, last)
    b_low = torch.bucketize(low, inner, right=True)
    b_high = torch.bucketize(high, inner, right=True)
    finite = torch.isfinite(low) & torch.isfinite(high)
    if ((b_high - b_low)[finite] > 1).any():
        raise ValueError("histogram bins are narrower than a float32 cell of 7 mantissa bits")
    edge = torch.where(finite & (b_high > b_low), inner[b_low.clamp(max=len(inner) - 1)], float("nan"))
    return b_low, edge


@functools.lru_cache(maxsize=4)
def _lookup(bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``bin_lookup`` of ``bin_edges(bins)``, once per process: every block's table reads the same two (never
    written)."""
    return bin_lookup(bin_edges(bins)[1:-1].float())


class BoxCells:
    """What ``ChannelAtlas.update`` reads off one photo's box masks at one map size, worked out once: the Conv
    blocks of one resolution (a dozen in YOLOv8n) share it instead of each working it out again.

    Args:
        masks: ``classes x H x W`` bool, cell inside a box of that class.

    Attributes:
        m: ``classes x HW`` bool. out: ``HW`` bool, outside every box. slot: ``HW`` uint8 (int64 from 255
        classes), the cell's first box class, or ``classes`` outside every box. class_count: ``classes`` float64 cells per class.
        outside_count: cells outside every box. again: ``[(cls, HW bool)]`` the cells of class ``cls`` whose
        slot is another class (boxes of two classes overlap there).
    """

    def __init__(self, masks: torch.Tensor):
        k = masks.shape[0]
        self.classes, self.shape = k, tuple(masks.shape[1:])
        self.m = masks.reshape(k, -1)
        self.out = ~self.m.any(dim=0)
        # the first class whose box holds the cell: filled last class first, so the first one's stays
        self.slot = torch.full((self.m.shape[1],), k, dtype=torch.uint8 if k < 255 else torch.int64)  # C reads uint8
        for cls in range(k - 1, -1, -1):
            self.slot.masked_fill_(self.m[cls], cls)
        self.class_count = self.m.sum(dim=1, dtype=torch.float64)
        self.outside_count = float(self.out.sum())
        twice = self.m & (torch.arange(k)[:, None] != self.slot.long()[None, :])
        self.again = [(cls, twice[cls]) for cls in torch.nonzero(twice.any(dim=1)).flatten().tolist()]


class ChannelAtlas:
    """Per-channel top-k, class sums and histograms of one Conv block over any number of photos.

    Args:
        channels: the block's output channels.
        classes: number of label classes (0: no selectivity tables).
        k: photos kept per channel.
        bins: histogram bins (``bin_edges``).

    Attributes:
        top_value, top_z: ``C x k`` float32 (``-inf`` where fewer than k photos were seen), sorted high to low.
        top_photo, top_y, top_x: ``C x k`` int64 (-1 where empty).
        count: cells seen per channel (all photos). labelled_count: cells of photos with a label file.
        class_sum, class_count: ``C x classes`` sum of ``a`` over each class's box cells, and their count.
        outside_sum, outside_count: sum of ``a`` over cells of labelled photos outside every box, and their count.
        hist, hist_labelled: ``C x bins`` counts over all photos / labelled photos; hist_class ``C x classes x bins``.
    """

    def __init__(self, channels: int, classes: int = 0, k: int = 9, bins: int = BINS):
        self.channels, self.classes, self.k, self.bins = channels, classes, k, bins
        self.edges = bin_edges(bins)
        self._lut_base, self._lut_edge = _lookup(bins)
        c, f64 = channels, torch.float64
        self._top_value = torch.full((c, k), float("-inf"))
        self._top_z = torch.full((c, k), float("nan"))
        self._top_photo = torch.full((c, k), -1, dtype=torch.int64)
        self._top_y = torch.full((c, k), -1, dtype=torch.int64)
        self._top_x = torch.full((c, k), -1, dtype=torch.int64)
        # each photo's best per channel waits here, PENDING photos at a time, for one merge into the table (one
        # sort per photo per block was a tenth of the atlas's time); every read of the table merges first
        self._pend_value, self._pend_z = torch.empty(c, PENDING), torch.empty(c, PENDING)
        self._pend_photo, self._pend_y, self._pend_x = (torch.empty(c, PENDING, dtype=torch.int64) for _ in range(3))
        self._pending = 0
        self.count = 0
        self.labelled_count = 0
        self.labelled_photos = 0
        self.sum = torch.zeros(c, dtype=f64)
        self.class_sum = torch.zeros(c, classes, dtype=f64)
        self.class_count = torch.zeros(classes, dtype=f64)
        self.outside_sum = torch.zeros(c, dtype=f64)
        self.outside_count = 0.0
        self.hist = torch.zeros(c, bins, dtype=torch.int64)
        self.hist_labelled = torch.zeros(c, bins, dtype=torch.int64)
        self.hist_class = torch.zeros(c, classes, bins, dtype=torch.int64)

    # -- one photo -------------------------------------------------------------------------------
    def bin_index(self, rows: torch.Tensor) -> torch.Tensor:
        """The histogram bin of every value of a float32 tensor: ``torch.bucketize(rows, inner edges, right=True)``
        (a value equal to an edge goes to the bin above), read off ``_lut`` at a third of its cost."""
        flat = rows.reshape(-1)
        high = (flat.view(torch.int32) >> 16) & 0xFFFF  # sign, exponent and 7 mantissa bits: the value's cell
        # index_select takes int32 indices as they are (take would want an int64 copy)
        return (self._lut_base.index_select(0, high) + (flat >= self._lut_edge.index_select(0, high))).view(rows.shape)

    def update(self, a: torch.Tensor, z: torch.Tensor, photo: int, masks: torch.Tensor | None = None) -> None:
        """Add one photo's map.

        Args:
            a, z: ``1xCxHxW`` SiLU output and pre-activation of the block (any memory layout).
            photo: the photo's index (what ``top_photo`` stores).
            masks: ``classes x H x W`` bool, cell inside a box of that class, or its ``BoxCells``; ``None``: the
                photo has no label file (it counts for top-k and activity, not for selectivity). A labelled photo
                without damage passes an all-False tensor.
        """
        c, bins = self.channels, self.bins
        if masks is not None and not isinstance(masks, BoxCells):
            masks = BoxCells(masks)
        rows = a.reshape(c, -1).float().contiguous()  # C x HW (a copy only for channels-last maps)
        if _channel_stats is not None and rows.device.type == "cpu" and self.classes < 255:  # slots are uint8
            return self._update_compiled(rows, z, a.shape[-1], photo, masks)
        w = a.shape[-1]
        best, where = rows.max(dim=1)
        zval = z.reshape(c, -1).gather(1, where[:, None]).squeeze(1).float()
        self._add_top(best, zval, photo, where // w, where % w)
        n = rows.shape[1]
        self.count += n
        idx = self.bin_index(rows)
        if masks is None:
            self.sum += rows.sum(dim=1, dtype=torch.float64)
            flat = (idx + torch.arange(0, c * bins, bins)[:, None]).flatten()
            self.hist += torch.bincount(flat, minlength=c * bins).view(c, bins)
            return
        k, m, out = self.classes, masks.m, masks.out
        # sums over each class's cells, outside every box, and over all cells: one float64 product
        self.labelled_photos += 1
        self.labelled_count += n
        sums = rows.double() @ torch.cat([m, out[None], torch.ones_like(out)[None]]).T.double()
        self.class_sum += sums[:, :k]
        self.outside_sum += sums[:, k]
        self.sum += sums[:, k + 1]
        self.class_count += masks.class_count
        self.outside_count += masks.outside_count
        # one histogram over (channel, slot, bin): a cell's slot is its box class (the first, where boxes of two
        # classes overlap), or k outside every box; the overlaps' other classes are added apart
        key = idx + (torch.arange(c)[:, None] * (k + 1) + masks.slot.long()[None, :]) * bins
        full = torch.bincount(key.flatten(), minlength=c * (k + 1) * bins).view(c, k + 1, bins)
        per_channel = full.sum(dim=1)
        self.hist += per_channel
        self.hist_labelled += per_channel
        self.hist_class += full[:, :k]
        for cls, cells_of in masks.again:  # cells in a box of a second (third...) class too
            off = (idx[:, cells_of] + torch.arange(0, c * bins, bins)[:, None]).flatten()
            self.hist_class[:, cls] += torch.bincount(off, minlength=c * bins).view(c, bins)

    def _update_compiled(self, rows: torch.Tensor, z: torch.Tensor, w: int, photo: int, masks) -> None:
        """``update`` in one read of the map by the C kernel (``_channel_stats.atlas``): the same tables as the
        torch path below it, counted straight into the running histograms (``tests/test_atlas.py`` compares)."""
        c, n, k = self.channels, rows.shape[1], self.classes
        for t in (self.hist, self.hist_labelled, self.hist_class, self._lut_base, self._lut_edge):
            assert t.is_contiguous()  # the kernel writes through raw pointers
        best, where = torch.empty(c), torch.empty(c, dtype=torch.int64)
        self.count += n
        if masks is None:
            sums = torch.zeros(c, 1, dtype=torch.float64)
            _channel_stats.atlas(rows.data_ptr(), c, n, 0, k, self._lut_base.data_ptr(), self._lut_edge.data_ptr(),
                                 self.bins, self.hist.data_ptr(), 0, 0, sums.data_ptr(), best.data_ptr(),
                                 where.data_ptr(), torch.get_num_threads())
            self.sum += sums[:, 0]
        else:
            sums = torch.zeros(c, k + 1, dtype=torch.float64)
            _channel_stats.atlas(rows.data_ptr(), c, n, masks.slot.data_ptr(), k, self._lut_base.data_ptr(),
                                 self._lut_edge.data_ptr(), self.bins, self.hist.data_ptr(),
                                 self.hist_labelled.data_ptr(), self.hist_class.data_ptr() if k else 0,
                                 sums.data_ptr(), best.data_ptr(), where.data_ptr(), torch.get_num_threads())
            self.labelled_photos += 1
            self.labelled_count += n
            self.class_sum += sums[:, :k]
            self.outside_sum += sums[:, k]
            self.sum += sums.sum(dim=1)
            self.class_count += masks.class_count
            self.outside_count += masks.outside_count
            # a cell in boxes of two classes or more counts for its first in the kernel; the others are added here
            for cls, cells_of in masks.again:
                cells = rows[:, cells_of]
                self.class_sum[:, cls] += cells.sum(dim=1, dtype=torch.float64)
                off = (self.bin_index(cells) + torch.arange(0, c * self.bins, self.bins)[:, None]).flatten()
                self.hist_class[:, cls] += torch.bincount(off, minlength=c * self.bins).view(c, self.bins)
        zval = z.reshape(c, -1).gather(1, where[:, None]).squeeze(1).float()
        self._add_top(best, zval, photo, where // w, where % w)

    def _add_top(self, value, z, photo: int, y, x) -> None:
        """One photo's best of each channel (``C`` each), into the pending columns; merged every ``PENDING``."""
        j = self._pending
        self._pend_value[:, j], self._pend_z[:, j], self._pend_photo[:, j] = value, z, photo
        self._pend_y[:, j], self._pend_x[:, j] = y, x
        self._pending = j + 1
        if self._pending == PENDING:
            self._flush()

    def _flush(self) -> None:
        """Merge the pending photos into the table. Table first, then the photos in the order they came: the
        stable sort keeps that order among equal values, so the table is the one photo-by-photo merges make."""
        n, self._pending = self._pending, 0
        if n:
            self._merge_top(self._pend_value[:, :n], self._pend_z[:, :n], self._pend_photo[:, :n],
                            self._pend_y[:, :n], self._pend_x[:, :n])

    top_value = property(lambda self: self._flushed("_top_value"))
    top_z = property(lambda self: self._flushed("_top_z"))
    top_photo = property(lambda self: self._flushed("_top_photo"))
    top_y = property(lambda self: self._flushed("_top_y"))
    top_x = property(lambda self: self._flushed("_top_x"))

    def _flushed(self, name: str) -> torch.Tensor:
        self._flush()
        return getattr(self, name)

    def _merge_top(self, value, z, photo, y, x) -> None:
        """Keep the k highest of the running table and the new rows (ties: the earlier photo first)."""
        v = torch.cat([self._top_value, value], 1)
        # stable order: sort by value descending, and among equals keep table order (earlier photo first)
        order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, : self.k]
        self._top_value = v.gather(1, order)
        self._top_z = torch.cat([self._top_z, z], 1).gather(1, order)
        self._top_photo = torch.cat([self._top_photo, photo], 1).gather(1, order)
        self._top_y = torch.cat([self._top_y, y], 1).gather(1, order)
        self._top_x = torch.cat([self._top_x, x], 1).gather(1, order)

    # -- merging -----------------------------------------------------------------------------
    _TABLES = ("top_value", "top_z", "top_photo", "top_y", "top_x", "sum", "class_sum", "class_count", "outside_sum",
               "hist", "hist_labelled", "hist_class")
    _NUMBERS = ("count", "labelled_count", "labelled_photos", "outside_count")

    def state(self) -> dict:
        """Every table, as plain tensors and numbers (picklable: what a worker sends back to be merged).

        Examples:
            >>> total.absorb(worker_part.state())
        """
        return {**{k: getattr(self, k).clone() for k in self._TABLES}, **{k: getattr(self, k) for k in self._NUMBERS},
                "channels": self.channels, "classes": self.classes, "k": self.k, "bins": self.bins}

    def absorb(self, state: dict) -> None:
        """Fold another ``ChannelAtlas``' ``state()`` into this one, exactly (sums add, top-k tables merge).

        Photo indices must already be global (each worker indexes photos as the whole run does). Absorbing
        parts in input order keeps the single-process order among equal values.
        """
        shape = (self.channels, self.classes, self.k, self.bins)
        if (state["channels"], state["classes"], state["k"], state["bins"]) != shape:
            raise ValueError("cannot merge atlas tables of different shapes")
        self._flush()  # this table's own photos first: they came before the absorbed part's
        self._merge_top(state["top_value"], state["top_z"], state["top_photo"], state["top_y"], state["top_x"])
        for key in ("sum", "class_sum", "class_count", "outside_sum", "hist", "hist_labelled", "hist_class"):
            setattr(self, key, getattr(self, key) + state[key])
        for key in self._NUMBERS:
            setattr(self, key, getattr(self, key) + state[key])

    # -- what the atlas reports ------------------------------------------------------------------
    def threshold_bins(self, quantile: float) -> torch.Tensor:
        """Per channel the bin index ``j`` whose lower edge is the threshold: the lowest edge with at most a
        ``quantile`` share of all values at or above it (``C`` int64; ``bins`` when even the last bin is too full)."""
        tail = self.hist.flip(1).cumsum(1).flip(1)  # C x bins: values in bin j and above
        ok = tail <= quantile * max(self.count, 1)
        # the first bin index where the tail is small enough (tails shrink as j grows); none: past the last bin
        first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((self.channels,), self.bins))
        return first

    def thresholds(self, quantile: float) -> torch.Tensor:
        """Per channel the activation threshold (an edge value, float64) for ``quantile``."""
        j = self.threshold_bins(quantile)
        return self.edges[j.clamp(max=self.bins)]

    def dissection_iou(self, quantile: float) -> torch.Tensor:
        """``C x classes``: IoU of {a >= threshold} with each class's box cells, summed over labelled photos."""
        j = self.threshold_bins(quantile)
        if self.classes == 0:
            return torch.zeros(self.channels, 0, dtype=torch.float64)
        tail_lab = torch.cat([self.hist_labelled.flip(1).cumsum(1).flip(1),
                              torch.zeros(self.channels, 1, dtype=torch.int64)], 1)
        tail_cls = torch.cat([self.hist_class.flip(2).cumsum(2).flip(2),
                              torch.zeros(self.channels, self.classes, 1, dtype=torch.int64)], 2)
        above = tail_lab.gather(1, j[:, None]).double()  # C x 1: labelled cells at or above the threshold
        inter = tail_cls.gather(2, j[:, None, None].expand(-1, self.classes, 1)).squeeze(2).double()
        union = above + self.class_count[None, :] - inter
        return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))

    def active_fraction(self) -> torch.Tensor:
        """Per channel the share of cells with ``a >= 0`` (exactly ``z >= 0``), over all photos."""
        zero = int(torch.nonzero(self.edges == 0).flatten()[0])  # bins from this index hold a >= 0
        # a == 0 exactly (z == 0) lands in bin ``zero``: it is not active, but float32 hits it ~never
        return self.hist[:, zero:].sum(1).double() / max(self.count, 1)

    def inside_means(self) -> torch.Tensor:
        """``C x classes`` mean ``a`` over each class's box cells (NaN for a class never labelled)."""
        return self.class_sum / self.class_count[None, :].where(self.class_count[None, :] > 0,
                                                                 torch.tensor(float("nan"), dtype=torch.float64))

    def outside_mean(self) -> torch.Tensor:
        """Per channel the mean ``a`` over labelled cells outside every box (NaN without any)."""
        if not self.outside_count:
            return torch.full((self.channels,), float("nan"), dtype=torch.float64)
        return self.outside_sum / self.outside_count
