/* The compiled data plane: one epoll loop in a native thread moves a session's bytes after its login.
 *
 * proxy/dataplane.py hands a plain-TCP session's two sockets (dup'ed fds) to a Loop once the login's
 * ReadyForQuery went by. From then on this thread, which never holds the GIL, forwards every read to
 * the other side first, then frames the same bytes as proxy/wire.py does and appends the messages
 * capture wants (with the time the bytes were read) to a shared buffer. Python drains that buffer with
 * one call for many messages and feeds the reference Session, so events stay what they were.
 *
 * Backpressure as PgBouncer does it: while bytes for one side wait in its output buffer, the other side
 * is not read. Capture has backpressure too: while more than `pace` bytes of records wait for Python,
 * the loop waits for a drain (up to a second) before it reads on, so a Python side slower than the
 * traffic slows the traffic rather than losing statements; past `max_buffer` (Python stuck) a session's
 * capture stops instead, and the session goes on. Session ends (EOF or an error on either side) and framing errors are reported through the
 * same buffer, in order with the messages; what to tell the client is decided in Python, which writes it
 * through write() and close().
 *
 * Threading: Python calls add/write/close/uncapture/drain with the GIL; they touch only the command
 * queue, the slot table and the shared buffer, under `lock`. Everything else in a Session belongs to the
 * loop thread.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_session_api.h"

#define CHUNK (256 * 1024)        /* one read; uvloop reads as much */
#define MAX_EVENTS 256
#define SLOT_BITS 20              /* a handle is slot | generation << SLOT_BITS */
#define MAX_SLOTS (1 << SLOT_BITS)
#define SHRINK_ABOVE (64 * 1024)  /* a framer's body buffer larger than this is freed after use */

/* Record kinds in the buffer Python drains (see drain()). */
enum { REC_MESSAGES = 0, REC_VIOLATION = 1, REC_END = 2, REC_LOST = 3 };
/* Why a session ended (REC_END). */
enum { END_CLIENT = 0, END_SERVER = 1, END_ERROR = 2, END_CLOSED = 3 };
/* What a framing error was (REC_VIOLATION), as wire._Framer._check tells them apart. */
enum { BAD_LENGTH = 0, TOO_LONG = 1 };
/* Commands from Python to the loop thread. */
enum { CMD_ADD, CMD_WRITE, CMD_CLOSE, CMD_UNCAPTURE, CMD_STOP };

/* -- byte buffers ------------------------------------------------------------------------------ */

typedef struct {
    unsigned char *data;
    size_t off;  /* bytes before this were consumed (output buffers only) */
    size_t len;
    size_t cap;
} Buf;

static int
buf_reserve(Buf *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra)
        cap *= 2;
    unsigned char *data = realloc(b->data, cap);
    if (data == NULL)
        return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int
