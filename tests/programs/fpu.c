/* fpu: values held in vector and x87 registers across long loops, and MXCSR / x87 control
 * word settings.
 *   fpu [TICKS]   (default 60)
 * Each tick one inline-asm loop (about 25 ms, started right after the previous tick line is
 * printed, so a checkpoint requested on seeing a tick line lands inside it) keeps 15 vector registers (ymm0-14 when built
 * with -mavx2, else xmm0-14) live, adding ymm15/xmm15 to each of them every iteration, and
 * two x87 stack registers, adding st(1) to st(0); nothing is stored to memory until the
 * loop ends. A checkpoint that lands inside the loop must bring all of it back. Results are
 * compared against closed forms computed in C. MXCSR (round-toward-zero, FTZ, DAZ) and the
 * x87 control word are set at start and checked every tick. */
#include "common.h"

#ifdef __AVX2__
#define LANES 4
#define ISA "avx2 (ymm)"
#else
#define LANES 2
#define ISA "sse2 (xmm)"
#endif
#define NREG 15

typedef uint64_t vec[LANES];

static vec init_vals[NREG], vals[NREG];

#define L(i) "vmovdqu " #i "*32(%[v]), %%ymm" #i "\n\t"
#define S(i) "vmovdqu %%ymm" #i ", " #i "*32(%[v])\n\t"
#define A(i) "vpaddq %%ymm15, %%ymm" #i ", %%ymm" #i "\n\t"
#define LX(i) "movdqu " #i "*16(%[v]), %%xmm" #i "\n\t"
#define SX(i) "movdqu %%xmm" #i ", " #i "*16(%[v])\n\t"
#define AX(i) "paddq %%xmm15, %%xmm" #i "\n\t"
#define ALL(M) M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14)

