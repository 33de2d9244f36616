/* Sockets between two processes: a UNIX socketpair and a TCP connection on loopback
 * (the child connects to a listening socket of the parent, which stays listening). The
 * child sends numbered words over TCP; the parent checks their order and sends each back,
 * doubled, over the socketpair; the child checks those. Bytes are left in flight on both
 * sockets at every moment. Checks each tick: no word lost, duplicated or reordered; the
 * listening socket still accepts (once, at the end). prog TICKS */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>

static void full_read(int fd, void *p, size_t n, const char *who)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r <= 0) fail("%s: read returned %zd: %s", who, r, r ? strerror(errno) : "end of file");
        got += (size_t)r;
    }
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) fail("socketpair: %s", strerror(errno));
    int lst = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t alen = sizeof a;
    if (bind(lst, (struct sockaddr *)&a, sizeof a) || listen(lst, 8) || getsockname(lst, (struct sockaddr *)&a, &alen))
        fail("listen: %s", strerror(errno));
    pid_t c = fork();
    if (c < 0) fail("fork: %s", strerror(errno));
    if (c == 0) {
        close(sv[0]);
        close(lst);
        int t = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(t, (struct sockaddr *)&a, sizeof a)) fail("child: connect: %s", strerror(errno));
        int one = 1;
        setsockopt(t, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        unsigned long next = 1, want = 1;
        for (;;) {
            for (int k = 0; k < 4; k++, next++)
                if (write(t, &next, sizeof next) != (ssize_t)sizeof next) fail("child: write: %s", strerror(errno));
            unsigned long v;
            full_read(sv[1], &v, sizeof v, "child");
            if (v != 2 * want) fail("child: got %lu back, expected %lu", v, 2 * want);
            want++;
            sleep_ns(2 * 1000 * 1000L);
        }
    }
    close(sv[1]);
    int t = accept(lst, NULL, NULL);
    if (t < 0) fail("accept: %s", strerror(errno));
    unsigned long want = 1;
    for (long tick = 1; tick <= ticks; tick++) {
        for (int k = 0; k < 3; k++) {
            unsigned long v;
            full_read(t, &v, sizeof v, "parent");
            if (corrupt_now(tick) && k == 0) want++;
            if (v != want) fail("parent: got word %lu, expected %lu", v, want);
            want++;
            unsigned long d = 2 * v;
            if (write(sv[0], &d, sizeof d) != (ssize_t)sizeof d) fail("parent: write: %s", strerror(errno));
        }
        say_tick(tick);
        tick_sleep();
    }
    /* The listening socket still works: connect to it from here. */
    int probe = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(probe, (struct sockaddr *)&a, sizeof a)) fail("listening socket gone: %s", strerror(errno));
    int acc = accept(lst, NULL, NULL);
    if (acc < 0) fail("accept after restore: %s", strerror(errno));
    kill(c, SIGKILL);
    waitpid(c, NULL, 0);
    say_pass();
    return 0;
}
