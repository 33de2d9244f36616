/* Process and thread attributes: nice values and CPU affinity per thread, personality,
 * no_new_privs, child-subreaper, thread names.
 *   attrs [TICKS]
 * The main thread runs at nice 5 named "attrs-main", a worker at nice 8 named "attrs-w",
 * pinned to the first CPU it may use (when it may use more than one). Each tick the main
 * thread checks its own values, and the worker checks its own (reported through a flag). */
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>

static volatile int worker_bad, worker_checks;
static cpu_set_t worker_set;

static const char *check_self(int nice, const char *name, const cpu_set_t *set)
{
    errno = 0;
    int n = getpriority(PRIO_PROCESS, 0);
    if (errno || n != nice) return "nice value";
    char buf[32] = { 0 };
    prctl(PR_GET_NAME, buf);
    if (strcmp(buf, name)) return "thread name";
    if (set) {
        cpu_set_t now;
        if (sched_getaffinity(0, sizeof now, &now) || !CPU_EQUAL(&now, set)) return "CPU affinity";
    }
    return NULL;
}

static void *worker(void *a)
{
    (void)a;
    if (setpriority(PRIO_PROCESS, 0, 8)) fail("setpriority worker");
    prctl(PR_SET_NAME, "attrs-w");
    if (sched_setaffinity(0, sizeof worker_set, &worker_set)) fail("sched_setaffinity");
    for (;;) {
        const char *e = check_self(8, "attrs-w", &worker_set);
        if (e) worker_bad = 1;
        worker_checks++;
        sleep_ns(10000000);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    cpu_set_t all;
    if (sched_getaffinity(0, sizeof all, &all)) fail("sched_getaffinity");
    CPU_ZERO(&worker_set);
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &all)) { CPU_SET(c, &worker_set); break; }
    if (setpriority(PRIO_PROCESS, 0, 5)) fail("setpriority");
    prctl(PR_SET_NAME, "attrs-main");
    int pers = personality(0xffffffff);
    if (personality((unsigned long)pers | ADDR_NO_RANDOMIZE) < 0) fail("personality");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1)) fail("subreaper");
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) fail("no_new_privs");
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    for (long tick = 1; tick <= ticks; tick++) {
        if (corrupt_now(tick)) setpriority(PRIO_PROCESS, 0, 6);
        const char *e = check_self(5, "attrs-main", &all);
        if (e) fail("main thread lost its %s", e);
        if (worker_bad) fail("worker thread lost its nice value, name or affinity");
        if (!(personality(0xffffffff) & ADDR_NO_RANDOMIZE)) fail("personality lost ADDR_NO_RANDOMIZE");
        int sub = 0;
        prctl(PR_GET_CHILD_SUBREAPER, &sub);
        if (!sub) fail("not a child subreaper any more");
        if (prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1) fail("no_new_privs lost");
        say_tick(tick);
        tick_sleep();
    }
    if (!worker_checks) fail("worker never ran");
    say_pass();
    return 0;
}
