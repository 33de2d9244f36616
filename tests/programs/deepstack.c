/* deepstack: a deep recursion whose every frame holds data; ticks happen at the deepest
 * point.
 *   deepstack [TICKS] [DEPTH]   (defaults 60, 20000)
 * Each frame holds 8 words derived from its depth and from its caller's words, and links
 * itself into a chain. At the deepest point the tick loop walks the whole chain every tick
 * (all DEPTH frames) and checks every frame against its caller; when the ticks are done the
 * recursion unwinds and each frame re-checks its own words, its canary, and the value its
 * callee returned (a hash over all deeper frames). */
#include "common.h"

#define WORDS 8

struct frame {
    uint64_t w[WORDS];
    struct frame *up;
    long depth;
    uint64_t canary;
};

static long max_depth, ticks;
static struct frame *deepest;

static void fill(struct frame *f, const struct frame *up, long depth)
{
    uint64_t seed = up ? up->w[WORDS - 1] : 0x5eed;
    for (int i = 0; i < WORDS; i++) f->w[i] = mix2(seed + (uint64_t)i, (uint64_t)depth);
    f->up = (struct frame *)up;
    f->depth = depth;
    f->canary = mix64((uint64_t)(uintptr_t)f ^ (uint64_t)depth);
}

static void check(const struct frame *f, long depth, const char *when)
{
    if (f->depth != depth) fail("%s: frame at %p says depth %ld, expected %ld", when, (void *)f, f->depth, depth);
    if (f->canary != mix64((uint64_t)(uintptr_t)f ^ (uint64_t)depth))
        fail("%s: frame %ld at %p: canary damaged", when, depth, (void *)f);
    uint64_t seed = f->up ? f->up->w[WORDS - 1] : 0x5eed;
    for (int i = 0; i < WORDS; i++)
        if (f->w[i] != mix2(seed + (uint64_t)i, (uint64_t)depth))
            fail("%s: frame %ld at %p word %d is %016llx, expected %016llx", when, depth, (void *)f, i,
                 (unsigned long long)f->w[i], (unsigned long long)mix2(seed + (uint64_t)i, (uint64_t)depth));
}

static uint64_t tick_loop(void)
{
    for (long tick = 1; tick <= ticks; tick++) {
        if (corrupt_now(tick)) {
            struct frame *f = deepest;
            while (f->depth > max_depth / 2) f = f->up;
            f->w[3] ^= 1ull << 9;
        }
        long d = max_depth;
        const struct frame *f;
        for (f = deepest; f; f = f->up) check(f, d--, "tick walk");
        if (d != 0) fail("tick walk: chain has %ld frames, expected %ld", max_depth - d, max_depth);
        say_tick(tick);
        tick_sleep();
    }
    return 0x1234;
}

__attribute__((noinline)) static uint64_t recurse(const struct frame *up, long depth)
{
    struct frame f;
    fill(&f, up, depth);
    uint64_t below;
    if (depth == max_depth) {
        deepest = &f;
        __asm__ volatile("" ::: "memory");
        below = tick_loop();
    } else {
        below = recurse(&f, depth + 1);
    }
    /* unwinding: re-check this frame and fold it into the result */
    check(&f, depth, "unwind");
    return mix2(below, f.w[0]);
}

static uint64_t expected_result(void)
{
    /* recompute the chain without recursion: frame d's w[0] depends on frame d-1's w[7] */
    uint64_t seed = 0x5eed, r = 0x1234;
    uint64_t *w0 = malloc((size_t)max_depth * sizeof *w0);
    if (!w0) fail("malloc");
    for (long d = 1; d <= max_depth; d++) {
        w0[d - 1] = mix2(seed + 0, (uint64_t)d);
        seed = mix2(seed + WORDS - 1, (uint64_t)d);
    }
    for (long d = max_depth; d >= 1; d--) r = mix2(r, w0[d - 1]);
    free(w0);
    return r;
}

int main(int argc, char **argv)
{
    ticks = setup_common(argc, argv, 60);
    max_depth = argc > 2 ? strtol(argv[2], NULL, 10) : 20000;
    if (max_depth < 1) fail("bad depth");
    printf("deepstack pid %d ticks %ld depth %ld frame size %zu\n", getpid(), ticks, max_depth, sizeof(struct frame));
    uint64_t got = recurse(NULL, 1);
    uint64_t want = expected_result();
    if (got != want)
        fail("unwound result %016llx, expected %016llx", (unsigned long long)got, (unsigned long long)want);
    say_pass();
    return 0;
}
