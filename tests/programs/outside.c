/* outside: a program holding a TCP connection to a process outside the job (the test's
 * listener), ticking with a checksummed counter. The connection cannot be checkpointed:
 * the checkpoint is refused, unless the user asked to skip such descriptors, in which case
 * the program continues after a restart with that fd on /dev/null.
 *   outside TICKS PORT */
#include "common.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

struct state {
    long tick;
    uint64_t chain;
};

int main(int argc, char **argv)
{
    long ticks = setup_common(argc, argv, 60);
    if (argc != 3) {
        fprintf(stderr, "usage: outside TICKS PORT\n");
        return 2;
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)atoi(argv[2]))};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a))
        fail("connect to port %s: %s", argv[2], strerror(errno));
    struct state *s = calloc(1, sizeof *s);
    if (!s) fail("calloc");
    printf("outside pid %d fd %d ticks %ld\n", getpid(), fd, ticks);
    while (s->tick < ticks) {
        s->tick++;
        s->chain = mix2(s->chain, (uint64_t)s->tick);
        if (corrupt_now(s->tick)) s->chain ^= 1;
        uint64_t h = 0;
        for (long i = 1; i <= s->tick; i++) h = mix2(h, (uint64_t)i);
        if (h != s->chain) fail("chain broken at tick %ld", s->tick);
        say_tick(s->tick);
        tick_sleep();
    }
    say_pass();
    return 0;
}
