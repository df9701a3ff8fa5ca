/* Several tokens of one sequence through a built decoding step, with no Python in between.

   A built step (decode_compiled.py) computes a token's logits in ~70-100 us for the shipped
   models, but each token through the generation engine also cost ~150 us of Python around it:
   the call, sampling in half a dozen small tensor operations, the batch's bookkeeping. This loop
   calls the step's library itself, chooses each next token here and feeds it back, so the
   engine's Python runs once per `count` tokens instead of once per token (decode_loop.py).

   It chooses as sampling.py does: greedy (temperature 0: the first likeliest token, exactly as
   torch's argmax), or drawn under temperature, top-k and top-p by the exponential race
   (sampling.first_arrival). A seeded request's waiting times come from its own generator, drawn by
   torch as a token at a time draws them; the others' are drawn here (splitmix64, from a seed torch
   draws a call) for the tokens top-k and top-p leave in only. A batch's sampled rows are chosen by
   the same code (choose_rows), so a seeded request's tokens are the same alone and in a batch.

   Torch's C interface (aoti_torch_*) and the library's entry point come in as function pointers
   from the process that loaded them: nothing here links to torch. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef void *Tensor;  /* torch's AtenTensorHandle: an owned reference to a tensor */

typedef struct {
    int32_t (*new_handle)(Tensor orig, Tensor *fresh);
    int32_t (*from_blob)(void *data, int64_t ndim, const int64_t *sizes, const int64_t *strides, int64_t offset,
                         int32_t dtype, int32_t device_type, int32_t device_index, Tensor *made);
    int32_t (*data_ptr)(Tensor t, void **data);
    int32_t (*release)(Tensor t);
    int32_t (*run)(void *container, Tensor *inputs, size_t n_inputs, Tensor *outputs, size_t n_outputs,
                   void *stream, void *proxy);
    void *container;
    int32_t float32, cpu;
} Torch;

typedef struct {
    double temperature;      /* 0: greedy */
    int64_t top_k;           /* 0: off */
    double top_p;            /* 1: off */
    const float *noise;      /* (count, vocab) exponential waiting times to use (tests), or NULL: drawn */
    const uint8_t *never;    /* vocab flags of ids never chosen (a padded vocabulary's), or NULL */
    uint64_t seed;           /* of the waiting times drawn here */
    int32_t logprobs;        /* whether the chosen tokens' log-probabilities are wanted */
} Choice;

/* splitmix64: a small, fast generator of 64 random bits a call */
static uint64_t next_bits(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* An exponential waiting time of rate 1: -log(u), u uniform in (0, 1] */
static float waiting_time(uint64_t *state) {
    return (float)-log((double)((next_bits(state) >> 11) + 1) * 0x1.0p-53);
}

enum { STEP_FAILED = -1, NOT_A_NUMBER = -2, NO_MEMORY = -3 };

/* The k-th largest of n values (1 <= k <= n), by selection; `a` is reordered. */
static float kth_largest(float *a, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) { float t = a[i]; a[i] = a[j]; a[j] = t; i++; j--; }
        }
        if (want <= j) hi = j; else if (want >= i) lo = i; else return a[want];
    }
    return a[want];
}

typedef struct { float w; int64_t id; } Weighed;

static int by_weight_descending(const void *x, const void *y) {
    const Weighed *a = (const Weighed *)x, *b = (const Weighed *)y;
    if (a->w != b->w) return a->w < b->w ? 1 : -1;
    return a->id < b->id ? -1 : 1;  /* ties: the lower id first */
}

/* The next token from one row of logits, or NOT_A_NUMBER; its log-probability (of the logits as
   given: before temperature and filtering, as the engine reports it) into *logprob where asked.
   `w` and `order` are vocab-long scratch space; sampling exponentiates only the tokens top-k leaves in. Greedy is torch's argmax over the allowed ids (a
   NaN counts as the largest, the first of equals wins); sampling refuses NaN and +inf, whose
   probabilities torch's softmax makes NaN (sampling.first_arrival). */
static int64_t choose(const float *logits, int64_t vocab, const Choice *c, const float *noise,
                      uint64_t *state, float *w, Weighed *order, float *logprob) {
    float top = -INFINITY;
    int64_t best = -1, invalid = 0;
    for (int64_t i = 0; i < vocab; i++) {
        float l = logits[i];
        if (c->never && c->never[i]) continue;
        if (isnan(l) || l == INFINITY) invalid = 1;
        if (best < 0 || (!isnan(top) && (isnan(l) || l > top))) { top = l; best = i; }
    }
    if (best < 0 || (c->temperature > 0 && (invalid || top == -INFINITY))) return NOT_A_NUMBER;
    if (c->temperature > 0) {
        float t = (float)c->temperature, floor_ = -INFINITY, high = -INFINITY;
        for (int64_t i = 0; i < vocab; i++) w[i] = (c->never && c->never[i]) ? -INFINITY : logits[i] / t;
        if (c->top_k > 0 && c->top_k < vocab) {  /* below the k-th likeliest: out (sampling.probabilities) */
            float *copy = (float *)order;  /* scratch: room for `vocab` pairs */
            memcpy(copy, w, (size_t)vocab * sizeof(float));
            floor_ = kth_largest(copy, vocab, c->top_k);
        }
        int64_t kept = 0;  /* the tokens still in, with their weights: exp'd and normalised only they */
        for (int64_t i = 0; i < vocab; i++)
            if (w[i] >= floor_ && w[i] != -INFINITY) {
                order[kept++] = (Weighed){w[i], i};
                if (w[i] > high) high = w[i];
            }
        double sum = 0.0;
        for (int64_t r = 0; r < kept; r++) { order[r].w = expf(order[r].w - high); sum += order[r].w; }
        for (int64_t r = 0; r < kept; r++) order[r].w = (float)(order[r].w / sum);
        if (c->top_p < 1.0) {  /* drop a token once the likelier ones reach top_p; the likeliest stays */
            qsort(order, (size_t)kept, sizeof(Weighed), by_weight_descending);
            double before = 0.0;
            for (int64_t r = 0; r < kept; r++) {
                float p = order[r].w;
                if (before >= c->top_p) order[r].w = 0.0f;
                before += p;
            }
        }
        float race = -1.0f;  /* the first to arrive: the largest weight over its waiting time */
        for (int64_t r = 0; r < kept; r++) {
            if (order[r].w <= 0) continue;
            int64_t i = order[r].id;
            float arrival = order[r].w / fmaxf(noise ? noise[i] : waiting_time(state), FLT_MIN);
            if (arrival > race || (arrival == race && i < best)) { race = arrival; best = i; }
        }
    }
    if (c->logprobs) {
        float total = 0.0f;
        for (int64_t i = 0; i < vocab; i++)
            if (!(c->never && c->never[i])) total += expf(logits[i] - top);
        *logprob = logits[best] - top - logf(total);
    }
    return best;
}

