/* Timers: setitimer (real, virtual) and POSIX timers with identical ids, values and
 * SIGEV_THREAD_ID targets.
 *   timers [TICKS]
 * ITIMER_REAL every 20 ms (SIGALRM counted); ITIMER_VIRTUAL one-shot 1000 s (time left
 * never grows, never 0). POSIX timers: T0 (created, then deleted: its id stays free), T1
 * SIGEV_SIGNAL SIGRTMIN+2 value 77 every 15 ms (handler checks si_value and si_timerid),
 * T2 SIGEV_NONE 1000 s (time left never grows), T3 SIGEV_THREAD_ID to a worker thread,
 * SIGRTMIN+3 every 25 ms (handler checks it runs on the worker). Each tick every periodic
 * count must have grown within the last 10 ticks, ids must answer timer_gettime with their
 * intervals, and T0's id must answer EINVAL. */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>

static volatile long alrm, t1n, t3n, bad;
static volatile pid_t worker_tid;
static timer_t t1id;

static void on_alrm(int s) { (void)s; alrm++; }
static void on_t1(int s, siginfo_t *si, void *u)
{
    (void)s; (void)u;
    if (si->si_value.sival_int != 77 || si->si_code != SI_TIMER) bad = 1;
    t1n++;
}
static void on_t3(int s, siginfo_t *si, void *u)
{
    (void)s; (void)si; (void)u;
    if (gettid() != worker_tid) bad = 3;
    t3n++;
}

static void *worker(void *a)
{
    (void)a;
    worker_tid = gettid();
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGRTMIN + 3);
    pthread_sigmask(SIG_UNBLOCK, &m, NULL);
    for (;;) pause();
    return NULL;
}

static uint64_t ns(const struct timespec *t) { return (uint64_t)t->tv_sec * 1000000000ull + (uint64_t)t->tv_nsec; }

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alrm;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = NULL;
    sa.sa_sigaction = on_t1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGRTMIN + 2, &sa, NULL);
    sa.sa_sigaction = on_t3;
    sigaction(SIGRTMIN + 3, &sa, NULL);
    /* Only the worker takes SIGRTMIN+3. */
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGRTMIN + 3);
    pthread_sigmask(SIG_BLOCK, &m, NULL);
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    while (!worker_tid) sleep_ns(1000000);

    struct itimerval iv = { { 0, 20000 }, { 0, 20000 } };
    if (setitimer(ITIMER_REAL, &iv, NULL)) fail("setitimer real");
    iv = (struct itimerval){ { 0, 0 }, { 1000, 0 } };
    if (setitimer(ITIMER_VIRTUAL, &iv, NULL)) fail("setitimer virtual");

    timer_t t0, t2, t3;
    struct sigevent se;
    memset(&se, 0, sizeof se);
    se.sigev_notify = SIGEV_NONE;
    if (timer_create(CLOCK_MONOTONIC, &se, &t0)) fail("timer_create t0");
    se.sigev_notify = SIGEV_SIGNAL;
    se.sigev_signo = SIGRTMIN + 2;
    se.sigev_value.sival_int = 77;
    if (timer_create(CLOCK_MONOTONIC, &se, &t1id)) fail("timer_create t1");
    se.sigev_notify = SIGEV_NONE;
    if (timer_create(CLOCK_BOOTTIME, &se, &t2)) fail("timer_create t2");
    se.sigev_notify = SIGEV_THREAD_ID;
    se.sigev_signo = SIGRTMIN + 3;
    se._sigev_un._tid = worker_tid;
    if (timer_create(CLOCK_REALTIME, &se, &t3)) fail("timer_create t3: %s", strerror(errno));
    if (timer_delete(t0)) fail("timer_delete");
    struct itimerspec its = { { 0, 15000000 }, { 0, 15000000 } };
    timer_settime(t1id, 0, &its, NULL);
    its = (struct itimerspec){ { 0, 0 }, { 1000, 0 } };
    timer_settime(t2, 0, &its, NULL);
    its = (struct itimerspec){ { 0, 25000000 }, { 0, 25000000 } };
    timer_settime(t3, 0, &its, NULL);

    long last[3] = { 0, 0, 0 }, since[3] = { 0, 0, 0 };
    uint64_t v_prev = ~0ull, t2_prev = ~0ull;
    for (long tick = 1; tick <= ticks; tick++) {
        long now[3] = { alrm, t1n, t3n };
        const char *names[3] = { "ITIMER_REAL", "POSIX timer T1", "POSIX timer T3 (SIGEV_THREAD_ID)" };
        for (int i = 0; i < 3; i++) {
            if (now[i] > last[i]) since[i] = 0;
            else if (++since[i] > 10) fail("%s has not fired for 10 ticks (count %ld)", names[i], now[i]);
            last[i] = now[i];
        }
        if (bad) fail("timer signal check %ld failed", (long)bad);
        struct itimerval g;
        getitimer(ITIMER_REAL, &g);
        if (g.it_interval.tv_usec != 20000) fail("ITIMER_REAL interval %ld us", (long)g.it_interval.tv_usec);
        getitimer(ITIMER_VIRTUAL, &g);
        uint64_t v = (uint64_t)g.it_value.tv_sec * 1000000 + (uint64_t)g.it_value.tv_usec;
        if (corrupt_now(tick)) v = 0;
        if (v == 0 || v > v_prev) fail("ITIMER_VIRTUAL time left %llu us (before %llu)", (unsigned long long)v, (unsigned long long)v_prev);
        v_prev = v;
        struct itimerspec c;
        if (timer_gettime(t1id, &c) || ns(&c.it_interval) != 15000000) fail("T1 lost (id %p)", t1id);
        if (timer_gettime(t2, &c) || ns(&c.it_value) == 0 || ns(&c.it_value) > t2_prev) fail("T2 time left wrong");
        t2_prev = ns(&c.it_value);
        if (timer_gettime(t3, &c) || ns(&c.it_interval) != 25000000) fail("T3 lost");
        if (timer_gettime(t0, &c) == 0 || errno != EINVAL) fail("deleted timer id %p answers", t0);
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
