/* timerfd: armed timers on three clocks, absolute timers, unread expirations.
 *   timerfd [TICKS]
 * P: CLOCK_MONOTONIC periodic 10 ms; each tick a blocking read returns >= 1 expiration, and
 *    timerfd_gettime shows interval 10 ms and 0 < time left <= 10 ms.
 * R: CLOCK_REALTIME absolute (TFD_TIMER_ABSTIME) one-shot one hour ahead: time left in
 *    (0, 3600 s], never growing; fdinfo "settime flags: 01".
 * B: CLOCK_BOOTTIME relative one-shot 500 s, non-blocking: time left never grows, never 0,
 *    and a read fails with EAGAIN.
 * X: CLOCK_MONOTONIC one-shot that expired at start and is never read: 1 expiration pending
 *    (fdinfo "ticks: 1"), disarmed.
 * D: a disarmed timer stays disarmed. Time left is allowed to stand still across a restart
 *    (timers do not run while the program is not running). */
#include "common.h"
#include <fcntl.h>
#include <sys/timerfd.h>

static uint64_t ns(const struct timespec *t) { return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec; }

static void fdinfo(int fd, char *b, size_t len)
{
    char p[64];
    snprintf(p, sizeof p, "/proc/self/fdinfo/%d", fd);
    int f = open(p, O_RDONLY);
    if (f < 0) fail("open %s", p);
    ssize_t n = read(f, b, len - 1);
    close(f);
    b[n > 0 ? n : 0] = 0;
}

static struct itimerspec get(int fd, const char *name)
{
    struct itimerspec its;
    if (timerfd_gettime(fd, &its)) fail("timerfd_gettime(%s): %s", name, strerror(errno));
    return its;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    int p = timerfd_create(CLOCK_MONOTONIC, 0);
    int r = timerfd_create(CLOCK_REALTIME, TFD_CLOEXEC);
    int b = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK);
    int x = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    int d = timerfd_create(CLOCK_MONOTONIC, 0);
    if (p < 0 || r < 0 || b < 0 || x < 0 || d < 0) fail("timerfd_create: %s", strerror(errno));
    struct itimerspec its = { { 0, 10000000 }, { 0, 10000000 } };
    if (timerfd_settime(p, 0, &its, NULL)) fail("settime P");
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    its = (struct itimerspec){ { 0, 0 }, { now.tv_sec + 3600, now.tv_nsec } };
    if (timerfd_settime(r, TFD_TIMER_ABSTIME, &its, NULL)) fail("settime R");
    its = (struct itimerspec){ { 0, 0 }, { 500, 0 } };
    if (timerfd_settime(b, 0, &its, NULL)) fail("settime B");
    its = (struct itimerspec){ { 0, 0 }, { 0, 1000 } };
    if (timerfd_settime(x, 0, &its, NULL)) fail("settime X");
    sleep_ns(2000000);
    uint64_t r_prev = ~0ull, b_prev = ~0ull;
    char info[1024];
    for (long tick = 1; tick <= ticks; tick++) {
        uint64_t n;
        if (read(p, &n, 8) != 8) fail("read P: %s", strerror(errno));
        if (n < 1) fail("P read %llu expirations", (unsigned long long)n);
        struct itimerspec g = get(p, "P");
        if (ns(&g.it_interval) != 10000000) fail("P interval %llu ns", (unsigned long long)ns(&g.it_interval));
        if (ns(&g.it_value) == 0 || ns(&g.it_value) > 10000000) fail("P time left %llu ns", (unsigned long long)ns(&g.it_value));

        if (corrupt_now(tick)) { its = (struct itimerspec){ { 0, 0 }, { 0, 0 } }; timerfd_settime(r, 0, &its, NULL); }
        g = get(r, "R");
        uint64_t left = ns(&g.it_value);
        if (left == 0 || left > 3600000000000ull) fail("R time left %llu ns", (unsigned long long)left);
        if (left > r_prev) fail("R time left grew from %llu to %llu", (unsigned long long)r_prev, (unsigned long long)left);
        r_prev = left;
        fdinfo(r, info, sizeof info);
        if (!strstr(info, "settime flags: 01")) fail("R is not absolute any more:\n%s", info);
        if (!strstr(info, "clockid: 0")) fail("R is not on CLOCK_REALTIME:\n%s", info);

        g = get(b, "B");
        left = ns(&g.it_value);
        if (left == 0 || left > b_prev) fail("B time left %llu (before %llu)", (unsigned long long)left, (unsigned long long)b_prev);
        b_prev = left;
        if (read(b, &n, 8) != -1 || errno != EAGAIN) fail("B read did not fail with EAGAIN");
        fdinfo(b, info, sizeof info);
        if (!strstr(info, "clockid: 7")) fail("B is not on CLOCK_BOOTTIME:\n%s", info);

        fdinfo(x, info, sizeof info);
        if (!strstr(info, "ticks: 1\n")) fail("X lost its unread expiration:\n%s", info);
        g = get(x, "X");
        if (ns(&g.it_value) || ns(&g.it_interval)) fail("X is armed again");
        g = get(d, "D");
        if (ns(&g.it_value) || ns(&g.it_interval)) fail("D is armed");
        if (!(fcntl(r, F_GETFD) & FD_CLOEXEC)) fail("R lost FD_CLOEXEC");
        if (!(fcntl(b, F_GETFL) & O_NONBLOCK)) fail("B is blocking");
        if (fcntl(p, F_GETFL) & O_NONBLOCK) fail("P is non-blocking");
        say_tick(tick);
        tick_sleep();
    }
    /* the unread expiration is really there */
    uint64_t n;
    if (read(x, &n, 8) != 8 || n != 1) fail("X read %lld", (long long)n);
    say_pass();
    return 0;
}
