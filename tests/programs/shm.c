/* Shared anonymous memory across fork: the parent and two children share a MAP_SHARED
 * anonymous region with a process-shared mutex. Each child adds to its own counter and to
 * a common total under the mutex; the parent checks every tick that the total equals the
 * sum of the counters (the memory is one object, not three copies) and that both children
 * keep making progress (their writes are visible to it). prog TICKS */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

struct shared {
    pthread_mutex_t lock;
    unsigned long count[2];
    unsigned long total;
    unsigned char pattern[3 * 4096]; /* a few pages of data with a known digest */
};

static unsigned long digest(const unsigned char *p, size_t n)
{
    unsigned long h = 1469598103934665603UL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211UL;
    return h;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    struct shared *s = mmap(NULL, sizeof *s, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED) fail("mmap: %s", strerror(errno));
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&s->lock, &a);
    for (size_t i = 0; i < sizeof s->pattern; i++) s->pattern[i] = (unsigned char)(i * 7 + 3);
    unsigned long want_digest = digest(s->pattern, sizeof s->pattern);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] < 0) fail("fork: %s", strerror(errno));
        if (kids[k] == 0) {
            for (;;) {
                pthread_mutex_lock(&s->lock);
                s->count[k]++;
                s->total++;
                pthread_mutex_unlock(&s->lock);
                sleep_ns(3 * 1000 * 1000L);
            }
        }
    }
    unsigned long last[2] = { 0, 0 };
    for (long t = 1; t <= ticks; t++) {
        /* wait until both children advanced: their writes must reach us */
        for (int tries = 0;; tries++) {
            pthread_mutex_lock(&s->lock);
            unsigned long c0 = s->count[0], c1 = s->count[1], tot = s->total;
            if (corrupt_now(t) && tries == 0) s->total += 5;
            pthread_mutex_unlock(&s->lock);
            if (tot != c0 + c1 && !(corrupt_now(t) && tries == 0))
                fail("total %lu != %lu + %lu: the memory is not shared any more", tot, c0, c1);
            if (c0 > last[0] && c1 > last[1]) { last[0] = c0; last[1] = c1; break; }
            if (tries > 2000) fail("children stopped advancing (counts %lu %lu): not shared?", c0, c1);
            sleep_ns(1000 * 1000L);
        }
        if (digest(s->pattern, sizeof s->pattern) != want_digest) fail("shared pattern damaged");
        say_tick(t);
        tick_sleep();
    }
    for (int k = 0; k < 2; k++) {
        kill(kids[k], SIGKILL);
        waitpid(kids[k], NULL, 0);
    }
    say_pass();
    return 0;
}
