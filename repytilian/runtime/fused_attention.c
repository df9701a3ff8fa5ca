/* Causal self-attention with dropout on its weights, forward and backward, for a CPU.

   What repytilian/attention.py's explicit_causal_attention computes when it drops out attention
   weights, one (batch, head) pair at a time: a pair's (T, T) matrices stay in the core's cache
   instead of going through memory five times, the future (half of each matrix) is never computed,
   and the dropout mask is not stored but drawn again in the backward pass from a hash of the
   element's place and a seed. The Python side (fused_attention.py) builds this file with the
   system's C compiler, loads it with ctypes, and checks it against the written-out attention.

   Each tensor is float32 or bf16 (as autocast hands them over: q and k may come normalised in
   float32, v in bf16); the arithmetic is float32 throughout, bf16 being widened as a pair's rows
   are gathered and rounded to nearest even as its results are written.

   The mask: element (pair, i, j) is kept when the top 16 bits of its hash are at least `dropped`
   (round(p * 65536), as dropout.py, 0 < dropped < 65536), so p is honoured to 1/65,536. */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct { void *p; int64_t sb, sh, st; int bf16; } View;  /* (B, H, T, D), D contiguous */

typedef struct {
    int64_t B, H, T, D;
    float scale, keep_scale;        /* 1/sqrt(D); 1/(1-p) */
    uint32_t dropped, seed0, seed1;
    View q, k, v, o, go;            /* inputs (o, go: the backward's) */
    float *lse;                     /* (B, H, T): each row's log of the softmax's denominator */
    View gq, gk, gv;                /* the backward's outputs */
    int threads, backward;
} Job;

static inline int64_t at(const View *x, int64_t b, int64_t h, int64_t t) { return b * x->sb + h * x->sh + t * x->st; }

static inline float get(const View *x, int64_t i) {
    if (!x->bf16) return ((const float *)x->p)[i];
    const uint32_t bits = (uint32_t)((const uint16_t *)x->p)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline uint16_t to_bf16(float f) {  /* rounded to nearest, ties to even (the inputs are finite) */
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    return (uint16_t)((bits + 0x7fffU + ((bits >> 16) & 1U)) >> 16);
}

static inline uint32_t mix32(uint32_t x) {  /* a well-mixing 32-bit hash (two multiplies) */
    x ^= x >> 16; x *= 0x7feb352dU; x ^= x >> 15; x *= 0x846ca68bU; x ^= x >> 16;
    return x;
}

/* 1 where row i's weight j is kept, for j < n, written to keep[0..n) as 0.0 or keep_scale */
static void draw_row(const Job *job, int64_t pair, int64_t i, int64_t n, float *keep) {
    uint32_t r = mix32((uint32_t)(pair * job->T + i) ^ job->seed1);
    for (int64_t j = 0; j < n; j++) {
        uint32_t h = mix32(r ^ ((uint32_t)j * 0x9e3779b9U) ^ job->seed0);
        keep[j] = (float)((h >> 16) >= job->dropped) * job->keep_scale;
    }
}

typedef float v8 __attribute__((vector_size(32)));  /* eight floats: one AVX register, two NEON */

typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8 load8(const float *p) { v8 x; memcpy(&x, p, sizeof x); return x; }
static inline void store8(float *p, v8 x) { memcpy(p, &x, sizeof x); }
static inline v8 splat(float x) { return (v8){ x, x, x, x, x, x, x, x }; }
static inline v8 select8(v8i where, v8 a, v8 b) { return (v8)(((v8i)a & where) | ((v8i)b & ~where)); }
static inline float sum8(v8 x) { return ((x[0] + x[4]) + (x[1] + x[5])) + ((x[2] + x[6]) + (x[3] + x[7])); }

/* exp(x) for x <= 0, eight at a time (Cephes' single-precision polynomial, to about 1 ulp) */
static inline v8 exp8(v8 x) {
    x = select8(x < splat(-87.0f), splat(-87.0f), x);
    const v8i n = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, v8i);  /* rounded: x <= 0 */
    const v8 nf = __builtin_convertvector(n, v8);
    const v8 r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    v8 y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r
             + 4.1665795894e-2f) * r + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    y = y * r * r + r + 1.0f;
    return y * (v8)((n + 127) << 23);
}

