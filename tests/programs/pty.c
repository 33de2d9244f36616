/* pty: a pseudo-terminal pair the program owns (like `script`, or Open MPI's orted), with
 * a child on the slave side and bytes in flight both ways.
 *   pty [TICKS]
 * The parent opens /dev/ptmx, sets the slave's modes (canonical, no echo, ONLCR, VINTR ^G)
 * and window size 33x77, and forks a child that becomes a session leader with the slave as
 * its stdin and controlling terminal. Each tick the parent writes the end of one message
 * line and the start of the next (a partial line is always waiting in the slave), up to
 * WINDOW messages ahead of the replies; the child reads one line a tick and answers with
 * "r<k> <hash>\n" (the master reads it as "...\r\n": ONLCR is applied once); the parent
 * reads the replies every third tick. Every message and reply must arrive exactly once, in
 * order; both sides check the modes, the window size, and the child its session,
 * controlling terminal and foreground group (tcgetsid/tcgetpgrp: virtual ids) each tick. */
#include "common.h"
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>

#define WINDOW 6
#define MSG_LEN 25 /* "m%06ld %016llx\n" */

static void msg(long k, char *out)
{
    snprintf(out, 64, "m%06ld %016llx\n", k % 1000000, (unsigned long long)mix64((uint64_t)k));
}

static void check_modes(int fd, const char *who)
{
    struct termios t;
    if (tcgetattr(fd, &t) != 0) fail("%s: tcgetattr: %s", who, strerror(errno));
    if (!(t.c_lflag & ICANON)) fail("%s: the pty lost canonical mode", who);
    if (t.c_lflag & ECHO) fail("%s: the pty echoes again", who);
    if (!(t.c_oflag & OPOST) || !(t.c_oflag & ONLCR)) fail("%s: the pty lost ONLCR", who);
    if (t.c_cc[VINTR] != 7) fail("%s: VINTR is %d, expected 7", who, t.c_cc[VINTR]);
    struct winsize w;
    if (ioctl(fd, TIOCGWINSZ, &w) != 0) fail("%s: TIOCGWINSZ: %s", who, strerror(errno));
    if (w.ws_row != 33 || w.ws_col != 77) fail("%s: window %dx%d, expected 33x77", who, w.ws_row, w.ws_col);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { sleep_ns(1000000); continue; }
        if (w <= 0) fail("write to the pty: %s", strerror(errno));
        p += w;
        n -= (size_t)w;
    }
}

