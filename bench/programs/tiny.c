/* tiny: a counter printing "tick N" every 20 ms. The smallest useful checkpoint subject. */
#include <stdio.h>
#include <time.h>

int main(void) {
    struct timespec ts = {0, 20 * 1000 * 1000};
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (unsigned long n = 1;; n++) {
        printf("tick %lu\n", n);
        nanosleep(&ts, NULL);
    }
}
