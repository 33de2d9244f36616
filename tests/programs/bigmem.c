/* bigmem: a large region of random data with a known digest.
 *   bigmem [TICKS] [MIB]   (defaults 60, 256)
 * The region (anonymous mmap) is filled with xorshift64 data, seeded per 4 KiB page so any
 * page can be regenerated. The digest D = sum over words of v[k]*(2k+1) (mod 2^64) catches
 * any changed, lost (zeroed) or moved word. Every tick 4 pseudo-random words are changed
 * deterministically and D is updated incrementally; every 5 ticks D is recomputed over the
 * whole region and compared; at the end every word is compared against the regenerated data
 * with all changes replayed. */
#include "common.h"
#include <sys/mman.h>

#define PAGE_WORDS 512
#define TOUCH_PER_TICK 4
#define FULL_EVERY 5

static uint64_t nwords;

static void gen_page(uint64_t page, uint64_t *out)
{
    uint64_t s = mix64(page ^ 0xb16b00b5ull) | 1;
    for (int i = 0; i < PAGE_WORDS; i++) out[i] = xorshift64(&s);
}

static uint64_t digest(const uint64_t *v)
{
    uint64_t d = 0;
    for (uint64_t k = 0; k < nwords; k++) d += v[k] * (2 * k + 1);
    return d;
}

static uint64_t touch_index(long tick, int j) { return mix2((uint64_t)tick, (uint64_t)j) % nwords; }
static uint64_t touch_value(uint64_t old, long tick) { return mix2(old, (uint64_t)tick); }

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    long mib = argc > 2 ? strtol(argv[2], NULL, 10) : 256;
    if (mib < 1) fail("bad MiB %ld", mib);
    nwords = (uint64_t)mib * 1024 * 1024 / 8;
    uint64_t *v = mmap(NULL, nwords * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (v == MAP_FAILED) fail("mmap %ld MiB: %s", mib, strerror(errno));
    for (uint64_t p = 0; p < nwords / PAGE_WORDS; p++) gen_page(p, v + p * PAGE_WORDS);
    uint64_t *d = malloc(sizeof *d); /* the tracked digest lives on the heap */
    if (!d) fail("malloc");
    *d = digest(v);
    printf("bigmem pid %d ticks %ld region %ld MiB at %p digest %016llx\n", getpid(), ticks, mib,
           (void *)v, (unsigned long long)*d);

    for (long tick = 1; tick <= ticks; tick++) {
        for (int j = 0; j < TOUCH_PER_TICK; j++) {
            uint64_t k = touch_index(tick, j);
            uint64_t old = v[k], nw = touch_value(old, tick);
            v[k] = nw;
            *d += (nw - old) * (2 * k + 1);
        }
        if (corrupt_now(tick)) ((volatile unsigned char *)v)[nwords * 4 + 3] ^= 0x10;
        if (tick % FULL_EVERY == 0) {
            uint64_t now = digest(v);
            if (now != *d)
                fail("region digest %016llx != tracked %016llx at tick %ld", (unsigned long long)now,
                     (unsigned long long)*d, tick);
        }
        say_tick(tick);
        tick_sleep();
    }

    /* Final: every word against regenerated data plus replayed touches. */
    uint64_t ntouch = (uint64_t)ticks * TOUCH_PER_TICK;
    uint64_t *tidx = malloc(ntouch * 8), *tval = malloc(ntouch * 8);
    if (!tidx || !tval) fail("malloc");
    uint64_t nt = 0, page[PAGE_WORDS];
    for (long tick = 1; tick <= ticks; tick++)
        for (int j = 0; j < TOUCH_PER_TICK; j++) {
            uint64_t k = touch_index(tick, j), t;
            for (t = 0; t < nt && tidx[t] != k; t++) {}
            if (t == nt) {
                gen_page(k / PAGE_WORDS, page);
                tidx[nt] = k;
                tval[nt++] = page[k % PAGE_WORDS];
            }
            tval[t] = touch_value(tval[t], tick);
        }
    for (uint64_t p = 0; p < nwords / PAGE_WORDS; p++) {
        gen_page(p, page);
        for (uint64_t t = 0; t < nt; t++)
            if (tidx[t] / PAGE_WORDS == p) page[tidx[t] % PAGE_WORDS] = tval[t];
        if (memcmp(page, v + p * PAGE_WORDS, sizeof page)) {
            for (int i = 0; i < PAGE_WORDS; i++)
                if (page[i] != v[p * PAGE_WORDS + i])
                    fail("word %llu (page %llu at %p) is %016llx, expected %016llx",
                         (unsigned long long)(p * PAGE_WORDS + i), (unsigned long long)p,
                         (void *)(v + p * PAGE_WORDS), (unsigned long long)v[p * PAGE_WORDS + i],
                         (unsigned long long)page[i]);
        }
    }
    say_pass();
    return 0;
}
