/* memfd, deleted-but-open files, O_PATH fds, /proc files and shared descriptions.
 *   memfd TICKS DIR
 * M: memfd "ckpt-test-data" of 1 MiB with a pattern, sealed F_SEAL_SHRINK; each tick
 *    rewrites one 4 KiB block and the whole contents must match the model; its offset
 *    advances by one block a tick. M2: a separate read-only open of M (/proc/self/fd) with
 *    its own offset. D: DIR/deleted, written, unlinked, kept open; each tick appends a
 *    line; D2 = dup(D) shares the offset. P: O_PATH fd of DIR. S: /proc/self/stat, pread
 *    each tick must show our pid. */
#include "common.h"
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#define MSIZE (1 << 20)
static unsigned char model[MSIZE], back[MSIZE];

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) fail("usage: memfd TICKS DIR");
    mkdir(argv[2], 0700);
    int m = memfd_create("ckpt-test-data", MFD_ALLOW_SEALING);
    if (m < 0) fail("memfd_create: %s", strerror(errno));
    uint64_t seed = 42;
    for (size_t i = 0; i < MSIZE; i += 8) { uint64_t v = xorshift64(&seed); memcpy(model + i, &v, 8); }
    if (write(m, model, MSIZE) != MSIZE) fail("write memfd");
    if (fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK)) fail("seal");
    lseek(m, 0, SEEK_SET);
    char mp[64];
    snprintf(mp, sizeof mp, "/proc/self/fd/%d", m);
    int m2 = open(mp, O_RDONLY);
    if (m2 < 0) fail("reopen memfd");
    char dp[600];
    snprintf(dp, sizeof dp, "%s/deleted", argv[2]);
    int d = open(dp, O_CREAT | O_RDWR | O_TRUNC, 0600);
    if (d < 0) fail("open %s", dp);
    size_t dlen = 0;
    if (write(d, "start\n", 6) != 6) fail("write D");
    dlen = 6;
    if (unlink(dp)) fail("unlink");
    int d2 = dup(d);
    int p = open(argv[2], O_PATH | O_DIRECTORY);
    if (p < 0) fail("O_PATH open");
    struct stat pst0;
    fstat(p, &pst0);
    int s = open("/proc/self/stat", O_RDONLY);
    off_t moff = 0, m2off = 0;
    for (long tick = 1; tick <= ticks; tick++) {
        size_t blk = (size_t)(xorshift64(&seed) % (MSIZE / 4096)) * 4096;
        for (size_t i = 0; i < 4096; i++) model[blk + i] = (unsigned char)(tick + i);
        if (pwrite(m, model + blk, 4096, (off_t)blk) != 4096) fail("pwrite memfd");
        if (corrupt_now(tick)) model[5]++;
        if (pread(m2, back, MSIZE, 0) != MSIZE) fail("pread memfd");
        if (memcmp(back, model, MSIZE)) fail("memfd contents differ");
        if (lseek(m, 0, SEEK_CUR) != moff) fail("memfd offset %lld, expected %lld", (long long)lseek(m, 0, SEEK_CUR), (long long)moff);
        moff = lseek(m, 4096, SEEK_CUR);
        if (lseek(m2, 0, SEEK_CUR) != m2off) fail("memfd second open offset moved");
        m2off = lseek(m2, 100, SEEK_CUR);
        if (fcntl(m, F_GET_SEALS) != F_SEAL_SHRINK) fail("seals %#x", fcntl(m, F_GET_SEALS));
        if (ftruncate(m, 10) == 0) fail("F_SEAL_SHRINK lost");
        if ((fcntl(m2, F_GETFL) & O_ACCMODE) != O_RDONLY) fail("second open not read-only");

        char line[64];
        int n = snprintf(line, sizeof line, "tick %ld\n", tick);
        if (write(d2, line, (size_t)n) != n) fail("write D2");
        dlen += (size_t)n;
        if (lseek(d, 0, SEEK_CUR) != (off_t)dlen) fail("dup D2 does not share D's offset");
        struct stat st;
        fstat(d, &st);
        if (st.st_size != (off_t)dlen || st.st_nlink != 0) fail("deleted file size %lld nlink %ld", (long long)st.st_size, (long)st.st_nlink);
        char first[7] = { 0 };
        if (pread(d, first, 6, 0) != 6 || strcmp(first, "start\n")) fail("deleted file contents lost");

        struct stat pst;
        if (fstat(p, &pst) || pst.st_ino != pst0.st_ino) fail("O_PATH fd lost");
        if (!(fcntl(p, F_GETFL) & O_PATH)) fail("O_PATH flag lost");
        char sb[512];
        ssize_t r = pread(s, sb, sizeof sb - 1, 0);
        if (r <= 0) fail("pread /proc/self/stat");
        sb[r] = 0;
        if (atoi(sb) != getpid() && atoi(sb) <= 0) fail("/proc/self/stat shows %d", atoi(sb));
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
