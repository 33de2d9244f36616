/* sleeper: threads blocked in system calls must neither see a spurious EINTR nor stall.
 *   sleeper [TICKS] [pipe|stdin]   (defaults 60, pipe)
 * Threads:
 *  - "sleep": alternates nanosleep(300 ms) and sleep(1); each must return 0 (EINTR or an
 *    unslept remainder is a FAIL) and must not return before the time asked for;
 *  - "read": blocking read() of 1 byte at a time from a pipe that main writes one byte to
 *    every tick; bytes must arrive in sequence. In "stdin" mode (no pipe of its own: pipes
 *    between threads need pipe support in the checkpointer) it reads fd 0 instead, which the
 *    harness feeds a byte every 50 ms; any content is accepted, EOF before the end is a FAIL;
 *  - "cond": pthread_cond_timedwait (CLOCK_MONOTONIC, 60 ms) on a condition main broadcasts
 *    every 5th tick; only 0 and ETIMEDOUT are acceptable results;
 *  - "poll": poll() with a 100 ms timeout on a second pipe that main writes to every 7th
 *    tick (in "stdin" mode: on no fd at all); -1/EINTR is a FAIL.
 * Main checks every tick that each thread made progress within the last 80 ticks, and at
 * the end (after closing the pipes and joining) that every byte sent was received. */
#include "common.h"
#include <poll.h>
#include <pthread.h>
#include <signal.h>

enum { T_SLEEP, T_READ, T_COND, T_POLL, NT };
static const char *names[NT] = { "sleep", "read", "cond", "poll" };

static volatile int stop;
static volatile uint64_t progress[NT];
static int pipe_read[2], pipe_poll[2];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv;
static uint64_t cond_gen;        /* under mu */
static uint64_t read_got, poll_got; /* bytes received, in sequence */
static uint64_t cond_wakes, cond_timeouts;
static int stdin_mode;

static void *t_sleep(void *arg)
{
    (void)arg;
    for (uint64_t i = 0; !stop; i++) {
        uint64_t t0 = now_ns();
        if (i % 2 == 0) {
            struct timespec ts = { 0, 300 * 1000 * 1000L };
            if (nanosleep(&ts, NULL) != 0)
                fail("sleep thread: nanosleep(300 ms) returned -1: %s", strerror(errno));
            if (now_ns() - t0 < 299 * 1000 * 1000ull)
                fail("sleep thread: nanosleep(300 ms) returned after %llu ms", (unsigned long long)((now_ns() - t0) / 1000000));
        } else {
            unsigned left = sleep(1);
            if (left) fail("sleep thread: sleep(1) was interrupted (%u s left)", left);
            if (now_ns() - t0 < 999 * 1000 * 1000ull)
                fail("sleep thread: sleep(1) returned after %llu ms", (unsigned long long)((now_ns() - t0) / 1000000));
        }
        progress[T_SLEEP]++;
    }
    return NULL;
}

static void *t_read_stdin(void *arg)
{
    (void)arg;
    while (!stop) {
        unsigned char b;
        ssize_t n = read(0, &b, 1);
        if (n < 0) fail("read thread: read() on stdin returned -1: %s", strerror(errno));
        if (n == 0) {
            if (stop) break;
            fail("read thread: EOF on stdin (stdin mode needs a feeder)");
        }
        read_got++;
        progress[T_READ]++;
    }
    return NULL;
}

static void *t_poll_nofd(void *arg)
{
    (void)arg;
    while (!stop) {
        int rc = poll(NULL, 0, 100);
        if (rc < 0) fail("poll thread: poll(NULL, 0, 100) returned -1: %s", strerror(errno));
        if (rc != 0) fail("poll thread: poll on no fds returned %d", rc);
        progress[T_POLL]++;
    }
    return NULL;
}

static void *t_read(void *arg)
{
    (void)arg;
    for (;;) {
        unsigned char b;
        ssize_t n = read(pipe_read[0], &b, 1);
        if (n < 0) fail("read thread: read() on the pipe returned -1: %s", strerror(errno));
        if (n == 0) return NULL; /* main closed the pipe */
        if (b != (unsigned char)(read_got + 1))
            fail("read thread: byte %llu is %u, expected %u", (unsigned long long)read_got + 1, b,
                 (unsigned char)(read_got + 1));
        read_got++;
        progress[T_READ]++;
    }
}

