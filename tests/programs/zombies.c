/* Children that ended and were not yet waited for (zombies), across restarts.
 * The parent forks: A, which exits with status 7; B, which is killed by SIGTERM; C, which
 * lives (pause); D, which lives and has its own zombie child E (exit 3). Every tick the
 * parent checks, without reaping (waitid WNOWAIT|WNOHANG), that A and B are still waitable
 * with the same pids and the same way of ending, and that no SIGCHLD arrived since the
 * setup (a restart must not deliver SIGCHLDs the program already had). At the end it reaps
 * A and B (waitpid with their pids: statuses 7 and SIGTERM), tells D to reap E (D checks
 * E's pid and status 3 and exits 0), kills and reaps C, and checks that no child is left.
 * prog TICKS */
#include "common.h"
#include <signal.h>
#include <sys/wait.h>

static volatile sig_atomic_t chld_count;

static void on_chld(int sig)
{
    (void)sig;
    chld_count++;
}

static void check_ended(pid_t p, int code, int status, const char *what)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PID, (id_t)p, &si, WEXITED | WNOWAIT | WNOHANG) != 0)
        fail("waitid(%s %d): %s", what, p, strerror(errno));
    if (si.si_pid != p)
        fail("waitid(%s %d): si_pid %d (not waitable: child not ended, or another pid)", what, p, si.si_pid);
    if (si.si_code != code || si.si_status != status)
        fail("waitid(%s %d): code %d status %d, expected code %d status %d", what, p, si.si_code,
             si.si_status, code, status);
}

static void wait_ended(pid_t p)
{
    siginfo_t si;
    memset(&si, 0, sizeof si);
    while (waitid(P_PID, (id_t)p, &si, WEXITED | WNOWAIT) != 0)
        if (errno != EINTR) fail("waitid(%d): %s", p, strerror(errno));
}

static void child_d(int rd)
{
    pid_t e = fork();
    if (e < 0) fail("D: fork: %s", strerror(errno));
    if (e == 0) _exit(3);
    wait_ended(e);
    char c;
    ssize_t n;
    while ((n = read(rd, &c, 1)) < 0 && errno == EINTR) {}
    if (n != 1) fail("D: read: %zd %s", n, strerror(errno));
    int st;
    pid_t r = waitpid(e, &st, WNOHANG);
    if (r != e) fail("D: waitpid(E %d) returned %d (%s)", e, r, r < 0 ? strerror(errno) : "not ended");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 3) fail("D: E ended with status %#x, not exit 3", st);
    if (waitpid(-1, &st, WNOHANG) != -1 || errno != ECHILD) fail("D: a child is left after reaping E");
    _exit(0);
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);

    pid_t a = fork();
    if (a < 0) fail("fork: %s", strerror(errno));
    if (a == 0) _exit(7);
    pid_t b = fork();
    if (b < 0) fail("fork: %s", strerror(errno));
    if (b == 0) {
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        _exit(99);
    }
    pid_t c = fork();
    if (c < 0) fail("fork: %s", strerror(errno));
    if (c == 0) for (;;) pause();
    int dp[2];
    if (pipe(dp)) fail("pipe: %s", strerror(errno));
    pid_t d = fork();
    if (d < 0) fail("fork: %s", strerror(errno));
    if (d == 0) {
        close(dp[1]);
        child_d(dp[0]);
    }
    close(dp[0]);
    wait_ended(a);
    wait_ended(b);
    int base = chld_count;
    if (base < 1) fail("no SIGCHLD after two children ended");

    for (long t = 1; t <= ticks; t++) {
        if (corrupt_now(t)) {
            int st;
            waitpid(a, &st, 0); /* what a restore that lost the zombie would look like */
        }
        check_ended(a, CLD_EXITED, 7, "A");
        check_ended(b, CLD_KILLED, SIGTERM, "B");
        if (chld_count != base) fail("%d SIGCHLD(s) arrived after the setup", chld_count - base);
        say_tick(t);
        sleep_ns(TICK_NS);
    }
    int st;
    pid_t r = waitpid(a, &st, 0);
    if (r != a || !WIFEXITED(st) || WEXITSTATUS(st) != 7)
        fail("waitpid(A %d) returned %d status %#x, expected exit 7", a, r, st);
    r = waitpid(b, &st, 0);
    if (r != b || !WIFSIGNALED(st) || WTERMSIG(st) != SIGTERM)
        fail("waitpid(B %d) returned %d status %#x, expected SIGTERM", b, r, st);
    if (write(dp[1], "x", 1) != 1) fail("write to D: %s", strerror(errno));
    r = waitpid(d, &st, 0);
    if (r != d || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        fail("waitpid(D %d) returned %d status %#x, expected exit 0", d, r, st);
    if (kill(c, SIGKILL)) fail("kill(C %d): %s", c, strerror(errno));
    r = waitpid(c, &st, 0);
    if (r != c || !WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
        fail("waitpid(C %d) returned %d status %#x, expected SIGKILL", c, r, st);
    if (waitpid(-1, &st, WNOHANG) != -1 || errno != ECHILD) fail("a child is left after reaping all");
    say_pass();
    return 0;
}
