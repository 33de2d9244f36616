/* screen: a tiny full-screen terminal program for the tmux tests (tests/tests/terminal.rs).
 *   screen
 * Puts its terminal in raw mode (no canonical input, no echo), clears the screen and draws
 *   SIZE <rows>x<cols> COUNT <n> DRAWN <k>
 * on the top line and "BOTTOM <rows>" on the last line of the window. Redraws on every key
 * and on SIGWINCH (the size is read again from the terminal; SIGWINCH is only let in while
 * waiting in ppoll, so a resize is never missed). 'a' adds one to COUNT (at
 * once, without Enter: only in raw mode), 'q' restores the terminal and exits. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t winch;
static long count, drawn;

static void on_winch(int sig)
{
    (void)sig;
    winch = 1;
}

static void draw(void)
{
    struct winsize w = { 0 };
    ioctl(1, TIOCGWINSZ, &w);
    char buf[256];
    drawn++;
    int n = snprintf(buf, sizeof buf, "\033[H\033[2JSIZE %dx%d COUNT %ld DRAWN %ld\033[%d;1HBOTTOM %d",
                     w.ws_row, w.ws_col, count, drawn, w.ws_row, w.ws_row);
    if (write(1, buf, (size_t)n) < 0) _exit(3);
}

int main(void)
{
    struct termios saved, raw;
    if (tcgetattr(0, &saved) != 0) {
        perror("tcgetattr");
        return 2;
    }
    raw = saved;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    tcsetattr(0, TCSANOW, &raw);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_winch;
    sigaction(SIGWINCH, &sa, NULL);
    sigset_t block, wait_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGWINCH);
    sigprocmask(SIG_BLOCK, &block, &wait_mask);
    sigdelset(&wait_mask, SIGWINCH);
    draw();
    for (;;) {
        if (winch) {
            winch = 0;
            draw();
        }
        struct pollfd p = { .fd = 0, .events = POLLIN };
        int r = ppoll(&p, 1, NULL, &wait_mask);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) break;
        char c;
        if (read(0, &c, 1) != 1) break;
        if (c == 'q') break;
        if (c == 'a') count++;
        draw();
    }
    tcsetattr(0, TCSANOW, &saved);
    return 0;
}
