/* counter: the smallest corpus program (smoke test and benchmark subject).
 * State: a tick counter and a running hash chained over every tick, kept in a heap
 * object; every tick the chain is recomputed from scratch and compared.
 *   counter [TICKS]   (default 60) */
#include "common.h"

struct state {
    long tick;
    uint64_t chain; /* mix2(mix2(...mix2(seed, 1)...), tick) */
};

static uint64_t replay(long tick)
{
    uint64_t h = 0x6b43a9b5u;
    for (long i = 1; i <= tick; i++) h = mix2(h, (uint64_t)i);
    return h;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    struct state *s = calloc(1, sizeof *s);
    if (!s) fail("calloc");
    s->chain = replay(0);
    printf("counter pid %d ticks %ld\n", getpid(), ticks);
    while (s->tick < ticks) {
        s->tick++;
        s->chain = mix2(s->chain, (uint64_t)s->tick);
        if (corrupt_now(s->tick)) s->chain ^= 1ull << 17;
        if (s->chain != replay(s->tick))
            fail("counter chain %016llx != replayed %016llx at tick %ld",
                 (unsigned long long)s->chain, (unsigned long long)replay(s->tick), s->tick);
        say_tick(s->tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
