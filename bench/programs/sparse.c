/* sparse: maps 8 GiB of anonymous memory (MAP_NORESERVE), touches 4 MiB of it with random
 * data spread over the range (one 64 KiB chunk every 128 MiB), plus one page that is
 * written with zeros; the rest is never touched. Prints "ready", then ticks every 20 ms,
 * verifying the touched chunks each tick (prints FAIL on mismatch). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define GIB (1024UL * 1024 * 1024)
#define SIZE (8 * GIB)
#define STRIDE (128UL * 1024 * 1024)
#define CHUNK (64UL * 1024)

static uint64_t fill_or_check(uint8_t *base, int check) {
    uint64_t x = 88172645463325252ULL, bad = 0;
    for (size_t off = 0; off < SIZE; off += STRIDE) {
        uint64_t *p = (uint64_t *)(base + off);
        for (size_t i = 0; i < CHUNK / 8; i++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            if (check) bad += p[i] != x; else p[i] = x;
        }
    }
    return bad;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    uint8_t *base = mmap(NULL, SIZE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) { perror("mmap"); return 1; }
    fill_or_check(base, 0);
    memset(base + SIZE / 2 + STRIDE / 2, 0, 4096); /* a touched page holding zeros */
    printf("ready\n");
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (unsigned long k = 1;; k++) {
        uint64_t bad = fill_or_check(base, 1);
        if (bad) { printf("FAIL %lu words differ\n", (unsigned long)bad); return 2; }
        for (size_t i = 0; i < 4096; i++)
            if (base[SIZE / 2 + STRIDE / 2 + i]) { printf("FAIL zero page\n"); return 2; }
        printf("tick %lu\n", k);
        nanosleep(&ts, NULL);
    }
}
