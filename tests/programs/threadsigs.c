/* threadsigs: signals pending for one thread (queued real-time ones with their values),
 * the parent-death signal of each thread, and the sender's pid of a re-raised signal.
 *   threadsigs [TICKS]
 * Every thread blocks SIGRTMIN+3, SIGUSR2 and SIGUSR1. The main thread queues SIGRTMIN+3
 * three times to the worker thread with pthread_sigqueue (values 1, 2, 3) and sends it
 * SIGUSR2 with pthread_kill; they stay pending for the worker alone: each tick the worker
 * must see them in its sigpending() and the main thread must not. At the end the worker
 * takes them: values 1, 2, 3 in order and nothing more, SIGUSR2 from its own (virtual) pid.
 * PR_SET_PDEATHSIG is SIGURG on the main thread, SIGWINCH on the worker and SIGKILL in a
 * child process; each checks its own every tick.
 * The child (a process of the job) sends its parent SIGUSR1 with kill() once, as soon as it
 * finds itself restarted (its real pid is not its virtual pid): the kernel names it by its
 * real pid. The parent keeps SIGUSR1 pending; once restarted twice it must find it there
 * naming the child by the pid fork() returned (the virtual pid). */
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static int sig_q;
static pthread_t worker;
static volatile int stop, worker_ready;

static int pdeathsig(void)
{
    int v = -1;
    if (prctl(PR_GET_PDEATHSIG, &v) != 0) fail("PR_GET_PDEATHSIG: %s", strerror(errno));
    return v;
}

static int pending(int sig)
{
    sigset_t p;
    sigpending(&p);
    return sigismember(&p, sig);
}

static void *worker_main(void *arg)
{
    (void)arg;
    if (prctl(PR_SET_PDEATHSIG, SIGWINCH) != 0) fail("PR_SET_PDEATHSIG: %s", strerror(errno));
    worker_ready = 1;
    while (!stop) {
        if (pdeathsig() != SIGWINCH) fail("worker: parent-death signal %d, expected SIGWINCH", pdeathsig());
        if (worker_ready == 2) {
            if (!pending(sig_q)) fail("worker: SIGRTMIN+3 is not pending for the worker any more");
            if (!pending(SIGUSR2)) fail("worker: SIGUSR2 is not pending for the worker any more");
        }
        sleep_ns(10 * 1000 * 1000);
    }
    struct timespec zero = { 0, 0 };
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig_q);
    for (long want = 1; want <= 3; want++) {
        siginfo_t si;
        int r = sigtimedwait(&s, &si, &zero);
        if (r != sig_q) fail("worker: queued signal %ld of 3 is gone", want);
        if (si.si_code != SI_QUEUE) fail("worker: queued signal %ld has si_code %d", want, si.si_code);
        if ((long)si.si_value.sival_ptr != want)
            fail("worker: queued signal %ld carries value %ld", want, (long)si.si_value.sival_ptr);
    }
    siginfo_t si;
    if (sigtimedwait(&s, &si, &zero) >= 0) fail("worker: an extra SIGRTMIN+3 (value %ld)", (long)si.si_value.sival_ptr);
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    if (sigtimedwait(&s, &si, &zero) != SIGUSR2) fail("worker: SIGUSR2 is gone");
    if ((si.si_code != SI_TKILL && si.si_code != SI_USER) || si.si_pid != getpid())
        fail("worker: SIGUSR2 came with si_code %d from pid %d, expected tgkill from %d", si.si_code, si.si_pid, getpid());
    return NULL;
}

static void child(pid_t parent)
{
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail("child: PR_SET_PDEATHSIG: %s", strerror(errno));
    if (getppid() != parent) _exit(0);
    int sent = 0;
    for (;;) {
        if (pdeathsig() != SIGKILL) fail("child: parent-death signal %d, expected SIGKILL", pdeathsig());
        if (!sent && syscall(SYS_getpid) != getpid()) {
            if (kill(getppid(), SIGUSR1) != 0) fail("child: kill: %s", strerror(errno));
            sent = 1;
        }
        tick_sleep();
    }
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    sig_q = SIGRTMIN + 3;
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, sig_q);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, NULL);
    pid_t me = getpid();
    pid_t kid = fork();
    if (kid < 0) fail("fork: %s", strerror(errno));
    if (kid == 0) child(me);
    if (pthread_create(&worker, NULL, worker_main, NULL) != 0) fail("pthread_create");
    while (!worker_ready) sleep_ns(1000000);
    if (prctl(PR_SET_PDEATHSIG, SIGURG) != 0) fail("PR_SET_PDEATHSIG: %s", strerror(errno));
    for (long v = 1; v <= 3; v++)
        if (pthread_sigqueue(worker, sig_q, (union sigval){ .sival_ptr = (void *)v }) != 0) fail("pthread_sigqueue");
    if (pthread_kill(worker, SIGUSR2) != 0) fail("pthread_kill");
    worker_ready = 2;
    long last_real = syscall(SYS_getpid);
    int restarts = 0;
    for (long tick = 1; tick <= ticks; tick++) {
        long real = syscall(SYS_getpid);
        if (real != last_real) {
            last_real = real;
            if (++restarts == 1) {
                /* the child sends once it finds itself restarted: wait for it */
                uint64_t until = now_ns() + 60ull * 1000000000ull;
                while (!pending(SIGUSR1)) {
                    if (now_ns() > until) fail("the child's SIGUSR1 never arrived after the restart");
                    sleep_ns(1000000);
                }
            }
        }
        if (pdeathsig() != SIGURG) fail("main: parent-death signal %d, expected SIGURG", pdeathsig());
        if (pending(sig_q) || pending(SIGUSR2)) fail("main: the worker's signals are pending for the main thread");
        if (corrupt_now(tick))
            pthread_sigqueue(worker, sig_q, (union sigval){ .sival_ptr = (void *)99 });
        int st;
        if (waitpid(kid, &st, WNOHANG) != 0) fail("the child process ended");
        say_tick(tick);
        tick_sleep();
    }
    stop = 1;
    pthread_join(worker, NULL);
    struct timespec zero = { 0, 0 };
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR1);
    siginfo_t si;
    int r = sigtimedwait(&s, &si, &zero);
    if (restarts == 0 && r >= 0) fail("SIGUSR1 pending though never restarted");
    if (restarts >= 2) {
        if (r != SIGUSR1) fail("the child's SIGUSR1 is no longer pending");
        if (si.si_code != SI_USER || si.si_pid != kid)
            fail("the child's SIGUSR1 names pid %d (si_code %d), expected the child's pid %d", si.si_pid, si.si_code, kid);
    }
    kill(kid, SIGKILL);
    waitpid(kid, NULL, 0);
    printf("restarted %d times\n", restarts);
    say_pass();
    return 0;
}