/* C = A B for R rows and 16 or 8 columns, k over [k0, k1), A read as its transpose where `trans`
   (row r's k-th value at A[k lda + r]): the accumulators stay in registers */
static inline __attribute__((always_inline)) void tile(int R, int wide, int trans, int64_t k0, int64_t k1,
        const float *A, int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
    v8 acc[4][2];
    for (int r = 0; r < R; r++) acc[r][0] = acc[r][1] = (v8){0};
    for (int64_t k = k0; k < k1; k++) {
        const v8 b0 = load8(B + k * ldb), b1 = wide ? load8(B + k * ldb + 8) : (v8){0};
        for (int r = 0; r < R; r++) {
            const float a = trans ? A[k * lda + r] : A[r * lda + k];
            acc[r][0] += a * b0;
            if (wide) acc[r][1] += a * b1;
        }
    }
    for (int r = 0; r < R; r++) {
        store8(C + r * ldc, acc[r][0]);
        if (wide) store8(C + r * ldc + 8, acc[r][1]);
    }
}

/* Which part of a product's inner range a row block [r, r + R) reads: all of it (and, for the scores,
   only the columns up to the block's last row: the rest is the future), or only the part where a
   causal matrix is not zero: k <= the row (LOWER) or k >= the row (UPPER, its transpose). */
enum { SCORES, LOWER, UPPER };

/* C = A B, C being rows x cols (cols a multiple of 8), the inner dimension n; for UPPER, A is given
   as its transpose (the causal matrix itself) */
static void matmul(int mode, int64_t rows, int64_t cols, int64_t n, const float *A, int64_t lda,
                   const float *B, int64_t ldb, float *C, int64_t ldc) {
    const int trans = mode == UPPER;
    for (int64_t r = 0; r < rows; r += 4) {
        const int R = rows - r >= 4 ? 4 : (int)(rows - r);
        const int64_t k0 = mode == UPPER ? r : 0, k1 = mode == LOWER && r + R < n ? r + R : n;
        const int64_t width = mode == SCORES && (r + R + 15) / 16 * 16 < cols ? (r + R + 15) / 16 * 16 : cols;
        for (int64_t c = 0; c < width; c += 16) {
            const int wide = width - c >= 16;
            const float *a = trans ? A + r : A + r * lda;
            const int64_t next = trans ? 1 : lda;  /* from one row of C to the next, in A */
            float *out = C + r * ldc + c;
            /* the common cases spelled out, so that each is compiled with its loops unrolled */
            if (R == 4 && wide && trans) tile(4, 1, 1, k0, k1, a, lda, B + c, ldb, out, ldc);
            else if (R == 4 && wide) tile(4, 1, 0, k0, k1, a, lda, B + c, ldb, out, ldc);
            else if (R == 4 && trans) tile(4, 0, 1, k0, k1, a, lda, B + c, ldb, out, ldc);
            else if (R == 4) tile(4, 0, 0, k0, k1, a, lda, B + c, ldb, out, ldc);
            else for (int rr = 0; rr < R; rr++)
                tile(1, wide, trans, k0, k1, a + rr * next, lda, B + c, ldb, out + rr * ldc, ldc);
        }
    }
}

/* A (B, H, T, D) pair's rows times `scale`, into a (Tp, D) buffer, zero past T */
static void gather_rows(const View *x, int64_t b, int64_t h, int64_t T, int64_t Tp, int64_t D, float scale, float *rows) {
    for (int64_t t = 0; t < T; t++) {
        const int64_t src = at(x, b, h, t);
        for (int64_t d = 0; d < D; d++) rows[t * D + d] = get(x, src + d) * scale;
    }
    memset(rows + T * D, 0, (Tp - T) * D * sizeof(float));
}

/* A pair's (D, Tp) transpose, zero past T */
static void gather_columns(const View *x, int64_t b, int64_t h, int64_t T, int64_t Tp, int64_t D, float *cols) {
    for (int64_t t = 0; t < T; t++) {
        const int64_t src = at(x, b, h, t);
        for (int64_t d = 0; d < D; d++) cols[d * Tp + t] = get(x, src + d);
    }
    for (int64_t d = 0; d < D; d++) memset(cols + d * Tp + T, 0, (Tp - T) * sizeof(float));
}