buf_append(Buf *b, const void *p, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void
buf_free(Buf *b)
{
    free(b->data);
    memset(b, 0, sizeof *b);
}

static size_t
buf_pending(const Buf *b)
{
    return b->len - b->off;
}

/* -- framing: wire._Framer in C ------------------------------------------------------------------ */

typedef struct {
    unsigned char wanted[256];
    int64_t max_message;
    int64_t keep;
    unsigned char header[5];
    int header_len;
    int pending;          /* a wanted message is being assembled in body */
    unsigned char typ;    /* its type */
    int64_t size;         /* its body size */
    int64_t need;         /* its body bytes still to come */
    Buf body;             /* the kept prefix of its body */
    int64_t skip;         /* bytes of an unwanted message still to skip */
    int broken;           /* a framing error was reported: this side is framed no more */
    unsigned char bad_typ;
    int32_t bad_length;
    int bad_kind;
} Framer;

/* Where framed messages go: the loop's local record buffer, counting the messages of one read. */
typedef struct {
    Buf *records;
    uint32_t count;
    int keep_messages;  /* 0: frame for errors only (capture off for this session) */
} Emit;

static int
emit_message(Emit *e, unsigned char typ, const unsigned char *body, uint32_t kept, uint32_t size)
{
    if (!e->keep_messages)
        return 0;
    unsigned char head[9];
    head[0] = typ;
    memcpy(head + 1, &size, 4);
    memcpy(head + 5, &kept, 4);
    if (buf_append(e->records, head, 9) < 0 || buf_append(e->records, body, kept) < 0)
        return -1;
    e->count++;
    return 0;
}

static uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* A header was read: refuse a length wire.py refuses (as a signed int32, like its "!i"). */
static int
check_length(Framer *f, unsigned char typ, int32_t length)
{
    if (length < 4 || (int64_t)length > f->max_message) {
        f->broken = 1;
        f->bad_typ = typ;
        f->bad_length = length;
        f->bad_kind = length < 4 ? BAD_LENGTH : TOO_LONG;
        return -1;
    }
    return 0;
}

/* Begin the message whose header is (typ, length); returns how many of the n bytes at p it took. */
static int64_t
frame_start(Framer *f, Emit *e, unsigned char typ, int32_t length, const unsigned char *p, int64_t n)
{
    if (check_length(f, typ, length) < 0)
        return -1;
    int64_t size = (int64_t)length - 4;
    if (!f->wanted[typ]) {
        if (n >= size)
            return size;
        f->skip = size - n;
        return n;
    }
    if (n >= size) {  /* complete in this read: no copy into the body buffer */
        uint32_t kept = (uint32_t)(size <= f->keep ? size : f->keep);
        return emit_message(e, typ, p, kept, (uint32_t)size) < 0 ? -2 : size;
    }
    f->pending = 1;
    f->typ = typ;
    f->size = size;
    f->need = size;
    f->body.len = 0;
    return 0;
}

/* Feed bytes to the message being assembled; returns how many it took. */
static int64_t
frame_continue(Framer *f, Emit *e, const unsigned char *p, int64_t n)
{
    int64_t take = f->need < n ? f->need : n;
    int64_t room = f->keep - (int64_t)f->body.len;
    int64_t keep = take < room ? take : room;
    if (keep > 0 && buf_append(&f->body, p, (size_t)keep) < 0)
        return -2;
    f->need -= take;
    if (f->need == 0) {
        f->pending = 0;
        if (emit_message(e, f->typ, f->body.data, (uint32_t)f->body.len, (uint32_t)f->size) < 0)
            return -2;
        f->body.len = 0;
        if (f->body.cap > SHRINK_ABOVE)
            buf_free(&f->body);
    }
    return take;
}

/* Frame one read. Returns 0, -1 on a framing error (details in f), -2 when out of memory. */
static int
frame(Framer *f, Emit *e, const unsigned char *p, int64_t n)
{
    int64_t pos = 0;
    if (f->skip) {
        int64_t take = f->skip < n ? f->skip : n;
        f->skip -= take;
        pos = take;
    }
    while (pos < n) {
        int64_t took;
        if (f->pending) {
            took = frame_continue(f, e, p + pos, n - pos);
        } else if (f->header_len || n - pos < 5) {  /* a header split across reads */
            int take = 5 - f->header_len;
            if (take > n - pos)
                take = (int)(n - pos);
            memcpy(f->header + f->header_len, p + pos, (size_t)take);
            f->header_len += take;
            pos += take;
            if (f->header_len < 5)
                return 0;
            f->header_len = 0;
            took = frame_start(f, e, f->header[0], (int32_t)be32(f->header + 1), p + pos, n - pos);
        } else {
            unsigned char typ = p[pos];
            int32_t length = (int32_t)be32(p + pos + 1);
            pos += 5;
            took = frame_start(f, e, typ, length, p + pos, n - pos);
        }
        if (took < 0)
            return (int)took;
        pos += took;
        if (f->skip)
            return 0;  /* the rest of this read belongs to an unwanted message */
    }
    return 0;
}

/* -- sessions ----------------------------------------------------------------------------------- */

typedef struct Session Session;

typedef struct {
    Session *s;
    int side;  /* 0: the client's socket, 1: the server's */
} Leg;

struct Session {
    uint32_t handle;
    int fd[2];
    Leg leg[2];
    Buf out[2];        /* bytes waiting to be written to fd[i] */
    Framer framer[2];  /* framer[i] frames what side i sent */
    uint32_t interest[2];
    int detached[2];   /* side i hung up and left the epoll set */
    int capture;       /* append wanted messages for Python */
    int held;          /* a framing error was reported: nothing more is read, Python decides */
    int closing;       /* nothing more is read; close once out[] is written */
    int end_reason;
    int closed;        /* fds closed, END recorded; freed after this round of events */
    Session *next_closed;
};

typedef struct Command {
    int op;
    uint32_t handle;
    int side;
    Buf data;
    struct Command *next;
} Command;

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    int running;
    int epfd;
    int wake_fd;    /* Python → loop: commands are queued */
    int notify_fd;  /* loop → Python: records are ready (the asyncio loop watches it) */
    pthread_mutex_t lock;
    /* under lock */
    Session **slots;
    uint32_t *generations;
    uint32_t nslots;
    uint32_t *free_slots;
    uint32_t nfree;
    Command *cmd_head, *cmd_tail;
    Buf shared;          /* records for Python */
    pthread_cond_t drained;  /* signalled by drain() */
    int stop_requested;
    int notified;        /* notify_fd was written since the last drain */
    uint64_t bytes[2];   /* read from clients, from servers, since the last drain */
    uint64_t lost;       /* message groups dropped because Python lagged */
    size_t backlog;      /* shared.len, also read by the loop thread without the lock (atomics) */
    size_t max_shared;
    size_t pace;
    /* loop thread only */
    unsigned char *chunk;
    Buf local;           /* records of this round of events, published at its end */
    uint64_t local_bytes[2];
    Session *closed_list;
    int stopping;
} Loop;

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Record header: kind, handle, side, timestamp; REC_MESSAGES then has a count and the messages. */
static int
record_head(Buf *b, unsigned char kind, uint32_t handle, unsigned char side, int64_t ts)
{
    unsigned char head[14];
    head[0] = kind;
    memcpy(head + 1, &handle, 4);
    head[5] = side;
    memcpy(head + 6, &ts, 8);
    return buf_append(b, head, 14);
}

static void
record_end(Loop *L, Session *s)
{
    unsigned char reason = (unsigned char)s->end_reason;
    if (record_head(&L->local, REC_END, s->handle, 0, now_us()) == 0)
        buf_append(&L->local, &reason, 1);
}

/* What side x should wait for: readable unless held or closing or its bytes cannot be passed on,
 * writable while its output buffer holds something. */
static void
update_interest(Loop *L, Session *s, int x)
{
    if (s->closed || s->detached[x])
        return;
    uint32_t want = 0;
    if (!s->closing && !s->held && buf_pending(&s->out[1 - x]) == 0)
        want |= EPOLLIN;
    if (buf_pending(&s->out[x]))
        want |= EPOLLOUT;
    if (want == s->interest[x])
        return;
    struct epoll_event ev = {.events = want, .data.ptr = &s->leg[x]};
    epoll_ctl(L->epfd, EPOLL_CTL_MOD, s->fd[x], &ev);
    s->interest[x] = want;
}

