/* The disk's limit for a safe delivery: only the syscalls one needs, nothing else.
 *
 *   limit DIR WRITERS DIRECTORIES MESSAGES [SIZE [list]]
 *
 * WRITERS threads share MESSAGES between them (the first MESSAGES % WRITERS take one more).
 * DIRECTORIES is 1 (every writer into DIR/m0) or WRITERS (writer i into DIR/m<i>); each is a
 * Maildir (tmp/ and new/, created here). For each message a writer:
 *   open(tmp/<name>, O_WRONLY|O_CREAT|O_EXCL), write SIZE bytes (default 4096), fsync, close,
 *   rename(tmp/<name>, new/<name>), fsync(new/)
 * (new/ is opened once per writer and kept open.) Prints one line: messages, seconds,
 * messages/s; exits 1 on any failed call, naming it.
 *
 * With `list`, each message also gets its line in the Maildir's dovecot-uidlist, durable
 * before the message counts as delivered, committed in rounds as Nestbox's group commit does
 * (GroupCommit.swift) without its lock file: once its file is fsynced a writer queues it; the
 * first writer to find no round running renames every queued file into new/, appends their
 * lines in one write(2), fdatasyncs the list and fsyncs new/; the others wait for their round.
 * That is the floor of a delivery that keeps Dovecot's UIDs, to compare a server with.
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
static int with_list;

/* One Maildir's group commit (with `list`). */
struct maildir {
    pthread_mutex_t mutex;
    pthread_cond_t changed;
    int committing;
    int list, new_fd, tmp_fd;
    unsigned next_uid;
    int queued, *queue_writer, *queue_message; /* names w<writer>.m<message> */
    /* Tickets: a writer's message is committed once `committed` is past its ticket. */
    unsigned long issued, committed;
    int failed;
};
static struct maildir maildirs[64];

struct writer {
    pthread_t thread;
    int index;
    int count;
    char dir[4096];
    struct maildir *maildir;
    int failed;
};

static void fail(const char *what, const char *path) {
    fprintf(stderr, "limit: %s %s: %s\n", what, path, strerror(errno));
}

/* With `list`: moves message `i` of writer `w` (fsynced in tmp/) into new/ and makes its
 * uidlist line durable, in whatever round takes it. Returns 0, or -1 after naming a failure. */
static int commit(struct writer *w, int i) {
    struct maildir *m = w->maildir;
    pthread_mutex_lock(&m->mutex);
    unsigned long ticket = m->issued++;
    m->queue_writer[m->queued] = w->index;
    m->queue_message[m->queued] = i;
    m->queued++;
    while (m->committed <= ticket && !m->failed) {
        if (m->committing) { pthread_cond_wait(&m->changed, &m->mutex); continue; }
        /* This writer's round: everything queued, which includes its own message. */
        m->committing = 1;
        int n = m->queued;
        unsigned long last = m->issued;
        int qw[64], qm[64];
        memcpy(qw, m->queue_writer, sizeof(int) * (size_t)n);
        memcpy(qm, m->queue_message, sizeof(int) * (size_t)n);
        m->queued = 0;
        pthread_mutex_unlock(&m->mutex);
        int failed = 0;
        char lines[64 * 96];
        size_t len = 0;
        for (int k = 0; k < n && !failed; k++) {
            char name[64];
            snprintf(name, sizeof name, "%d.w%d.m%d", (int)getpid(), qw[k], qm[k]);
            if (renameat(m->tmp_fd, name, m->new_fd, name) != 0) { fail("rename", name); failed = 1; }
            len += (size_t)snprintf(lines + len, sizeof lines - len, "%u :%s\n", m->next_uid++, name);
        }
        if (!failed && write(m->list, lines, len) != (ssize_t)len) { fail("write", "dovecot-uidlist"); failed = 1; }
        if (!failed && fdatasync(m->list) != 0) { fail("fdatasync", "dovecot-uidlist"); failed = 1; }
        if (!failed && fsync(m->new_fd) != 0) { fail("fsync", "new/"); failed = 1; }
        pthread_mutex_lock(&m->mutex);
        m->committing = 0;
        m->committed = last;
        m->failed |= failed;
        pthread_cond_broadcast(&m->changed);
    }
    int failed = m->failed;
    pthread_mutex_unlock(&m->mutex);
    return failed ? -1 : 0;
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
        if (with_list) {
            if (commit(w, i) != 0) { w->failed = 1; break; }
            continue;
        }
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
    if (argc < 5 || argc > 7 || (argc == 7 && strcmp(argv[6], "list") != 0)) {
        fprintf(stderr, "usage: limit DIR WRITERS DIRECTORIES MESSAGES [SIZE [list]]\n");
        return 64;
    }
    root = argv[1];
    int writers = atoi(argv[2]), dirs = atoi(argv[3]), messages = atoi(argv[4]);
    if (argc >= 6) size = (size_t)atol(argv[5]);
    with_list = argc == 7;
    if (writers < 1 || writers > 64 || messages < writers || (dirs != 1 && dirs != writers) || size == 0) {
        fprintf(stderr, "limit: need 1 <= WRITERS <= 64, MESSAGES >= WRITERS, DIRECTORIES 1 or WRITERS, SIZE > 0\n");
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
        w[i].maildir = &maildirs[dirs == 1 ? 0 : i];
    }
    for (int d = 0; with_list && d < dirs; d++) {
        struct maildir *m = &maildirs[d];
        char p[8192];
        pthread_mutex_init(&m->mutex, NULL);
        pthread_cond_init(&m->changed, NULL);
        m->next_uid = 1;
        m->queue_writer = calloc(64, sizeof(int));
        m->queue_message = calloc(64, sizeof(int));
        snprintf(p, sizeof p, "%s/m%d/dovecot-uidlist", root, d);
        m->list = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (m->list < 0) { fail("open", p); return 1; }
        if (write(m->list, "3 V1 N1\n", 8) != 8) { fail("write", p); return 1; }
        snprintf(p, sizeof p, "%s/m%d/new", root, d);
        m->new_fd = open(p, O_RDONLY | O_DIRECTORY);
        snprintf(p, sizeof p, "%s/m%d/tmp", root, d);
        m->tmp_fd = open(p, O_RDONLY | O_DIRECTORY);
        if (m->new_fd < 0 || m->tmp_fd < 0 || !m->queue_writer || !m->queue_message) { fail("open", p); return 1; }
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
