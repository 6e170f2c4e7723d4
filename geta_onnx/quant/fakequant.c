/* The linear GETA fake quantizer (t = 1) of a per-tensor quantizer, fused: one pass over x
 * forward, one over (grad, x) backward. geta_onnx/quant/kernel.py compiles this file with
 * the system C compiler and calls it through ctypes; quantizer.py falls back to torch ops
 * where it cannot be built. The formulas are those of quantizer.py's docstring:
 *
 *   c = clip(x, lo, q), lo = -q (unsigned: 0);  z = c / d;  Q(x) = round(z) * d
 *   dQ/dx = 1 inside (-q < x < q; unsigned 0 <= x < q), else 0
 *   dQ/dd = round(z) - z
 *   dQ/dq = +1 where x >= q, -1 where x <= -q (unsigned: never), else 0
 *
 * The forward is bitwise quantizer.py's torch path: the same float32 operations (a true
 * division, not a reciprocal) and round half to even, as torch.round. The backward's two
 * sums are taken per block of BLOCK elements, in 8 double lanes, and the caller adds the
 * blocks' sums: the result does not depend on the thread count.
 *
 * Threads: OpenMP when the compiler has it. Loaded into a process that has torch, the
 * library's libgomp.so.1 is torch's own (the loader matches the soname), so the kernel
 * runs on torch's intra-op threads instead of competing with them. Never -ffast-math: the
 * rounding relies on IEEE float32 addition, and the sums must not be reassociated.
 */
#include <math.h>
#include <stdint.h>

#define BLOCK 65536
#define LANES 8

#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

/* round half to even for float32 z, branch-free: below 2^23 adding and taking 2^23 leaves no
 * fraction bits (IEEE addition rounds to even); from 2^23 on every float is whole. */
static inline float round_even(float z) {
    float a = fabsf(z);
    float r = a < 8388608.0f ? (a + 8388608.0f) - 8388608.0f : a;
    return copysignf(r, z);
}

static inline float clip(float v, float lo, float q) {
    return v < lo ? lo : (v > q ? q : v); /* NaN passes, as with torch.clamp */
}

static inline int64_t block_end(int64_t b, int64_t n) {
    return (b + 1) * BLOCK < n ? (b + 1) * BLOCK : n;
}

int64_t geta_fq_blocks(int64_t n) { return (n + BLOCK - 1) / BLOCK; }

VECTOR_CLONES
static void forward_block(const float *restrict x, float *restrict out, int64_t n, float d, float q, float lo) {
    for (int64_t i = 0; i < n; i++) out[i] = round_even(clip(x[i], lo, q) / d) * d;
}

/* out = Q(x); lo = -q (signed) or 0 (unsigned). */
int geta_fq_forward(const float *x, float *out, int64_t n, float d, float q, float lo, int threads) {
    int64_t blocks = geta_fq_blocks(n);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++)
        forward_block(x + b * BLOCK, out + b * BLOCK, block_end(b, n) - b * BLOCK, d, q, lo);
    return 0;
}

VECTOR_CLONES
static void input_grad_block(const float *restrict grad, const float *restrict x, float *restrict gx, int64_t n,
                             float q, float lo) {
    /* outside: x >= q, or x <= -q (signed) / x < 0 (unsigned); NaN is inside, as in torch's path */
    if (lo < 0.0f)
        for (int64_t i = 0; i < n; i++) gx[i] = (x[i] >= q || x[i] <= lo) ? 0.0f : grad[i];
    else
        for (int64_t i = 0; i < n; i++) gx[i] = (x[i] >= q || x[i] < 0.0f) ? 0.0f : grad[i];
}

/* one element's term of dQ/dd * grad: (round(z) - z) * grad */
static inline float step_term(float g, float v, float d, float q, float lo) {
    float z = clip(v, lo, q) / d;
    return g * (round_even(z) - z);
}

/* one element's term of dQ/dq * grad: +grad at x >= q, -grad at x <= -q (signed only) */
static inline float range_term(float g, float v, float q, float lo, int is_signed) {
    return v >= q ? g : ((is_signed && v <= lo) ? -g : 0.0f);
}

static inline double lanes_sum(const double *lane) {
    double s = 0.0;
    for (int j = 0; j < LANES; j++) s += lane[j];
    return s;
}

VECTOR_CLONES
static double step_grad_block(const float *restrict grad, const float *restrict x, int64_t n, float d, float q,
                              float lo) {
    double lane[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) lane[j] += (double)step_term(grad[i + j], x[i + j], d, q, lo);
    for (; i < n; i++) lane[0] += (double)step_term(grad[i], x[i], d, q, lo);
    return lanes_sum(lane);
}

VECTOR_CLONES
static double range_grad_block(const float *restrict grad, const float *restrict x, int64_t n, float q, float lo) {
    double lane[LANES] = {0};
    int is_signed = lo < 0.0f;
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) lane[j] += (double)range_term(grad[i + j], x[i + j], q, lo, is_signed);
    for (; i < n; i++) lane[0] += (double)range_term(grad[i], x[i], q, lo, is_signed);
    return lanes_sum(lane);
}

/* gx (or NULL) = dQ/dx * grad; gd / gq (or NULL): geta_fq_blocks(n) partial sums each. */
int geta_fq_backward(const float *grad, const float *x, float *gx, double *gd, double *gq, int64_t n, float d,
                     float q, float lo, int threads) {
    int64_t blocks = geta_fq_blocks(n);
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t at = b * BLOCK, len = block_end(b, n) - at;
        if (gx) input_grad_block(grad + at, x + at, gx + at, len, q, lo);
        if (gd) gd[b] = step_grad_block(grad + at, x + at, len, d, q, lo);
        if (gq) gq[b] = range_grad_block(grad + at, x + at, len, q, lo);
    }
    return 0;
}
