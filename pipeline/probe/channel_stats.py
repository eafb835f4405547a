"""Per-channel statistics of a Conv block's pre-activation ``z`` and post-SiLU ``a``, over many photos.

``ChannelStats`` merges batches exactly (Chan's parallel formula in float64); a small C kernel reads each
value once where it can. ``STATS_COLUMNS`` is the layout of stats.csv.

Examples:
    >>> from pipeline.probe.channel_stats import ChannelStats
    >>> s = ChannelStats(channels=16)
    >>> s.update(z, a)            # z, a: 1x16xHxW, any number of times
    >>> s.mean, s.std, s.frac_negative
"""

from __future__ import annotations

import torch

try:  # the one-read C kernel for stats mode (probe/_channel_stats.c), built by `pip install`; optional
    from pipeline.probe import _channel_stats
except ImportError:  # no compiler at install time: torch reductions compute the same numbers
    _channel_stats = None

#: A post-activation |a| below this counts as "dead" (the neuron passes on ~nothing) in stats mode.
DEAD_EPS = 1e-3

#: Stats mode takes sum(z^2) - n*mean^2 in one pass unless mean^2 > CANCEL_RATIO * variance for a channel
#: (float32 cancellation would then cost more than ~1e-5 of the std): those channels get the two-pass formula.
CANCEL_RATIO = 16.0

#: ChannelStats folds its per-batch tables into running totals every this many batches (bounded memory).
FOLD_EVERY = 64

#: Columns of the per-channel statistics (stats.csv), in order.
STATS_COLUMNS = (
    "layer",
    "channel",
    "count",
    "mean",
    "std",
    "min",
    "max",
    "frac_negative",
    "frac_dead",
    "post_mean",
)


# ------------------------------------------------------------------------------------------------
# Statistics per channel, accumulated over any number of forward passes
# ------------------------------------------------------------------------------------------------