static void *t_cond(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mu);
    uint64_t seen = cond_gen;
    while (!stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 60 * 1000 * 1000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        int rc = pthread_cond_timedwait(&cv, &mu, &ts);
        if (rc != 0 && rc != ETIMEDOUT) fail("cond thread: pthread_cond_timedwait returned %d (%s)", rc, strerror(rc));
        if (cond_gen != seen) {
            seen = cond_gen;
            cond_wakes++;
        } else {
            cond_timeouts++;
        }
        progress[T_COND]++;
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

static void *t_poll(void *arg)
{
    (void)arg;
    for (;;) {
        struct pollfd p = { .fd = pipe_poll[0], .events = POLLIN };
        int rc = poll(&p, 1, 100);
        if (rc < 0) fail("poll thread: poll() returned -1: %s", strerror(errno));
        if (rc > 0) {
            unsigned char b;
            ssize_t n = read(pipe_poll[0], &b, 1);
            if (n < 0) fail("poll thread: read: %s", strerror(errno));
            if (n == 0) return NULL;
            if (b != (unsigned char)(poll_got + 1)) fail("poll thread: byte %llu out of sequence", (unsigned long long)poll_got + 1);
            poll_got++;
        }
        progress[T_POLL]++;
    }
}

static void on_usr2(int sig) { (void)sig; }

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc > 2 && strcmp(argv[2], "stdin") == 0) stdin_mode = 1;
    else if (argc > 2 && strcmp(argv[2], "pipe") != 0) fail("mode must be pipe or stdin, not %s", argv[2]);
    printf("sleeper pid %d ticks %ld mode %s\n", getpid(), ticks, stdin_mode ? "stdin" : "pipe");
    if (!stdin_mode && (pipe(pipe_read) || pipe(pipe_poll))) fail("pipe: %s", strerror(errno));
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cv, &ca);
    /* Only used by CKPT_TEST_CORRUPT: a handler without SA_RESTART, sent to the sleeping
     * thread, interrupts its nanosleep exactly as a careless checkpoint would. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);

    void *(*fn[NT])(void *) = { t_sleep, stdin_mode ? t_read_stdin : t_read, t_cond, stdin_mode ? t_poll_nofd : t_poll };
    pthread_t th[NT];
    for (int i = 0; i < NT; i++)
        if (pthread_create(&th[i], NULL, fn[i], NULL)) fail("pthread_create");

    uint64_t last[NT] = { 0 }, read_sent = 0, poll_sent = 0;
    long last_tick[NT] = { 0 };
    for (long tick = 1; tick <= ticks; tick++) {
        unsigned char b = (unsigned char)(++read_sent);
        if (!stdin_mode && write(pipe_read[1], &b, 1) != 1) fail("write to read pipe: %s", strerror(errno));
        if (!stdin_mode && tick % 7 == 0) {
            b = (unsigned char)(++poll_sent);
            if (write(pipe_poll[1], &b, 1) != 1) fail("write to poll pipe: %s", strerror(errno));
        }
        if (tick % 5 == 0) {
            pthread_mutex_lock(&mu);
            cond_gen++;
            pthread_cond_broadcast(&cv);
            pthread_mutex_unlock(&mu);
        }
        if (corrupt_now(tick)) pthread_kill(th[T_SLEEP], SIGUSR2);
        for (int i = 0; i < NT; i++) {
            uint64_t p = progress[i];
            if (p != last[i]) {
                last[i] = p;
                last_tick[i] = tick;
            } else if (tick - last_tick[i] > 80) {
                fail("%s thread made no progress for %ld ticks", names[i], tick - last_tick[i]);
            }
        }
        say_tick(tick);
        tick_sleep();
    }
    stop = 1;
    if (!stdin_mode) {
        close(pipe_read[1]);
        close(pipe_poll[1]);
    }
    pthread_mutex_lock(&mu);
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < NT; i++) pthread_join(th[i], NULL);
    if (!stdin_mode && read_got != read_sent) fail("read thread got %llu bytes, %llu were sent", (unsigned long long)read_got, (unsigned long long)read_sent);
    if (poll_got != poll_sent) fail("poll thread got %llu bytes, %llu were sent", (unsigned long long)poll_got, (unsigned long long)poll_sent);
    printf("sleeper: sleeps %llu reads %llu cond wakes %llu timeouts %llu polls %llu\n",
           (unsigned long long)progress[T_SLEEP], (unsigned long long)read_got, (unsigned long long)cond_wakes,
           (unsigned long long)cond_timeouts, (unsigned long long)progress[T_POLL]);
    say_pass();
    return 0;
}
