/* `pipeline TICKS` runs `bash -c 'pipeline produce | pipeline square | pipeline consume TICKS'`.
 * One stage of that shell pipeline: `pipeline produce | pipeline square | pipeline consume TICKS`.
 * produce writes 1, 2, 3, ... one per line; square turns n into "n n*n"; consume checks that
 * every line arrives once and in order, prints a tick every 3 lines, and ends with PASS after
 * TICKS ticks (the other stages then end by SIGPIPE). */
#include "common.h"

int main(int argc, char **argv)
{
    if (argc < 2) fail("usage: pipeline produce|square|consume [TICKS]");
    char line[128];
    if (argv[1][0] >= '0' && argv[1][0] <= '9') {
        char self[512], cmd[2048];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n <= 0) fail("readlink /proc/self/exe: %s", strerror(errno));
        self[n] = 0;
        snprintf(cmd, sizeof cmd, "%s produce | %s square | %s consume %s", self, self, self, argv[1]);
        execl("/bin/bash", "bash", "-c", cmd, (char *)NULL);
        fail("exec bash: %s", strerror(errno));
    }
    if (!strcmp(argv[1], "produce")) {
        for (unsigned long i = 1;; i++) {
            if (printf("%lu\n", i) < 0 || fflush(stdout)) return 0;
            sleep_ns(8 * 1000 * 1000L);
        }
    }
    if (!strcmp(argv[1], "square")) {
        while (fgets(line, sizeof line, stdin)) {
            unsigned long n = strtoul(line, NULL, 10);
            if (printf("%lu %lu\n", n, n * n) < 0 || fflush(stdout)) return 0;
        }
        return 0;
    }
    long ticks = setup_common(argc - 1, argv + 1, 60);
    unsigned long want = 1;
    for (long t = 1; t <= ticks; t++) {
        for (int k = 0; k < 3; k++) {
            unsigned long n, sq;
            if (!fgets(line, sizeof line, stdin)) fail("consume: end of input at %lu", want);
            if (sscanf(line, "%lu %lu", &n, &sq) != 2) fail("consume: bad line '%s'", line);
            if (corrupt_now(t) && k == 0) want++;
            if (n != want || sq != n * n) fail("consume: got %lu %lu, expected %lu %lu", n, sq, want, want * want);
            want++;
        }
        say_tick(t);
    }
    say_pass();
    return 0;
}
