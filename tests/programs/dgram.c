/* Message sockets and more across restarts. A child sends numbered messages n = 1, 2, ...
 * (length len(n): 0 when n % 7 == 0, else 8 + n % 40; bytes derived from n) on:
 *   A  a UNIX datagram socketpair,
 *   B  a UNIX seqpacket socketpair,
 *   C  from its socket bound to WORKDIR/client.sock to the parent's socket bound to
 *      WORKDIR/server.sock (the parent checks the sender's path on each),
 *   D  from an unbound socket to the parent's socket with an abstract name,
 *   E  a TCP connection over IPv6 loopback (8-byte words),
 * and a datagram to the parent's UDP socket bound to 127.0.0.1 (UDP may lose it).
 * The parent receives lagging behind, so messages wait in every queue at the checkpoints.
 * Every tick it checks each message's number, length, bytes (boundaries kept, none lost,
 * duplicated or reordered), the senders, the UDP socket's port, and the UDP numbers
 * increasing. prog TICKS WORKDIR */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static size_t len_of(unsigned long n) { return n % 7 == 0 ? 0 : 8 + n % 40; }

static void fill(unsigned char *b, unsigned long n)
{
    size_t l = len_of(n);
    if (l == 0) return;
    memcpy(b, &n, 8);
    for (size_t i = 8; i < l; i++) b[i] = (unsigned char)(n * 31 + i);
}

static void check(const char *ch, unsigned long n, const unsigned char *b, ssize_t got)
{
    if (got < 0) fail("%s: receive of message %lu: %s", ch, n, strerror(errno));
    if ((size_t)got != len_of(n)) fail("%s: message %lu is %zd bytes, expected %zu", ch, n, got, len_of(n));
    unsigned char want[64];
    fill(want, n);
    if (memcmp(b, want, (size_t)got) != 0) {
        unsigned long m = 0;
        if (got >= 8) memcpy(&m, b, 8);
        fail("%s: message %lu has the wrong bytes (number %lu)", ch, n, m);
    }
}

static socklen_t un_addr(struct sockaddr_un *a, const char *path, int abstract)
{
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    size_t l = strlen(path);
    if (l > sizeof a->sun_path - 2) fail("socket path too long: %s", path);
    if (abstract) {
        memcpy(a->sun_path + 1, path, l);
        return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + l);
    }
    memcpy(a->sun_path, path, l);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + l + 1);
}

