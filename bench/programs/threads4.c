/* threads4: 4 pthreads spinning on their own counters; main prints ticks every 20 ms
 * and checks that every worker is still making progress (prints FAIL otherwise). */
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <time.h>

#define NT 4
static _Atomic unsigned long counters[NT * 8]; /* one cache line apart */

static void *worker(void *arg) {
    long i = (long)arg;
    for (;;) atomic_fetch_add_explicit(&counters[i * 8], 1, memory_order_relaxed);
    return NULL;
}

int main(void) {
    pthread_t t[NT];
    struct timespec ts = {0, 20 * 1000 * 1000};
    unsigned long last[NT] = {0};
    int stale[NT] = {0};
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (long i = 0; i < NT; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    for (unsigned long n = 1;; n++) {
        for (int i = 0; i < NT; i++) {
            unsigned long c = atomic_load(&counters[i * 8]);
            /* a thread may not be scheduled for a while on 2 shared cores; only
             * complain after 5 s without progress */
            if (c == last[i]) {
                if (++stale[i] == 250) printf("FAIL thread %d stopped at %lu\n", i, c);
            } else {
                stale[i] = 0;
            }
            last[i] = c;
        }
        printf("tick %lu\n", n);
        nanosleep(&ts, NULL);
    }
}