static void
finish(Loop *L, Session *s)
{
    for (int x = 0; x < 2; x++) {
        if (!s->detached[x])
            epoll_ctl(L->epfd, EPOLL_CTL_DEL, s->fd[x], NULL);
        close(s->fd[x]);
        s->fd[x] = -1;
    }
    s->closed = 1;
    record_end(L, s);
    s->next_closed = L->closed_list;
    L->closed_list = s;
}

/* Stop reading both sides; the session closes as soon as what is buffered for either side is written
 * (as asyncio's transport.close() flushes first). */
static void
begin_close(Loop *L, Session *s, int reason)
{
    if (s->closed)
        return;
    if (!s->closing) {
        s->closing = 1;
        s->end_reason = reason;
    }
    if (buf_pending(&s->out[0]) == 0 && buf_pending(&s->out[1]) == 0) {
        finish(L, s);
        return;
    }
    update_interest(L, s, 0);
    update_interest(L, s, 1);
}

/* A write to side d failed: what was waiting for it is dropped, and the session ends. */
static void
write_failed(Loop *L, Session *s, int d)
{
    s->out[d].off = s->out[d].len = 0;
    begin_close(L, s, END_ERROR);
}

/* Pass n bytes to side d: written now if nothing waits before them, else (and for whatever the socket
 * did not take) buffered, and the side feeding d is no longer read until the buffer is written. */
static void
forward(Loop *L, Session *s, int d, const unsigned char *p, size_t n)
{
    if (buf_pending(&s->out[d]) == 0) {
        ssize_t w = send(s->fd[d], p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                write_failed(L, s, d);
                return;
            }
            w = 0;
        }
        if ((size_t)w == n)
            return;
        p += w;
        n -= (size_t)w;
        s->out[d].off = s->out[d].len = 0;
    }
    if (buf_append(&s->out[d], p, n) < 0) {
        write_failed(L, s, d);
        return;
    }
    update_interest(L, s, d);
    update_interest(L, s, 1 - d);
}

/* Write what waits for side d until the socket takes no more: 0 all written, 1 some left, -1 failed. */
static int
send_pending(Session *s, int d)
{
    Buf *b = &s->out[d];
    while (buf_pending(b)) {
        ssize_t w = send(s->fd[d], b->data + b->off, buf_pending(b), MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        }
        b->off += (size_t)w;
    }
    return 0;
}

/* Side d is writable: write what waits for it. */
static void
flush(Loop *L, Session *s, int d)
{
    int rc = send_pending(s, d);
    if (rc > 0)
        return;
    if (rc < 0) {
        write_failed(L, s, d);
        return;
    }
    Buf *b = &s->out[d];
    b->off = b->len = 0;
    if (b->cap > CHUNK)
        buf_free(b);
    if (s->closing) {
        begin_close(L, s, s->end_reason);
        return;
    }
    update_interest(L, s, d);
    update_interest(L, s, 1 - d);
}

/* Frame what side x sent in one read, appending its record (or a framing error) to the local buffer. */
static void
capture_read(Loop *L, Session *s, int x, int64_t ts, const unsigned char *p, size_t n)
{
    Framer *f = &s->framer[x];
    size_t start = L->local.len;
    int keep = s->capture;
    if (keep && __atomic_load_n(&L->backlog, __ATOMIC_RELAXED) + start > L->max_shared) {
        /* Python is far behind: this session's capture stops rather than memory growing without end */
        keep = s->capture = 0;
        __atomic_add_fetch(&L->lost, 1, __ATOMIC_RELAXED);
        record_head(&L->local, REC_LOST, s->handle, (unsigned char)x, ts);
        start = L->local.len;
    }
    uint32_t zero = 0;
    if (keep && (record_head(&L->local, REC_MESSAGES, s->handle, (unsigned char)x, ts) < 0
                 || buf_append(&L->local, &zero, 4) < 0)) {
        L->local.len = start;
        return;
    }
    Emit e = {.records = &L->local, .count = 0, .keep_messages = keep};
    int rc = frame(f, &e, p, (int64_t)n);
    if (rc == -1) {
        /* as wire.py raises: the messages before the bad one in this read are not seen either */
        L->local.len = start;
        unsigned char tail[6];
        tail[0] = f->bad_typ;
        memcpy(tail + 1, &f->bad_length, 4);
        tail[5] = (unsigned char)f->bad_kind;
        if (record_head(&L->local, REC_VIOLATION, s->handle, (unsigned char)x, ts) == 0)
            buf_append(&L->local, tail, 6);
        s->held = 1;
        update_interest(L, s, 0);
        update_interest(L, s, 1);
        return;
    }
    if (rc == -2 || e.count == 0) {  /* out of memory (the session goes on uncaptured) or nothing wanted */
        L->local.len = start;
        if (rc == -2)
            s->capture = 0;
        return;
    }
    memcpy(L->local.data + start + 14, &e.count, 4);
}

/* Side x is readable: read once, forward, then frame. */
static void
relay(Loop *L, Session *s, int x)
{
    ssize_t n = recv(s->fd[x], L->chunk, CHUNK, 0);
    if (n == 0) {
        begin_close(L, s, x == 0 ? END_CLIENT : END_SERVER);
        return;
    }
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            begin_close(L, s, END_ERROR);
        return;
    }
    int64_t ts = now_us();
    L->local_bytes[x] += (uint64_t)n;
    forward(L, s, 1 - x, L->chunk, (size_t)n);
    if (!s->closed && !s->framer[x].broken)  /* closed: the other side failed, END is recorded already */
        capture_read(L, s, x, ts, L->chunk, (size_t)n);
}

/* Side x failed or was reset: nothing can be written to it any more, and epoll would report it again
 * and again while the other side's buffer drains, so it leaves the epoll set. */
