/* tcpnode: one end of a loopback TCP connection between two separately started (and
 * separately restored) processes of one job. Each tick both ends send a numbered,
 * checksummed 16-byte message and read the peer's previous one, so one message is always
 * in flight in each direction. Verifies every message arrives once, in order, intact.
 *   tcpnode TICKS server PORTFILE   (listens on 127.0.0.1, writes its port to PORTFILE)
 *   tcpnode TICKS client PORTFILE   (waits for PORTFILE, connects) */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

struct state {
    int fd;
    int role;       /* 1 server, 2 client */
    long next_recv; /* sequence number expected next */
};

static void send_msg(struct state *s, long seq)
{
    uint64_t m[2] = {(uint64_t)seq, mix2((uint64_t)s->role, (uint64_t)seq)};
    if (corrupt_now(seq)) m[1] ^= 1;
    const char *p = (const char *)m;
    size_t left = sizeof m;
    while (left) {
        ssize_t n = write(s->fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("write to the peer: %s", strerror(errno));
        p += n;
        left -= (size_t)n;
    }
}

static void recv_msg(struct state *s)
{
    uint64_t m[2];
    char *p = (char *)m;
    size_t left = sizeof m;
    while (left) {
        ssize_t n = read(s->fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) fail("the peer closed the connection before message %ld", s->next_recv);
        if (n < 0) fail("read from the peer: %s", strerror(errno));
        p += n;
        left -= (size_t)n;
    }
    int peer = 3 - s->role;
    if ((long)m[0] != s->next_recv)
        fail("message %llu arrived, expected %ld (lost, duplicated or reordered)",
             (unsigned long long)m[0], s->next_recv);
    if (m[1] != mix2((uint64_t)peer, m[0]))
        fail("message %llu damaged", (unsigned long long)m[0]);
    s->next_recv++;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc != 4 || (strcmp(argv[2], "server") && strcmp(argv[2], "client"))) {
        fprintf(stderr, "usage: tcpnode TICKS server|client PORTFILE\n");
        return 2;
    }
    struct state *s = calloc(1, sizeof *s);
    if (!s) fail("calloc");
    s->role = strcmp(argv[2], "server") ? 2 : 1;
    s->next_recv = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (s->role == 1) {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
            getsockname(l, (struct sockaddr *)&a, &al))
            fail("listen: %s", strerror(errno));
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s.tmp", argv[3]);
        FILE *f = fopen(tmp, "w");
        if (!f || fprintf(f, "%d\n", ntohs(a.sin_port)) < 0 || fclose(f) || rename(tmp, argv[3]))
            fail("writing %s: %s", argv[3], strerror(errno));
        s->fd = accept(l, NULL, NULL);
        if (s->fd < 0) fail("accept: %s", strerror(errno));
        close(l);
    } else {
        int port = 0;
        for (int i = 0; i < 1000 && !port; i++) {
            FILE *f = fopen(argv[3], "r");
            if (f) {
                if (fscanf(f, "%d", &port) != 1) port = 0;
                fclose(f);
            }
            if (!port) sleep_ns(10 * 1000 * 1000L);
        }
        if (!port) fail("no port in %s after 10 s", argv[3]);
        a.sin_port = htons((uint16_t)port);
        s->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&a, sizeof a))
            fail("connect to port %d: %s", port, strerror(errno));
    }
    int one = 1;
    setsockopt(s->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    printf("tcpnode %s pid %d ticks %ld\n", argv[2], getpid(), ticks);
    for (long t = 1; t <= ticks; t++) {
        send_msg(s, t);
        if (t > 1) recv_msg(s);
        say_tick(t);
        tick_sleep();
    }
    recv_msg(s);
    if (s->next_recv != ticks + 1) fail("received up to %ld of %ld", s->next_recv - 1, ticks);
    say_pass();
    return 0;
}
