/*
 * One read per feature map for the inspector's stats mode (pipeline/inspector.py, ChannelStats), and for the
 * channel atlas's tables (ChannelAtlas, below).
 *
 * Torch needs a separate pass over memory for every statistic (sum, sum of squares, min, max, and a
 * write + a sum for each count); on yolov8n at 640 px that is ~10 passes over 13.6 M values per image,
 * 20-30 % of a forward pass. Here each value of z = bn(conv(x)) is read once for all five of its
 * statistics, and each value of a = SiLU(z) once for its two.
 *
 * The loops keep LANES independent accumulators (no reassociation needed), which GCC turns into SIMD
 * code at -O3; on x86-64 an AVX2 clone is picked at load time where the CPU has it. Sums are taken of
 * z - pivot (pivot = the channel's first value), so that sum((z - p)^2) does not cancel when a channel's
 * mean dwarfs its spread, and lane sums go into double every BLOCK values so float32 rounding stays
 * ~1e-6 relative however big the map.
 *
 * The Python side (ChannelStats) checks dtype, device and layout, passes data pointers, and falls back
 * to torch for anything else; torch's own reductions are the oracle in tests/test_channel_stats.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 1024 /* values per flush of the float32 lane sums into double: a multiple of LANES */

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(CHANNEL_STATS_NO_CLONES)
#define MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define MULTIVERSION
#endif

/* GCC/Clang vector types of 16 bytes, the SIMD width every 64-bit target has (SSE2, NEON); U of them per
 * step, so U independent add chains hide the adds' latency and AVX2 can pair them. */
typedef float vf __attribute__((vector_size(16)));
typedef int32_t vi __attribute__((vector_size(16)));
#define VL 4
#define U 4
#define LANES (VL * U)

/* Macros, not functions: a vector passed by value to a non-inlined function would change ABI by target. */
#define LOAD(v, ptr) memcpy(&(v), (ptr), sizeof(v))                  /* unaligned vector load */
#define PICK(m, a, b) ((vf)((((vi)(a)) & (m)) | (((vi)(b)) & ~(m)))) /* m ? a : b per lane */
#define HSUM(acc, v)                                                                                              \
    do {                                                                                                          \
        for (int k_ = 0; k_ < U; k_++)                                                                            \
            for (int j_ = 0; j_ < VL; j_++) (acc) += (double)(v)[k_][j_];                                         \
    } while (0)

/* z statistics of one run of n values, added into acc = {sum(z-p), sum((z-p)^2), min, max, count(z < 0)};
 * min and max skip NaNs (a NaN shows in the sums instead). */
MULTIVERSION
static void pre_run(const float *x, Py_ssize_t n, float p, double *acc)
{
    Py_ssize_t i = 0;
    const vf pv = p - (vf){0}, zero = {0}, inf = INFINITY - (vf){0};
    vf lo[U], hi[U];
    for (int k = 0; k < U; k++) lo[k] = inf, hi[k] = -inf;
    while (i + LANES <= n) {
        vf s[U], q[U];
        vi neg[U];
        for (int k = 0; k < U; k++) s[k] = q[k] = zero, neg[k] = (vi){0};
        Py_ssize_t end = i + BLOCK <= n ? i + BLOCK : n - (n - i) % LANES;
        for (; i < end; i += LANES) {
            for (int k = 0; k < U; k++) {
                vf v, d;
                LOAD(v, x + i + k * VL);
                d = v - pv;
                s[k] += d;
                q[k] += d * d;
                lo[k] = PICK(v < lo[k], v, lo[k]);
                hi[k] = PICK(v > hi[k], v, hi[k]);
                neg[k] -= v < zero; /* a true comparison is -1 */
            }
        }
        HSUM(acc[0], s);
        HSUM(acc[1], q);
        HSUM(acc[4], neg);
    }
    for (int k = 0; k < U; k++)
        for (int j = 0; j < VL; j++) {
            acc[2] = lo[k][j] < acc[2] ? lo[k][j] : acc[2];
            acc[3] = hi[k][j] > acc[3] ? hi[k][j] : acc[3];
        }
    for (; i < n; i++) {
        float v = x[i], d = v - p;
        acc[0] += d;
        acc[1] += (double)d * d;
        acc[2] = v < acc[2] ? v : acc[2];
        acc[3] = v > acc[3] ? v : acc[3];
        acc[4] += v < 0.0f;
    }
}

