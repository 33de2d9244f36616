/* pipepair: a parent and a fork()ed child joined by two pipes. Every 20 ms the parent sends
 * a number v, the child answers 2v+1, the parent checks the answer and prints "tick N"
 * ("FAIL ..." on a wrong or missing answer). A checkpoint may catch a number in a pipe. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
    int down[2], up[2];
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(down) || pipe(up)) { perror("pipe"); return 1; }
    pid_t c = fork();
    if (c < 0) { perror("fork"); return 1; }
    if (c == 0) {
        close(down[1]); close(up[0]);
        uint64_t v;
        while (rd(down[0], &v) == 0) {
            v = 2 * v + 1;
            if (write(up[1], &v, sizeof v) != sizeof v) return 1;
        }
        return 0;
    }
    close(down[0]); close(up[1]);
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (uint64_t n = 1;; n++) {
        uint64_t v = n * 1000003, r;
        if (write(down[1], &v, sizeof v) != sizeof v || rd(up[0], &r)) {
            printf("FAIL pipe to the child broke at %llu\n", (unsigned long long)n);
            return 2;
        }
        if (r != 2 * v + 1) {
            printf("FAIL child answered %llu to %llu\n", (unsigned long long)r, (unsigned long long)v);
            return 2;
        }
        printf("tick %llu\n", (unsigned long long)n);
        nanosleep(&ts, NULL);
    }
}
