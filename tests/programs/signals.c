/* signals: signal handlers, flags, masks, pending signals and the pid the program sees.
 *   signals [TICKS]   (default 60)
 * Installs a SIGUSR1 handler (SA_SIGINFO|SA_RESTART, sa_mask {SIGHUP}) that counts, a
 * SIGHUP handler with SA_NODEFER|SA_RESETHAND, ignores SIGPIPE, blocks SIGUSR2 and makes
 * one SIGUSR2 pending. Every tick it sends itself SIGUSR1 three times with kill(getpid(), ...)
 * and once with raise(); then checks: the handler count equals what was sent, the
 * dispositions (handler, sa_flags, sa_mask) of SIGUSR1/SIGHUP/SIGPIPE are what sigaction
 * reported right after installing them, the signal mask (sigprocmask) is unchanged, SIGUSR2
 * is still pending, and getpid()/gettid() are what they were at start. */
#include "common.h"
#include <signal.h>

static volatile uint64_t handled;
static volatile int bad_signo;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    (void)si;
    if (sig != SIGUSR1) bad_signo = sig;
    handled++;
}

static void on_hup(int sig) { (void)sig; }

static int same_sigset(const sigset_t *a, const sigset_t *b)
{
    for (int s = 1; s < NSIG; s++) {
        int x = sigismember(a, s), y = sigismember(b, s);
        if (x >= 0 && y >= 0 && x != y) return 0;
    }
    return 1;
}

static void check_action(int sig, const struct sigaction *want, const char *name)
{
    struct sigaction now;
    if (sigaction(sig, NULL, &now)) fail("sigaction(%s) query: %s", name, strerror(errno));
    if ((void *)now.sa_sigaction != (void *)want->sa_sigaction)
        fail("%s handler is %p, expected %p", name, (void *)now.sa_sigaction, (void *)want->sa_sigaction);
    if (now.sa_flags != want->sa_flags) fail("%s sa_flags %#x, expected %#x", name, now.sa_flags, want->sa_flags);
    if (!same_sigset(&now.sa_mask, &want->sa_mask)) fail("%s sa_mask changed", name);
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    const pid_t pid0 = getpid();
    printf("signals pid %d ticks %ld\n", pid0, ticks);
    if (gettid() != pid0) fail("main thread tid %d != pid %d", gettid(), pid0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGHUP);
    if (sigaction(SIGUSR1, &sa, NULL)) fail("sigaction SIGUSR1");
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sa.sa_flags = SA_NODEFER | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGHUP, &sa, NULL)) fail("sigaction SIGHUP");
    signal(SIGPIPE, SIG_IGN);

    struct sigaction want_usr1, want_hup, want_pipe;
    sigaction(SIGUSR1, NULL, &want_usr1);
    sigaction(SIGHUP, NULL, &want_hup);
    sigaction(SIGPIPE, NULL, &want_pipe);

    sigset_t block, want_mask, pend;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &block, NULL)) fail("sigprocmask");
    sigprocmask(SIG_SETMASK, NULL, &want_mask);
    if (kill(pid0, SIGUSR2)) fail("kill SIGUSR2: %s", strerror(errno));

    uint64_t expected = 0;
    for (long tick = 1; tick <= ticks; tick++) {
        for (int i = 0; i < 3; i++) {
            if (kill(getpid(), SIGUSR1)) fail("kill(getpid(), SIGUSR1): %s", strerror(errno));
            expected++;
        }
        if (raise(SIGUSR1)) fail("raise(SIGUSR1): %s", strerror(errno));
        expected++;
        if (corrupt_now(tick)) kill(getpid(), SIGUSR1);
        if (bad_signo) fail("SIGUSR1 handler called for signal %d", bad_signo);
        if (handled != expected)
            fail("SIGUSR1 handler ran %llu times, expected %llu", (unsigned long long)handled, (unsigned long long)expected);
        if (getpid() != pid0) fail("getpid() is %d, was %d at start", getpid(), pid0);
        if (gettid() != pid0) fail("gettid() of the main thread is %d, pid was %d", gettid(), pid0);
        check_action(SIGUSR1, &want_usr1, "SIGUSR1");
        check_action(SIGHUP, &want_hup, "SIGHUP");
        check_action(SIGPIPE, &want_pipe, "SIGPIPE");
        sigset_t now;
        sigprocmask(SIG_SETMASK, NULL, &now);
        if (!same_sigset(&now, &want_mask)) fail("signal mask changed (SIGUSR2 blocked: %d)", sigismember(&now, SIGUSR2));
        sigpending(&pend);
        if (!sigismember(&pend, SIGUSR2)) fail("pending SIGUSR2 was lost");
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