static void
hung_up(Loop *L, Session *s, int x)
{
    s->out[x].off = s->out[x].len = 0;
    epoll_ctl(L->epfd, EPOLL_CTL_DEL, s->fd[x], NULL);
    s->detached[x] = 1;
    begin_close(L, s, END_ERROR);
}

static void
on_event(Loop *L, Leg *leg, uint32_t events)
{
    Session *s = leg->s;
    int x = leg->side;
    if (s->closed)
        return;
    if (events & (EPOLLERR | EPOLLHUP)) {
        if (!s->closing && !s->held)
            relay(L, s, x);  /* what it sent before it went is still passed on */
        if (!s->closed)
            hung_up(L, s, x);
        return;
    }
    if ((events & EPOLLOUT) && buf_pending(&s->out[x]))
        flush(L, s, x);
    if (!s->closed && !s->closing && (events & EPOLLIN))
        relay(L, s, x);
}

/* -- commands from Python ------------------------------------------------------------------------ */

static Session *
lookup(Loop *L, uint32_t handle)
{
    uint32_t slot = handle & (MAX_SLOTS - 1);
    if (slot >= L->nslots || L->slots[slot] == NULL || L->slots[slot]->handle != handle)
        return NULL;
    return L->slots[slot];
}

static void
start_session(Loop *L, Session *s)
{
    for (int x = 0; x < 2; x++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &s->leg[x]};
        if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, s->fd[x], &ev) < 0) {
            if (x == 1)
                epoll_ctl(L->epfd, EPOLL_CTL_DEL, s->fd[0], NULL);
            s->interest[0] = s->interest[1] = 0;
            s->closing = 1;
            s->end_reason = END_ERROR;
            for (int y = 0; y < 2; y++) {
                close(s->fd[y]);
                s->fd[y] = -1;
            }
            s->closed = 1;
            record_end(L, s);
            s->next_closed = L->closed_list;
            L->closed_list = s;
            return;
        }
        s->interest[x] = EPOLLIN;
    }
}

static void
run_command(Loop *L, Command *c)
{
    if (c->op == CMD_STOP) {
        L->stopping = 1;
        return;
    }
    pthread_mutex_lock(&L->lock);
    Session *s = lookup(L, c->handle);
    pthread_mutex_unlock(&L->lock);
    if (s == NULL || s->closed)
        return;
    switch (c->op) {
    case CMD_ADD:
        start_session(L, s);
        break;
    case CMD_WRITE:  /* at once if nothing waits before it, as an asyncio transport writes */
        forward(L, s, c->side, c->data.data, c->data.len);
        break;
    case CMD_CLOSE:
        begin_close(L, s, END_CLOSED);
        break;
    case CMD_UNCAPTURE:
        s->capture = 0;
        break;
    }
}

static void
run_commands(Loop *L)
{
    uint64_t n;
    if (read(L->wake_fd, &n, sizeof n) < 0 && errno != EAGAIN) {
        /* nothing to do: the queue below is the truth */
    }
    pthread_mutex_lock(&L->lock);
    Command *c = L->cmd_head;
    L->cmd_head = L->cmd_tail = NULL;
    pthread_mutex_unlock(&L->lock);
    while (c != NULL) {
        Command *next = c->next;
        run_command(L, c);
        buf_free(&c->data);
        free(c);
        c = next;
    }
}

/* End of a round of events: hand the local records to Python, and wake it if it is not awake yet. */
static void
publish(Loop *L)
{
    if (L->local.len == 0 && L->local_bytes[0] == 0 && L->local_bytes[1] == 0)
        return;
    int wake = 0;
    pthread_mutex_lock(&L->lock);
    L->bytes[0] += L->local_bytes[0];
    L->bytes[1] += L->local_bytes[1];
    if (L->local.len) {
        if (L->shared.len == 0) {  /* swap instead of copying */
            Buf t = L->shared;
            L->shared = L->local;
            L->local = t;
        } else if (buf_append(&L->shared, L->local.data, L->local.len) < 0) {
            L->lost++;
        }
        __atomic_store_n(&L->backlog, L->shared.len, __ATOMIC_RELAXED);
        if (!L->notified)
            wake = L->notified = 1;
    }
    pthread_mutex_unlock(&L->lock);
    L->local.len = 0;
    L->local_bytes[0] = L->local_bytes[1] = 0;
    if (wake) {
        uint64_t one = 1;
        if (write(L->notify_fd, &one, sizeof one) < 0) {
            /* the counter is saturated only if Python never reads it: nothing to add */
        }
    }
}

static void
free_session(Session *s)
{
    for (int x = 0; x < 2; x++) {
        buf_free(&s->out[x]);
        buf_free(&s->framer[x].body);
    }
    free(s);
}

/* Sessions closed in this round are freed now that no event of the round can name them. */
static void
reap(Loop *L)
{
    Session *s = L->closed_list;
    L->closed_list = NULL;
    if (s == NULL)
        return;
    pthread_mutex_lock(&L->lock);
    while (s != NULL) {
        Session *next = s->next_closed;
        uint32_t slot = s->handle & (MAX_SLOTS - 1);
        if (L->slots[slot] == s) {
            L->slots[slot] = NULL;
            L->free_slots[L->nfree++] = slot;
        }
        free_session(s);
        s = next;
    }
    pthread_mutex_unlock(&L->lock);
}

/* More records wait than Python should have to catch up with: give it time to drain before reading on. */
static void
wait_for_python(Loop *L)
{
    pthread_mutex_lock(&L->lock);
    if (L->shared.len > L->pace && !L->stop_requested) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;  /* a Python side that does not drain at all must not stop the traffic */
        while (L->shared.len > L->pace && !L->stop_requested)
            if (pthread_cond_timedwait(&L->drained, &L->lock, &until) == ETIMEDOUT)
                break;
    }
    pthread_mutex_unlock(&L->lock);
}

