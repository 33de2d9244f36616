/* threads4: 4 threads, each mixing a running checksum over its own memory region and its
 * own TLS (__thread) variables.
 *   threads4 [TICKS]   (default 60)
 * Each worker repeats: a burst of steps (each updates one word of its 1 MiB region, one word
 * of its TLS buffer, its TLS accumulator and an incremental region sum held in a local),
 * then a full re-sum of its region compared with the incremental sum, checks of its TLS
 * identity and address (the TLS base), and publishes its counters; it sleeps a little
 * between bursts so that a checkpoint catches workers both computing and sleeping.
 * Main, every tick, checks each worker's published counters against the worker's TLS
 * (read through pointers into the other thread's TLS block) and that every worker makes
 * progress. At the end every worker's whole history is replayed from its step count and
 * the region, TLS buffer and accumulator must match bit for bit. */
#include "common.h"
#include <pthread.h>

#define NT 4
#define REGION_WORDS (128 * 1024) /* 1 MiB per thread */
#define TLS_WORDS 512             /* 4 KiB of TLS per thread */
#define BURST 1000

struct worker {
    pthread_mutex_t mu;
    int id;
    uint64_t *region;
    /* published under mu */
    uint64_t bursts, steps, acc, sum, rng;
    uint64_t *tls_steps_addr;
    int *tls_id_addr;
    uint64_t buf_copy[TLS_WORDS]; /* final TLS buffer, copied at exit */
    long last_progress_tick;
    uint64_t last_bursts;
};

static struct worker W[NT];
static volatile int stop;

static __thread int tls_id = -1;
static __thread uint64_t tls_rng, tls_acc, tls_steps;
static __thread uint64_t tls_buf[TLS_WORDS];

static inline void step(uint64_t *region, uint64_t *rng, uint64_t *sum, uint64_t *acc, uint64_t *buf)
{
    uint64_t r = xorshift64(rng);
    size_t idx = r & (REGION_WORDS - 1);
    uint64_t old = region[idx];
    uint64_t nw = old * 0x9E3779B97F4A7C15ull + r;
    region[idx] = nw;
    *sum += nw - old;
    size_t b = (r >> 40) & (TLS_WORDS - 1);
    buf[b] ^= nw;
    *acc = ((*acc << 5) | (*acc >> 59)) ^ buf[b];
}

