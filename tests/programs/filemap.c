/* filemap: file mappings, file offsets, O_APPEND, and process attributes.
 *   filemap [TICKS] [DIR]   (defaults 60, $CKPT_TEST_DIR or ".")
 * In DIR it creates filemap.data (64 KiB), filemap.input (256 KiB) and filemap.log, then:
 *  - maps filemap.data MAP_PRIVATE read-only and, a second time, MAP_PRIVATE read-write
 *    (then closes that fd): the read-only view must always equal the generated data; the
 *    writable view gets a few bytes changed every tick (pages 0..11 only) and must equal a
 *    heap shadow copy; the file on disk must stay unchanged (private writes never reach it);
 *    /proc/self/maps must still show both views backed by the file with their protections;
 *  - a 3-page anonymous region whose middle page is PROT_NONE (a guard page);
 *  - an fd opened O_WRONLY|O_APPEND on filemap.log: every tick it seeks to 0 and writes a
 *    13-byte record, which O_APPEND must put at the end (offset == size afterwards);
 *  - an fd opened O_RDONLY on filemap.input from which it reads 64 bytes a tick: the bytes
 *    and lseek(fd, 0, SEEK_CUR) must match the expected position;
 *  - cwd (chdir DIR), umask 027 and RLIMIT_NOFILE's soft limit must stay what it set. */
#include "common.h"
#include <fcntl.h>
#include <limits.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>

#define MAP_SIZE (64 * 1024)
#define IN_SIZE (256 * 1024)
#define REC 13
#define READ_CHUNK 64

static unsigned char gen_byte(uint64_t seed, uint64_t off) { return (unsigned char)(mix2(seed, off / 8) >> (8 * (off % 8))); }

static void write_file(const char *path, uint64_t seed, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) fail("create %s: %s", path, strerror(errno));
    unsigned char *b = malloc(size);
    for (size_t i = 0; i < size; i++) b[i] = gen_byte(seed, i);
    if (write(fd, b, size) != (ssize_t)size) fail("write %s", path);
    free(b);
    close(fd);
}

/* Finds the /proc/self/maps line starting at addr; returns its perms and path. */
static int maps_line(void *addr, char *perms, char *path, size_t pathlen)
{
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) fail("open /proc/self/maps: %s", strerror(errno));
    char line[PATH_MAX + 256];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long start, end;
        char p[8], pathbuf[PATH_MAX + 1] = "";
        if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %4096[^\n]", &start, &end, p, pathbuf) >= 3 &&
            start == (unsigned long)addr) {
            strcpy(perms, p);
            snprintf(path, pathlen, "%s", pathbuf);
            found = 1;
            break;
        }
    }
    fclose(f);
    return found;
}