static void *
run(void *arg)
{
    Loop *L = arg;
    struct epoll_event events[MAX_EVENTS];
    while (!L->stopping) {
        int n = epoll_wait(L->epfd, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        int commands = 0;
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL)
                commands = 1;
            else
                on_event(L, events[i].data.ptr, events[i].events);
        }
        if (commands)
            run_commands(L);
        publish(L);
        reap(L);
        wait_for_python(L);
    }
    /* stopping: whatever is still open is closed (Python waited for sessions first), after one try to
     * write what waits for it, such as the ErrorResponse that tells a client why */
    pthread_mutex_lock(&L->lock);
    for (uint32_t i = 0; i < L->nslots; i++) {
        Session *s = L->slots[i];
        if (s == NULL)
            continue;
        for (int x = 0; x < 2; x++)
            if (s->fd[x] >= 0) {
                send_pending(s, x);
                close(s->fd[x]);
            }
        free_session(s);
        L->slots[i] = NULL;
    }
    pthread_mutex_unlock(&L->lock);
    return NULL;
}

/* -- the Python type ------------------------------------------------------------------------------ */

static int
queue_command(Loop *L, int op, uint32_t handle, int side, const void *data, size_t len)
{
    Command *c = calloc(1, sizeof *c);
    if (c == NULL || (len && buf_append(&c->data, data, len) < 0)) {
        free(c);
        PyErr_NoMemory();
        return -1;
    }
    c->op = op;
    c->handle = handle;
    c->side = side;
    pthread_mutex_lock(&L->lock);
    if (L->cmd_tail)
        L->cmd_tail->next = c;
    else
        L->cmd_head = c;
    L->cmd_tail = c;
    pthread_mutex_unlock(&L->lock);
    uint64_t one = 1;
    if (write(L->wake_fd, &one, sizeof one) < 0) {
        /* eventfd full means the loop has a wake-up pending already */
    }
    return 0;
}

static int
Loop_init(Loop *L, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"max_buffer", "pace", NULL};
    Py_ssize_t max_buffer = 64 << 20, pace = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|nn", kwlist, &max_buffer, &pace))
        return -1;
    if (L->running) {
        PyErr_SetString(PyExc_RuntimeError, "Loop already started");
        return -1;
    }
    L->max_shared = (size_t)max_buffer;
    L->pace = (size_t)(pace < max_buffer ? pace : max_buffer);
    L->epfd = epoll_create1(EPOLL_CLOEXEC);
    L->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->notify_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    L->chunk = malloc(CHUNK);
    if (L->epfd < 0 || L->wake_fd < 0 || L->notify_fd < 0 || L->chunk == NULL) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(L->epfd, EPOLL_CTL_ADD, L->wake_fd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&L->lock, NULL);
    pthread_cond_init(&L->drained, NULL);
    int rc = pthread_create(&L->thread, NULL, run, L);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    L->running = 1;
    return 0;
}

static PyObject *
Loop_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    Loop *L = (Loop *)type->tp_alloc(type, 0);
    if (L != NULL)
        L->epfd = L->wake_fd = L->notify_fd = -1;
    return (PyObject *)L;
}

static void
stop_thread(Loop *L)
{
    if (!L->running)
        return;
    L->running = 0;
    pthread_mutex_lock(&L->lock);
    L->stop_requested = 1;
    pthread_cond_signal(&L->drained);
    pthread_mutex_unlock(&L->lock);
    if (queue_command(L, CMD_STOP, 0, 0, NULL, 0) == 0) {
        Py_BEGIN_ALLOW_THREADS
        pthread_join(L->thread, NULL);
        Py_END_ALLOW_THREADS
    } else {
        PyErr_Clear();
    }
}

static void
Loop_dealloc(Loop *L)
{
    stop_thread(L);
    Command *c = L->cmd_head;
    while (c != NULL) {
        Command *next = c->next;
        buf_free(&c->data);
        free(c);
        c = next;
    }
    if (L->epfd >= 0)
        close(L->epfd);
    if (L->wake_fd >= 0)
        close(L->wake_fd);
    if (L->notify_fd >= 0)
        close(L->notify_fd);
    free(L->slots);
    free(L->generations);
    free(L->free_slots);
    buf_free(&L->shared);
    buf_free(&L->local);
    free(L->chunk);
    Py_TYPE(L)->tp_free((PyObject *)L);
}

static int
grow_slots(Loop *L)
{
    uint32_t n = L->nslots ? L->nslots * 2 : 256;
    if (n > MAX_SLOTS)
        return -1;
    Session **slots = realloc(L->slots, n * sizeof *slots);
    if (slots == NULL)
        return -1;
    L->slots = slots;
    uint32_t *gens = realloc(L->generations, n * sizeof *gens);
    if (gens == NULL)
        return -1;
    L->generations = gens;
    uint32_t *free_slots = realloc(L->free_slots, n * sizeof *free_slots);
    if (free_slots == NULL)
        return -1;
    L->free_slots = free_slots;
    for (uint32_t i = n; i > L->nslots; i--) {
        slots[i - 1] = NULL;
        gens[i - 1] = 0;
        free_slots[L->nfree++] = i - 1;
    }
    L->nslots = n;
    return 0;
}

static int
init_framer(Framer *f, Py_buffer *wanted, Py_ssize_t max_message, Py_ssize_t keep)
{
    if (wanted->len != 256) {
        PyErr_SetString(PyExc_ValueError, "wanted must be 256 bytes");
        return -1;
    }
    memcpy(f->wanted, wanted->buf, 256);
    f->max_message = max_message;
    f->keep = keep;
    return 0;
}

