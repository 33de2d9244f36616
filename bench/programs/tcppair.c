/* tcppair: a server and a client over TCP on 127.0.0.1 (a port the kernel picks), in one
 * process tree: the parent listens, forks the server child (which accepts one connection
 * and answers 3v+7 to every number v), then connects as the client. Every 20 ms the client
 * sends a number, checks the answer and prints "tick N" ("FAIL ..." otherwise). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int rd(int fd, uint64_t *v) {
    size_t got = 0;
    while (got < sizeof *v) {
        ssize_t n = read(fd, (char *)v + got, sizeof *v - got);
        if (n <= 0) return -1;
        got += n;
    }
    return 0;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 1) ||
        getsockname(l, (struct sockaddr *)&a, &al)) { perror("listen"); return 1; }
    pid_t c = fork();
    if (c < 0) { perror("fork"); return 1; }
    if (c == 0) {
        int s = accept(l, NULL, NULL);
        close(l);
        if (s < 0) return 1;
        uint64_t v;
        while (rd(s, &v) == 0) {
            v = 3 * v + 7;
            if (write(s, &v, sizeof v) != sizeof v) return 1;
        }
        return 0;
    }
    close(l);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (uint64_t n = 1;; n++) {
        uint64_t v = n * 1000003, r;
        if (write(s, &v, sizeof v) != sizeof v || rd(s, &r)) {
            printf("FAIL connection to the server broke at %llu\n", (unsigned long long)n);
            return 2;
        }
        if (r != 3 * v + 7) {
            printf("FAIL server answered %llu to %llu\n", (unsigned long long)r, (unsigned long long)v);
            return 2;
        }
        printf("tick %llu\n", (unsigned long long)n);
        nanosleep(&ts, NULL);
    }
}