/* The next token of each of `rows` rows of logits, each chosen its own way (choices[r]), into ids[r]
   (and logprobs[r] where asked): a batch's step (batching.py). 0, or the first row's negative error. */
int64_t choose_rows(const float *logits, int64_t rows, int64_t vocab, const Choice *choices, int64_t *ids,
                    float *logprobs) {
    float *w = (float *)malloc((size_t)vocab * sizeof(float));
    Weighed *order = (Weighed *)malloc((size_t)vocab * sizeof(Weighed));
    int64_t status = w && order ? 0 : NO_MEMORY;
    for (int64_t r = 0; r < rows && status == 0; r++) {
        uint64_t state = choices[r].seed;
        int64_t id = choose(logits + r * vocab, vocab, &choices[r], choices[r].noise, &state, w, order,
                            &logprobs[r]);
        if (id < 0) status = id; else ids[r] = id;
    }
    free(w);
    free(order);
    return status;
}

/* Up to `count` steps of `rows` rows (a token each), through a built step: each takes the rows'
   cache (the first n_inputs handles, the library's inputs but the span: keys and values a layer,
   then each row's token and its position, whose data are `tokens` and `positions`) and the span
   (the first max(min_span, longest position + 1) values of `span`; the whole `block` where block <=
   min_span). Row r's token of step k goes to ids[k * rows + r] (its log-probability likewise).
   Stops once a row's window is full, or every row has given its `end` token. Returns the steps
   made, or a negative error. */
int64_t decode_steps(const Torch *t, Tensor *inputs, int64_t n_inputs, int64_t rows, int64_t *tokens,
                     int64_t *positions, float *span, int64_t min_span, int64_t block, int64_t vocab,
                     int64_t count, int64_t end, const Choice *choices, int64_t *ids, float *logprobs) {
    float *w = (float *)malloc((size_t)vocab * sizeof(float));
    Weighed *order = (Weighed *)malloc((size_t)vocab * sizeof(Weighed));
    Tensor *step = (Tensor *)malloc((size_t)(n_inputs + 1) * sizeof(Tensor));
    uint64_t *states = (uint64_t *)malloc((size_t)rows * sizeof(uint64_t));
    uint8_t *ended = (uint8_t *)calloc((size_t)rows, 1);
    int64_t made = 0, one = 1, longest = 0, full = 0, left = rows, held = 0;  /* held: handles of `step` ours to release */
    if (!w || !order || !step || !states || !ended) { made = NO_MEMORY; goto done; }
    for (int64_t r = 0; r < rows; r++) {
        states[r] = choices[r].seed;
        if (positions[r] > longest) longest = positions[r];
    }
    while (made < count && longest < block && !full && left > 0) {
        for (held = 0; held < n_inputs; held++)
            if (t->new_handle(inputs[held], &step[held])) { made = STEP_FAILED; goto done; }
        int64_t attended = block > min_span ? (longest + 1 > min_span ? longest + 1 : min_span) : block;
        if (t->from_blob(span, 1, &attended, &one, 0, t->float32, t->cpu, 0, &step[n_inputs])) {
            made = STEP_FAILED; goto done;
        }
        Tensor out;  /* the library takes the inputs' handles over, whatever it returns */
        held = 0;
        if (t->run(t->container, step, (size_t)(n_inputs + 1), &out, 1, NULL, NULL)) { made = STEP_FAILED; goto done; }
        float *logits;
        t->data_ptr(out, (void **)&logits);
        for (int64_t r = 0; r < rows; r++) {
            const Choice *c = &choices[r];
            int64_t next = choose(logits + r * vocab, vocab, c, c->noise ? c->noise + made * vocab : NULL,
                                  &states[r], w, order, &logprobs[made * rows + r]);
            if (next < 0) { t->release(out); made = next; goto done; }
            ids[made * rows + r] = next;
            tokens[r] = next;
            positions[r] += 1;
            if (positions[r] > longest) longest = positions[r];
            if (positions[r] >= block) full = 1;
            if (next == end && !ended[r]) { ended[r] = 1; left--; }
        }
        t->release(out);
        made++;
    }
done:
    for (int64_t i = 0; i < held; i++)  /* a step that failed before the library took them */
        t->release(step[i]);
    free(w);
    free(order);
    free(step);
    free(states);
    free(ended);
    return made;
}
