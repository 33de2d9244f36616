/* inotify: watches keep their wd numbers and masks.
 *   inotify TICKS DIR
 * Watches DIR/w (IN_CREATE|IN_DELETE) and DIR/x (IN_CLOSE_WRITE), after adding and removing
 * a watch on DIR/gap so that wds are 2 and 3 (1 is a gap). Each tick creates and deletes
 * DIR/w/f<tick>, writes DIR/x/log, and must read exactly IN_CREATE f<tick> (wd 2),
 * IN_DELETE f<tick> (wd 2), IN_CLOSE_WRITE log (wd 3). */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <sys/inotify.h>
#include <sys/stat.h>

static char buf[8192] __attribute__((aligned(8)));
static size_t have, pos;

static struct inotify_event *next_event(int fd)
{
    if (pos >= have) {
        struct pollfd p = { fd, POLLIN, 0 };
        int r = poll(&p, 1, 2000);
        if (r <= 0) fail("no inotify event within 2 s");
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) fail("read inotify: %s", strerror(errno));
        have = (size_t)n;
        pos = 0;
    }
    struct inotify_event *e = (struct inotify_event *)(buf + pos);
    pos += sizeof *e + e->len;
    return e;
}

static void expect(int fd, int wd, uint32_t mask, const char *name)
{
    struct inotify_event *e = next_event(fd);
    if (e->wd != wd || !(e->mask & mask) || (name && (!e->len || strcmp(e->name, name))))
        fail("inotify event wd %d mask %#x name %s, expected wd %d mask %#x name %s", e->wd, e->mask, e->len ? e->name : "-", wd, mask, name ? name : "-");
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) fail("usage: inotify TICKS DIR");
    char w[512], x[512], gap[512], f[600], logp[600];
    snprintf(w, sizeof w, "%s/w", argv[2]);
    snprintf(x, sizeof x, "%s/x", argv[2]);
    snprintf(gap, sizeof gap, "%s/gap", argv[2]);
    mkdir(argv[2], 0700);
    mkdir(w, 0700);
    mkdir(x, 0700);
    mkdir(gap, 0700);
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0) fail("inotify_init1");
    int g = inotify_add_watch(fd, gap, IN_CREATE);
    int ww = inotify_add_watch(fd, w, IN_CREATE | IN_DELETE);
    if (inotify_rm_watch(fd, g)) fail("rm_watch");
    expect(fd, g, IN_IGNORED, NULL);
    int wx = inotify_add_watch(fd, x, IN_CLOSE_WRITE);
    if (g != 1 || ww != 2 || wx != 3) fail("wds %d %d %d", g, ww, wx);
    snprintf(logp, sizeof logp, "%s/log", x);
    for (long tick = 1; tick <= ticks; tick++) {
        snprintf(f, sizeof f, "%s/f%ld", w, tick);
        int c = open(f, O_CREAT | O_WRONLY, 0600);
        if (c < 0) fail("create %s", f);
        close(c);
        if (unlink(f)) fail("unlink");
        c = open(logp, O_CREAT | O_WRONLY | O_APPEND, 0600);
        if (write(c, "x", 1) != 1) fail("write log");
        close(c);
        char name[32];
        snprintf(name, sizeof name, "f%ld", tick);
        expect(fd, corrupt_now(tick) ? 9 : ww, IN_CREATE, name);
        expect(fd, ww, IN_DELETE, name);
        expect(fd, wx, IN_CLOSE_WRITE, "log");
        if (pos < have) fail("unexpected extra inotify event");
        if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC)) fail("inotify fd lost FD_CLOEXEC");
        if (fcntl(fd, F_GETFL) & O_NONBLOCK) fail("inotify fd became non-blocking");
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