/* add(client_fd, server_fd, client_wanted, server_wanted, client_max, server_max, keep, capture) -> handle
 *
 * Once it returns, the Loop owns both fds (it closes them); when it raises, they stay the caller's.
 * wanted: 256 bytes, non-zero at the message
 * types to hand to Python, as wire.py's tables; max: the largest length word accepted from that side. */
static PyObject *
Loop_add(Loop *L, PyObject *args)
{
    int cfd, sfd, capture;
    Py_buffer cw, sw;
    Py_ssize_t cmax, smax, keep;
    if (!PyArg_ParseTuple(args, "iiy*y*nnnp", &cfd, &sfd, &cw, &sw, &cmax, &smax, &keep, &capture))
        return NULL;
    Session *s = calloc(1, sizeof *s);
    PyObject *result = NULL;
    if (s == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (init_framer(&s->framer[0], &cw, cmax, keep) < 0 || init_framer(&s->framer[1], &sw, smax, keep) < 0) {
        free(s);
        goto done;
    }
    s->fd[0] = cfd;
    s->fd[1] = sfd;
    s->capture = capture;
    for (int x = 0; x < 2; x++) {
        s->leg[x].s = s;
        s->leg[x].side = x;
        fcntl(s->fd[x], F_SETFL, fcntl(s->fd[x], F_GETFL) | O_NONBLOCK);
    }
    pthread_mutex_lock(&L->lock);
    if (L->nfree == 0 && grow_slots(L) < 0) {
        pthread_mutex_unlock(&L->lock);
        free(s);
        PyErr_SetString(PyExc_MemoryError, "no session slot left");
        goto done;
    }
    uint32_t slot = L->free_slots[--L->nfree];
    L->generations[slot] = (L->generations[slot] + 1) & ((1u << (32 - SLOT_BITS)) - 1);
    s->handle = slot | (L->generations[slot] << SLOT_BITS);
    L->slots[slot] = s;
    pthread_mutex_unlock(&L->lock);
    if (queue_command(L, CMD_ADD, s->handle, 0, NULL, 0) == 0) {
        result = PyLong_FromUnsignedLong(s->handle);
    } else {  /* the loop never heard of it: the slot is free again and the fds stay the caller's */
        pthread_mutex_lock(&L->lock);
        L->slots[slot] = NULL;
        L->free_slots[L->nfree++] = slot;
        pthread_mutex_unlock(&L->lock);
        free(s);
    }
done:
    PyBuffer_Release(&cw);
    PyBuffer_Release(&sw);
    return result;
}

/* write(handle, side, data): bytes the proxy itself sends to side 0 (client) or 1 (server), after
 * whatever is already on its way there. */
static PyObject *
Loop_write(Loop *L, PyObject *args)
{
    unsigned int handle;
    int side;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "Iiy*", &handle, &side, &data))
        return NULL;
    int rc = side == 0 || side == 1 ? queue_command(L, CMD_WRITE, handle, side, data.buf, (size_t)data.len) : -1;
    PyBuffer_Release(&data);
    if (rc < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "side must be 0 or 1");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