static void check_mapping(const char *what, void *addr, const char *want_perms, const char *want_suffix)
{
    char perms[8], path[PATH_MAX + 1];
    if (!maps_line(addr, perms, path, sizeof path)) fail("%s at %p: not in /proc/self/maps", what, addr);
    if (strcmp(perms, want_perms)) fail("%s at %p: perms %s, want %s", what, addr, perms, want_perms);
    size_t pl = strlen(path), sl = strlen(want_suffix);
    if (sl && (pl < sl || strcmp(path + pl - sl, want_suffix)))
        fail("%s at %p: backed by '%s', want ...%s", what, addr, path, want_suffix);
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    const char *dirarg = argc > 2 ? argv[2] : getenv("CKPT_TEST_DIR");
    if (!dirarg || !*dirarg) dirarg = ".";
    char dir[PATH_MAX];
    if (!realpath(dirarg, dir)) fail("realpath %s: %s", dirarg, strerror(errno));
    if (chdir(dir)) fail("chdir %s: %s", dir, strerror(errno));
    umask(027);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max < 777 ? rl.rlim_max : 777;
    if (setrlimit(RLIMIT_NOFILE, &rl)) fail("setrlimit: %s", strerror(errno));
    const rlim_t want_nofile = rl.rlim_cur;

    const uint64_t SEED_MAP = 0xfeed, SEED_IN = 0xbeef;
    write_file("filemap.data", SEED_MAP, MAP_SIZE);
    write_file("filemap.input", SEED_IN, IN_SIZE);

    int dfd = open("filemap.data", O_RDONLY);
    if (dfd < 0) fail("open filemap.data: %s", strerror(errno));
    unsigned char *ro = mmap(NULL, MAP_SIZE, PROT_READ, MAP_PRIVATE, dfd, 0);
    int rwfd = open("filemap.data", O_RDONLY);
    unsigned char *rw = mmap(NULL, MAP_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE, rwfd, 0);
    if (ro == MAP_FAILED || rw == MAP_FAILED) fail("mmap: %s", strerror(errno));
    close(rwfd);
    unsigned char *expect = malloc(MAP_SIZE), *shadow = malloc(MAP_SIZE), *tmp = malloc(MAP_SIZE);
    for (size_t i = 0; i < MAP_SIZE; i++) expect[i] = gen_byte(SEED_MAP, i);
    memcpy(shadow, expect, MAP_SIZE);

    long pg = sysconf(_SC_PAGESIZE);
    unsigned char *guard = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard == MAP_FAILED || mprotect(guard + pg, pg, PROT_NONE)) fail("guard mmap/mprotect");
    guard[0] = 0x5a;
    guard[2 * pg + 7] = 0xa5;

    int afd = open("filemap.log", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    int rfd = open("filemap.input", O_RDONLY);
    if (afd < 0 || rfd < 0) fail("open log/input: %s", strerror(errno));
    off_t log_written = 0, read_off = 0;

    printf("filemap pid %d ticks %ld dir %s ro %p rw %p fds data %d append %d read %d\n", getpid(), ticks,
           dir, (void *)ro, (void *)rw, dfd, afd, rfd);

    for (long tick = 1; tick <= ticks; tick++) {
        /* private writable mapping: change 3 bytes in pages 0..11 */
        for (int j = 0; j < 3; j++) {
            uint64_t r = mix2((uint64_t)tick, (uint64_t)j);
            size_t off = r % (12 * 4096);
            rw[off] = shadow[off] = (unsigned char)(r >> 32);
        }
        if (corrupt_now(tick)) rw[5000] ^= 0x40;
        if (memcmp(ro, expect, MAP_SIZE)) fail("read-only mapping of filemap.data differs from the file's data");
        if (memcmp(rw, shadow, MAP_SIZE)) {
            for (size_t i = 0; i < MAP_SIZE; i++)
                if (rw[i] != shadow[i])
                    fail("private writable mapping byte %zu is %02x, expected %02x", i, rw[i], shadow[i]);
        }
        if (pread(dfd, tmp, MAP_SIZE, 0) != MAP_SIZE || memcmp(tmp, expect, MAP_SIZE))
            fail("filemap.data on disk changed (private writes leaked?)");
        check_mapping("read-only file mapping", ro, "r--p", "/filemap.data");
        check_mapping("private writable file mapping", rw, "rw-p", "/filemap.data");
        check_mapping("guard page", guard + pg, "---p", "");
        if (guard[0] != 0x5a || guard[2 * pg + 7] != 0xa5) fail("pages around the guard page changed");

        /* O_APPEND log */
        char rec[32], got[REC + 1] = "";
        snprintf(rec, sizeof rec, "rec %08d\n", (int)(tick % 100000000));
        if (lseek(afd, 0, SEEK_SET) != 0) fail("lseek log: %s", strerror(errno));
        if (write(afd, rec, REC) != REC) fail("append to filemap.log (fd %d): %s", afd, strerror(errno));
        log_written += REC;
        struct stat st;
        if (fstat(afd, &st)) fail("fstat log: %s", strerror(errno));
        off_t pos = lseek(afd, 0, SEEK_CUR);
        int fl = fcntl(afd, F_GETFL);
        if (fl < 0 || !(fl & O_APPEND) || (fl & O_ACCMODE) != O_WRONLY)
            fail("log fd %d flags %#x: want O_WRONLY|O_APPEND", afd, fl);
        if (pos != st.st_size) fail("log fd offset %lld != file size %lld (O_APPEND lost?)", (long long)pos, (long long)st.st_size);
        if (st.st_size < log_written || st.st_size % REC)
            fail("filemap.log size %lld, expected >= %lld and a multiple of %d", (long long)st.st_size,
                 (long long)log_written, REC);
        int chk = open("filemap.log", O_RDONLY);
        if (chk < 0 || pread(chk, got, REC, st.st_size - REC) != REC || memcmp(got, rec, REC))
            fail("last record of filemap.log is '%.12s', want '%.12s'", got, rec);
        if (pread(chk, got, REC, 0) != REC || memcmp(got, "rec 00000001\n", REC))
            fail("first record of filemap.log is '%.12s'", got);
        close(chk);

        /* read offset */
        unsigned char buf[READ_CHUNK];
        if (read_off + READ_CHUNK > IN_SIZE) {
            if (lseek(rfd, 0, SEEK_SET) != 0) fail("rewind input");
            read_off = 0;
        }
        if (read(rfd, buf, READ_CHUNK) != READ_CHUNK) fail("read filemap.input: %s", strerror(errno));
        for (int i = 0; i < READ_CHUNK; i++)
            if (buf[i] != gen_byte(SEED_IN, read_off + i))
                fail("filemap.input read at offset %lld returned wrong data (fd offset lost?)", (long long)read_off);
        read_off += READ_CHUNK;
        off_t rpos = lseek(rfd, 0, SEEK_CUR);
        if (rpos != read_off) fail("input fd offset %lld, expected %lld", (long long)rpos, (long long)read_off);
        if ((fcntl(rfd, F_GETFL) & O_ACCMODE) != O_RDONLY) fail("input fd is no longer O_RDONLY");

        /* process attributes */
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd) || strcmp(cwd, dir)) fail("cwd is '%s', want '%s'", cwd, dir);
        mode_t um = umask(027);
        if (um != 027) fail("umask %03o, want 027", um);
        if (getrlimit(RLIMIT_NOFILE, &rl) || rl.rlim_cur != want_nofile)
            fail("RLIMIT_NOFILE soft %llu, want %llu", (unsigned long long)rl.rlim_cur, (unsigned long long)want_nofile);

        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
