/* Files on tmpfs mapped MAP_SHARED, across restarts where the files were removed after
 * the job was killed (tests/tests/ipc.rs removes them before each restart):
 *   - a POSIX shared memory object (shm_open "/TAG-shm", fd kept open) shared by parent
 *     and child, holding a process-shared mutex and condition variable: the child counts
 *     up under the mutex and broadcasts; the parent waits on the condition variable
 *     (timed: a restore that unshared the memory shows as no progress);
 *   - /dev/shm/TAG-data mapped by the parent only (fd closed), whose pages it rewrites
 *     every tick.
 * Every tick the parent checks the counter moves on, the child's view of the parent's
 * ticks (the child fails if it ever goes back), the data pattern of the last tick, and that
 * both files exist again and read (pread) the same bytes as the mappings: the mappings are
 * the files, not private copies. prog TICKS TAG */
#include "common.h"
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

struct shared {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned long count;
    unsigned long parent_ticks;
};

#define DATA_PAGES 4

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) { fprintf(stderr, "usage: tmpfs TICKS TAG\n"); return 2; }
    char shm_name[128], data_path[160];
    snprintf(shm_name, sizeof shm_name, "/%s-shm", argv[2]);
    snprintf(data_path, sizeof data_path, "/dev/shm/%s-data", argv[2]);
    shm_unlink(shm_name);
    unlink(data_path);
    int sfd = shm_open(shm_name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (sfd < 0 || ftruncate(sfd, 8192)) fail("shm_open(%s): %s", shm_name, strerror(errno));
    struct shared *sh = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, sfd, 0);
    if (sh == MAP_FAILED) fail("mmap: %s", strerror(errno));
    pthread_mutexattr_t ma;
    pthread_condattr_t ca;
    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setpshared(&ma, PTHREAD_PROCESS_SHARED);
    pthread_condattr_init(&ca);
    pthread_condattr_setpshared(&ca, PTHREAD_PROCESS_SHARED);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&sh->mu, &ma);
    pthread_cond_init(&sh->cv, &ca);

    int dfd = open(data_path, O_RDWR | O_CREAT | O_EXCL, 0640);
    if (dfd < 0 || ftruncate(dfd, DATA_PAGES * 4096)) fail("open(%s): %s", data_path, strerror(errno));
    unsigned char *data = mmap(NULL, DATA_PAGES * 4096, PROT_READ | PROT_WRITE, MAP_SHARED, dfd, 0);
    if (data == MAP_FAILED) fail("mmap data: %s", strerror(errno));
    close(dfd);

    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child == 0) {
        unsigned long seen = 0;
        for (;;) {
            pthread_mutex_lock(&sh->mu);
            sh->count++;
            if (sh->parent_ticks < seen) fail("child: parent ticks went back from %lu to %lu", seen, sh->parent_ticks);
            seen = sh->parent_ticks;
            pthread_cond_broadcast(&sh->cv);
            pthread_mutex_unlock(&sh->mu);
            sleep_ns(8 * 1000 * 1000L);
        }
    }
    unsigned long last = 0;
    unsigned char buf[DATA_PAGES * 4096];
    for (long t = 1; t <= ticks; t++) {
        pthread_mutex_lock(&sh->mu);
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += 10;
        while (sh->count == last) {
            int r = pthread_cond_timedwait(&sh->cv, &sh->mu, &dl);
            if (r == ETIMEDOUT) fail("no progress from the child for 10 s (count %lu): memory not shared?", last);
        }
        if (sh->count < last) fail("count went back from %lu to %lu", last, sh->count);
        last = sh->count;
        sh->parent_ticks = (unsigned long)t;
        pthread_mutex_unlock(&sh->mu);
        if (t > 1) {
            for (int i = 0; i < DATA_PAGES * 4096; i++)
                if (data[i] != (unsigned char)(t - 1 + i / 4096 * 3 + i))
                    fail("data byte %d is %u, tick %ld wrote %u", i, data[i], t - 1, (unsigned char)(t - 1 + i / 4096 * 3 + i));
        }
        for (int i = 0; i < DATA_PAGES * 4096; i++) data[i] = (unsigned char)(t + i / 4096 * 3 + i);
        if (corrupt_now(t)) data[5000] ^= 1;
        /* The mappings are the files. */
        int f = open(data_path, O_RDONLY);
        if (f < 0) fail("%s is gone: %s", data_path, strerror(errno));
        if (pread(f, buf, sizeof buf, 0) != (ssize_t)sizeof buf || memcmp(buf, data, sizeof buf) != 0)
            fail("%s does not hold what its mapping holds", data_path);
        close(f);
        pthread_mutex_lock(&sh->mu);
        if (pread(sfd, buf, sizeof(struct shared), 0) != (ssize_t)sizeof(struct shared) ||
            memcmp(buf, sh, sizeof(struct shared)) != 0)
            fail("%s (open fd) does not hold what its mapping holds", shm_name);
        pthread_mutex_unlock(&sh->mu);
        struct stat st;
        if (fstat(sfd, &st) || st.st_size != 8192) fail("shm object: fstat: size %ld", (long)st.st_size);
        say_tick(t);
        sleep_ns(TICK_NS);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    shm_unlink(shm_name);
    unlink(data_path);
    say_pass();
    return 0;
}
