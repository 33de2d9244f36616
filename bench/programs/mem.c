/* mem MiB: fills MiB of anonymous memory with xorshift64 data (incompressible), prints
 * "ready <seconds to fill and checksum> <seconds of the checksum pass alone>" then "tick N" every 20 ms. After each tick it
 * re-verifies the next 32 MiB of the buffer against per-MiB FNV-1a checksums taken at start
 * (so ceil(MiB / 32) ticks cover all of it; "verified N MiB" marks each full pass) and
 * prints "FAIL ..." on any mismatch. The tick is printed before the verification, so the
 * first tick after a restart marks "running again".
 * SIGUSR1: before the next tick, rewrite 1 % of the buffer (every 100th 4 KiB page, new
 * random data; the checksums are updated) and print "touched <bytes>" (the incremental
 * checkpoint workload). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <signal.h>
#include <time.h>

static volatile sig_atomic_t touch_req;
static void on_usr1(int sig) { (void)sig; touch_req = 1; }

#define SLICE 32 /* MiB verified per tick */

static uint64_t sum_range(const uint64_t *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 1024;
    size_t n = mib * 1024 * 1024 / 8;
    setvbuf(stdout, NULL, _IOLBF, 0);
    double t0 = now();
    uint64_t *buf = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) { perror("mmap"); return 1; }
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        buf[i] = x;
    }
    /* per-MiB checksums so a tick can verify a slice cheaply */
    /* the checksum pass touches no new memory: a pure compute loop (runtime overhead) */
    double t1 = now();
    size_t slices = mib ? mib : 1, per = n / slices;
    uint64_t *sums = malloc(slices * sizeof *sums);
    for (size_t s = 0; s < slices; s++) sums[s] = sum_range(buf + s * per, per);
    printf("ready %.3f %.3f\n", now() - t0, now() - t1);
    struct timespec ts = {0, 20 * 1000 * 1000};
    size_t cursor = 0;
    signal(SIGUSR1, on_usr1);
    for (unsigned long k = 1;; k++) {
        if (touch_req) {
            touch_req = 0;
            size_t words = 4096 / 8, pages = n / words, touched = 0;
            for (size_t pg = 0; pg < pages; pg += 100, touched++)
                for (size_t i = 0; i < words; i++) {
                    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                    buf[pg * words + i] = x;
                }
            for (size_t s = 0; s < slices; s++) sums[s] = sum_range(buf + s * per, per);
            printf("touched %zu\n", touched * 4096);
        }
        printf("tick %lu\n", k);
        /* verify the next SLICE MiB; a full pass takes ceil(mib / SLICE) ticks */
        for (size_t j = 0; j < SLICE && j < slices; j++) {
            if (sum_range(buf + cursor * per, per) != sums[cursor]) {
                printf("FAIL checksum mismatch in MiB %zu\n", cursor);
                return 2;
            }
            if (++cursor == slices) {
                cursor = 0;
                printf("verified %zu MiB\n", mib);
            }
        }
        nanosleep(&ts, NULL);
    }
}
