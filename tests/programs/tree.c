/* A parent with two children joined by two pipes: the writer child sends numbered words
 * to the parent, which checks their order and forwards them to the reader child, which
 * checks them again. Checks each tick: no lost, duplicated or reordered word, pids and
 * parent pids unchanged (virtual pids), kill/waitpid of the children work at the end.
 * prog TICKS */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    int a[2], b[2];
    if (pipe(a) || pipe(b)) fail("pipe: %s", strerror(errno));
    pid_t me = getpid();
    pid_t w = fork();
    if (w < 0) fail("fork: %s", strerror(errno));
    if (w == 0) {
        close(a[0]); close(b[0]); close(b[1]);
        for (unsigned long i = 1;; i++) {
            if (getppid() != me) fail("writer: getppid() is %d, parent was %d", getppid(), me);
            if (write(a[1], &i, sizeof i) != (ssize_t)sizeof i) fail("writer: write: %s", strerror(errno));
            sleep_ns(8 * 1000 * 1000L);
        }
    }
    pid_t r = fork();
    if (r < 0) fail("fork: %s", strerror(errno));
    if (r == 0) {
        close(a[0]); close(a[1]); close(b[1]);
        unsigned long want = 1, v;
        for (;;) {
            ssize_t n = read(b[0], &v, sizeof v);
            if (n == 0) _exit(0);
            if (n != (ssize_t)sizeof v) fail("reader: read returned %zd: %s", n, strerror(errno));
            if (v != want) fail("reader: got word %lu, expected %lu", v, want);
            if (getppid() != me) fail("reader: getppid() is %d, parent was %d", getppid(), me);
            want++;
        }
    }
    close(a[1]); close(b[0]);
    unsigned long want = 1, v;
    for (long t = 1; t <= ticks; t++) {
        for (int k = 0; k < 3; k++) {
            if (read(a[0], &v, sizeof v) != (ssize_t)sizeof v) fail("parent: read: %s", strerror(errno));
            if (corrupt_now(t) && k == 0) want += 1;
            if (v != want) fail("parent: got word %lu, expected %lu", v, want);
            want++;
            if (write(b[1], &v, sizeof v) != (ssize_t)sizeof v) fail("parent: write: %s", strerror(errno));
        }
        if (getpid() != me) fail("getpid() is %d, was %d", getpid(), me);
        say_tick(t);
    }
    if (kill(w, SIGKILL)) fail("kill(writer %d): %s", w, strerror(errno));
    int st;
    if (waitpid(w, &st, 0) != w || !WIFSIGNALED(st)) fail("waitpid(writer %d) did not report its death", w);
    close(b[1]);
    if (waitpid(r, &st, 0) != r || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("reader %d did not end cleanly", r);
    say_pass();
    return 0;
}