typedef struct { float *q, *k, *v, *kt, *vt, *go, *s, *w, *t, *keep; } Scratch;

/* Where a product gives a pair's (T, D) result: straight into a float32 output, or into `spare` (a
   panel of scratch no longer needed) for a bf16 one, which `put` then rounds into place */
typedef struct { float *p; int64_t ld; } Target;

static Target target(const View *x, int64_t b, int64_t h, float *spare, int64_t D) {
    return x->bf16 ? (Target){ spare, D } : (Target){ (float *)x->p + at(x, b, h, 0), x->st };
}

static void put(const View *x, int64_t b, int64_t h, int64_t T, int64_t D, Target result) {
    if (!x->bf16) return;
    for (int64_t t = 0; t < T; t++) {
        uint16_t *dst = (uint16_t *)x->p + at(x, b, h, t);
        for (int64_t d = 0; d < D; d++) dst[d] = to_bf16(result.p[t * D + d]);
    }
}

/* The weights of row i from its scores s[0..i]: s[0..i] = exp(scores - lse) (before dropout), w[0..Tp)
   those kept, scaled, and zero in the future. Forward (lse NULL): the softmax, which also finds lse. */
static float weights_row(const Job *job, int64_t pair, int64_t i, int64_t Tp, float *s, float *w, float *keep,
                         const float *lse) {
    const int64_t n = i + 1, whole = (n + 7) / 8 * 8;  /* Tp is a multiple of 16: s has room */
    for (int64_t j = n; j < whole; j++) s[j] = -1e30f;  /* the future: exp gives ~0, the max ignores it */
    float m = lse ? *lse : s[0];
    if (!lse) {
        v8 m8 = splat(m);
        for (int64_t j = 0; j < whole; j += 8) { const v8 x = load8(s + j); m8 = select8(x > m8, x, m8); }
        for (int k = 0; k < 8; k++) m = fmaxf(m, m8[k]);
    }
    v8 total = splat(0.0f);
    for (int64_t j = 0; j < whole; j += 8) {
        const v8 e = exp8(load8(s + j) - m);
        store8(s + j, e);
        total += e;
    }
    const float sum = sum8(total), inv = lse ? 1.0f : 1.0f / sum;
    draw_row(job, pair, i, n, keep);
    for (int64_t j = 0; j < n; j++) { s[j] *= inv; w[j] = s[j] * keep[j]; }
    for (int64_t j = n; j < Tp; j++) w[j] = 0.0f;
    return m + logf(sum);
}

static void forward_pair(const Job *job, int64_t b, int64_t h, const Scratch *x) {
    const int64_t T = job->T, D = job->D, Tp = (T + 15) / 16 * 16, pair = b * job->H + h;
    gather_rows(&job->q, b, h, T, Tp, D, job->scale, x->q);
    gather_columns(&job->k, b, h, T, Tp, D, x->kt);
    gather_rows(&job->v, b, h, T, Tp, D, 1.0f, x->v);
    matmul(SCORES, T, Tp, D, x->q, D, x->kt, Tp, x->s, Tp);  /* the scores: (q / sqrt(D)) k^T */
    for (int64_t i = 0; i < T; i++) {
        float *s = x->s + i * Tp;
        job->lse[pair * T + i] = weights_row(job, pair, i, Tp, s, x->w + i * Tp, x->keep, NULL);
    }
    const Target out = target(&job->o, b, h, x->q, D);  /* q's panel is free once the scores are */
    matmul(LOWER, T, D, T, x->w, Tp, x->v, D, out.p, out.ld);
    put(&job->o, b, h, T, D, out);
}

