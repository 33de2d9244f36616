/* eventfd: counters in flight, semaphore mode, O_NONBLOCK, a dup sharing the description.
 *   eventfd [TICKS]
 * A: semaphore, non-blocking, starts at 100; each tick one read through its dup A2 must
 *    return 1, and A's fdinfo must show the counter one lower (proves A2 is the same eventfd).
 * B: plain, blocking; each tick adds the tick number; every 7th tick one read must return
 *    the sum since the last read. C: plain, non-blocking, empty: a read must fail EAGAIN. */
#include "common.h"
#include <fcntl.h>
#include <sys/eventfd.h>

static uint64_t fdinfo_count(int fd, int *sem)
{
    char p[64], b[1024];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    int f = open(p, O_RDONLY);
    if (f < 0) fail("open %s: %s", p, strerror(errno));
    ssize_t n = read(f, b, sizeof b - 1);
    close(f);
    if (n <= 0) fail("read %s", p);
    b[n] = 0;
    char *c = strstr(b, "eventfd-count:");
    if (!c) fail("fd %d is not an eventfd any more:\n%s", fd, b);
    char *s = strstr(b, "eventfd-semaphore:");
    *sem = s ? atoi(s + 18) : -1;
    return strtoull(c + 14, NULL, 16);
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    int a = eventfd(100, EFD_SEMAPHORE | EFD_NONBLOCK);
    int a2 = dup(a);
    int b = eventfd(0, 0);
    int c = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a < 0 || a2 < 0 || b < 0 || c < 0) fail("eventfd: %s", strerror(errno));
    uint64_t a_expect = 100, b_sum = 0;
    for (long tick = 1; tick <= ticks; tick++) {
        uint64_t v;
        if (read(a2, &v, 8) != 8) fail("read A2: %s", strerror(errno));
        if (v != 1) fail("semaphore eventfd read %llu, expected 1", (unsigned long long)v);
        a_expect--;
        if (corrupt_now(tick)) { v = 1; if (write(a, &v, 8) != 8) fail("write"); }
        int sem;
        uint64_t cnt = fdinfo_count(a, &sem);
        if (cnt != a_expect) fail("eventfd A counter %llu, expected %llu", (unsigned long long)cnt, (unsigned long long)a_expect);
        if (sem != 1) fail("eventfd A lost its semaphore mode (%d)", sem);
        if (a_expect < 10) {
            v = 100;
            if (write(a, &v, 8) != 8) fail("write A");
            a_expect += 100;
        }
        if (!(fcntl(a, F_GETFL) & O_NONBLOCK)) fail("eventfd A is blocking");
        if (fcntl(b, F_GETFL) & O_NONBLOCK) fail("eventfd B is non-blocking");
        if (!(fcntl(c, F_GETFD) & FD_CLOEXEC)) fail("eventfd C lost FD_CLOEXEC");
        if (fcntl(a2, F_GETFD) & FD_CLOEXEC) fail("dup A2 got FD_CLOEXEC");
        v = (uint64_t)tick;
        if (write(b, &v, 8) != 8) fail("write B: %s", strerror(errno));
        b_sum += v;
        if (tick % 7 == 0) {
            if (read(b, &v, 8) != 8) fail("read B: %s", strerror(errno));
            if (v != b_sum) fail("eventfd B read %llu, expected %llu", (unsigned long long)v, (unsigned long long)b_sum);
            b_sum = 0;
        }
        if (read(c, &v, 8) != -1 || errno != EAGAIN) fail("empty non-blocking eventfd C did not fail with EAGAIN");
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
