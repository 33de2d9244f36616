/* pidfds and /proc/<pid> paths of the job's own processes, across restarts.
 * The parent forks a child that names itself "procpid-kid" and counts the SIGUSR1s it gets
 * in shared memory. The parent keeps a pidfd of the child (pidfd_open at the start). Every
 * tick it signals the child through the kept pidfd and through a new pidfd_open(child) and
 * checks the count rises by 2; it reads /proc/<child>/comm (open), /proc/<child>/cmdline
 * (fopen), lists /proc/<child>/task (opendir) and checks /proc/<child> with access(), and
 * checks /proc/<its own pid>/comm. At the end it kills the child through the pidfd and
 * waits for it with waitid(P_PIDFD): the child's pid and SIGKILL.
 * prog TICKS */
#include "common.h"
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static volatile unsigned long *count;

static void on_usr1(int s)
{
    (void)s;
    __atomic_add_fetch(count, 1, __ATOMIC_SEQ_CST);
}

static int my_pidfd_open(pid_t p) { return pidfd_open(p, 0); }

static void sig(int fd, const char *what)
{
    if (syscall(SYS_pidfd_send_signal, fd, SIGUSR1, NULL, 0) != 0)
        fail("pidfd_send_signal (%s): %s", what, strerror(errno));
}

static void read_file(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0) fail("open(%s): %s", path, strerror(errno));
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0) fail("read(%s): %s", path, strerror(errno));
    buf[n] = 0;
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    count = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (count == MAP_FAILED) fail("mmap: %s", strerror(errno));
    signal(SIGUSR1, on_usr1);
    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child == 0) {
        prctl(PR_SET_NAME, "procpid-kid");
        for (;;) pause();
    }
    int pfd = my_pidfd_open(child);
    if (pfd < 0) fail("pidfd_open(%d): %s", child, strerror(errno));
    char path[128], buf[256];
    snprintf(path, sizeof path, "/proc/%d/comm", child);
    for (int i = 0; i < 1000; i++) { /* wait for the child's name */
        read_file(path, buf, sizeof buf);
        if (strcmp(buf, "procpid-kid\n") == 0) break;
        sleep_ns(1000 * 1000L);
    }
    unsigned long want = 0;
    for (long t = 1; t <= ticks; t++) {
        /* One signal at a time: two pending SIGUSR1s would merge into one. */
        for (int k = 0; k < 2; k++) {
            int nfd = -1;
            if (k == 0) {
                sig(pfd, "kept pidfd");
            } else {
                nfd = my_pidfd_open(child);
                if (nfd < 0) fail("pidfd_open(%d): %s", child, strerror(errno));
                sig(nfd, "new pidfd");
                close(nfd);
            }
            want++;
            if (corrupt_now(t) && k == 1) want++;
            for (int i = 0; i < 5000 && __atomic_load_n(count, __ATOMIC_SEQ_CST) < want; i++) sleep_ns(1000 * 1000L);
            unsigned long c = __atomic_load_n(count, __ATOMIC_SEQ_CST);
            if (c != want)
                fail("the child got %lu SIGUSR1s, expected %lu (%s not on the child?)", c, want, k ? "new pidfd" : "kept pidfd");
        }
        snprintf(path, sizeof path, "/proc/%d/comm", child);
        read_file(path, buf, sizeof buf);
        if (strcmp(buf, "procpid-kid\n") != 0) fail("%s reads '%s', not the child's name", path, buf);
        snprintf(path, sizeof path, "/proc/%d/cmdline", child);
        FILE *f = fopen(path, "r");
        if (!f) fail("fopen(%s): %s", path, strerror(errno));
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        if (n == 0 || !strstr(buf, "procpid")) fail("%s reads '%s'", path, buf);
        snprintf(path, sizeof path, "/proc/%d/task", child);
        DIR *d = opendir(path);
        if (!d) fail("opendir(%s): %s", path, strerror(errno));
        int entries = 0;
        struct dirent *de;
        while ((de = readdir(d))) entries += de->d_name[0] != '.';
        closedir(d);
        if (entries < 1) fail("%s lists no thread", path);
        snprintf(path, sizeof path, "/proc/%d", child);
        if (access(path, F_OK)) fail("access(%s): %s", path, strerror(errno));
        snprintf(path, sizeof path, "/proc/%d/comm", getpid());
        read_file(path, buf, sizeof buf);
        if (strcmp(buf, "procpid\n") != 0) fail("%s reads '%s', not this program's name", path, buf);
        say_tick(t);
        sleep_ns(TICK_NS);
    }
    if (syscall(SYS_pidfd_send_signal, pfd, SIGKILL, NULL, 0)) fail("pidfd_send_signal(SIGKILL): %s", strerror(errno));
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PIDFD, (id_t)pfd, &si, WEXITED)) fail("waitid(P_PIDFD): %s", strerror(errno));
    if (si.si_pid != child || si.si_code != CLD_KILLED || si.si_status != SIGKILL)
        fail("waitid(P_PIDFD): pid %d code %d status %d, expected %d killed by SIGKILL", si.si_pid, si.si_code,
             si.si_status, child);
    say_pass();
    return 0;
}
