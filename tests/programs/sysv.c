/* SysV IPC across restarts: a semaphore set, a message queue and two shared memory
 * segments (one attached by both processes, one left detached), all with keys from
 * ftok(WORKDIR) so that the test can remove them whatever happens (IPC_PRIVATE objects
 * are re-created the same way; the unit tests cover them).
 * The child sends numbered messages (type 1 + n % 3, text "msg <n>") and counts them up
 * on semaphore 1; the parent takes semaphore 1 (blocking semop) and receives each message
 * in order. Both add to a counter in the attached segment under a mutex (semaphore 0,
 * SEM_UNDO). The child holds a permanent SEM_UNDO adjustment of +5 on semaphore 2.
 * Every tick the parent checks: message numbers, types and texts (none lost, duplicated or
 * reordered), the shared counter (= its own + the child's increments), semaphore 2 == 5,
 * the detached segment's pattern, and that its ids still name the objects (IPC_STAT).
 * At the end it kills the child: the kernel must undo the child's adjustments (semaphore 2
 * back to 0, the mutex free), then it removes every object.
 * prog TICKS WORKDIR */
#include "common.h"
#include <signal.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/wait.h>

struct msg {
    long mtype;
    char text[64];
};

struct shared {
    unsigned long total;
    unsigned long child_count;
};

static int semid;