static void backward_pair(const Job *job, int64_t b, int64_t h, const Scratch *x) {
    const int64_t T = job->T, D = job->D, Tp = (T + 15) / 16 * 16, pair = b * job->H + h;
    gather_rows(&job->q, b, h, T, Tp, D, job->scale, x->q);  /* the scale: the scores', dq's, dk's */
    gather_rows(&job->k, b, h, T, Tp, D, job->scale, x->k);
    gather_columns(&job->k, b, h, T, Tp, D, x->kt);
    gather_columns(&job->v, b, h, T, Tp, D, x->vt);
    gather_rows(&job->go, b, h, T, Tp, D, 1.0f, x->go);
    gather_rows(&job->o, b, h, T, Tp, D, 1.0f, x->v);  /* the forward's output, in v's panel */
    matmul(SCORES, T, Tp, D, x->q, D, x->kt, Tp, x->s, Tp);
    float *dw = x->t;  /* first the gradient of the kept weights, then of the scores */
    matmul(SCORES, T, Tp, D, x->go, D, x->vt, Tp, dw, Tp);
    for (int64_t i = 0; i < T; i++) {
        float *s = x->s + i * Tp, *w = x->w + i * Tp, *g = dw + i * Tp;
        const float *go = x->go + i * D, *o = x->v + i * D;
        weights_row(job, pair, i, Tp, s, w, x->keep, &job->lse[pair * T + i]);
        float delta = 0.0f;  /* sum over j of the weights' gradient times the weights: go . o */
        for (int64_t d = 0; d < D; d++) delta += go[d] * o[d];
        for (int64_t j = 0; j <= i; j++) g[j] = s[j] * (x->keep[j] * g[j] - delta);
        for (int64_t j = i + 1; j < Tp; j++) g[j] = 0.0f;
    }
    for (int64_t i = T; i < Tp; i++)
        for (int64_t j = 0; j < Tp; j++) x->w[i * Tp + j] = dw[i * Tp + j] = 0.0f;
    const Target gq = target(&job->gq, b, h, x->kt, D), gv = target(&job->gv, b, h, x->vt, D),
                 gk = target(&job->gk, b, h, x->v, D);  /* panels free by now */
    matmul(LOWER, T, D, T, dw, Tp, x->k, D, gq.p, gq.ld);
    matmul(UPPER, T, D, T, x->w, Tp, x->go, D, gv.p, gv.ld);
    matmul(UPPER, T, D, T, dw, Tp, x->q, D, gk.p, gk.ld);
    put(&job->gq, b, h, T, D, gq);
    put(&job->gv, b, h, T, D, gv);
    put(&job->gk, b, h, T, D, gk);
}

/* One thread's share of the (batch, head) pairs, with its own scratch buffers; 0 when done */
static int run_pairs(const Job *job, int64_t first, int64_t last) {
    const int64_t Tp = (job->T + 15) / 16 * 16, D = job->D, panel = Tp * D, square = Tp * Tp;
    float *all = malloc(sizeof(float) * (6 * panel + 3 * square + Tp));
    if (!all) return 1;
    Scratch x = { all, all + panel, all + 2 * panel, all + 3 * panel, all + 4 * panel, all + 5 * panel,
                  all + 6 * panel, all + 6 * panel + square, all + 6 * panel + 2 * square, all + 6 * panel + 3 * square };
    for (int64_t pair = first; pair < last; pair++) {
        const int64_t b = pair / job->H, h = pair % job->H;
        if (job->backward) backward_pair(job, b, h, &x);
        else forward_pair(job, b, h, &x);
    }
    free(all);
    return 0;
}

/* The pairs split among `threads` threads of OpenMP, the runtime torch's own CPU kernels use (so
   that its threads, waiting between operations, are the ones that run these); 0 when done */
static int run(const Job *job) {
    const int64_t pairs = job->B * job->H;
    int failed = 0;
#pragma omp parallel num_threads(job->threads) reduction(|:failed)
    {
#ifdef _OPENMP
        const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
#else
        const int64_t t = 0, n = 1;
#endif
        failed |= run_pairs(job, pairs * t / n, pairs * (t + 1) / n);
    }
    return failed;
}

