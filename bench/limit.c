/* The disk's limit for a safe delivery: only the syscalls one needs, nothing else.
 *
 *   limit DIR WRITERS DIRECTORIES MESSAGES [SIZE]
 *
 * WRITERS threads share MESSAGES between them (the first MESSAGES % WRITERS take one more).
 * DIRECTORIES is 1 (every writer into DIR/m0) or WRITERS (writer i into DIR/m<i>); each is a
 * Maildir (tmp/ and new/, created here). For each message a writer:
 *   open(tmp/<name>, O_WRONLY|O_CREAT|O_EXCL), write SIZE bytes (default 4096), fsync, close,
 *   rename(tmp/<name>, new/<name>), fsync(new/)
 * (new/ is opened once per writer and kept open.) Prints one line: messages, seconds,
 * messages/s; exits 1 on any failed call, naming it.
 *
 * Built by bench/limit.sh with the system C compiler: cc -O2 -pthread -o limit limit.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char *root;
static size_t size = 4096;
static char *buffer;

struct writer {
    pthread_t thread;
    int index;
    int count;
    char dir[4096];
    int failed;
};

static void fail(const char *what, const char *path) {
    fprintf(stderr, "limit: %s %s: %s\n", what, path, strerror(errno));
}

static void *run(void *arg) {
    struct writer *w = arg;
    char tmp[8192], dst[8192], new_dir[8192];
    snprintf(new_dir, sizeof new_dir, "%s/new", w->dir);
    int dfd = open(new_dir, O_RDONLY | O_DIRECTORY);
    if (dfd < 0) { fail("open", new_dir); w->failed = 1; return NULL; }
    for (int i = 0; i < w->count; i++) {
        snprintf(tmp, sizeof tmp, "%s/tmp/%d.w%d.m%d", w->dir, (int)getpid(), w->index, i);
        snprintf(dst, sizeof dst, "%s/new/%d.w%d.m%d", w->dir, (int)getpid(), w->index, i);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) { fail("open", tmp); w->failed = 1; break; }
        size_t done = 0;
        while (done < size) {
            ssize_t n = write(fd, buffer + done, size - done);
            if (n < 0) { if (errno == EINTR) continue; fail("write", tmp); w->failed = 1; break; }
            done += (size_t)n;
        }
        if (w->failed) { close(fd); break; }
        if (fsync(fd) != 0) { fail("fsync", tmp); w->failed = 1; close(fd); break; }
        if (close(fd) != 0) { fail("close", tmp); w->failed = 1; break; }
        if (rename(tmp, dst) != 0) { fail("rename", tmp); w->failed = 1; break; }
        if (fsync(dfd) != 0) { fail("fsync", new_dir); w->failed = 1; break; }
    }
    close(dfd);
    return NULL;
}

static int make_maildir(const char *dir) {
    char p[8192];
    const char *subs[] = { "", "/tmp", "/new", "/cur" };
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s%s", dir, subs[i]);
        if (mkdir(p, 0700) != 0 && errno != EEXIST) { fail("mkdir", p); return -1; }
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: limit DIR WRITERS DIRECTORIES MESSAGES [SIZE]\n");
        return 64;
    }
    root = argv[1];
    int writers = atoi(argv[2]), dirs = atoi(argv[3]), messages = atoi(argv[4]);
    if (argc == 6) size = (size_t)atol(argv[5]);
    if (writers < 1 || messages < writers || (dirs != 1 && dirs != writers) || size == 0) {
        fprintf(stderr, "limit: need WRITERS >= 1, MESSAGES >= WRITERS, DIRECTORIES 1 or WRITERS, SIZE > 0\n");
        return 64;
    }
    buffer = malloc(size);
    if (!buffer) { fprintf(stderr, "limit: out of memory\n"); return 1; }
    for (size_t i = 0; i < size; i++) buffer[i] = (i % 64 == 63) ? '\n' : (char)('a' + i % 26);

    struct writer *w = calloc((size_t)writers, sizeof *w);
    if (!w) { fprintf(stderr, "limit: out of memory\n"); return 1; }
    if (mkdir(root, 0700) != 0 && errno != EEXIST) { fail("mkdir", root); return 1; }
    for (int i = 0; i < writers; i++) {
        w[i].index = i;
        w[i].count = messages / writers + (i < messages % writers ? 1 : 0);
        snprintf(w[i].dir, sizeof w[i].dir, "%s/m%d", root, dirs == 1 ? 0 : i);
        if (make_maildir(w[i].dir) != 0) return 1;
    }

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < writers; i++) {
        if (pthread_create(&w[i].thread, NULL, run, &w[i]) != 0) {
            fprintf(stderr, "limit: pthread_create failed\n");
            return 1;
        }
    }
    int failed = 0;
    for (int i = 0; i < writers; i++) {
        pthread_join(w[i].thread, NULL);
        failed |= w[i].failed;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (failed) return 1;
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%d %.6f %.1f\n", messages, seconds, messages / seconds);
    return 0;
}