simple_command(Loop *L, PyObject *arg, int op)
{
    unsigned long handle = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred() || queue_command(L, op, (uint32_t)handle, 0, NULL, 0) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* close(handle): both sides close once what is buffered for them is written; an END record follows. */
static PyObject *
Loop_close(Loop *L, PyObject *arg)
{
    return simple_command(L, arg, CMD_CLOSE);
}

/* uncapture(handle): the session's messages are no longer recorded (its capture failed). */
static PyObject *
Loop_uncapture(Loop *L, PyObject *arg)
{
    return simple_command(L, arg, CMD_UNCAPTURE);
}

static PyObject *
Loop_fileno(Loop *L, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(L->notify_fd);
}

static PyObject *
Loop_stop(Loop *L, PyObject *Py_UNUSED(ignored))
{
    stop_thread(L);
    Py_RETURN_NONE;
}

/* One REC_MESSAGES record's messages as wire.py's (type, body, size) tuples. */
static PyObject *
messages_of(const unsigned char **pp, uint32_t count)
{
    const unsigned char *p = *pp;
    PyObject *list = PyList_New(count);
    if (list == NULL)
        return NULL;
    for (uint32_t i = 0; i < count; i++) {
        uint32_t size, kept;
        memcpy(&size, p + 1, 4);
        memcpy(&kept, p + 5, 4);
        PyObject *t = PyTuple_New(3);
        PyObject *typ = PyLong_FromLong(p[0]);
        PyObject *body = PyBytes_FromStringAndSize((const char *)p + 9, kept);
        PyObject *n = PyLong_FromUnsignedLong(size);
        if (t == NULL || typ == NULL || body == NULL || n == NULL) {
            Py_XDECREF(t);
            Py_XDECREF(typ);
            Py_XDECREF(body);
            Py_XDECREF(n);
            Py_DECREF(list);
            return NULL;
        }
        PyTuple_SET_ITEM(t, 0, typ);
        PyTuple_SET_ITEM(t, 1, body);
        PyTuple_SET_ITEM(t, 2, n);
        PyList_SET_ITEM(list, i, t);
        p += 9 + kept;
    }
    *pp = p;
    return list;
}

/* What the loop recorded since the last drain, taken over (the caller frees records), with its counters. */
typedef struct {
    Buf records;
    uint64_t bytes[2], lost;
} Taken;

static int
take_records(Loop *L, Taken *t)
{
    uint64_t n;
    if (read(L->notify_fd, &n, sizeof n) < 0 && errno != EAGAIN) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_lock(&L->lock);
    t->records = L->shared;
    memset(&L->shared, 0, sizeof L->shared);
    t->bytes[0] = L->bytes[0];
    t->bytes[1] = L->bytes[1];
    t->lost = L->lost;
    L->bytes[0] = L->bytes[1] = L->lost = 0;
    L->notified = 0;
    __atomic_store_n(&L->backlog, 0, __ATOMIC_RELAXED);
    pthread_cond_signal(&L->drained);
    pthread_mutex_unlock(&L->lock);
    return 0;
}

/* One record's header, read at *pp (which moves past it). */
typedef struct {
    unsigned char kind, side;
    uint32_t handle;
    int64_t ts;
} RecordHead;

static RecordHead
read_head(const unsigned char **pp)
{
    RecordHead h;
    const unsigned char *p = *pp;
    h.kind = p[0];
    memcpy(&h.handle, p + 1, 4);
    h.side = p[5];
    memcpy(&h.ts, p + 6, 8);
    *pp = p + 14;
    return h;
}

/* The rest of the record at *pp as drain() reports it, a new tuple; *pp moves past the record. */
static PyObject *
record_object(RecordHead h, const unsigned char **pp)
{
    const unsigned char *p = *pp;
    PyObject *payload;
    if (h.kind == REC_MESSAGES) {
        uint32_t count;
        memcpy(&count, p, 4);
        p += 4;
        payload = messages_of(&p, count);
    } else if (h.kind == REC_VIOLATION) {
        int32_t length;
        memcpy(&length, p + 1, 4);
        payload = Py_BuildValue("(iii)", p[0], length, p[5]);
        p += 6;
    } else if (h.kind == REC_END) {
        payload = PyLong_FromLong(p[0]);
        p += 1;
    } else {
        payload = Py_NewRef(Py_None);
    }
    *pp = p;
    return payload ? Py_BuildValue("(iIiLN)", h.kind, h.handle, h.side, (long long)h.ts, payload) : NULL;
}

/* drain() -> (records, bytes from clients, bytes from servers, groups lost)
 *
 * records: (kind, handle, side, read time µs, payload) in the order the loop saw them. payload:
 * REC_MESSAGES a list of (type, body, size); REC_VIOLATION (type, length, what); REC_END the reason;
 * REC_LOST None. Counters are since the previous drain. */
static PyObject *
Loop_drain(Loop *L, PyObject *Py_UNUSED(ignored))
{
    Taken t;
    if (take_records(L, &t) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    const unsigned char *p = t.records.data, *end = t.records.data + t.records.len;
    while (out != NULL && p < end) {
        PyObject *rec = record_object(read_head(&p), &p);
        if (rec == NULL || PyList_Append(out, rec) < 0)
            Py_CLEAR(out);
        Py_XDECREF(rec);
    }
    buf_free(&t.records);
    if (out == NULL)
        return NULL;
    return Py_BuildValue("(NKKK)", out, (unsigned long long)t.bytes[0], (unsigned long long)t.bytes[1],
                         (unsigned long long)t.lost);
}

/* The compiled Session's interface, once fetched; NULL when _session was not built. */
static const SessionAPI *session_api;

/* A REC_MESSAGES record's messages (at *pp, moving past them) fed straight to a compiled Session, up to
 * 64 a call from a batch on the stack. Once the session raises, the rest of the record is only skipped. */
static int
feed_session(PyObject *session, RecordHead h, const unsigned char **pp)
{
    const unsigned char *p = *pp;
    uint32_t count;
    memcpy(&count, p, 4);
    p += 4;
    SessionMessage batch[64];
    int r = 0;
    while (count > 0) {
        uint32_t n = count < 64 ? count : 64;
        for (uint32_t i = 0; i < n; i++) {
            batch[i].type = p[0];
            memcpy(&batch[i].length, p + 1, 4);
            memcpy(&batch[i].kept, p + 5, 4);
            batch[i].body = p + 9;
            p += 9 + batch[i].kept;
        }
        count -= n;
        if (r == 0)
            r = session_api->feed(session, h.side, (long long)h.ts, batch, n);
    }
    *pp = p;
    return r;
}

/* (handle, exception) for a session that raised: the exception with its traceback. */
static PyObject *
failure(uint32_t handle)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *pair = Py_BuildValue("(IO)", handle, value);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return pair;
}

/* deliver(taps) -> (records, failed, bytes from clients, bytes from servers, groups lost)
 *
 * drain(), except that the messages of a handle in taps (a dict: handle → compiled Session) go straight
 * to its session, with no Python object made for a message it does not keep. records holds the rest in
 * drain()'s form and order; failed (handle, exception) for each session that raised, whose handle is
 * then taken out of taps, so that its later records come back in records. An exception that is not an
 * Exception (KeyboardInterrupt) propagates. */
static PyObject *
Loop_deliver(Loop *L, PyObject *taps)
{
    if (!PyDict_Check(taps)) {
        PyErr_SetString(PyExc_TypeError, "deliver(taps): taps must be a dict");
        return NULL;
    }
    if (session_api == NULL && (session_api = PyCapsule_Import(SESSION_API_CAPSULE, 0)) == NULL)
        return NULL;
    Taken t;
    if (take_records(L, &t) < 0)
        return NULL;
    PyObject *out = PyList_New(0), *failed = PyList_New(0);
    const unsigned char *p = t.records.data, *end = t.records.data + t.records.len;
    while (out != NULL && failed != NULL && p < end) {
        RecordHead h = read_head(&p);
        PyObject *session = NULL;
        if (h.kind == REC_MESSAGES && PyDict_GET_SIZE(taps)) {
            PyObject *key = PyLong_FromUnsignedLong(h.handle);
            session = key ? PyDict_GetItemWithError(taps, key) : NULL;
            Py_XDECREF(key);
            if (session == NULL && PyErr_Occurred())
                break;
            if (session != NULL && !Py_IS_TYPE(session, session_api->session_type))
                session = NULL;
        }
        if (session == NULL) {
            PyObject *rec = record_object(h, &p);
            if (rec == NULL || PyList_Append(out, rec) < 0)
                Py_CLEAR(out);
            Py_XDECREF(rec);
            continue;
        }
        Py_INCREF(session);
        if (feed_session(session, h, &p) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                Py_DECREF(session);
                break;
            }
            PyObject *pair = failure(h.handle);
            if (pair == NULL || PyList_Append(failed, pair) < 0
                || PyDict_DelItem(taps, PyTuple_GET_ITEM(pair, 0)) < 0)
                Py_CLEAR(failed);
            Py_XDECREF(pair);
        }
        Py_DECREF(session);
    }
    buf_free(&t.records);
    if (PyErr_Occurred() || out == NULL || failed == NULL) {
        Py_XDECREF(out);
        Py_XDECREF(failed);
        return NULL;
    }
    return Py_BuildValue("(NNKKK)", out, failed, (unsigned long long)t.bytes[0], (unsigned long long)t.bytes[1],
                         (unsigned long long)t.lost);
}