static void sem_do(unsigned short num, short op, short flg)
{
    struct sembuf b = {num, op, flg};
    while (semop(semid, &b, 1) != 0)
        if (errno != EINTR) fail("semop(%d, sem %u, %d): %s", semid, num, op, strerror(errno));
}

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc < 3) { fprintf(stderr, "usage: sysv TICKS WORKDIR\n"); return 2; }
    key_t ksem = ftok(argv[2], 'S'), kshm = ftok(argv[2], 'M'), kq = ftok(argv[2], 'Q'),
          kseg = ftok(argv[2], 'P');
    if (ksem == -1 || kshm == -1 || kq == -1 || kseg == -1) fail("ftok(%s): %s", argv[2], strerror(errno));
    semid = semget(ksem, 3, IPC_CREAT | IPC_EXCL | 0600);
    if (semid < 0) fail("semget: %s", strerror(errno));
    unsigned short init[3] = {1, 0, 0};
    if (semctl(semid, 0, SETALL, init)) fail("SETALL: %s", strerror(errno));
    int q = msgget(kq, IPC_CREAT | IPC_EXCL | 0600);
    if (q < 0) fail("msgget: %s", strerror(errno));
    int shid = shmget(kseg, sizeof(struct shared), IPC_CREAT | IPC_EXCL | 0600);
    if (shid < 0) fail("shmget: %s", strerror(errno));
    struct shared *sh = shmat(shid, NULL, 0);
    if (sh == (void *)-1) fail("shmat: %s", strerror(errno));
    int patid = shmget(kshm, 10000, IPC_CREAT | IPC_EXCL | 0600);
    if (patid < 0) fail("shmget(keyed): %s", strerror(errno));
    unsigned char *pat = shmat(patid, NULL, 0);
    if (pat == (void *)-1) fail("shmat(keyed): %s", strerror(errno));
    for (int i = 0; i < 10000; i++) pat[i] = (unsigned char)(i * 7 + 3);
    if (shmdt(pat)) fail("shmdt: %s", strerror(errno));

    pid_t child = fork();
    if (child < 0) fail("fork: %s", strerror(errno));
    if (child == 0) {
        sem_do(2, 5, SEM_UNDO);
        for (unsigned long n = 1;; n++) {
            sem_do(0, -1, SEM_UNDO);
            sh->total++;
            sh->child_count++;
            sem_do(0, 1, SEM_UNDO);
            struct msg m;
            m.mtype = 1 + (long)(n % 3);
            int len = snprintf(m.text, sizeof m.text, "msg %lu", n);
            while (msgsnd(q, &m, (size_t)len, 0) != 0)
                if (errno != EINTR) fail("child: msgsnd: %s", strerror(errno));
            sem_do(1, 1, 0);
            sleep_ns(8 * 1000 * 1000L);
        }
    }
    /* The child's +5 must be there before the first check. */
    while (semctl(semid, 2, GETVAL) != 5) sleep_ns(1000 * 1000L);

    unsigned long want = 1, mine = 0;
    for (long t = 1; t <= ticks; t++) {
        for (int k = 0; k < 4; k++) {
            sem_do(1, -1, 0);
            struct msg m;
            ssize_t n;
            while ((n = msgrcv(q, &m, sizeof m.text, 0, 0)) < 0)
                if (errno != EINTR) fail("msgrcv(%d): %s", q, strerror(errno));
            if (corrupt_now(t) && k == 0) {
                sem_do(1, -1, 0);
                if (msgrcv(q, &m, sizeof m.text, 0, 0) < 0) fail("msgrcv: %s", strerror(errno));
            }
            char expect[64];
            int len = snprintf(expect, sizeof expect, "msg %lu", want);
            if (n != len || memcmp(m.text, expect, (size_t)len) != 0)
                fail("message %lu: got '%.*s' (%zd bytes)", want, (int)(n > 0 ? n : 0), m.text, n);
            if (m.mtype != 1 + (long)(want % 3))
                fail("message %lu: type %ld, expected %ld", want, m.mtype, 1 + (long)(want % 3));
            want++;
        }
        sem_do(0, -1, SEM_UNDO);
        if (sh->total != mine + sh->child_count)
            fail("shared counter %lu != parent %lu + child %lu", sh->total, mine, sh->child_count);
        sh->total++;
        mine++;
        sem_do(0, 1, SEM_UNDO);
        int v2 = semctl(semid, 2, GETVAL);
        if (v2 != 5) fail("semaphore 2 is %d, expected 5 (the child's SEM_UNDO +5)", v2);
        unsigned char *p = shmat(patid, NULL, SHM_RDONLY);
        if (p == (void *)-1) fail("shmat(keyed %d): %s", patid, strerror(errno));
        for (int i = 0; i < 10000; i++)
            if (p[i] != (unsigned char)(i * 7 + 3)) fail("keyed segment byte %d is %u", i, p[i]);
        shmdt(p);
        struct semid_ds sds;
        struct msqid_ds mds;
        struct shmid_ds hds;
        if (semctl(semid, 0, IPC_STAT, &sds) || sds.sem_perm.__key != ksem || sds.sem_nsems != 3)
            fail("semaphore set %d: IPC_STAT %s, key %#x", semid, strerror(errno), sds.sem_perm.__key);
        if (msgctl(q, IPC_STAT, &mds)) fail("queue %d: IPC_STAT: %s", q, strerror(errno));
        if (shmctl(shid, IPC_STAT, &hds) || hds.shm_nattch != 2)
            fail("segment %d: IPC_STAT %s, %lu attached (expected 2)", shid, strerror(errno), (unsigned long)hds.shm_nattch);
        say_tick(t);
        sleep_ns(TICK_NS);
    }
    if (kill(child, SIGKILL)) fail("kill(child %d): %s", child, strerror(errno));
    int st;
    if (waitpid(child, &st, 0) != child) fail("waitpid(child %d): %s", child, strerror(errno));
    int v2 = semctl(semid, 2, GETVAL), v0 = semctl(semid, 0, GETVAL);
    if (v2 != 0) fail("after the child died semaphore 2 is %d: its SEM_UNDO adjustment was lost", v2);
    if (v0 != 1) fail("after the child died the mutex is %d, not free", v0);
    shmdt(sh);
    if (semctl(semid, 0, IPC_RMID) || msgctl(q, IPC_RMID, NULL) || shmctl(shid, IPC_RMID, NULL) ||
        shmctl(patid, IPC_RMID, NULL))
        fail("IPC_RMID: %s", strerror(errno));
    if (semget(ksem, 0, 0) != -1 || shmget(kshm, 0, 0) != -1 || msgget(kq, 0) != -1) fail("keyed objects still exist after IPC_RMID");
    say_pass();
    return 0;
}