static void child(void)
{
    if (setsid() < 0) fail("child: setsid: %s", strerror(errno));
    if (ioctl(0, TIOCSCTTY, 0) != 0) fail("child: TIOCSCTTY: %s", strerror(errno));
    char line[256], want[64];
    for (long k = 1;; k++) {
        ssize_t n;
        do n = read(0, line, sizeof line - 1); while (n < 0 && errno == EINTR);
        if (n <= 0) fail("child: read from the pty: %s", n < 0 ? strerror(errno) : "end of file");
        line[n] = 0;
        if (strcmp(line, "q\n") == 0) _exit(0);
        msg(k, want);
        if (strcmp(line, want) != 0) fail("child: got line \"%.*s\" (%zd bytes), expected message %ld", (int)strcspn(line, "\n"), line, n, k);
        check_modes(0, "child");
        pid_t me = getpid();
        if (getsid(0) != me) fail("child: session %d, expected %d", getsid(0), me);
        if (tcgetsid(0) != me) fail("child: the pty's session is %d, expected %d", tcgetsid(0), me);
        if (tcgetpgrp(0) != getpgrp()) fail("child: foreground group %d, expected %d", tcgetpgrp(0), getpgrp());
        int tty = open("/dev/tty", O_RDWR | O_NOCTTY);
        if (tty < 0) fail("child: no controlling terminal: %s", strerror(errno));
        close(tty);
        char r[64];
        int rn = snprintf(r, sizeof r, "r%06ld %016llx\n", k, (unsigned long long)mix2((uint64_t)k, 7));
        write_all(0, r, (size_t)rn);
        tick_sleep();
    }
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    int m = posix_openpt(O_RDWR | O_NOCTTY);
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0) fail("posix_openpt: %s", strerror(errno));
    int s = open(ptsname(m), O_RDWR | O_NOCTTY);
    if (s < 0) fail("open %s: %s", ptsname(m), strerror(errno));
    struct termios t;
    if (tcgetattr(s, &t) != 0) fail("tcgetattr: %s", strerror(errno));
    t.c_lflag |= ICANON;
    t.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
    t.c_oflag |= OPOST | ONLCR;
    t.c_cc[VINTR] = 7;
    if (tcsetattr(s, TCSANOW, &t) != 0) fail("tcsetattr: %s", strerror(errno));
    struct winsize w = { .ws_row = 33, .ws_col = 77 };
    if (ioctl(m, TIOCSWINSZ, &w) != 0) fail("TIOCSWINSZ: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) fail("fork: %s", strerror(errno));
    if (pid == 0) {
        close(m);
        if (dup2(s, 0) != 0) fail("dup2");
        close(s);
        child();
    }
    close(s);
    int m2 = dup(m); /* shares the master's description */
    if (m2 < 0) fail("dup: %s", strerror(errno));
    if (fcntl(m, F_SETFL, O_NONBLOCK) != 0) fail("F_SETFL: %s", strerror(errno));

    long sent = 0, got = 0;
    char cur[64], inbuf[8192];
    size_t inlen = 0;
    /* Four complete messages ahead, and the head of the fifth. */
    for (int i = 0; i < 4; i++) {
        msg(++sent, cur);
        write_all(m2, cur, MSG_LEN);
    }
    msg(sent + 1, cur);
    write_all(m2, cur, MSG_LEN / 2);
    for (long tick = 1; tick <= ticks; tick++) {
        check_modes(m, "parent");
        if (!(fcntl(m2, F_GETFL) & O_NONBLOCK)) fail("the master's dup lost O_NONBLOCK (not the same description)");
        int st;
        if (waitpid(pid, &st, WNOHANG) != 0) fail("the child on the slave side ended");
        if (sent - got < WINDOW) {
            /* the end of message sent+1, the start of sent+2 */
            msg(sent + 1, cur);
            write_all(m, cur + MSG_LEN / 2, MSG_LEN - MSG_LEN / 2);
            sent++;
            msg(sent + 1, cur);
            write_all(m, cur, MSG_LEN / 2);
        }
        if (corrupt_now(tick)) {
            msg(sent, cur);
            write_all(m, cur + MSG_LEN / 2, MSG_LEN - MSG_LEN / 2); /* a message twice */
        }
        if (tick % 3 == 0) {
            for (;;) {
                ssize_t n = read(m, inbuf + inlen, sizeof inbuf - 1 - inlen);
                if (n > 0) { inlen += (size_t)n; continue; }
                if (n < 0 && errno == EINTR) continue;
                if (n < 0 && errno == EAGAIN) break;
                fail("read from the master: %s", n < 0 ? strerror(errno) : "end of file");
            }
            char *nl;
            while ((nl = memchr(inbuf, '\n', inlen))) {
                size_t len = (size_t)(nl - inbuf) + 1;
                char want[64];
                snprintf(want, sizeof want, "r%06ld %016llx\r\n", got + 1, (unsigned long long)mix2((uint64_t)(got + 1), 7));
                if (len != strlen(want) || memcmp(inbuf, want, len) != 0)
                    fail("reply \"%.*s\", expected reply %ld (CR NL once)", (int)len - 1, inbuf, got + 1);
                got++;
                memmove(inbuf, nl + 1, inlen - len);
                inlen -= len;
            }
        }
        say_tick(tick);
        tick_sleep();
    }
    /* Complete the last message, collect every reply, let the child go. */
    msg(sent + 1, cur);
    write_all(m, cur + MSG_LEN / 2, MSG_LEN - MSG_LEN / 2);
    sent++;
    uint64_t deadline = now_ns() + 30ull * 1000000000ull;
    while (got < sent) {
        if (now_ns() > deadline) fail("only %ld of %ld replies arrived", got, sent);
        struct pollfd p = { .fd = m, .events = POLLIN };
        poll(&p, 1, 100);
        ssize_t n = read(m, inbuf + inlen, sizeof inbuf - 1 - inlen);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) fail("read from the master: %s", n < 0 ? strerror(errno) : "end of file");
        inlen += (size_t)n;
        char *nl;
        while ((nl = memchr(inbuf, '\n', inlen))) {
            size_t len = (size_t)(nl - inbuf) + 1;
            char want[64];
            snprintf(want, sizeof want, "r%06ld %016llx\r\n", got + 1, (unsigned long long)mix2((uint64_t)(got + 1), 7));
            if (len != strlen(want) || memcmp(inbuf, want, len) != 0)
                fail("reply \"%.*s\", expected reply %ld", (int)len - 1, inbuf, got + 1);
            got++;
            memmove(inbuf, nl + 1, inlen - len);
            inlen -= len;
        }
    }
    write_all(m, "q\n", 2);
    int st;
    if (waitpid(pid, &st, 0) != pid) fail("waitpid: %s", strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("the child ended with status %#x", st);
    say_pass();
    return 0;
}
