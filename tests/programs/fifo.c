/* A named pipe kept open across restarts: the program makes a FIFO in DIR, keeps its read
 * end open (non-blocking), and each tick writes the tick number into the FIFO by path and
 * reads it back through the kept descriptor: after a restore the descriptor must again be
 * that FIFO, with its flags. prog TICKS DIR */
#include "common.h"
#include <fcntl.h>
#include <sys/stat.h>

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) fail("usage: fifo TICKS DIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/fifo-%d", argv[2], getpid());
    unlink(path);
    if (mkfifo(path, 0600)) fail("mkfifo %s: %s", path, strerror(errno));
    int r = open(path, O_RDONLY | O_NONBLOCK);
    if (r < 0) fail("open %s: %s", path, strerror(errno));
    for (long t = 1; t <= ticks; t++) {
        if (!(fcntl(r, F_GETFL) & O_NONBLOCK)) fail("the FIFO lost O_NONBLOCK");
        int w = open(path, O_WRONLY | O_NONBLOCK);
        if (w < 0) fail("open %s for writing: %s (the kept read end is gone?)", path, strerror(errno));
        long v = corrupt_now(t) ? t + 1 : t, got = 0;
        if (write(w, &v, sizeof v) != (ssize_t)sizeof v) fail("write: %s", strerror(errno));
        close(w);
        if (read(r, &got, sizeof got) != (ssize_t)sizeof got) fail("read from the kept FIFO fd: %s", strerror(errno));
        if (got != t) fail("read %ld from the FIFO, expected %ld", got, t);
        say_tick(t);
        tick_sleep();
    }
    unlink(path);
    say_pass();
    return 0;
}