/* a statistics of one run of n values, added into acc = {count(|a| < eps), sum(a)}. */
MULTIVERSION
static void post_run(const float *x, Py_ssize_t n, float eps, double *acc)
{
    Py_ssize_t i = 0;
    const vf ev = eps - (vf){0}, zero = {0};
    while (i + LANES <= n) {
        vf s[U];
        vi dead[U];
        for (int k = 0; k < U; k++) s[k] = zero, dead[k] = (vi){0};
        Py_ssize_t end = i + BLOCK <= n ? i + BLOCK : n - (n - i) % LANES;
        for (; i < end; i += LANES) {
            for (int k = 0; k < U; k++) {
                vf v;
                LOAD(v, x + i + k * VL);
                s[k] += v;
                dead[k] -= (v < ev) & (v > -ev); /* |a| < eps */
            }
        }
        HSUM(acc[1], s);
        HSUM(acc[0], dead);
    }
    for (; i < n; i++) {
        acc[0] += fabsf(x[i]) < eps;
        acc[1] += x[i];
    }
}

/* sum((x - mean)^2) over channel c of all B images, in double: the exact second pass. */
static double squared_deviations(const float *x, Py_ssize_t B, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t c,
                                 double mean)
{
    double m2 = 0.0;
    for (Py_ssize_t b = 0; b < B; b++) {
        const float *r = x + (b * C + c) * HW;
        for (Py_ssize_t i = 0; i < HW; i++) m2 += ((double)r[i] - mean) * ((double)r[i] - mean);
    }
    return m2;
}

/* Whether channel c holds a NaN: asked only when its sums came out NaN, which +inf and -inf together, or
 * float32 lane sums overflowing both ways, also cause. */
static int any_nan(const float *x, Py_ssize_t B, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t c)
{
    for (Py_ssize_t b = 0; b < B; b++) {
        const float *r = x + (b * C + c) * HW;
        for (Py_ssize_t i = 0; i < HW; i++)
            if (r[i] != r[i]) return 1;
    }
    return 0;
}

/* sum(x) over channel c of all B images, in double: where float32 lane sums overflowed. */
static double double_sum(const float *x, Py_ssize_t B, Py_ssize_t C, Py_ssize_t HW, Py_ssize_t c)
{
    double s = 0.0;
    for (Py_ssize_t b = 0; b < B; b++) {
        const float *r = x + (b * C + c) * HW;
        for (Py_ssize_t i = 0; i < HW; i++) s += r[i];
    }
    return s;
}

/* One call's work: channels [c0, c1) of a BxCxHW map; `number` is the cancel ratio (pre) or eps (post). */
typedef struct {
    const float *x;
    Py_ssize_t B, C, HW, c0, c1;
    double number, *out;
    int post;
} job_t;

static void pre_channels(const job_t *j)
{
    const double n = (double)j->B * j->HW;
    for (Py_ssize_t c = j->c0; c < j->c1; c++) {
        double acc[5], *o = j->out + 5 * c;
        float p = j->x[c * j->HW]; /* the pivot: the channel's first value, or 0 if that is inf or NaN */
        p = isfinite(p) ? p : 0.0f;
        acc[0] = acc[1] = acc[4] = 0.0;
        acc[2] = INFINITY, acc[3] = -INFINITY;
        for (Py_ssize_t b = 0; b < j->B; b++) pre_run(j->x + (b * j->C + c) * j->HW, j->HW, p, acc);
        o[2] = acc[2];
        o[3] = acc[3];
        o[4] = acc[4];
        if ((isnan(acc[0]) || isnan(acc[1])) && any_nan(j->x, j->B, j->C, j->HW, c)) {
            /* a NaN in the map: sum, spread, min and max are NaN, as in torch */
            o[0] = o[1] = o[2] = o[3] = NAN;
            continue;
        }
        if (isfinite(acc[2]) && isfinite(acc[3]) && !(isfinite(acc[0]) && isfinite(acc[1]))) {
            /* finite values beyond ~1e19: the float32 lane sums overflowed; take both sums in double */
            double sum = double_sum(j->x, j->B, j->C, j->HW, c);
            o[0] = sum;
            o[1] = squared_deviations(j->x, j->B, j->C, j->HW, c, sum / n);
            continue;
        }
        /* mean = p + sum(d)/n and m2 = sum(d^2) - sum(d)^2/n with d = x - p; when the pivot p sat far out in the
         * tail ((mean - p)^2 > cancel * variance) that difference loses digits: then take the exact second pass */
        double shift = acc[0] / n, m2 = acc[1] - acc[0] * shift;
        if (m2 < 0.0) m2 = 0.0; /* rounding; a NaN (from inf - inf: the map holds inf) stays NaN, as in torch */
        if (shift * shift * n > j->number * m2 && isfinite(m2))
            m2 = squared_deviations(j->x, j->B, j->C, j->HW, c, p + shift);
        o[0] = p * n + acc[0]; /* sum(x) */
        o[1] = m2;
    }
}