/* Whether this build runs on several threads: without OpenMP it runs on one */
int attention_threads(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* A tensor as Python hands it over: its data, and its (B, H, T) strides followed by 1 for bf16, 0 for float32 */
static View view(const void *p, const int64_t *strides) {
    return (View){ (void *)p, strides[0], strides[1], strides[2], (int)strides[3] };
}

int attention_forward(const int64_t *shape, uint32_t dropped, uint64_t seed, int threads,
                      const void *q, const int64_t *sq, const void *k, const int64_t *sk,
                      const void *v, const int64_t *sv, void *out, const int64_t *so, float *lse) {
    Job job = { shape[0], shape[1], shape[2], shape[3], 1.0f / sqrtf((float)shape[3]),
                65536.0f / (float)(65536 - dropped), dropped,
                (uint32_t)seed, (uint32_t)(seed >> 32),
                view(q, sq), view(k, sk), view(v, sv), view(out, so), { 0 }, lse, { 0 }, { 0 }, { 0 }, threads, 0 };
    return run(&job);
}

int attention_backward(const int64_t *shape, uint32_t dropped, uint64_t seed, int threads,
                       const void *q, const int64_t *sq, const void *k, const int64_t *sk,
                       const void *v, const int64_t *sv, const void *out, const int64_t *so, const float *lse,
                       const void *go, const int64_t *sgo, void *gq, const int64_t *sgq,
                       void *gk, const int64_t *sgk, void *gv, const int64_t *sgv) {
    Job job = { shape[0], shape[1], shape[2], shape[3], 1.0f / sqrtf((float)shape[3]),
                65536.0f / (float)(65536 - dropped), dropped,
                (uint32_t)seed, (uint32_t)(seed >> 32),
                view(q, sq), view(k, sk), view(v, sv), view(out, so), view(go, sgo), (float *)lse,
                view(gq, sgq), view(gk, sgk), view(gv, sgv), threads, 1 };
    return run(&job);
}

/* Dropout of n values in one pass (the embeddings' and residual branches'), for dropout.py: out[i]
   = x[i] * keep(i) / (1 - p), float32 or bf16 in and out (bf16 widened, multiplied in float32,
   rounded to nearest even). Values 2j and 2j + 1 are kept by the low and the high 16 bits of a
   hash of j and the seed (the attention's rule: at least `dropped`): the backward pass calls it
   again on the gradient with the same seed, so no mask is stored. */
static inline uint32_t draw_two(uint64_t pair, uint32_t seed0, uint32_t seed1) {
    return mix32(mix32((uint32_t)pair ^ seed0) ^ ((uint32_t)(pair >> 32) * 0x9e3779b9U) ^ seed1);
}

static inline float widen(uint16_t b) {
    const uint32_t bits = (uint32_t)b << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

typedef struct { uint32_t dropped, seed0, seed1; float scale; } Drop;

static void drop_f32(const Drop *d, const float *x, float *out, int64_t first, int64_t last) {
    for (int64_t j = first; j < last; j++) {
        const uint32_t h = draw_two((uint64_t)j, d->seed0, d->seed1);
        out[2 * j] = x[2 * j] * ((float)((h & 0xffffU) >= d->dropped) * d->scale);
        out[2 * j + 1] = x[2 * j + 1] * ((float)((h >> 16) >= d->dropped) * d->scale);
    }
}

static void drop_bf16(const Drop *d, const uint16_t *x, uint16_t *out, int64_t first, int64_t last) {
    for (int64_t j = first; j < last; j++) {
        const uint32_t h = draw_two((uint64_t)j, d->seed0, d->seed1);
        out[2 * j] = to_bf16(widen(x[2 * j]) * ((float)((h & 0xffffU) >= d->dropped) * d->scale));
        out[2 * j + 1] = to_bf16(widen(x[2 * j + 1]) * ((float)((h >> 16) >= d->dropped) * d->scale));
    }
}

int dropout_apply(int64_t n, uint32_t dropped, uint64_t seed, int threads, const void *x, void *out, int bf16) {
    const Drop d = { dropped, (uint32_t)seed, (uint32_t)(seed >> 32), 65536.0f / (float)(65536 - dropped) };
    const int64_t pairs = n / 2, chunk = 4096, chunks = (pairs + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t first = c * chunk, last = first + chunk < pairs ? first + chunk : pairs;
        if (bf16) drop_bf16(&d, (const uint16_t *)x, (uint16_t *)out, first, last);
        else drop_f32(&d, (const float *)x, (float *)out, first, last);
    }
    if (n % 2) {  /* the last value, alone: its pair's low half */
        const float keep = (float)((draw_two((uint64_t)pairs, d.seed0, d.seed1) & 0xffffU) >= dropped) * d.scale;
        if (bf16) ((uint16_t *)out)[n - 1] = to_bf16(widen(((const uint16_t *)x)[n - 1]) * keep);
        else ((float *)out)[n - 1] = ((const float *)x)[n - 1] * keep;
    }
    return 0;
}