static PyMethodDef Loop_methods[] = {
    {"add", (PyCFunction)Loop_add, METH_VARARGS,
     "add(client_fd, server_fd, client_wanted, server_wanted, client_max, server_max, keep, capture) -> handle"},
    {"write", (PyCFunction)Loop_write, METH_VARARGS, "write(handle, side, data): send bytes of the proxy's own"},
    {"close", (PyCFunction)Loop_close, METH_O, "close(handle): flush, then close both sides"},
    {"uncapture", (PyCFunction)Loop_uncapture, METH_O, "uncapture(handle): record no more messages"},
    {"drain", (PyCFunction)Loop_drain, METH_NOARGS, "drain() -> (records, client bytes, server bytes, lost)"},
    {"deliver", (PyCFunction)Loop_deliver, METH_O,
     "deliver(taps) -> (records, failed, client bytes, server bytes, lost): drain(), the messages of the "
     "handles in taps fed to their compiled Sessions"},
    {"fileno", (PyCFunction)Loop_fileno, METH_NOARGS, "the eventfd that becomes readable when records wait"},
    {"stop", (PyCFunction)Loop_stop, METH_NOARGS, "stop the thread; sessions still open are closed"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fasterdata.proxy._dataplane.Loop",
    .tp_doc = "Loop(max_buffer=64 MiB, pace=1 MiB): one native epoll thread moving the bytes of handed-off "
              "sessions; past pace bytes of records it waits for a drain, past max_buffer capture stops",
    .tp_basicsize = sizeof(Loop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Loop_new,
    .tp_init = (initproc)Loop_init,
    .tp_dealloc = (destructor)Loop_dealloc,
    .tp_methods = Loop_methods,
};

/* frame(data_chunks, wanted, max_message, keep) -> list of (type, body, size), or
 * ("violation", type, length, what) as the last item: the loop's framer fed the chunks one by one,
 * for the differential tests against wire.py. */
static PyObject *
frame_chunks(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *chunks;
    Py_buffer wanted;
    Py_ssize_t max_message, keep;
    if (!PyArg_ParseTuple(args, "Oy*nn", &chunks, &wanted, &max_message, &keep))
        return NULL;
    Framer f;
    memset(&f, 0, sizeof f);
    PyObject *out = NULL, *seq = NULL;
    Buf records = {0};
    if (init_framer(&f, &wanted, max_message, keep) < 0)
        goto done;
    seq = PySequence_Fast(chunks, "chunks must be a sequence");
    if (seq == NULL)
        goto done;
    out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < PySequence_Fast_GET_SIZE(seq); i++) {
        Py_buffer chunk;
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &chunk, PyBUF_SIMPLE) < 0) {
            Py_CLEAR(out);
            break;
        }
        records.len = 0;
        Emit e = {.records = &records, .count = 0, .keep_messages = 1};
        int rc = frame(&f, &e, chunk.buf, chunk.len);
        PyBuffer_Release(&chunk);
        if (rc == -2) {
            PyErr_NoMemory();
            Py_CLEAR(out);
            break;
        }
        if (rc == -1) {
            PyObject *v = Py_BuildValue("(siii)", "violation", f.bad_typ, f.bad_length, f.bad_kind);
            if (v == NULL || PyList_Append(out, v) < 0)
                Py_CLEAR(out);
            Py_XDECREF(v);
            break;
        }
        const unsigned char *p = records.data;
        PyObject *got = messages_of(&p, e.count);
        if (got == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyObject *joined = PySequence_InPlaceConcat(out, got);
        Py_DECREF(got);
        Py_XDECREF(joined);
        if (joined == NULL)
            Py_CLEAR(out);
    }
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&wanted);
    buf_free(&records);
    buf_free(&f.body);
    return out;
}

static PyMethodDef module_methods[] = {
    {"frame", frame_chunks, METH_VARARGS, "frame(chunks, wanted, max_message, keep): the loop's framer alone"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fasterdata.proxy._dataplane",
    .m_doc = "The compiled data plane: a native epoll thread forwarding and framing handed-off sessions "
             "(see dataplane.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__dataplane(void)
{
    if (PyType_Ready(&LoopType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LoopType);
    if (PyModule_AddObject(m, "Loop", (PyObject *)&LoopType) < 0) {
        Py_DECREF(&LoopType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