class ChannelStats:
    """Per-channel statistics of one Conv block's ``z`` (pre) and ``a`` (post), over any number of passes.

    ``mean``/``std`` (population, ddof 0)/``min``/``max`` describe ``z``; ``frac_negative`` is the share of
    ``z < 0`` (where SiLU bends), ``frac_dead`` the share of ``|a| < dead_eps``, ``post_mean`` the mean of
    ``a`` (how far from zero-centred SiLU's output is).

    Each value of ``z`` and of ``a`` is read once: a small C kernel (``pipeline/_channel_stats.c``) takes
    all of a map's statistics in that read. Where it cannot run (not built, not float32 on the CPU in NCHW
    layout, or ``kernel=False``) torch reductions compute the same numbers in ~10 passes. Batches are
    merged lazily in float64 with Chan's parallel formula, so stats over many images equal the stats of
    one big tensor.

    Args:
        channels: channels of the block's output.
        dead_eps: |a| below this counts as dead.
        kernel: use the C kernel where it can run (``False``: always torch, the tests' second path).
    """

    def __init__(self, channels: int, dead_eps: float = DEAD_EPS, kernel: bool = True):
        self.channels, self.dead_eps = channels, dead_eps
        self.kernel = kernel and _channel_stats is not None
        self._batches: list[tuple] = []  # not yet merged: (n per channel, C x 5 table of z, C x 2 table of a)
        self._pending = None
        self._merged = None

    @staticmethod
    def _rows(t: torch.Tensor) -> torch.Tensor:
        """BxCxHxW -> C x (B*H*W), a free view for one contiguous image."""
        c = t.shape[1]
        return t.view(c, -1) if t.shape[0] == 1 and t.is_contiguous() else t.transpose(0, 1).reshape(c, -1)

    @staticmethod
    def _scratch(t: torch.Tensor, scratch) -> torch.Tensor:
        """A work buffer shaped like ``t``: a view into ``scratch`` (a tensor, or a function of ``t`` giving one)
        when it is big enough (no new memory)."""
        if callable(scratch):
            scratch = scratch(t)
        if scratch is not None and scratch.numel() >= t.numel() and scratch.dtype == t.dtype:
            return scratch[: t.numel()].view(t.shape)
        return torch.empty_like(t)

    def _kernel_can(self, t: torch.Tensor) -> bool:
        """Whether the C kernel can read ``t``: float32 on the CPU, BxCxHxW, contiguous, not empty."""
        return (self.kernel and t.dtype is torch.float32 and t.is_cpu and t.dim() == 4 and t.is_contiguous()
                and t.shape[1] == self.channels and t.numel() > 0)

    @staticmethod
    def _kernel(fn, t: torch.Tensor, width: int, number: float) -> torch.Tensor:
        """Run one entry point of the C kernel on contiguous BxCxHxW ``t``: a C x width float64 table."""
        b, c, h, w = t.shape
        out = torch.empty(c, width, dtype=torch.float64)
        fn(t.data_ptr(), b, c, h * w, number, torch.get_num_threads(), out.data_ptr())
        return out

    def update_pre(self, z: torch.Tensor, scratch=None) -> None:
        """First half of a batch: the statistics of ``z`` (called before an in-place SiLU can overwrite it)."""
        n = z.numel() // self.channels
        if self._kernel_can(z):  # C x {sum, m2, min, max, count(z < 0)}, float64
            self._pending = (n, self._kernel(_channel_stats.pre, z, 5, CANCEL_RATIO))
            return
        zc = self._rows(z)
        work = self._scratch(zc, scratch)
        total = zc.sum(dim=1)
        mean = total / n
        # one pass: m2 = sum(z^2) - n*mean^2; where the mean dwarfs the spread that difference cancels, so those
        # channels (rare) get the exact two-pass sum of squared deviations instead
        m2 = torch.linalg.vector_norm(zc, dim=1).square() - n * mean * mean
        shaky = mean * mean > CANCEL_RATIO * m2 / n
        if shaky.any():
            idx = shaky.nonzero().flatten()
            m2[idx] = torch.linalg.vector_norm(zc.index_select(0, idx) - mean[idx, None], dim=1).square()
        m2.clamp_(min=0)  # rounding can leave a hair below zero; NaN stays NaN
        lo, hi = zc.amin(dim=1), zc.amax(dim=1)
        negative = torch.lt(zc, 0, out=work).sum(dim=1)  # count of z < 0: a sum of float 0/1 (exact below 2^24)
        self._pending = (n, torch.stack([total, m2, lo, hi, negative], 1))

    def update_post(self, a: torch.Tensor, scratch=None) -> None:
        """Second half of a batch: the statistics of ``a = SiLU(z)``; completes the batch begun by ``update_pre``."""
        n, pre = self._pending
        if self._kernel_can(a):  # C x {count(|a| < eps), sum(a)}, float64
            post = self._kernel(_channel_stats.post, a, 2, self.dead_eps)
        else:
            ac = self._rows(a)
            work = self._scratch(ac, scratch)
            dead = torch.lt(torch.abs(ac, out=work), self.dead_eps, out=work).sum(dim=1)  # count of |a| < eps
            post = torch.stack([dead, ac.sum(dim=1)], 1)
        self._batches.append((n, pre, post))
        self._pending = None
        if len(self._batches) >= FOLD_EVERY:  # a long dataset pass: bounded memory, folding stays rare
            self._merge()

    def update(self, z: torch.Tensor, a: torch.Tensor) -> None:
        """Add one batch ``z, a`` (BxCxHxW, float) to the statistics."""
        self.update_pre(z)
        self.update_post(a)

    def _merge(self) -> dict:
        """Fold the batches not yet merged into the running totals (Chan et al.) and return the totals."""
        if self._merged is not None and not self._batches:
            return self._merged
        c, f64 = self.channels, torch.float64
        if self._merged is None:
            count, mean, m2 = 0, torch.zeros(c, dtype=f64), torch.zeros(c, dtype=f64)
            lo, hi = torch.full((c,), float("inf"), dtype=f64), torch.full((c,), float("-inf"), dtype=f64)
            negative, dead, post = torch.zeros(c, dtype=f64), torch.zeros(c, dtype=f64), torch.zeros(c, dtype=f64)
        else:
            t = self._merged
            count, mean, m2, lo, hi = t["count"], t["mean"], t["m2"], t["min"], t["max"]
            negative, dead, post = t["negative"], t["dead"], t["post"]
        for n, pre_table, post_table in self._batches:
            b_sum, b_m2, b_lo, b_hi, b_neg = pre_table.double().unbind(1)
            b_dead, b_post = post_table.double().unbind(1)
            b_mean, total = b_sum / n, count + n
            delta = b_mean - mean
            mean = mean + delta * (n / total)
            m2 = m2 + b_m2 + delta * delta * (count * n / total)
            count = total
            lo, hi = torch.minimum(lo, b_lo), torch.maximum(hi, b_hi)
            negative, dead, post = negative + b_neg, dead + b_dead, post + b_post
        self._batches.clear()
        self._merged = dict(count=count, mean=mean, m2=m2, min=lo, max=hi, negative=negative, dead=dead, post=post)
        return self._merged

    def state(self) -> dict:
        """The merged totals (count, and per channel float64 mean, m2, min, max, negative, dead, post counts/sums).

        What a worker sends to be merged elsewhere with ``absorb``: plain tensors, picklable, a few KB per block.
        """
        return {k: (v.clone() if torch.is_tensor(v) else v) for k, v in self._merge().items()}

    def absorb(self, state: dict) -> None:
        """Fold another ``ChannelStats``' totals (``state()``) into these, exactly: Chan's formula in float64.

        Statistics of photos split over several processes, each absorbed in turn, equal the statistics of one
        process over all of them (up to float64 rounding: relative differences ~1e-15).

        Examples:
            >>> total = ChannelStats(16)
            >>> for part in (worker_a.state(), worker_b.state()):
            ...     total.absorb(part)
        """
        n = int(state["count"])
        if n == 0:
            return
        t = self._merge()
        count, f64 = t["count"], torch.float64
        b_mean, b_m2 = state["mean"].to(f64), state["m2"].to(f64)
        total = count + n
        delta = b_mean - t["mean"]
        self._merged = dict(
            count=total,
            mean=t["mean"] + delta * (n / total),
            m2=t["m2"] + b_m2 + delta * delta * (count * n / total),
            min=torch.minimum(t["min"], state["min"].to(f64)),
            max=torch.maximum(t["max"], state["max"].to(f64)),
            **{k: t[k] + state[k].to(f64) for k in ("negative", "dead", "post")},
        )

    @property
    def count(self) -> int:
        """Values per channel seen so far (batch x height x width, summed over passes)."""
        return self._merge()["count"]

    @property
    def mean(self) -> torch.Tensor:
        return self._merge()["mean"]

    @property
    def std(self) -> torch.Tensor:
        s = self._merge()
        return (s["m2"] / max(s["count"], 1)).sqrt()

    @property
    def min(self) -> torch.Tensor:
        return self._merge()["min"]

    @property
    def max(self) -> torch.Tensor:
        return self._merge()["max"]

    @property
    def frac_negative(self) -> torch.Tensor:
        s = self._merge()
        return s["negative"] / max(s["count"], 1)

    @property
    def frac_dead(self) -> torch.Tensor:
        s = self._merge()
        return s["dead"] / max(s["count"], 1)

    @property
    def post_mean(self) -> torch.Tensor:
        s = self._merge()
        return s["post"] / max(s["count"], 1)

    def table(self, layer: str = "") -> list[dict]:
        """One dict per channel with the ``STATS_COLUMNS`` keys (plain Python numbers)."""
        cols = {k: getattr(self, k).tolist() for k in STATS_COLUMNS[3:]}
        count = self.count
        return [{"layer": layer, "channel": c, "count": count, **{k: v[c] for k, v in cols.items()}}
                for c in range(self.channels)]

    def summary(self) -> dict:
        """Whole-layer numbers pooled over all channels: mean, std, min, max, fractions, post_mean."""
        mean_c = self.mean
        mean = float(mean_c.mean())
        # pooled variance = mean within-channel variance + variance of the channel means
        var = float((self.std**2).mean() + ((mean_c - mean) ** 2).mean())
        return {
            "count": self.count * self.channels,
            "mean": mean,
            "std": var**0.5,
            "min": float(self.min.min()),
            "max": float(self.max.max()),
            "frac_negative": float(self.frac_negative.mean()),
            "frac_dead": float(self.frac_dead.mean()),
            "post_mean": float(self.post_mean.mean()),
        }