static void init_state(int id, uint64_t *region, uint64_t *rng, uint64_t *sum, uint64_t *acc, uint64_t *buf)
{
    *sum = 0;
    for (size_t k = 0; k < REGION_WORDS; k++) {
        region[k] = mix2((uint64_t)id, k);
        *sum += region[k];
    }
    for (size_t k = 0; k < TLS_WORDS; k++) buf[k] = mix2((uint64_t)id + 100, k);
    *rng = mix64((uint64_t)id + 7) | 1;
    *acc = mix64((uint64_t)id + 13);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    int id = w->id;
    uint64_t *region = w->region;
    uint64_t sum;
    tls_id = id;
    init_state(id, region, &tls_rng, &sum, &tls_acc, tls_buf);
    tls_steps = 0;
    uint64_t *my_steps_addr = &tls_steps;
    pthread_mutex_lock(&w->mu);
    w->tls_steps_addr = &tls_steps;
    w->tls_id_addr = &tls_id;
    pthread_mutex_unlock(&w->mu);

    while (!stop) {
        for (int i = 0; i < BURST; i++) step(region, &tls_rng, &sum, &tls_acc, tls_buf);
        tls_steps += BURST;
        uint64_t s = 0;
        for (size_t k = 0; k < REGION_WORDS; k++) s += region[k];
        if (s != sum)
            fail("thread %d: region sum %016llx != running sum %016llx after %llu steps", id,
                 (unsigned long long)s, (unsigned long long)sum, (unsigned long long)tls_steps);
        if (tls_id != id) fail("thread %d: TLS id reads %d", id, tls_id);
        if (&tls_steps != my_steps_addr)
            fail("thread %d: TLS moved: &tls_steps %p, was %p", id, (void *)&tls_steps, (void *)my_steps_addr);
        pthread_mutex_lock(&w->mu);
        if (w->steps + BURST != tls_steps)
            fail("thread %d: TLS step count %llu, published %llu + %d", id,
                 (unsigned long long)tls_steps, (unsigned long long)w->steps, BURST);
        w->bursts++;
        w->steps = tls_steps;
        w->acc = tls_acc;
        w->sum = sum;
        w->rng = tls_rng;
        pthread_mutex_unlock(&w->mu);
        sleep_ns(400 * 1000);
    }
    pthread_mutex_lock(&w->mu);
    memcpy(w->buf_copy, tls_buf, sizeof tls_buf);
    w->steps = tls_steps;
    w->acc = tls_acc;
    w->sum = sum;
    w->rng = tls_rng;
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

static void check_workers(long tick)
{
    for (int i = 0; i < NT; i++) {
        struct worker *w = &W[i];
        pthread_mutex_lock(&w->mu);
        if (w->tls_id_addr) {
            int tid = *w->tls_id_addr;
            uint64_t tsteps = *w->tls_steps_addr; /* the worker may be mid-burst: >= published */
            if (tid != i) fail("thread %d: its TLS id seen from main is %d", i, tid);
            if (tsteps < w->steps || tsteps > w->steps + BURST)
                fail("thread %d: TLS steps %llu inconsistent with published %llu", i,
                     (unsigned long long)tsteps, (unsigned long long)w->steps);
        }
        if (w->bursts != w->last_bursts) {
            if (w->bursts < w->last_bursts) fail("thread %d: burst count went backwards", i);
            w->last_bursts = w->bursts;
            w->last_progress_tick = tick;
        } else if (tick - w->last_progress_tick > 150) {
            fail("thread %d: no progress for %ld ticks (stuck at %llu steps)", i,
                 tick - w->last_progress_tick, (unsigned long long)w->steps);
        }
        pthread_mutex_unlock(&w->mu);
    }
}

static void replay_and_compare(struct worker *w)
{
    uint64_t *region = malloc(REGION_WORDS * sizeof(uint64_t));
    uint64_t buf[TLS_WORDS], rng, sum, acc;
    if (!region) fail("malloc");
    init_state(w->id, region, &rng, &sum, &acc, buf);
    for (uint64_t s = 0; s < w->steps; s++) step(region, &rng, &sum, &acc, buf);
    if (acc != w->acc || rng != w->rng || sum != w->sum)
        fail("thread %d: replay of %llu steps differs: acc %016llx/%016llx rng %016llx/%016llx sum %016llx/%016llx",
             w->id, (unsigned long long)w->steps, (unsigned long long)acc, (unsigned long long)w->acc,
             (unsigned long long)rng, (unsigned long long)w->rng, (unsigned long long)sum,
             (unsigned long long)w->sum);
    if (memcmp(buf, w->buf_copy, sizeof buf)) fail("thread %d: TLS buffer differs from replay", w->id);
    for (size_t k = 0; k < REGION_WORDS; k++)
        if (region[k] != w->region[k])
            fail("thread %d: region word %zu is %016llx, replay says %016llx", w->id, k,
                 (unsigned long long)w->region[k], (unsigned long long)region[k]);
    free(region);
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    pthread_t th[NT];
    printf("threads4 pid %d ticks %ld\n", getpid(), ticks);
    for (int i = 0; i < NT; i++) {
        pthread_mutex_init(&W[i].mu, NULL);
        W[i].id = i;
        W[i].region = malloc(REGION_WORDS * sizeof(uint64_t));
        if (!W[i].region) fail("malloc");
        if (pthread_create(&th[i], NULL, worker_main, &W[i])) fail("pthread_create");
    }
    for (long tick = 1; tick <= ticks; tick++) {
        if (corrupt_now(tick)) W[1].region[12345] ^= 1ull << 33;
        check_workers(tick);
        say_tick(tick);
        tick_sleep();
    }
    stop = 1;
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    uint64_t total = 0;
    for (int i = 0; i < NT; i++) {
        replay_and_compare(&W[i]);
        total += W[i].steps;
    }
    printf("threads4 replayed %llu steps\n", (unsigned long long)total);
    say_pass();
    return 0;
}
