/* Shared helpers for the zdtm-style corpus programs (tests/programs/NAME.c).
 *
 * Contract of every program:
 *   prog TICKS [program-specific args...]
 * sets up its state, then loops printing "tick N" (N = 1, 2, ..., TICKS, flushed, one line
 * every ~30 ms), verifying its own state on every tick; on a mismatch it prints
 * "FAIL <reason>" and exits 1; after tick TICKS it prints "PASS" and exits 0.
 *
 * CKPT_TEST_CORRUPT=K in the environment makes the program damage its own state at tick K
 * (the program-specific poke emulates what a bad restore would do), so the FAIL path of each
 * program can be proven to work without any checkpointing.
 */
#ifndef CKPT_TEST_COMMON_H
#define CKPT_TEST_COMMON_H

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS (30 * 1000 * 1000L)

static long corrupt_tick = -1; /* from CKPT_TEST_CORRUPT; -1: never */

__attribute__((format(printf, 1, 2), noreturn, unused)) static void fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    /* One write(2): several threads may fail at once; keep the line whole. */
    char line[600];
    int n = snprintf(line, sizeof line, "FAIL %s\n", buf);
    fflush(stdout);
    if (write(1, line, (size_t)n) < 0) { /* nothing left to do */ }
    if (write(2, line, (size_t)n) < 0) { }
    _exit(1);
}

/* Parses argv[1] (tick count) and CKPT_TEST_CORRUPT. */
static inline long setup_common(int argc, char **argv, long default_ticks)
{
    long ticks = default_ticks;
    if (argc > 1) {
        char *end;
        ticks = strtol(argv[1], &end, 10);
        if (*end || ticks < 1) {
            fprintf(stderr, "usage: %s TICKS ...\n", argv[0]);
            exit(2);
        }
    }
    const char *c = getenv("CKPT_TEST_CORRUPT");
    if (c && *c) corrupt_tick = strtol(c, NULL, 10);
    setvbuf(stdout, NULL, _IOLBF, 0);
    return ticks;
}

static inline int corrupt_now(long tick) { return tick == corrupt_tick; }

static inline void say_tick(long tick)
{
    printf("tick %ld\n", tick);
    fflush(stdout);
}

static inline void say_pass(void)
{
    printf("PASS\n");
    fflush(stdout);
}

/* Sleeps ns nanoseconds; EINTR is retried with the remaining time (the programs that test
 * for spurious EINTR do their own sleeping). */
static inline void sleep_ns(long ns)
{
    struct timespec ts = { ns / 1000000000L, ns % 1000000000L }, rem;
    while (nanosleep(&ts, &rem) != 0) {
        if (errno != EINTR) fail("nanosleep: %s", strerror(errno));
        ts = rem;
    }
}

static inline void tick_sleep(void) { sleep_ns(TICK_NS); }

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t mix64(uint64_t x)
{
    /* splitmix64 finaliser */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static inline uint64_t mix2(uint64_t a, uint64_t b) { return mix64(a ^ mix64(b + 0x632be59bd9b4e019ull)); }

static inline uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

#endif
