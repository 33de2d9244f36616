/* Connections waiting to be accepted cannot be checkpointed (the accepted end has no
 * descriptor yet, and its bytes cannot be read without accepting it): a checkpoint must be
 * refused with a message naming the listening socket, and the job must run on unharmed.
 * The program listens on a UNIX socket (WORKDIR/l.sock) and on TCP 127.0.0.1, connects
 * a client to each, sends "hi" on both, and accepts only when the last tick is reached;
 * then it checks both accepted connections hold "hi".
 * prog TICKS WORKDIR [tcp] */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) { fprintf(stderr, "usage: pending TICKS WORKDIR [tcp]\n"); return 2; }
    int tcp = argc > 3 && strcmp(argv[3], "tcp") == 0;
    int l, c;
    if (tcp) {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof a;
        l = socket(AF_INET, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4) || getsockname(l, (struct sockaddr *)&a, &al))
            fail("tcp listen: %s", strerror(errno));
        c = socket(AF_INET, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) fail("connect: %s", strerror(errno));
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        if (snprintf(a.sun_path, sizeof a.sun_path, "%s/l.sock", argv[2]) >= (int)sizeof a.sun_path) fail("path too long");
        unlink(a.sun_path);
        l = socket(AF_UNIX, SOCK_STREAM, 0);
        if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4)) fail("unix listen: %s", strerror(errno));
        c = socket(AF_UNIX, SOCK_STREAM, 0);
        if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a)) fail("connect: %s", strerror(errno));
    }
    if (write(c, "hi", 2) != 2) fail("write: %s", strerror(errno));
    for (long t = 1; t <= ticks; t++) {
        say_tick(t);
        sleep_ns(TICK_NS);
    }
    int s = accept(l, NULL, NULL);
    if (s < 0) fail("accept: %s", strerror(errno));
    char b[4] = {0};
    if (read(s, b, 2) != 2 || memcmp(b, "hi", 2) != 0) fail("the accepted connection holds '%s'", b);
    if (corrupt_tick >= 0) fail("corrupted on request");
    say_pass();
    return 0;
}
