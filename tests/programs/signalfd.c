/* signalfd: the mask, and queued real-time signals with their values in flight.
 *   signalfd [TICKS]
 * SIGUSR1 and SIGRTMIN+1 are blocked and read through a non-blocking signalfd. Three
 * SIGRTMIN+1 carrying values are always queued: each tick one is read and must carry the
 * next value in sequence (every value once, in order), then a new one is queued; SIGUSR1
 * sent with kill() must come back with SI_USER. The signalfd's mask (fdinfo)
 * must stay SIGUSR1|SIGRTMIN+1. */
#include "common.h"
#include <fcntl.h>
#include <signal.h>
#include <sys/signalfd.h>

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    int rt = SIGRTMIN + 1;
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, rt);
    if (sigprocmask(SIG_BLOCK, &m, NULL)) fail("sigprocmask");
    int sfd = signalfd(-1, &m, SFD_NONBLOCK);
    if (sfd < 0) fail("signalfd: %s", strerror(errno));
    int next_send = 1000, next_recv = 1000;
    for (int i = 0; i < 3; i++)
        if (sigqueue(getpid(), rt, (union sigval){ .sival_int = next_send++ })) fail("sigqueue: %s", strerror(errno));
    char want_mask[64];
    snprintf(want_mask, sizeof want_mask, "sigmask:\t%016llx", (1ull << (SIGUSR1 - 1)) | (1ull << (rt - 1)));
    for (long tick = 1; tick <= ticks; tick++) {
        struct signalfd_siginfo si;
        ssize_t n = read(sfd, &si, sizeof si);
        if (n != sizeof si) fail("read signalfd: %s (queued values lost?)", n < 0 ? strerror(errno) : "short");
        if ((int)si.ssi_signo != rt) fail("signalfd gave signal %u, expected %d", si.ssi_signo, rt);
        if (corrupt_now(tick)) si.ssi_int++;
        if (si.ssi_code != SI_QUEUE) fail("queued signal has si_code %d", si.ssi_code);
        if ((int)si.ssi_int != next_recv) fail("queued signal carries %d, expected %d", (int)si.ssi_int, next_recv);
        next_recv++;
        if (sigqueue(getpid(), rt, (union sigval){ .sival_int = next_send++ })) fail("sigqueue: %s", strerror(errno));
        if (kill(getpid(), SIGUSR1)) fail("kill");
        n = read(sfd, &si, sizeof si);
        if (n != sizeof si || si.ssi_signo != SIGUSR1) fail("SIGUSR1 not read from the signalfd");
        /* (ssi_pid is the kernel's real pid: after a restart it is not getpid(), which
         * is virtual; not checked here.) */
        if (si.ssi_code != SI_USER) fail("SIGUSR1 si_code %d, expected SI_USER", si.ssi_code);
        char p[64], b[512];
        snprintf(p, sizeof p, "/proc/self/fdinfo/%d", sfd);
        int f = open(p, O_RDONLY);
        n = read(f, b, sizeof b - 1);
        close(f);
        b[n > 0 ? n : 0] = 0;
        if (!strstr(b, want_mask)) fail("signalfd mask changed:\n%s", b);
        if (!(fcntl(sfd, F_GETFL) & O_NONBLOCK)) fail("signalfd is blocking");
        say_tick(tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