static void send_all(int fd, const void *b, size_t l, const char *what)
{
    while (send(fd, b, l, 0) != (ssize_t)l)
        if (errno != EINTR) fail("child: send %s: %s", what, strerror(errno));
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) { fprintf(stderr, "usage: dgram TICKS WORKDIR\n"); return 2; }
    char spath[200], cpath[200], abs_name[64];
    snprintf(spath, sizeof spath, "%s/server.sock", argv[2]);
    snprintf(cpath, sizeof cpath, "%s/client.sock", argv[2]);
    snprintf(abs_name, sizeof abs_name, "ckpt-dgram-%d", getpid());
    unlink(spath);
    unlink(cpath);

    int a[2], b[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, a) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, b))
        fail("socketpair: %s", strerror(errno));
    struct sockaddr_un sa, ca, da;
    socklen_t sl = un_addr(&sa, spath, 0), cl = un_addr(&ca, cpath, 0), dl = un_addr(&da, abs_name, 1);
    int srv = socket(AF_UNIX, SOCK_DGRAM, 0), abs_srv = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (srv < 0 || abs_srv < 0) fail("socket: %s", strerror(errno));
    if (bind(srv, (struct sockaddr *)&sa, sl) || bind(abs_srv, (struct sockaddr *)&da, dl))
        fail("bind: %s", strerror(errno));
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t ul = sizeof ua;
    if (udp < 0 || bind(udp, (struct sockaddr *)&ua, sizeof ua) || getsockname(udp, (struct sockaddr *)&ua, &ul))
        fail("udp: %s", strerror(errno));
    int lst = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 la = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    socklen_t ll = sizeof la;
    if (lst < 0 || bind(lst, (struct sockaddr *)&la, sizeof la) || listen(lst, 1) ||
        getsockname(lst, (struct sockaddr *)&la, &ll))
        fail("tcp6 listen: %s", strerror(errno));

    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child == 0) {
        close(a[0]); close(b[0]); close(srv); close(abs_srv); close(lst);
        int cs = socket(AF_UNIX, SOCK_DGRAM, 0), ds = socket(AF_UNIX, SOCK_DGRAM, 0);
        if (cs < 0 || ds < 0 || bind(cs, (struct sockaddr *)&ca, cl)) fail("child: socket/bind: %s", strerror(errno));
        int t6 = socket(AF_INET6, SOCK_STREAM, 0);
        if (t6 < 0 || connect(t6, (struct sockaddr *)&la, sizeof la)) fail("child: tcp6 connect: %s", strerror(errno));
        for (unsigned long n = 1;; n++) {
            unsigned char m[64];
            size_t l = len_of(n);
            fill(m, n);
            send_all(a[1], m, l, "A");
            send_all(b[1], m, l, "B");
            while (sendto(cs, m, l, 0, (struct sockaddr *)&sa, sl) != (ssize_t)l)
                if (errno != EINTR) fail("child: sendto C: %s", strerror(errno));
            while (sendto(ds, m, l, 0, (struct sockaddr *)&da, dl) != (ssize_t)l)
                if (errno != EINTR) fail("child: sendto D: %s", strerror(errno));
            send_all(t6, &n, 8, "E");
            sendto(udp, &n, 8, MSG_DONTWAIT, (struct sockaddr *)&ua, sizeof ua);
            sleep_ns(8 * 1000 * 1000L);
        }
    }
    close(a[1]); close(b[1]);
    int t6 = accept(lst, NULL, NULL);
    if (t6 < 0) fail("accept: %s", strerror(errno));
    unsigned short port = ua.sin_port;
    unsigned long want = 1, last_udp = 0;
    for (long t = 1; t <= ticks; t++) {
        for (int k = 0; k < 3; k++, want++) {
            unsigned char m[128];
            ssize_t n;
            while ((n = recv(a[0], m, sizeof m, 0)) < 0 && errno == EINTR) {}
            check("A (datagram socketpair)", want, m, n);
            while ((n = recv(b[0], m, sizeof m, 0)) < 0 && errno == EINTR) {}
            check("B (seqpacket socketpair)", want, m, n);
            struct sockaddr_un from;
            socklen_t fl = sizeof from;
            while ((n = recvfrom(srv, m, sizeof m, 0, (struct sockaddr *)&from, &fl)) < 0 && errno == EINTR) fl = sizeof from;
            check("C (named datagram socket)", want, m, n);
            if (fl != cl || strcmp(from.sun_path, cpath) != 0)
                fail("C: message %lu came from '%s' (%u bytes of address), not %s", want, from.sun_path, fl, cpath);
            fl = sizeof from;
            while ((n = recvfrom(abs_srv, m, sizeof m, 0, (struct sockaddr *)&from, &fl)) < 0 && errno == EINTR) fl = sizeof from;
            check("D (abstract datagram socket)", want, m, n);
            if (fl > sizeof(sa_family_t)) fail("D: message %lu has a named sender", want);
            if (corrupt_now(t) && k == 0) {
                if (recv(a[0], m, sizeof m, 0) < 0) fail("recv: %s", strerror(errno));
            }
            unsigned long w;
            size_t got = 0;
            while (got < 8) {
                n = read(t6, (char *)&w + got, 8 - got);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) fail("E: read: %s", n == 0 ? "end of stream" : strerror(errno));
                got += (size_t)n;
            }
            if (w != want) fail("E (TCP over IPv6): word %lu, expected %lu", w, want);
        }
        unsigned long u;
        while (recv(udp, &u, 8, MSG_DONTWAIT) == 8) {
            if (u <= last_udp) fail("UDP: datagram %lu after %lu", u, last_udp);
            last_udp = u;
        }
        struct sockaddr_in now;
        socklen_t nl = sizeof now;
        if (getsockname(udp, (struct sockaddr *)&now, &nl) || now.sin_port != port ||
            now.sin_addr.s_addr != htonl(INADDR_LOOPBACK))
            fail("UDP socket is no longer bound to 127.0.0.1:%u", ntohs(port));
        say_tick(t);
        sleep_ns(TICK_NS);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    unlink(spath);
    unlink(cpath);
    say_pass();
    return 0;
}
