/* Advisory locks: flock, POSIX (fcntl) and OFD locks held across restarts.
 *   locks TICKS DIR
 * A: DIR/a flock LOCK_EX; B: DIR/b POSIX write lock on bytes 10..19; C: DIR/c OFD read lock
 * on the whole file. Each tick proves each lock is held by probing from new, separate open
 * file descriptions: flock LOCK_EX|LOCK_NB on A fails; F_OFD_GETLK on B 10..19 reports a
 * POSIX write lock (by our process) and nothing on 0..9; F_OFD_GETLK for writing C reports
 * a read lock. */
#include "common.h"
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>

static int openf(const char *dir, const char *n)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, n);
    int fd = open(p, O_RDWR | O_CREAT, 0600);
    if (fd < 0) fail("open %s: %s", p, strerror(errno));
    return fd;
}

static struct flock probe(int fd, short type, off_t start, off_t len)
{
    struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
    if (fcntl(fd, F_OFD_GETLK, &fl)) fail("F_OFD_GETLK: %s", strerror(errno));
    return fl;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) fail("usage: locks TICKS DIR");
    mkdir(argv[2], 0700);
    int a = openf(argv[2], "a"), b = openf(argv[2], "b"), c = openf(argv[2], "c");
    if (flock(a, LOCK_EX)) fail("flock");
    struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 10 };
    if (fcntl(b, F_SETLK, &fl)) fail("F_SETLK");
    fl = (struct flock){ .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
    if (fcntl(c, F_OFD_SETLK, &fl)) fail("F_OFD_SETLK");
    /* Closing any fd of b would drop our POSIX lock on it: its probe fd stays open. */
    int pb = openf(argv[2], "b");
    for (long tick = 1; tick <= ticks; tick++) {
        if (corrupt_now(tick)) flock(a, LOCK_UN);
        int pa = openf(argv[2], "a"), pc = openf(argv[2], "c");
        if (flock(pa, LOCK_EX | LOCK_NB) == 0) fail("flock on a is not held");
        struct flock r = probe(pb, F_WRLCK, 10, 10);
        if (r.l_type != F_WRLCK || r.l_start != 10 || r.l_len != 10) fail("POSIX lock on b not held (type %d %lld+%lld)", r.l_type, (long long)r.l_start, (long long)r.l_len);
        r = probe(pb, F_WRLCK, 0, 10);
        if (r.l_type != F_UNLCK) fail("bytes 0..9 of b are locked");
        r = probe(pc, F_WRLCK, 0, 0);
        if (r.l_type != F_RDLCK) fail("OFD read lock on c not held");
        close(pa);
        close(pc);
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