/* v[0..14] += n * inc (lane-wise); then v[3] += poke. *a += n * *b (x87, 80-bit). */
static void vec_loop(vec *v, const uint64_t *inc, const uint64_t *poke, uint64_t n, long double *a, long double *b)
{
#ifdef __AVX2__
    __asm__ volatile(ALL(L) "vmovdqu (%[inc]), %%ymm15\n\t"
                     "fldt (%[b])\n\t"
                     "fldt (%[a])\n\t"
                     "1:\n\t" ALL(A) "fadd %%st(1), %%st\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b\n\t"
                     "fstpt (%[a])\n\t"
                     "fstpt (%[b])\n\t"
                     "vmovdqu (%[poke]), %%ymm15\n\t"
                     "vpaddq %%ymm15, %%ymm3, %%ymm3\n\t" ALL(S) "vzeroupper\n\t"
                     : [n] "+r"(n)
                     : [v] "r"(v), [inc] "r"(inc), [poke] "r"(poke), [a] "r"(a), [b] "r"(b)
                     : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st", "st(1)");
#else
    __asm__ volatile(ALL(LX) "movdqu (%[inc]), %%xmm15\n\t"
                     "fldt (%[b])\n\t"
                     "fldt (%[a])\n\t"
                     "1:\n\t" ALL(AX) "fadd %%st(1), %%st\n\t"
                     "dec %[n]\n\t"
                     "jnz 1b\n\t"
                     "fstpt (%[a])\n\t"
                     "fstpt (%[b])\n\t"
                     "movdqu (%[poke]), %%xmm15\n\t"
                     "paddq %%xmm15, %%xmm3\n\t" ALL(SX)
                     : [n] "+r"(n)
                     : [v] "r"(v), [inc] "r"(inc), [poke] "r"(poke), [a] "r"(a), [b] "r"(b)
                     : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8",
                       "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st", "st(1)");
#endif
}

static void tick_inc(long tick, uint64_t *inc)
{
    for (int l = 0; l < LANES; l++) inc[l] = mix2((uint64_t)tick, (uint64_t)l);
}

static uint32_t get_mxcsr(void)
{
    uint32_t m;
    __asm__ volatile("stmxcsr %0" : "=m"(m));
    return m;
}
static uint16_t get_fcw(void)
{
    uint16_t w;
    __asm__ volatile("fnstcw %0" : "=m"(w));
    return w;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    /* round toward zero (RC = 11) in both units, plus FTZ and DAZ in MXCSR */
    uint32_t mx = get_mxcsr() | (3u << 13) | (1u << 15) | (1u << 6);
    __asm__ volatile("ldmxcsr %0" ::"m"(mx));
    uint16_t cw = get_fcw() | (3u << 10);
    __asm__ volatile("fldcw %0" ::"m"(cw));
    const uint32_t want_mxcsr = get_mxcsr();
    const uint16_t want_fcw = get_fcw();
    volatile double one0 = 1.0, ten0 = 10.0;
    const double tenth_rz = one0 / ten0; /* round-to-nearest would give 0x1.999999999999ap-4 */
    if (tenth_rz != 0x1.9999999999999p-4) fail("1.0/10.0 does not round toward zero");
    if (((want_mxcsr >> 13) & 3) != 3 || ((want_fcw >> 10) & 3) != 3) fail("could not set round-toward-zero");

    for (int r = 0; r < NREG; r++)
        for (int l = 0; l < LANES; l++) vals[r][l] = init_vals[r][l] = mix2((uint64_t)r, (uint64_t)l + 99);
    const uint64_t zero[LANES] = { 0 };

    /* Calibrate the loop to ~25 ms (timing only: results are checked against closed forms
     * for whatever n is). */
    uint64_t inc[LANES], n = 1000000;
    {
        vec tmp[NREG];
        long double a = 1, b = 0.5;
        memcpy(tmp, vals, sizeof tmp);
        uint64_t t0 = now_ns();
        vec_loop(tmp, zero, zero, n, &a, &b);
        uint64_t dt = now_ns() - t0;
        n = dt ? n * 25000000ull / dt : n;
        if (n < 200000) n = 200000;
        if (n > 400000000) n = 400000000;
    }
    uint64_t loop_ns = 25 * 1000 * 1000ull;
    printf("fpu pid %d ticks %ld isa %s loop %llu iterations mxcsr %#x fcw %#x\n", getpid(), ticks, ISA,
           (unsigned long long)n, want_mxcsr, want_fcw);

    long double x87_total = 1; /* a accumulates across ticks: a = 1 + tick * n * 0.5 */
    for (long tick = 1; tick <= ticks; tick++) {
        uint64_t poke[LANES] = { 0 };
        if (corrupt_now(tick)) poke[LANES - 1] = 1ull << 40;
        tick_inc(tick, inc);
        long double a = x87_total, b = 0.5;
        vec before[NREG];
        memcpy(before, vals, sizeof before);
        uint64_t t0 = now_ns();
        vec_loop(vals, inc, poke, n, &a, &b);
        uint64_t took = now_ns() - t0;
        /* A loop that took far longer than calibrated was stopped in the middle (by a
         * checkpoint, and maybe resumed in a restored process): say so, for the harness. */
        if (took > 5 * loop_ns && took > 150 * 1000 * 1000ull)
            printf("fpu: the loop of tick %ld was interrupted for %llu ms with its registers live\n", tick,
                   (unsigned long long)(took / 1000000));
        for (int r = 0; r < NREG; r++)
            for (int l = 0; l < LANES; l++)
                if (vals[r][l] != before[r][l] + n * inc[l])
                    fail("vector register %d lane %d: %016llx after the loop, expected %016llx", r, l,
                         (unsigned long long)vals[r][l], (unsigned long long)(before[r][l] + n * inc[l]));
        if (b != 0.5L) fail("x87 st(1) came back as %Lg, expected 0.5", b);
        if (a != x87_total + (long double)n * 0.5L)
            fail("x87 st(0) came back as %.21Lg, expected %.21Lg", a, x87_total + (long double)n * 0.5L);
        x87_total = a;
        /* closed form over the whole history */
        uint64_t sum[LANES] = { 0 }, t[LANES];
        for (long s = 1; s <= tick; s++) {
            tick_inc(s, t);
            for (int l = 0; l < LANES; l++) sum[l] += t[l];
        }
        for (int r = 0; r < NREG; r++)
            for (int l = 0; l < LANES; l++)
                if (vals[r][l] != init_vals[r][l] + n * sum[l])
                    fail("vector state %d lane %d differs from its history at tick %ld", r, l, tick);
        if (x87_total != 1.0L + (long double)tick * (long double)n * 0.5L) fail("x87 history differs at tick %ld", tick);
        if ((get_mxcsr() & ~0x3fu) != (want_mxcsr & ~0x3fu)) fail("MXCSR is %#x, expected %#x (ignoring exception flags)", get_mxcsr(), want_mxcsr);
        if (get_fcw() != want_fcw) fail("x87 control word is %#x, expected %#x", get_fcw(), want_fcw);
        volatile double one = 1.0, ten = 10.0;
        if (one / ten != tenth_rz) fail("1.0/10.0 no longer rounds toward zero");
        /* sleep before printing, so that whatever reacts to a tick line (the harness starts
         * a checkpoint) finds the next loop running */
        sleep_ns(10 * 1000 * 1000);
        say_tick(tick);
    }
    say_pass();
    return 0;
}