static void post_channels(const job_t *j)
{
    const float eps = (float)j->number; /* compared in float32, as torch compares a float32 map with a scalar */
    for (Py_ssize_t c = j->c0; c < j->c1; c++) {
        double *acc = j->out + 2 * c;
        acc[0] = acc[1] = 0.0;
        for (Py_ssize_t b = 0; b < j->B; b++) post_run(j->x + (b * j->C + c) * j->HW, j->HW, eps, acc);
    }
}

static void run_job(const job_t *j)
{
    if (j->post)
        post_channels(j);
    else
        pre_channels(j);
}

#ifndef MIN_PER_THREAD
#define MIN_PER_THREAD (1 << 15) /* values: below ~20 us of work, waking a thread costs more than it saves */
#endif

/* Threads for a map of C channels and n values: the caller's count, at most one per channel and one per
 * MIN_PER_THREAD values, at least one. */
static Py_ssize_t thread_count(int threads, Py_ssize_t C, Py_ssize_t n)
{
    Py_ssize_t nt = threads < 1 ? 1 : threads, by_size = n / MIN_PER_THREAD;
    nt = nt > C ? C : nt;
    nt = nt > by_size ? by_size : nt;
    return nt < 1 ? 1 : nt;
}

/* With OpenMP the channels are split over the caller's thread count. The loader hands this module the libgomp
 * torch already loaded (same soname), so these are torch's own worker threads, which are spinning idle right
 * after the conv and BatchNorm kernels; threads of our own would have to fight those for the cores. */
