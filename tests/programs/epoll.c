/* epoll: registrations with events, flags and 64-bit data, over an eventfd, a pipe with
 * bytes in flight, a periodic timerfd and a fired one-shot.
 *   epoll [TICKS]
 * E: eventfd, EPOLLIN|EPOLLET, data 0xdeadbeef00000001; P: pipe read end, EPOLLIN, data 2,
 * always one byte in the pipe before the tick writes the next; T: timerfd 10 ms, EPOLLIN,
 * data 3; O: eventfd with a count, EPOLLIN|EPOLLONESHOT, data 4, fired once at start (so
 * disarmed: it must never be reported again). Each tick: write E and the pipe, wait until
 * E, P and T were all reported with their data, consume them, check nothing else came. */
#include "common.h"
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int e = eventfd(0, EFD_NONBLOCK);
    int o = eventfd(5, EFD_NONBLOCK);
    int p[2];
    if (pipe2(p, O_NONBLOCK)) fail("pipe");
    int t = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = { { 0, 10000000 }, { 0, 10000000 } };
    timerfd_settime(t, 0, &its, NULL);
    struct { int fd; uint32_t ev; uint64_t data; } reg[] = {
        { e, EPOLLIN | EPOLLET, 0xdeadbeef00000001ull },
        { p[0], EPOLLIN, 2 },
        { t, EPOLLIN, 3 },
        { o, EPOLLIN | EPOLLONESHOT, 4 },
    };
    for (int i = 0; i < 4; i++) {
        struct epoll_event ev = { .events = reg[i].ev, .data.u64 = reg[i].data };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, reg[i].fd, &ev)) fail("epoll_ctl: %s", strerror(errno));
    }
    struct epoll_event evs[8];
    int n = epoll_wait(ep, evs, 8, 100);
    int fired = 0;
    for (int i = 0; i < n; i++)
        if (evs[i].data.u64 == 4) fired = 1;
    if (!fired) fail("one-shot did not fire at start");
    char c = 'a';
    if (write(p[1], &c, 1) != 1) fail("write pipe");
    unsigned char expect_byte = 'a';
    for (long tick = 1; tick <= ticks; tick++) {
        uint64_t one = 1;
        if (write(e, &one, 8) != 8) fail("write E");
        c = (char)('a' + tick % 26);
        if (write(p[1], &c, 1) != 1) fail("write pipe");
        int got_e = 0, got_p = 0, got_t = 0;
        uint64_t start = now_ns();
        while (!(got_e && got_p && got_t)) {
            if (now_ns() - start > 2000000000ull) fail("epoll: not all reported within 2 s (E %d P %d T %d)", got_e, got_p, got_t);
            n = epoll_wait(ep, evs, 8, 50);
            if (n < 0 && errno != EINTR) fail("epoll_wait: %s", strerror(errno));
            for (int i = 0; i < n; i++) {
                uint64_t d = evs[i].data.u64;
                if (corrupt_now(tick)) d ^= 1;
                if (d == 0xdeadbeef00000001ull) {
                    uint64_t v;
                    if (read(e, &v, 8) != 8 || v != 1) fail("E count wrong");
                    got_e = 1;
                } else if (d == 2) {
                    if (got_p) continue; /* level-triggered: this tick's byte stays */
                    unsigned char b;
                    if (read(p[0], &b, 1) != 1) fail("pipe read");
                    if (b != expect_byte) fail("pipe byte %c, expected %c", b, expect_byte);
                    expect_byte = (unsigned char)('a' + tick % 26);
                    got_p = 1;
                } else if (d == 3) {
                    uint64_t v;
                    if (read(t, &v, 8) == 8) got_t = 1;
                } else {
                    fail("epoll reported unexpected data %#llx (events %#x)", (unsigned long long)d, evs[i].events);
                }
            }
        }
        char path[64], b[2048];
        snprintf(path, sizeof path, "/proc/self/fdinfo/%d", ep);
        int f = open(path, O_RDONLY);
        ssize_t r = read(f, b, sizeof b - 1);
        close(f);
        b[r > 0 ? r : 0] = 0;
        int lines = 0;
        for (char *s = b; (s = strstr(s, "tfd:")); s++) lines++;
        if (lines != 4) fail("epoll holds %d registrations, expected 4:\n%s", lines, b);
        if (!strstr(b, "data: deadbeef00000001")) fail("64-bit data lost:\n%s", b);
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