static PyObject *run(PyObject *args, int post)
{
    unsigned long long px, po;
    job_t job;
    int threads;
    if (!PyArg_ParseTuple(args, "KnnndiK", &px, &job.B, &job.C, &job.HW, &job.number, &threads, &po)) return NULL;
    if (job.B < 1 || job.C < 1 || job.HW < 1 || !px || !po) {
        PyErr_SetString(PyExc_ValueError, "empty feature map or null pointer");
        return NULL;
    }
    job.x = (const float *)(uintptr_t)px;
    job.out = (double *)(uintptr_t)po;
    job.post = post;
    const Py_ssize_t nt = thread_count(threads, job.C, job.C * job.B * job.HW);
    Py_BEGIN_ALLOW_THREADS
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads((int)nt) if (nt > 1)
#endif
    for (Py_ssize_t t = 0; t < nt; t++) {
        job_t part = job;
        part.c0 = job.C * t / nt;
        part.c1 = job.C * (t + 1) / nt;
        run_job(&part);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *pre(PyObject *self, PyObject *args) { return run(args, 0); }
static PyObject *post(PyObject *self, PyObject *args) { return run(args, 1); }

/* The channel atlas's per-photo tables (pipeline/probe/atlas_stats.py, ChannelAtlas.update), in one read of a
 * C x HW float32 map: each value's histogram bin from the 16-bit lookup tables (``bin_lookup``: the bin of the
 * value's float32 cell, plus one at or above the cell's edge), counted straight into the running histograms
 * (all photos, labelled photos, the cell's first box class), its sum per slot (box class, or k = outside every
 * box) in double, and each channel's maximum and its first position (NaN wins, as in torch.max). Torch needed
 * a per-photo table of C x (k + 1) x bins counts, the size of the running tables, for every photo and layer. */
typedef struct {
    const float *x;
    const uint8_t *slot; /* HW slots, or NULL: an unlabelled photo (everything in slot 0) */
    const int64_t *base;
    const float *edge;
    int64_t *hist, *hist_lab, *hist_class; /* C x bins, C x bins (or NULL), C x k x bins (or NULL) */
    double *sums;                          /* C x slots */
    float *best;
    int64_t *where;
    Py_ssize_t C, HW, k, bins, c0, c1;
} atlas_t;

static void atlas_channels(const atlas_t *j)
{
    const Py_ssize_t slots = j->slot ? j->k + 1 : 1;
    for (Py_ssize_t c = j->c0; c < j->c1; c++) {
        const float *x = j->x + c * j->HW;
        int64_t *hist = j->hist + c * j->bins, *lab = j->hist_lab ? j->hist_lab + c * j->bins : NULL;
        int64_t *cls = j->hist_class ? j->hist_class + c * j->k * j->bins : NULL;
        double *sums = j->sums + c * slots;
        float best = x[0];
        Py_ssize_t at = 0;
        int nan = isnan(best);
        for (Py_ssize_t i = 0; i < j->HW; i++) {
            const float v = x[i];
            uint32_t u;
            memcpy(&u, &v, sizeof u);
            const Py_ssize_t cell = u >> 16, b = j->base[cell] + (v >= j->edge[cell]);
            hist[b]++;
            if (j->slot) {
                const Py_ssize_t s = j->slot[i];
                lab[b]++;
                if (s < j->k) cls[s * j->bins + b]++;
                sums[s] += v;
            } else {
                sums[0] += v;
            }
            if (!nan && (v > best || isnan(v))) best = v, at = i, nan = isnan(v);
        }
        j->best[c] = best;
        j->where[c] = at;
    }
}

static PyObject *atlas(PyObject *self, PyObject *args)
{
    unsigned long long px, pslot, pbase, pedge, phist, plab, pcls, psums, pbest, pwhere;
    atlas_t job;
    int threads;
    if (!PyArg_ParseTuple(args, "KnnKnKKnKKKKKKi", &px, &job.C, &job.HW, &pslot, &job.k, &pbase, &pedge, &job.bins,
                          &phist, &plab, &pcls, &psums, &pbest, &pwhere, &threads))
        return NULL;
    if (job.C < 1 || job.HW < 1 || job.bins < 1 || !px || !pbase || !pedge || !phist || !psums || !pbest || !pwhere ||
        (pslot && (!plab || (job.k > 0 && !pcls)))) {
        PyErr_SetString(PyExc_ValueError, "empty feature map or null pointer");
        return NULL;
    }
    job.x = (const float *)(uintptr_t)px;
    job.slot = (const uint8_t *)(uintptr_t)pslot;
    job.base = (const int64_t *)(uintptr_t)pbase;
    job.edge = (const float *)(uintptr_t)pedge;
    job.hist = (int64_t *)(uintptr_t)phist;
    job.hist_lab = (int64_t *)(uintptr_t)plab;
    job.hist_class = (int64_t *)(uintptr_t)pcls;
    job.sums = (double *)(uintptr_t)psums;
    job.best = (float *)(uintptr_t)pbest;
    job.where = (int64_t *)(uintptr_t)pwhere;
    const Py_ssize_t nt = thread_count(threads, job.C, job.C * job.HW);
    Py_BEGIN_ALLOW_THREADS
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads((int)nt) if (nt > 1)
#endif
    for (Py_ssize_t t = 0; t < nt; t++) {
        atlas_t part = job;
        part.c0 = job.C * t / nt;
        part.c1 = job.C * (t + 1) / nt;
        atlas_channels(&part);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"pre", pre, METH_VARARGS,
     "pre(z_ptr, B, C, HW, cancel, threads, out_ptr): per channel of a contiguous float32 BxCxHW map, write\n"
     "5 float64 {sum(z), sum((z - mean)^2), min, max, count(z < 0)}; cancel: see CANCEL_RATIO in inspector.py."},
    {"post", post, METH_VARARGS,
     "post(a_ptr, B, C, HW, eps, threads, out_ptr): per channel write 2 float64 {count(|a| < eps), sum(a)}."},
    {"atlas", atlas, METH_VARARGS,
     "atlas(a_ptr, C, HW, slot_ptr, k, base_ptr, edge_ptr, bins, hist_ptr, hist_lab_ptr, hist_class_ptr, sums_ptr,\n"
     "best_ptr, where_ptr, threads): one photo's C x HW float32 map into the channel atlas's running tables (added\n"
     "to); slot_ptr 0: an unlabelled photo (sums has one slot, hist_lab and hist_class unused)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_channel_stats",
                                    "One-read per-channel statistics for the inspector's stats mode.", -1, methods};

PyMODINIT_FUNC PyInit__channel_stats(void) { return PyModule_Create(&module); }
