/* One client session's protocol state in C: proxy/session.py's Session, compiled.
 *
 * proxy/session.py is the reference and says how requests and answers are matched, how transactions
 * are held and stamped, and why; this file follows it step by step, most functions named for the method
 * they stand for (on_parse for _parse, end_txn for _end), so the two can be read side by side. tests/capture run every Session test on both (the ones through real
 * drivers included), test_session_fuzz.py feeds both the same generated traffic and compares events and
 * state after every message, and tests/proxy/test_dataplane.py compares what real drivers' sessions give
 * on the two data planes.
 *
 * What is compiled: the request FIFO, the statements and portals, the transaction hold and its
 * outcome, savepoints, sampling and building the events. What stays Python, called from here: work
 * done once per distinct statement or on rare messages (redaction and its cache, splitting a
 * multi-statement Query, a control statement's names, error fields, learning column orders), and the
 * parameter encoder (proxy/params.py, itself compiled when proxy/_params.c is built). A plain simple
 * Query is the exception: its split and its "nothing to hide" are found here (see split_plain).
 *
 * Statements and portals are small Python objects, so the maps, the FIFO and the events can share
 * them with plain reference counts. None of them can form a cycle, nor can a Session (it refers to
 * its options, its emit callable and its own maps), so none is tracked by the cyclic collector.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

#include "_session_api.h"

/* Message types (proxy/wire.py). */
enum {
    M_QUERY = 'Q', M_PARSE = 'P', M_BIND = 'B', M_EXECUTE = 'E', M_DESCRIBE = 'D', M_CLOSE = 'C',
    M_SYNC = 'S', M_FUNCTION_CALL = 'F', M_COPY_DONE = 'c', M_COPY_FAIL = 'f',
    M_COMMAND_COMPLETE = 'C', M_READY = 'Z', M_ROW_DESCRIPTION = 'T', M_PARSE_COMPLETE = '1',
    M_PORTAL_SUSPENDED = 's', M_ERROR = 'E', M_PARAMETER_DESCRIPTION = 't', M_EMPTY_QUERY = 'I',
    M_PARAMETER_STATUS = 'S', M_BACKEND_KEY = 'K', M_COPY_IN = 'G',
};
#define TXN_IDLE 'I'

/* FIFO entry kinds, numbered as in session.py. Kinds up to K_FUNC are answered by ReadyForQuery. */
enum { K_LOGIN, K_QUERY, K_SYNC, K_FUNC, K_EXEC, K_PARSE, K_DESC, K_COPYEND };

/* -- Python objects and helpers fetched once ---------------------------------------------------- */

static PyObject *py_split;            /* sqltext.split */
static PyObject *py_idents;           /* session._idents */
static PyObject *py_scrub;            /* session._scrub */
static PyObject *py_redactor_for;     /* session.redactor_for */
static PyObject *py_fit;              /* sqlfit.fit */
static PyObject *py_bind_params;      /* params.bind_params */
static PyObject *py_command_complete; /* wire.parse_command_complete (remembered) */
static PyObject *py_fields;           /* wire.parse_fields */
static PyObject *py_param_desc;       /* wire.parse_parameter_description */
static PyObject *py_param_status;     /* wire.parse_parameter_status */
static PyObject *py_backend_key;      /* wire.parse_backend_key */
static PyObject *py_random;           /* random.random */
static PyObject *py_options_type;     /* events.CaptureOptions */
static PyObject *py_provisional;      /* redact.Provisional */
static PyObject *py_struct_error;     /* struct.error */
static PyObject *control_tags;        /* session._CONTROL_TAGS */
static PyObject *forget_tags;         /* redact.FORGET_TAGS (a tuple, for str.startswith) */
static PyObject *unknown_sql;         /* session.UNKNOWN_SQL */
static PyObject *empty_tuple;

/* Event field names, event values that repeat, and command tags compared by value. */
static PyObject *k_v, *k_kind, *k_sid, *k_client, *k_user, *k_db, *k_app, *k_pid, *k_ts, *k_dur, *k_proto,
    *k_stmt, *k_sql, *k_part, *k_params, *k_ptypes, *k_txid, *k_tag, *k_rows, *k_err, *k_errmsg, *k_txn,
    *k_n, *k_stmts, *k_undone;
static PyObject *s_schema, *s_kind_stmt, *s_kind_txn_end, *s_committed, *s_rolled_back, *s_autocommit,
    *s_prepared, *s_open, *s_simple, *s_extended, *s_empty, *s_empty_params, *s_C, *s_M, *s_learns,
    *s_learn, *s_to, *s_deallocate, *s_prepare, *s_startswith, *s_comma, *s_ellipsis;
static PyObject *t_commit, *t_rollback, *t_prepare_txn, *t_begin, *t_start_txn, *t_savepoint, *t_release,
    *t_deallocate, *t_discard_all;

/* -- statements and portals ---------------------------------------------------------------------- */

/* A prepared statement (session.py's [sql, oids, ptypes, red, seq, name]). */
typedef struct {
    PyObject_HEAD
    PyObject *sql;    /* str */
    PyObject *oids;   /* list of int: parameter type OIDs */
    PyObject *ptypes; /* str or NULL (not worked out yet; "" when there are no OIDs) */
    PyObject *red;    /* (redacted text, hidden) or NULL */
    long long seq;    /* Parse counter when it was parsed */
    PyObject *name;   /* str */
} Statement;

static void
statement_dealloc(Statement *st)
{
    Py_XDECREF(st->sql);
    Py_XDECREF(st->oids);
    Py_XDECREF(st->ptypes);
    Py_XDECREF(st->red);
    Py_XDECREF(st->name);
    Py_TYPE(st)->tp_free((PyObject *)st);
}

static PyMemberDef statement_members[] = {
    {"sql", T_OBJECT, offsetof(Statement, sql), READONLY, NULL},
    {"name", T_OBJECT, offsetof(Statement, name), READONLY, NULL},
    {"oids", T_OBJECT, offsetof(Statement, oids), READONLY, NULL},
    {"seq", T_LONGLONG, offsetof(Statement, seq), READONLY, NULL},
    {NULL},
};

static PyTypeObject StatementType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fasterdata.proxy._session.Statement",
    .tp_basicsize = sizeof(Statement),
    .tp_dealloc = (destructor)statement_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A statement the session saw parsed.",
    .tp_members = statement_members,
};

/* A portal (session.py's [statement, Bind body, length, offset of the formats, run start, rows, last]). */
typedef struct {
    PyObject_HEAD
    Statement *st;   /* NULL: its statement was unknown */
    PyObject *body;  /* bytes: the Bind body as kept */
    long long length;
    Py_ssize_t pos;
    long long start; /* non-zero while a run stopped at PortalSuspended */
    long long rows;
    long long last;
} Portal;

static void
portal_dealloc(Portal *p)
{
    Py_XDECREF(p->st);
    Py_XDECREF(p->body);
    Py_TYPE(p)->tp_free((PyObject *)p);
}

static PyTypeObject PortalType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fasterdata.proxy._session.Portal",
    .tp_basicsize = sizeof(Portal),
    .tp_dealloc = (destructor)portal_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A portal the session saw bound.",
};

/* -- the FIFO -------------------------------------------------------------------------------------- */

/* One request awaiting its answer. Which fields a kind uses is as in session.py's comments. */
typedef struct {
    int kind;
    int failed;            /* QUERY: an ErrorResponse ended it */
    long long arrival;     /* QUERY, EXEC, PARSE */
    long long seq;         /* QUERY, EXEC: the Parse counter at arrival */
    long long limit;       /* EXEC: the row limit */
    Py_ssize_t next;       /* QUERY: index of the next statement to finish */
    PyObject *sql;         /* QUERY: str */
    PyObject *parts;       /* QUERY: list of its statements, or NULL until needed */
    Portal *portal;        /* EXEC: NULL when unknown */
    Statement *st;         /* PARSE, DESC (DESC: may be NULL) */
    Statement *prev;       /* PARSE: the statement of that name before, or NULL */
    PyObject *name;        /* PARSE: bytes */
} Entry;

/* A ring of entries; deleting from the middle (rare: CopyInResponse) moves the rest. */
typedef struct {
    Entry *items;
    Py_ssize_t cap, head, len;
} Fifo;

static void
entry_clear(Entry *e)
{
    Py_CLEAR(e->sql);
    Py_CLEAR(e->parts);
    Py_CLEAR(e->portal);
    Py_CLEAR(e->st);
    Py_CLEAR(e->prev);
    Py_CLEAR(e->name);
}

static inline Entry *
fifo_at(Fifo *q, Py_ssize_t i)
{
    return &q->items[(q->head + i) % q->cap];
}

/* A new zeroed entry at the tail, or NULL (MemoryError set). */
static Entry *
fifo_push(Fifo *q, int kind)
{
    if (q->len == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 16;
        Entry *items = PyMem_Calloc(cap, sizeof(Entry));
        if (items == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        for (Py_ssize_t i = 0; i < q->len; i++)
            items[i] = *fifo_at(q, i);
        PyMem_Free(q->items);
        q->items = items;
        q->cap = cap;
        q->head = 0;
    }
    Entry *e = fifo_at(q, q->len);
    memset(e, 0, sizeof(*e));
    e->kind = kind;
    q->len++;
    return e;
}

/* Take the head out: the caller owns its references (entry_clear when done). */
static Entry
fifo_pop(Fifo *q)
{
    Entry e = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return e;
}

static void
fifo_drop_head(Fifo *q)
{
    Entry e = fifo_pop(q);
    entry_clear(&e);
}

static void
fifo_delete(Fifo *q, Py_ssize_t i)
{
    Entry gone = *fifo_at(q, i);
    for (Py_ssize_t j = i; j < q->len - 1; j++)
        *fifo_at(q, j) = *fifo_at(q, j + 1);
    q->len--;
    entry_clear(&gone);
}

static void
fifo_clear(Fifo *q)
{
    while (q->len)
        fifo_drop_head(q);
}

/* -- the session ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    /* What the server reads. */
    PyObject *capture, *sid, *client, *user, *database, *app, *startup_options;
    long long backend_pid;
    int closed;
    long long outstanding;
    /* Protocol state. */
    Fifo queue;
    int status;
    PyObject *stmts;     /* dict: bytes name → Statement */
    PyObject *portals;   /* dict: bytes name → Portal */
    PyObject *suspended; /* list of Portal */
    long long seq;
    int skip, copy_wait;
    long long last_done;
    /* Capture settings. */
    PyObject *emit;
    double rate;
    long long max_held, max_sql;
    PyObject *max_param; /* int, as bind_params takes it */
    int want_params;
    PyObject *redactor;
    PyObject *plain_words; /* the Redactor's prefilter words when that test is plain (see plainly_clean) */
    PyObject *orders;    /* dict, learned column orders */
    Statement *described;
    /* The transaction being captured. */
    int in_txn, sampled, txn_err, explicit, ext;
    long long txid, open;
    PyObject *txid_s;
    PyObject *held;       /* list of event dicts */
    PyObject *savepoints; /* list of (name, statements before it) */
    PyObject *undone;     /* list of "a-b" */
    PyObject *base;       /* dict: the fields every event of this session starts with */
} Session;

static PyObject *
str_ll(long long v)
{
    char buf[24];
    int n = snprintf(buf, sizeof(buf), "%lld", v);
    return PyUnicode_FromStringAndSize(buf, n);
}

/* d[key] = value, stealing value; -1 when value is NULL or the set fails. */
static int
set_steal(PyObject *d, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return -1;
    int r = PyDict_SetItem(d, key, value);
    Py_DECREF(value);
    return r;
}

static int
rebase(Session *s)
{
    PyObject *base = PyDict_New();
    if (base == NULL)
        return -1;
    if (PyDict_SetItem(base, k_v, s_schema) < 0 || PyDict_SetItem(base, k_kind, s_kind_stmt) < 0
        || PyDict_SetItem(base, k_sid, s->sid) < 0 || PyDict_SetItem(base, k_client, s->client) < 0
        || PyDict_SetItem(base, k_user, s->user) < 0 || PyDict_SetItem(base, k_db, s->database) < 0
        || (PyUnicode_GET_LENGTH(s->app) && PyDict_SetItem(base, k_app, s->app) < 0)
        || (s->backend_pid && set_steal(base, k_pid, str_ll(s->backend_pid)) < 0)) {
        Py_DECREF(base);
        return -1;
    }
    Py_XSETREF(s->base, base);
    return 0;
}

static PyObject *
param_or(PyObject *params, const char *key, PyObject *fallback)
{
    PyObject *v = PyMapping_GetItemString(params, key);
    if (v == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
        Py_INCREF(fallback);
        return fallback;
    }
    return v;
}

static long long
attr_ll(PyObject *o, const char *name, int *ok)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (v == NULL) {
        *ok = 0;
        return 0;
    }
    long long r = PyLong_AsLongLong(v);
    Py_DECREF(v);
    if (r == -1 && PyErr_Occurred())
        *ok = 0;
    return r;
}

static int
session_init(Session *s, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"sid", "client", "params", "emit", "options", NULL};
    PyObject *sid, *client, *params, *emit = Py_None, *opts = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "UUO|$OO:Session", kwlist, &sid, &client, &params, &emit,
                                     &opts))
        return -1;
    if (s->stmts != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Session is initialised once");
        return -1;
    }
    if (opts == Py_None) {
        opts = PyObject_CallNoArgs(py_options_type);
        if (opts == NULL)
            return -1;
    } else {
        Py_INCREF(opts);
    }
    s->capture = opts;
    Py_INCREF(sid);
    s->sid = sid;
    Py_INCREF(client);
    s->client = client;
    if ((s->user = param_or(params, "user", s_empty)) == NULL
        || (s->database = param_or(params, "database", s->user)) == NULL
        || (s->app = param_or(params, "application_name", s_empty)) == NULL
        || (s->startup_options = param_or(params, "options", s_empty)) == NULL)
        return -1;
    if (!PyUnicode_Check(s->user) || !PyUnicode_Check(s->database) || !PyUnicode_Check(s->app)) {
        PyErr_SetString(PyExc_TypeError, "Session: startup parameters must be str");
        return -1;
    }
    if (fifo_push(&s->queue, K_LOGIN) == NULL)  /* the login is answered by the first ReadyForQuery */
        return -1;
    s->outstanding = 1;
    s->status = TXN_IDLE;
    if ((s->stmts = PyDict_New()) == NULL || (s->portals = PyDict_New()) == NULL
        || (s->suspended = PyList_New(0)) == NULL || (s->orders = PyDict_New()) == NULL
        || (s->held = PyList_New(0)) == NULL || (s->savepoints = PyList_New(0)) == NULL
        || (s->undone = PyList_New(0)) == NULL)
        return -1;
    if (emit != Py_None) {
        Py_INCREF(emit);
        s->emit = emit;
    }
    int ok = 1;
    PyObject *rate = PyObject_GetAttrString(opts, "sample_rate");
    if (rate == NULL)
        return -1;
    s->rate = emit != Py_None ? PyFloat_AsDouble(rate) : 0.0;
    Py_DECREF(rate);
    if (PyErr_Occurred())
        return -1;
    s->max_held = attr_ll(opts, "max_held", &ok);
    s->max_sql = attr_ll(opts, "max_sql_chars", &ok);
    if (!ok || (s->max_param = PyObject_GetAttrString(opts, "max_param_bytes")) == NULL)
        return -1;
    PyObject *want = PyObject_GetAttrString(opts, "capture_params");
    if (want == NULL)
        return -1;
    s->want_params = PyObject_IsTrue(want);
    Py_DECREF(want);
    if (s->want_params < 0)
        return -1;
    if ((s->redactor = PyObject_CallOneArg(py_redactor_for, opts)) == NULL)
        return -1;
    PyObject *words = PyObject_GetAttrString(s->redactor, "plain_words");
    if (words == NULL)
        return -1;
    if (PyTuple_Check(words))
        s->plain_words = words;
    else
        Py_DECREF(words);
    s->txid_s = PyUnicode_FromString("0");
    if (s->txid_s == NULL)
        return -1;
    return rebase(s);
}

static void
session_dealloc(Session *s)
{
    fifo_clear(&s->queue);
    PyMem_Free(s->queue.items);
    Py_XDECREF(s->capture);
    Py_XDECREF(s->sid);
    Py_XDECREF(s->client);
    Py_XDECREF(s->user);
    Py_XDECREF(s->database);
    Py_XDECREF(s->app);
    Py_XDECREF(s->startup_options);
    Py_XDECREF(s->stmts);
    Py_XDECREF(s->portals);
    Py_XDECREF(s->suspended);
    Py_XDECREF(s->emit);
    Py_XDECREF(s->max_param);
    Py_XDECREF(s->redactor);
    Py_XDECREF(s->plain_words);
    Py_XDECREF(s->orders);
    Py_XDECREF(s->described);
    Py_XDECREF(s->txid_s);
    Py_XDECREF(s->held);
    Py_XDECREF(s->savepoints);
    Py_XDECREF(s->undone);
    Py_XDECREF(s->base);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

/* -- small helpers on message bodies ---------------------------------------------------------------- */

/* A message body as the handlers see it: its bytes, and the bytes object when there is one already
 * (messages from Python come as bytes; the native loop's point into its records, see _session_api.h). */
typedef struct {
    const char *b;
    Py_ssize_t n;
    PyObject *obj; /* borrowed, or NULL */
} Body;

/* The body as a bytes object, a new reference: the one there is, or a copy. Only the messages whose
 * body is kept (Bind) or read by Python (rare ones) need it. */
static PyObject *
body_bytes(const Body *body)
{
    if (body->obj != NULL) {
        Py_INCREF(body->obj);
        return body->obj;
    }
    return PyBytes_FromStringAndSize(body->b, body->n);
}

static Py_ssize_t
find0(const char *b, Py_ssize_t n, Py_ssize_t from)
{
    if (from < 0 || from >= n)
        return -1;
    const char *p = memchr(b + from, 0, n - from);
    return p ? p - b : -1;
}

static inline int32_t
be32(const unsigned char *p)
{
    return (int32_t)(((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]);
}

static inline int16_t
be16(const unsigned char *p)
{
    return (int16_t)(((unsigned)p[0] << 8) | p[1]);
}

/* Python's body[a:b] for 0 <= a, with b < 0 counting from the end. */
static PyObject *
slice(const char *b, Py_ssize_t n, Py_ssize_t a, Py_ssize_t end)
{
    if (end < 0)
        end += n;
    if (end < a)
        end = a;
    if (end > n)
        end = n;
    if (a > n)
        a = n;
    return PyBytes_FromStringAndSize(b + a, end - a);
}

/* Text cut by the decoder's keep limit: what was kept, then the marker session.py adds. */
static PyObject *
truncated_text(const char *b, Py_ssize_t n, long long cut)
{
    PyObject *head = PyUnicode_DecodeUTF8(b, n, "ignore");
    if (head == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("%U%U[truncated %lld bytes]", head, s_ellipsis, cut);
    Py_DECREF(head);
    return r;
}

/* A dict lookup by bytes name, borrowed (NULL when absent, without an exception). */
static PyObject *
lookup(PyObject *d, const char *b, Py_ssize_t n)
{
    PyObject *key = PyBytes_FromStringAndSize(b, n);
    if (key == NULL)
        return NULL;
    PyObject *v = PyDict_GetItemWithError(d, key);
    Py_DECREF(key);
    return v;
}

/* -- statements ending ------------------------------------------------------------------------------ */

static int finish(Session *s, long long start, long long end, int extended, PyObject *sql, Statement *st,
                  Portal *portal, PyObject *tag, PyObject *rows, PyObject *err_code, PyObject *err_msg,
                  long long seq, PyObject *part);

static int
suspended_remove(Session *s, Portal *p)
{
    Py_ssize_t n = PyList_GET_SIZE(s->suspended);
    for (Py_ssize_t i = 0; i < n; i++)
        if (PyList_GET_ITEM(s->suspended, i) == (PyObject *)p)
            return PyList_SetSlice(s->suspended, i, i + 1, NULL);
    return 0;
}

/* A portal run stopped at PortalSuspended and never finished (see session.py's _abandon). */
static int
abandon(Session *s, Portal *p)
{
    Py_INCREF(p);
    long long start = p->start;
    PyObject *rows = str_ll(p->rows);
    int r = -1;
    if (rows == NULL)
        goto done;
    p->start = p->rows = 0;
    if (suspended_remove(s, p) < 0)
        goto done;
    r = finish(s, start, p->last, 1, p->st ? p->st->sql : unknown_sql, p->st, p, NULL, rows, NULL, NULL, 0,
               NULL);
done:
    Py_XDECREF(rows);
    Py_DECREF(p);
    return r;
}

static int
abandon_all(Session *s)
{
    if (PyList_GET_SIZE(s->suspended) == 0)
        return 0;
    PyObject *all = PyList_GetSlice(s->suspended, 0, PyList_GET_SIZE(s->suspended));
    if (all == NULL)
        return -1;
    int r = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(all) && r == 0; i++)
        r = abandon(s, (Portal *)PyList_GET_ITEM(all, i));
    Py_DECREF(all);
    return r;
}

static int
command_complete_py(const Body *body, PyObject **tag, PyObject **rows)
{
    PyObject *bytes = body_bytes(body);
    PyObject *pair = bytes ? PyObject_CallOneArg(py_command_complete, bytes) : NULL;
    Py_XDECREF(bytes);
    if (pair == NULL)
        return -1;
    *tag = PyTuple_GET_ITEM(pair, 0);
    *rows = PyTuple_GET_ITEM(pair, 1);
    Py_INCREF(*tag);
    if (*rows == Py_None)
        *rows = NULL;
    else
        Py_INCREF(*rows);
    Py_DECREF(pair);
    return 0;
}

/* tag, rows of a CommandComplete body (new references; rows NULL when it has no count), as
 * wire.parse_command_complete gives them: "INSERT 0 5" → ("INSERT", "5"). ASCII bodies are read here;
 * others go to the Python, which decodes them with replacement characters. */
static int
command_complete(const Body *body, PyObject **tag, PyObject **rows)
{
    Py_ssize_t end = find0(body->b, body->n, 0);
    if (end < 0)
        end = body->n;
    const char *t = body->b;
    Py_ssize_t sp = -1;
    for (Py_ssize_t i = 0; i < end; i++) {
        if ((unsigned char)t[i] >= 0x80)
            return command_complete_py(body, tag, rows);
        if (t[i] == ' ')
            sp = i;
    }
    int counted = sp > 0 && sp + 1 < end;
    for (Py_ssize_t i = sp + 1; counted && i < end; i++)
        counted = t[i] >= '0' && t[i] <= '9';
    if (!counted) {
        *rows = NULL;
        *tag = PyUnicode_FromStringAndSize(t, end);
        return *tag ? 0 : -1;
    }
    Py_ssize_t head = sp >= 7 && memcmp(t, "INSERT ", 7) == 0 ? 6 : sp;
    *tag = PyUnicode_FromStringAndSize(t, head);
    *rows = *tag ? PyUnicode_FromStringAndSize(t + sp + 1, end - sp - 1) : NULL;
    if (*rows == NULL) {
        Py_CLEAR(*tag);
        return -1;
    }
    return 0;
}

/* -- fast answers for plain simple Queries ------------------------------------------------------------
 *
 * Most simple Queries are one ASCII statement, different every time for their literals, so neither the
 * split nor the redaction is ever remembered. For texts that plain, the two answers below are the ones
 * sqltext.split and the Redactor would give, found in C; anything less plain is asked of the Python.
 */

static inline int
split_space(char c)  /* sqltext._SPACE */
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static inline int
str_space(char c)  /* str.isspace, for ASCII: str.lstrip() strips these */
{
    return split_space(c) || (c >= 0x1c && c <= 0x1f);
}

/* sqltext.split of an ASCII text with no ';' but perhaps a final one, and not starting with a comment:
 * a new list, or NULL without an exception when the Python must split it. */
static PyObject *
split_plain(PyObject *sql)
{
    if (!PyUnicode_IS_ASCII(sql))
        return NULL;
    const char *t = (const char *)PyUnicode_1BYTE_DATA(sql);
    size_t a = 0, b = (size_t)PyUnicode_GET_LENGTH(sql);
    while (a < b && split_space(t[a]))
        a++;
    while (b > a && split_space(t[b - 1]))
        b--;
    const char *semi = memchr(t + a, ';', b - a);
    if (semi != NULL) {
        if (semi != t + b - 1)
            return NULL;  /* more than one statement, or a ';' in a literal: the tokenizer decides */
        b--;
        while (b > a && split_space(t[b - 1]))
            b--;
    }
    if (b - a >= 2 && (memcmp(t + a, "--", 2) == 0 || memcmp(t + a, "/*", 2) == 0))
        return NULL;  /* perhaps only a comment */
    if (a == b)
        return PyList_New(0);
    PyObject *body = PyUnicode_Substring(sql, (Py_ssize_t)a, (Py_ssize_t)b);
    if (body == NULL)
        return NULL;
    PyObject *parts = PyList_New(1);
    if (parts == NULL) {
        Py_DECREF(body);
        return NULL;
    }
    PyList_SET_ITEM(parts, 0, body);
    return parts;
}

static int
contains(const char *hay, Py_ssize_t n, const char *needle, Py_ssize_t m)
{
    return m == 0 || (m <= n && memmem(hay, (size_t)n, needle, (size_t)m) != NULL);
}

/* The Redactor's verdict "nothing to hide" for a text it would not remember, found as it finds it: an
 * ASCII text whose lowered form holds none of its prefilter words, does not start with EXECUTE and holds
 * no INSERT. 1: clean; 0: ask the Redactor; -1: an error. */
static int
plainly_clean(Session *s, PyObject *sql)
{
    if (s->plain_words == NULL || !PyUnicode_IS_ASCII(sql))
        return 0;
    const char *t = (const char *)PyUnicode_1BYTE_DATA(sql);
    Py_ssize_t n = PyUnicode_GET_LENGTH(sql);
    char small[1024];
    char *low = n <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)n);
    if (low == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        low[i] = (char)(t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 32 : t[i]);
    Py_ssize_t i = 0;
    while (i < n && str_space(low[i]))
        i++;
    int clean = !(n - i >= 7 && memcmp(low + i, "execute", 7) == 0) && !contains(low, n, "insert", 6);
    Py_ssize_t nwords = PyTuple_GET_SIZE(s->plain_words);
    for (Py_ssize_t w = 0; clean && w < nwords; w++) {
        Py_ssize_t m;
        const char *word = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(s->plain_words, w), &m);
        if (word == NULL) {
            clean = -1;
            break;
        }
        clean = !contains(low, n, word, m);
    }
    if (low != small)
        PyMem_Free(low);
    return clean;
}

static int
ensure_parts(Entry *e)
{
    if (e->parts == NULL && (e->parts = split_plain(e->sql)) == NULL && PyErr_Occurred())
        return -1;
    if (e->parts == NULL && (e->parts = PyObject_CallOneArg(py_split, e->sql)) == NULL)
        return -1;
    if (!PyList_Check(e->parts)) {
        PyErr_SetString(PyExc_TypeError, "sqltext.split must return a list");
        return -1;
    }
    return 0;
}

static int begin(Session *s);

static int
simple_done(Session *s, Entry *e, const Body *body, PyObject *err_code, PyObject *err_msg, long long now)
{
    Py_ssize_t i = e->next++;
    long long start = e->arrival > s->last_done ? e->arrival : s->last_done;
    s->last_done = now;
    PyObject *tag = NULL, *rows = NULL, *sql = NULL, *part = NULL;
    int r = -1;
    if (body != NULL && command_complete(body, &tag, &rows) < 0)
        return -1;
    if (!s->in_txn && begin(s) < 0)
        goto done;
    int control = tag != NULL ? PySet_Contains(control_tags, tag) : 0;
    if (control < 0)
        goto done;
    if (s->sampled || control) {  /* else the text is not needed */
        if (ensure_parts(e) < 0)
            goto done;
        Py_ssize_t n = PyList_GET_SIZE(e->parts);
        /* more answers than statements found: keep the whole text rather than guess */
        sql = i < n ? PyList_GET_ITEM(e->parts, i) : e->sql;
        Py_INCREF(sql);
        part = n > 1 ? PyUnicode_FromFormat("%zd/%zd", i + 1, n) : (Py_INCREF(s_empty), s_empty);
        if (part == NULL)
            goto done;
    } else {
        sql = s_empty;
        Py_INCREF(sql);
    }
    r = finish(s, start, now, 0, sql, NULL, NULL, tag, rows, err_code, err_msg, e->seq, part);
done:
    Py_XDECREF(tag);
    Py_XDECREF(rows);
    Py_XDECREF(sql);
    Py_XDECREF(part);
    return r;
}

/* An Execute answered (e was popped by the caller, who still owns it). */
static int
exec_done(Session *s, Entry *e, const Body *body, PyObject *err_code, PyObject *err_msg, long long now)
{
    long long start = e->arrival > s->last_done ? e->arrival : s->last_done;
    s->last_done = now;
    Portal *p = e->portal;
    PyObject *tag = NULL, *rows = NULL;
    int r = -1;
    if (body != NULL && command_complete(body, &tag, &rows) < 0)
        return -1;
    if (p == NULL) {
        r = finish(s, start, now, 1, unknown_sql, NULL, NULL, tag, rows, err_code, err_msg, e->seq, NULL);
        goto done;
    }
    if (p->start) {  /* the last Execute of a portal fetched in several */
        start = p->start;
        if (body != NULL) {  /* rows fetched before, plus this Execute's */
            long long total = p->rows;
            if (rows != NULL && PyUnicode_GET_LENGTH(rows)) {
                PyObject *more = PyLong_FromUnicodeObject(rows, 10);
                if (more == NULL)
                    goto done;
                total += PyLong_AsLongLong(more);
                Py_DECREF(more);
                if (PyErr_Occurred())
                    goto done;
            }
            Py_XSETREF(rows, str_ll(total));
            if (rows == NULL)
                goto done;
        }
        p->start = p->rows = 0;
        if (suspended_remove(s, p) < 0)
            goto done;
    }
    Statement *st = p->st;
    r = finish(s, start, now, 1, st ? st->sql : unknown_sql, st, p, tag, rows, err_code, err_msg, e->seq, NULL);
done:
    Py_XDECREF(tag);
    Py_XDECREF(rows);
    return r;
}

static int
parse_failed(Session *s, Entry *e, PyObject *err_code, PyObject *err_msg, long long now)
{
    long long start = e->arrival > s->last_done ? e->arrival : s->last_done;
    s->last_done = now;
    Statement *st = e->st;
    PyObject *cur = PyDict_GetItemWithError(s->stmts, e->name);
    if (cur == NULL && PyErr_Occurred())
        return -1;
    if (cur == (PyObject *)st) {  /* the server kept the previous statement of that name, if any */
        int r = e->prev != NULL && PyBytes_GET_SIZE(e->name)
                    ? PyDict_SetItem(s->stmts, e->name, (PyObject *)e->prev)
                    : PyDict_DelItem(s->stmts, e->name);
        if (r < 0)
            return -1;
    }
    return finish(s, start, now, 1, st->sql, st, NULL, NULL, NULL, err_code, err_msg, st->seq, NULL);
}

/* -- transactions ------------------------------------------------------------------------------------ */

static int
begin(Session *s)
{
    s->in_txn = 1;
    s->txid++;
    Py_XSETREF(s->txid_s, str_ll(s->txid));
    if (s->txid_s == NULL)
        return -1;
    double rate = s->rate;
    if (rate >= 1.0) {
        s->sampled = 1;
    } else if (rate > 0.0) {
        PyObject *x = PyObject_CallNoArgs(py_random);
        if (x == NULL)
            return -1;
        double v = PyFloat_AsDouble(x);
        Py_DECREF(x);
        if (v == -1.0 && PyErr_Occurred())
            return -1;
        s->sampled = v < rate;
    } else {
        s->sampled = 0;
    }
    s->txn_err = s->explicit = s->ext = 0;
    s->open = 0;
    if (PyList_GET_SIZE(s->savepoints) && PyList_SetSlice(s->savepoints, 0, PY_SSIZE_T_MAX, NULL) < 0)
        return -1;
    if (PyList_GET_SIZE(s->undone) && PyList_SetSlice(s->undone, 0, PY_SSIZE_T_MAX, NULL) < 0)
        return -1;
    return 0;
}

static int
emit(Session *s, PyObject *ev)
{
    PyObject *r = PyObject_CallOneArg(s->emit, ev);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Too many statements held: send them now with txn=open; a txn_end marker follows. */
static int
spill(Session *s)
{
    PyObject *held = s->held;
    Py_ssize_t n = PyList_GET_SIZE(held);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *ev = PyList_GET_ITEM(held, i);
        int has = PyDict_Contains(ev, k_txn);
        if (has < 0 || (!has && PyDict_SetItem(ev, k_txn, s_open) < 0)
            || set_steal(ev, k_n, str_ll(i + 1)) < 0 || emit(s, ev) < 0)
            return -1;
    }
    s->open = n;
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL)
        return -1;
    Py_SETREF(s->held, fresh);
    return 0;
}

static int
end_txn(Session *s, PyObject *outcome, long long now)
{
    if (s->sampled) {
        if (s->open) {
            PyObject *marker = PyDict_Copy(s->base);
            if (marker == NULL)
                return -1;
            int r = PyDict_SetItem(marker, k_kind, s_kind_txn_end) < 0 || set_steal(marker, k_ts, str_ll(now)) < 0
                    || PyDict_SetItem(marker, k_txid, s->txid_s) < 0 || PyDict_SetItem(marker, k_txn, outcome) < 0
                    || set_steal(marker, k_stmts, str_ll(s->open)) < 0
                    || (PyList_GET_SIZE(s->undone)
                        && set_steal(marker, k_undone, PyUnicode_Join(s_comma, s->undone)) < 0)
                    || emit(s, marker) < 0;
            Py_DECREF(marker);
            if (r)
                return -1;
        } else {
            /* Emitting may not reenter this session, but keep the list alive and detached anyway. */
            PyObject *held = s->held;
            PyObject *fresh = PyList_New(0);
            if (fresh == NULL)
                return -1;
            s->held = fresh;
            Py_ssize_t n = PyList_GET_SIZE(held);
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *ev = PyList_GET_ITEM(held, i);
                int has = PyDict_Contains(ev, k_txn);
                if (has < 0 || (!has && PyDict_SetItem(ev, k_txn, outcome) < 0) || emit(s, ev) < 0) {
                    Py_DECREF(held);
                    return -1;
                }
            }
            Py_DECREF(held);
        }
    }
    s->in_txn = 0;
    return 0;
}

/* The last name of a short control statement (session._idents), new reference; NULL with no error
 * when it names none. */
static PyObject *
last_ident(PyObject *sql, PyObject **words_out)
{
    PyObject *words = PyObject_CallOneArg(py_idents, sql);
    if (words == NULL)
        return NULL;
    Py_ssize_t n = PyList_Check(words) ? PyList_GET_SIZE(words) : 0;
    PyObject *last = n ? PyList_GET_ITEM(words, n - 1) : NULL;
    Py_XINCREF(last);
    if (words_out)
        *words_out = words;
    else
        Py_DECREF(words);
    return last;
}

static int
rollback_to(Session *s, PyObject *name)
{
    PyObject *sp = s->savepoints;
    for (Py_ssize_t i = PyList_GET_SIZE(sp) - 1; i >= 0; i--) {
        PyObject *pair = PyList_GET_ITEM(sp, i);
        int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(pair, 0), name, Py_EQ);
        if (same < 0)
            return -1;
        if (!same)
            continue;
        long long mark = PyLong_AsLongLong(PyTuple_GET_ITEM(pair, 1));
        if (PyList_SetSlice(sp, i + 1, PY_SSIZE_T_MAX, NULL) < 0)
            return -1;
        /* Work after the savepoint is undone; see session.py's _rollback_to. */
        if (s->open) {
            if (mark + 1 < s->open) {
                PyObject *range = PyUnicode_FromFormat("%lld-%lld", mark + 1, s->open - 1);
                if (range == NULL || PyList_Append(s->undone, range) < 0) {
                    Py_XDECREF(range);
                    return -1;
                }
                Py_DECREF(range);
            }
        } else {
            Py_ssize_t n = PyList_GET_SIZE(s->held);
            for (Py_ssize_t j = mark < 0 ? 0 : mark; j < n - 1; j++) {
                PyObject *ev = PyList_GET_ITEM(s->held, j);
                PyObject *tag = PyDict_GetItemWithError(ev, k_tag);
                if (tag == NULL && PyErr_Occurred())
                    return -1;
                int rb = tag != NULL && PyUnicode_Check(tag) && PyUnicode_Compare(tag, t_rollback) == 0;
                if (!rb && PyDict_SetItem(ev, k_txn, s_rolled_back) < 0)
                    return -1;
            }
        }
        break;
    }
    s->txn_err = 0;  /* the transaction is usable again */
    return 0;
}

static int
eq(PyObject *a, PyObject *b)
{
    return PyUnicode_Compare(a, b) == 0;
}

/* DISCARD ALL, DEALLOCATE ALL: statements parsed before this one are gone (DISCARD ALL: portals too). */
static int
forget_statements(Session *s, PyObject *tag, long long seq)
{
    PyObject *keep = PyDict_New();
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    if (keep == NULL)
        return -1;
    while (PyDict_Next(s->stmts, &pos, &key, &value))
        if (((Statement *)value)->seq > seq && PyDict_SetItem(keep, key, value) < 0) {
            Py_DECREF(keep);
            return -1;
        }
    Py_SETREF(s->stmts, keep);
    if (eq(tag, t_discard_all))
        PyDict_Clear(s->portals);
    return 0;
}

/* Transaction control and statement-lifetime commands seen through their command tags. */
static int
control(Session *s, PyObject *tag, PyObject *sql, long long seq, long long now)
{
    if (eq(tag, t_commit))
        return end_txn(s, s_committed, now);
    if (eq(tag, t_prepare_txn))
        return end_txn(s, s_prepared, now);
    if (eq(tag, t_begin) || eq(tag, t_start_txn)) {
        s->explicit = 1;
        return 0;
    }
    if (!(eq(tag, t_rollback) || eq(tag, t_savepoint) || eq(tag, t_release) || eq(tag, t_deallocate)))
        return forget_statements(s, tag, seq);  /* DISCARD ALL, DEALLOCATE ALL */
    /* The others act on a name the statement gives. */
    PyObject *words = NULL;
    PyObject *last = last_ident(sql, &words);
    if (last == NULL && PyErr_Occurred())
        return -1;
    int r = 0;
    if (eq(tag, t_rollback)) {
        int to = PySequence_Contains(words, s_to);
        if (to < 0)
            r = -1;
        else if (to)  /* ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name */
            r = rollback_to(s, last);
        else
            r = end_txn(s, s_rolled_back, now);
    } else if (eq(tag, t_savepoint)) {
        if (last != NULL) {
            PyObject *pair = Py_BuildValue("(OL)", last, s->open + (long long)PyList_GET_SIZE(s->held));
            r = pair == NULL || PyList_Append(s->savepoints, pair) < 0 ? -1 : 0;
            Py_XDECREF(pair);
        }
    } else if (eq(tag, t_release)) {
        if (last != NULL) {
            PyObject *sp = s->savepoints;
            for (Py_ssize_t i = PyList_GET_SIZE(sp) - 1; i >= 0; i--) {
                int same = PyObject_RichCompareBool(PyTuple_GET_ITEM(PyList_GET_ITEM(sp, i), 0), last, Py_EQ);
                if (same < 0 || (same && PyList_SetSlice(sp, i, PY_SSIZE_T_MAX, NULL) < 0)) {
                    r = -1;
                    break;
                }
                if (same)
                    break;
            }
        }
    } else if (eq(tag, t_deallocate)) {
        if (last != NULL && !eq(last, s_deallocate) && !eq(last, s_prepare)) {
            PyObject *name = PyUnicode_AsUTF8String(last);
            PyObject *st = name ? PyDict_GetItemWithError(s->stmts, name) : NULL;
            if (name == NULL || (st == NULL && PyErr_Occurred()))
                r = -1;
            else if (st != NULL && ((Statement *)st)->seq <= seq)
                r = PyDict_DelItem(s->stmts, name);
            Py_XDECREF(name);
        }
    }
    Py_XDECREF(words);
    Py_XDECREF(last);
    return r;
}

/* The redacted (text, hidden) of a statement text, cut to max_sql_chars (session.py's _redact). */
static PyObject *
redact(Session *s, PyObject *sql, int remember)
{
    int clean = remember ? 0 : plainly_clean(s, sql);
    if (clean < 0)
        return NULL;
    PyObject *red = clean ? PyTuple_Pack(2, sql, Py_None)
                          : PyObject_CallFunctionObjArgs(s->redactor, sql, remember ? Py_True : Py_False, s->orders,
                                                         NULL);
    if (red == NULL)
        return NULL;
    if (!PyTuple_Check(red) || PyTuple_GET_SIZE(red) != 2 || !PyUnicode_Check(PyTuple_GET_ITEM(red, 0))) {
        Py_DECREF(red);
        PyErr_SetString(PyExc_TypeError, "the redactor must return (text, hidden)");
        return NULL;
    }
    PyObject *text = PyTuple_GET_ITEM(red, 0);
    if (PyUnicode_GET_LENGTH(text) > s->max_sql) {
        /* long lists shortened first: the shape stays one */
        PyObject *cut = PyObject_CallFunction(py_fit, "OL", text, s->max_sql);
        PyObject *pair = cut ? PyTuple_Pack(2, cut, PyTuple_GET_ITEM(red, 1)) : NULL;
        PyObject *again = pair ? PyObject_CallOneArg((PyObject *)Py_TYPE(red), pair) : NULL;
        Py_XDECREF(cut);
        Py_XDECREF(pair);
        Py_SETREF(red, again);
    }
    return red;
}

/* "[23,25]": the statement's parameter types as events carry them. */
static PyObject *
ptypes_text(PyObject *oids)
{
    Py_ssize_t n = PyList_GET_SIZE(oids);
    PyObject *parts = PyList_New(n);
    for (Py_ssize_t i = 0; parts && i < n; i++) {
        PyObject *t = PyObject_Str(PyList_GET_ITEM(oids, i));
        if (t == NULL)
            Py_CLEAR(parts);
        else
            PyList_SET_ITEM(parts, i, t);
    }
    PyObject *joined = parts ? PyUnicode_Join(s_comma, parts) : NULL;
    Py_XDECREF(parts);
    PyObject *r = joined ? PyUnicode_FromFormat("[%U]", joined) : NULL;
    Py_XDECREF(joined);
    return r;
}

/* A prepared statement's redaction: worked out once and kept, unless it came from learned column orders
 * (a Provisional one may change). New reference. */
static PyObject *
statement_redaction(Session *s, Statement *st)
{
    if (st->red != NULL) {
        Py_INCREF(st->red);
        return st->red;
    }
    PyObject *red = redact(s, st->sql, 1);
    if (red == NULL)
        return NULL;
    int provisional = PyObject_IsInstance(red, py_provisional);
    if (provisional < 0) {
        Py_DECREF(red);
        return NULL;
    }
    if (!provisional) {
        Py_INCREF(red);
        st->red = red;
    }
    return red;
}

/* "[23,25]", or "" when the statement has no parameter types; worked out once. Borrowed. */
static PyObject *
statement_ptypes(Statement *st)
{
    if (st->ptypes == NULL) {
        if (PyList_GET_SIZE(st->oids) == 0) {
            Py_INCREF(s_empty);
            st->ptypes = s_empty;
        } else {
            st->ptypes = ptypes_text(st->oids);
        }
    }
    return st->ptypes;
}

/* The error message as the event carries it. PostgreSQL quotes input values in messages: when redaction
 * hid anything, a hidden value must not come back through errmsg. New reference. */
static PyObject *
error_message(PyObject *msg, PyObject *text, PyObject *sql, PyObject *hidden)
{
    int scrub = PyObject_IsTrue(hidden);
    if (scrub < 0)
        return NULL;
    if (scrub || PyUnicode_Compare(text, sql) != 0)
        return PyObject_CallFunctionObjArgs(py_scrub, msg, text, NULL);
    Py_INCREF(msg);
    return msg;
}

/* The event of a statement that ended (session.py's _finish builds the same), a new dict. */
static PyObject *
statement_event(Session *s, long long start, long long end, int extended, PyObject *sql, Statement *st,
                Portal *portal, PyObject *tag, PyObject *rows, PyObject *err_code, PyObject *err_msg,
                PyObject *part)
{
    PyObject *ev = PyDict_Copy(s->base);
    if (ev == NULL)
        return NULL;
    PyObject *red = NULL;
    if (set_steal(ev, k_ts, str_ll(start)) < 0 || set_steal(ev, k_dur, str_ll(end - start)) < 0
        || PyDict_SetItem(ev, k_proto, extended ? s_extended : s_simple) < 0)
        goto fail;
    red = st != NULL ? statement_redaction(s, st) : redact(s, sql, 0);
    if (red == NULL || (st != NULL && PyUnicode_GET_LENGTH(st->name) && PyDict_SetItem(ev, k_stmt, st->name) < 0))
        goto fail;
    PyObject *text = PyTuple_GET_ITEM(red, 0), *hidden = PyTuple_GET_ITEM(red, 1);
    if (PyDict_SetItem(ev, k_sql, text) < 0
        || (part != NULL && PyUnicode_GET_LENGTH(part) && PyDict_SetItem(ev, k_part, part) < 0))
        goto fail;
    if (portal != NULL && s->want_params) {
        PyObject *values = PyObject_CallFunction(py_bind_params, "OLnOOO", portal->body, portal->length,
                                                 portal->pos, st ? st->oids : empty_tuple, s->max_param, hidden);
        int r = values == NULL
                || (!(PyUnicode_Check(values) && eq(values, s_empty_params))
                    && PyDict_SetItem(ev, k_params, values) < 0);
        Py_XDECREF(values);
        if (r)
            goto fail;
    }
    if (st != NULL) {
        PyObject *ptypes = statement_ptypes(st);
        if (ptypes == NULL || (PyUnicode_GET_LENGTH(ptypes) && PyDict_SetItem(ev, k_ptypes, ptypes) < 0))
            goto fail;
    }
    if (PyDict_SetItem(ev, k_txid, s->txid_s) < 0
        || (tag != NULL && PyUnicode_GET_LENGTH(tag) && PyDict_SetItem(ev, k_tag, tag) < 0)
        || (rows != NULL && PyDict_SetItem(ev, k_rows, rows) < 0))
        goto fail;
    if (err_code != NULL && (PyDict_SetItem(ev, k_err, err_code) < 0
                             || set_steal(ev, k_errmsg, error_message(err_msg, text, sql, hidden)) < 0))
        goto fail;
    Py_DECREF(red);
    return ev;
fail:
    Py_XDECREF(red);
    Py_DECREF(ev);
    return NULL;
}

/* A statement ended: its event joins its transaction; control statements act on state. */
static int
finish(Session *s, long long start, long long end, int extended, PyObject *sql, Statement *st, Portal *portal,
       PyObject *tag, PyObject *rows, PyObject *err_code, PyObject *err_msg, long long seq, PyObject *part)
{
    if (!s->in_txn && begin(s) < 0)
        return -1;
    if (tag != NULL && PyList_GET_SIZE(s->suspended)
        && (eq(tag, t_commit) || eq(tag, t_rollback) || eq(tag, t_prepare_txn))) {
        /* Ending the transaction destroys its portals: runs left at PortalSuspended end first. */
        if (abandon_all(s) < 0)
            return -1;
    }
    if (s->sampled) {
        PyObject *ev = statement_event(s, start, end, extended, sql, st, portal, tag, rows, err_code, err_msg,
                                       part);
        if (ev == NULL)
            return -1;
        int r;
        if (s->open) {  /* the transaction already spilled: the rest goes out as it ends */
            s->open++;
            r = PyDict_SetItem(ev, k_txn, s_open) < 0 || set_steal(ev, k_n, str_ll(s->open)) < 0 || emit(s, ev) < 0;
        } else {
            r = PyList_Append(s->held, ev) < 0 || (PyList_GET_SIZE(s->held) > s->max_held && spill(s) < 0);
        }
        Py_DECREF(ev);
        if (r)
            return -1;
    }
    if (err_code != NULL)
        s->txn_err = 1;
    if (extended)
        s->ext = 1;
    if (tag != NULL && PyDict_GET_SIZE(s->orders)) {
        PyObject *hit = PyObject_CallMethodOneArg(tag, s_startswith, forget_tags);
        if (hit == NULL)
            return -1;
        if (hit == Py_True)  /* DDL, a search_path or a rollback may change what a table's columns are */
            PyDict_Clear(s->orders);
        Py_DECREF(hit);
    }
    if (tag != NULL) {
        int c = PySet_Contains(control_tags, tag);
        if (c < 0 || (c && control(s, tag, sql, seq, end) < 0))
            return -1;
    }
    return 0;
}

/* -- client → server -------------------------------------------------------------------------------- */

/* A Sync or FunctionCall: ReadyForQuery answers it, so one more request is outstanding. */
static int
push_awaiting_ready(Session *s, int kind)
{
    if (fifo_push(&s->queue, kind) == NULL)
        return -1;
    s->outstanding++;
    return 0;
}

static int
on_parse(Session *s, const char *b, Py_ssize_t n, long long length, long long now)
{
    Py_ssize_t i = find0(b, n, 0);
    if (i < 0)
        return 0;
    Py_ssize_t j = find0(b, n, i + 1);
    PyObject *sql, *oids = PyList_New(0);
    if (oids == NULL)
        return -1;
    if (j < 0)  /* cut by the decoder's keep limit: SQL text longer than that */
        sql = truncated_text(b + i + 1, n - i - 1, length - n);
    else {
        sql = PyUnicode_DecodeUTF8(b + i + 1, j - i - 1, "replace");
        if (j + 3 <= n) {
            int count = be16((const unsigned char *)b + j + 1);
            if (count > 0 && j + 3 + 4 * (Py_ssize_t)count <= n) {
                PyObject *list = PyList_New(count);
                if (list == NULL) {
                    Py_DECREF(oids);
                    Py_XDECREF(sql);
                    return -1;
                }
                for (int k = 0; k < count; k++)
                    PyList_SET_ITEM(list, k, PyLong_FromUnsignedLong(
                        (uint32_t)be32((const unsigned char *)b + j + 3 + 4 * k)));
                Py_SETREF(oids, list);
            }
        }
    }
    if (sql == NULL) {
        Py_DECREF(oids);
        return -1;
    }
    Statement *st = PyObject_New(Statement, &StatementType);
    PyObject *name = PyBytes_FromStringAndSize(b, i);
    if (st == NULL || name == NULL) {
        Py_XDECREF(st);
        Py_XDECREF(name);
        Py_DECREF(sql);
        Py_DECREF(oids);
        return -1;
    }
    st->sql = sql;
    st->oids = oids;
    st->ptypes = st->red = NULL;
    st->seq = ++s->seq;
    st->name = i ? PyUnicode_DecodeUTF8(b, i, "replace") : (Py_INCREF(s_empty), s_empty);
    if (st->name == NULL) {
        Py_DECREF(st);
        Py_DECREF(name);
        return -1;
    }
    PyObject *prev = PyDict_GetItemWithError(s->stmts, name);
    if (prev == NULL && PyErr_Occurred()) {
        Py_DECREF(st);
        Py_DECREF(name);
        return -1;
    }
    Py_XINCREF(prev);
    if (PyDict_SetItem(s->stmts, name, (PyObject *)st) < 0) {
        Py_XDECREF(prev);
        Py_DECREF(st);
        Py_DECREF(name);
        return -1;
    }
    Entry *e = fifo_push(&s->queue, K_PARSE);
    if (e == NULL) {
        Py_XDECREF(prev);
        Py_DECREF(st);
        Py_DECREF(name);
        return -1;
    }
    e->arrival = now;
    e->st = st;
    e->name = name;
    e->prev = (Statement *)prev;
    return 0;
}

static int
on_bind(Session *s, const Body *body, long long length)
{
    const char *b = body->b;
    Py_ssize_t n = body->n;
    Py_ssize_t i = find0(b, n, 0);
    Py_ssize_t j = find0(b, n, i + 1);
    if (i < 0 || j < 0)
        return 0;
    PyObject *name = PyBytes_FromStringAndSize(b, i);
    if (name == NULL)
        return -1;
    PyObject *old = PyDict_GetItemWithError(s->portals, name);
    if (old == NULL && PyErr_Occurred())
        goto fail;
    if (old != NULL && ((Portal *)old)->start && abandon(s, (Portal *)old) < 0)
        goto fail;
    PyObject *st = lookup(s->stmts, b + i + 1, j - i - 1);
    if (st == NULL && PyErr_Occurred())
        goto fail;
    Portal *p = PyObject_New(Portal, &PortalType);
    if (p == NULL)
        goto fail;
    p->body = body_bytes(body);
    if (p->body == NULL) {
        p->st = NULL;
        Py_DECREF(p);
        goto fail;
    }
    Py_XINCREF(st);
    p->st = (Statement *)st;
    p->length = length;
    p->pos = j + 1;
    p->start = p->rows = p->last = 0;
    int r = PyDict_SetItem(s->portals, name, (PyObject *)p);
    Py_DECREF(p);
    Py_DECREF(name);
    return r;
fail:
    Py_DECREF(name);
    return -1;
}

static int
on_close(Session *s, const char *b, Py_ssize_t n)
{
    Py_ssize_t end = find0(b, n, 1);
    PyObject *name = slice(b, n, 1, end >= 0 ? end : n);
    if (name == NULL)
        return -1;
    int r = 0;
    if (n >= 1 && b[0] == 'S') {
        PyObject *gone = PyDict_GetItemWithError(s->stmts, name);
        if (gone != NULL)
            r = PyDict_DelItem(s->stmts, name);
        else if (PyErr_Occurred())
            r = -1;
    } else {
        PyObject *old = PyDict_GetItemWithError(s->portals, name);
        if (old != NULL) {
            Py_INCREF(old);
            r = PyDict_DelItem(s->portals, name);
            if (r == 0 && ((Portal *)old)->start)
                r = abandon(s, (Portal *)old);
            Py_DECREF(old);
        } else if (PyErr_Occurred()) {
            r = -1;
        }
    }
    Py_DECREF(name);
    return r;
}

/* Unpack one (type, body, length) message; body as a borrowed bytes object. */
static int
message(PyObject *m, int *typ, PyObject **body, long long *length)
{
    if (!PyTuple_Check(m) || PyTuple_GET_SIZE(m) < 3) {
        PyErr_SetString(PyExc_TypeError, "messages must be (type, body, length) tuples");
        return -1;
    }
    *typ = (int)PyLong_AsLong(PyTuple_GET_ITEM(m, 0));
    *length = PyLong_AsLongLong(PyTuple_GET_ITEM(m, 2));
    *body = PyTuple_GET_ITEM(m, 1);
    if (PyErr_Occurred())
        return -1;
    if (!PyBytes_Check(*body)) {
        PyErr_SetString(PyExc_TypeError, "message bodies must be bytes");
        return -1;
    }
    return 0;
}

typedef int (*Handler)(Session *s, int typ, const Body *body, long long length, long long now);

/* Messages as wire.py gives them, (type, body, length) tuples, each to the handler of its side. */
static PyObject *
feed_tuples(Session *s, PyObject *messages, PyObject *now_us, Handler handle)
{
    long long now = PyLong_AsLongLong(now_us);
    if (now == -1 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(messages, "messages must be a sequence");
    if (seq == NULL)
        return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t m = 0; m < count; m++) {
        int typ;
        PyObject *obj;
        long long length;
        if (message(items[m], &typ, &obj, &length) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
        Body body = {PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj), obj};
        if (handle(s, typ, &body, length, now) < 0) {
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

/* One message the client sent (session.py's from_client, for one message). */
static int
client_message(Session *s, int typ, const Body *body, long long length, long long now)
{
    const char *b = body->b;
    Py_ssize_t n = body->n;
    Fifo *q = &s->queue;
    if (s->skip) {
        if (typ == M_SYNC) {  /* Sync ends the skipping */
            s->skip = 0;
            if (push_awaiting_ready(s, K_SYNC) < 0)
                return -1;
        }
        return 0;
    }
    switch (typ) {
    case M_BIND:
        if (on_bind(s, body, length) < 0)
            return -1;
        break;
    case M_EXECUTE: {
        Py_ssize_t i = find0(b, n, 0);
        long long limit = 0 <= i && i <= n - 5 ? be32((const unsigned char *)b + i + 1) : 0;
        /* body[:i] as session.py slices it, also when there is no NUL (i == -1) */
        PyObject *p = i < 0 ? lookup(s->portals, b, n ? n - 1 : 0) : lookup(s->portals, b, i);
        if (p == NULL && PyErr_Occurred())
            return -1;
        Entry *e = fifo_push(q, K_EXEC);
        if (e == NULL)
            return -1;
        e->arrival = now;
        Py_XINCREF(p);
        e->portal = (Portal *)p;
        e->limit = limit;
        e->seq = s->seq;
        break;
    }
    case M_SYNC:
        if (!s->copy_wait && push_awaiting_ready(s, K_SYNC) < 0)
            return -1;
        break;
    case M_PARSE:
        if (on_parse(s, b, n, length, now) < 0)
            return -1;
        break;
    case M_QUERY: {
        Py_ssize_t end = find0(b, n, 0);
        PyObject *sql;
        if (end >= 0) {
            sql = PyUnicode_DecodeUTF8(b, end, "replace");
        } else {  /* cut by the decoder's keep limit */
            sql = truncated_text(b, n, length - n);
        }
        if (sql == NULL)
            return -1;
        Entry *e = fifo_push(q, K_QUERY);
        if (e == NULL) {
            Py_DECREF(sql);
            return -1;
        }
        e->arrival = now;
        e->sql = sql;
        e->seq = s->seq;
        s->outstanding++;
        break;
    }
    case M_DESCRIBE:  /* only a statement's answer (ParameterDescription) matters */
        if (n >= 1 && b[0] == 'S') {
            Py_ssize_t end = find0(b, n, 1);
            PyObject *st = lookup(s->stmts, b + 1, (end >= 0 ? end : n) - 1);
            if (st == NULL && PyErr_Occurred())
                return -1;
            Entry *e = fifo_push(q, K_DESC);
            if (e == NULL)
                return -1;
            Py_XINCREF(st);
            e->st = (Statement *)st;
        }
        break;
    case M_CLOSE:
        if (on_close(s, b, n) < 0)
            return -1;
        break;
    case M_FUNCTION_CALL:  /* answered by ReadyForQuery like a Query */
        if (push_awaiting_ready(s, K_FUNC) < 0)
            return -1;
        break;
    case M_COPY_DONE:
    case M_COPY_FAIL:
        if (s->copy_wait)
            s->copy_wait = 0;
        else if (fifo_push(q, K_COPYEND) == NULL)  /* the backend's CopyInResponse has not arrived yet */
            return -1;
        break;
    default:
        break;
    }
    return 0;
}

static PyObject *
session_from_client(Session *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "from_client(messages, now_us)");
        return NULL;
    }
    return feed_tuples(s, args[0], args[1], client_message);
}

/* -- server → client -------------------------------------------------------------------------------- */

/* The FIFO head is not what an answer expects: drop stale entries (see session.py's _realign).
 * Returns the new head, or NULL. */
static Entry *
realign(Session *s, int want)
{
    Fifo *q = &s->queue;
    while (q->len) {
        Entry *e = fifo_at(q, 0);
        if (e->kind == want || (want == K_EXEC && e->kind == K_QUERY))
            return e;
        if (e->kind <= K_FUNC)
            return NULL;
        fifo_drop_head(q);
    }
    return NULL;
}

static Entry *
head(Session *s)
{
    return s->queue.len ? fifo_at(&s->queue, 0) : NULL;
}

static int
pop_exec_done(Session *s, const Body *body, PyObject *code, PyObject *msg, long long now)
{
    Entry e = fifo_pop(&s->queue);
    int r = exec_done(s, &e, body, code, msg, now);
    entry_clear(&e);
    return r;
}

static int
on_command_complete(Session *s, const Body *body, long long now)
{
    Entry *e = head(s);
    if (e == NULL)
        return 0;
    if (e->kind == K_EXEC)
        return pop_exec_done(s, body, NULL, NULL, now);
    if (e->kind == K_QUERY)
        return e->failed ? 0 : simple_done(s, e, body, NULL, NULL, now);
    e = realign(s, K_EXEC);
    if (e == NULL)
        return 0;
    if (e->kind == K_EXEC)
        return pop_exec_done(s, body, NULL, NULL, now);
    return e->failed ? 0 : simple_done(s, e, body, NULL, NULL, now);
}

static int
on_ready(Session *s, const char *b, Py_ssize_t n, long long now)
{
    Fifo *q = &s->queue;
    while (q->len) {
        int kind = fifo_at(q, 0)->kind;
        fifo_drop_head(q);
        if (kind <= K_FUNC)
            break;
    }
    s->outstanding = s->outstanding > 0 ? s->outstanding - 1 : 0;
    if (!q->len)
        s->outstanding = 0;
    int status = n ? (unsigned char)b[0] : TXN_IDLE;
    s->status = status;
    s->last_done = now;
    if (status == TXN_IDLE) {
        if (abandon_all(s) < 0)
            return -1;
        if (s->in_txn)
            return end_txn(s, s->txn_err ? s_rolled_back : (s->explicit ? s_committed : s_autocommit), now);
    }
    return 0;
}

/* A RowDescription may teach the redactor a table's column order (see Redactor.learn). */
static int
row_description(Session *s, const Body *message)
{
    Statement *st = s->described;
    PyObject *sql = NULL;
    if (st != NULL) {  /* after ParameterDescription: this answers that Describe, or follows its NoData */
        s->described = NULL;
        sql = st->sql;
        Py_INCREF(sql);
        Py_DECREF(st);
    } else {
        Entry *e = head(s);
        if (e == NULL)
            return 0;
        if (e->kind == K_EXEC) {  /* Describe of the portal about to run */
            if (e->portal != NULL && e->portal->st != NULL) {
                sql = e->portal->st->sql;
                Py_INCREF(sql);
            }
        } else if (e->kind == K_QUERY && !e->next) {  /* the first statement of a simple Query */
            sql = e->sql;
            Py_INCREF(sql);
        }
    }
    if (sql == NULL)
        return 0;
    PyObject *body = body_bytes(message);
    PyObject *r = body ? PyObject_CallMethodObjArgs(s->redactor, s_learn, s->orders, sql, body, NULL) : NULL;
    Py_XDECREF(body);
    Py_DECREF(sql);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int
on_suspend(Session *s, long long now)
{
    Entry *h = head(s);
    Entry *e = h != NULL && h->kind == K_EXEC ? h : realign(s, K_EXEC);
    if (e == NULL || e->kind != K_EXEC)
        return 0;
    Entry x = fifo_pop(&s->queue);
    long long start = x.arrival > s->last_done ? x.arrival : s->last_done;
    s->last_done = now;
    Portal *p = x.portal;
    int r = 0;
    if (p != NULL) {
        if (!p->start) {
            p->start = start;
            r = PyList_Append(s->suspended, (PyObject *)p);
        }
        p->rows += x.limit;
        p->last = now;
    }
    entry_clear(&x);
    return r;
}

/* CopyInResponse: Syncs sent before the client's CopyDone/CopyFail are ignored by the server. */
static void
copy_in(Session *s)
{
    Fifo *q = &s->queue;
    Py_ssize_t i = 1;
    while (i < q->len) {
        int kind = fifo_at(q, i)->kind;
        if (kind == K_COPYEND) {
            fifo_delete(q, i);
            return;
        }
        if (kind == K_SYNC) {
            fifo_delete(q, i);
            s->outstanding--;
            continue;
        }
        i++;
    }
    s->copy_wait = 1;
}

static PyObject *
field(PyObject *fields, PyObject *code)
{
    PyObject *v = PyDict_GetItemWithError(fields, code);
    if (v == NULL && PyErr_Occurred())
        return NULL;
    v = v ? v : s_empty;
    Py_INCREF(v);
    return v;
}

static int
on_error_fields(Session *s, PyObject *code, PyObject *msg, long long now)
{
    Fifo *q = &s->queue;
    s->copy_wait = 0;
    while (q->len && fifo_at(q, 0)->kind == K_COPYEND)
        fifo_drop_head(q);
    if (!q->len) {
        s->txn_err = s->txn_err || s->in_txn;
        return 0;
    }
    Entry *e = fifo_at(q, 0);
    int r = 0;
    switch (e->kind) {
    case K_QUERY:  /* the simple Query stops here; ReadyForQuery follows */
        if (!e->failed) {
            e->failed = 1;
            if (ensure_parts(e) < 0)
                return -1;
            Py_ssize_t n = PyList_GET_SIZE(e->parts);
            if (e->next < (n > 1 ? n : 1))
                return simple_done(s, e, NULL, code, msg, now);
            if (s->in_txn)  /* after its last statement (e.g. FATAL): no statement to blame */
                s->txn_err = 1;
        }
        return 0;
    case K_EXEC:
        r = pop_exec_done(s, NULL, code, msg, now);
        break;
    case K_PARSE: {
        Entry x = fifo_pop(q);
        r = parse_failed(s, &x, code, msg, now);
        entry_clear(&x);
        break;
    }
    case K_DESC:
        fifo_drop_head(q);
        break;
    case K_SYNC:  /* the implicit COMMIT at Sync failed, or a Bind/Describe/Close before it */
        if (s->in_txn)
            s->txn_err = 1;
        return 0;
    default:  /* login or FunctionCall */
        return 0;
    }
    if (r < 0)
        return -1;
    if (s->in_txn)
        s->txn_err = 1;
    /* The backend now skips every extended-protocol message up to the next Sync. */
    while (q->len && fifo_at(q, 0)->kind != K_SYNC) {
        int kind = fifo_at(q, 0)->kind;
        fifo_drop_head(q);
        if (kind <= K_FUNC)
            s->outstanding--;
    }
    if (!q->len)
        s->skip = 1;
    return 0;
}

static int
on_error(Session *s, const Body *message, long long now)
{
    PyObject *body = body_bytes(message);
    PyObject *fields = body ? PyObject_CallOneArg(py_fields, body) : NULL;
    Py_XDECREF(body);
    if (fields == NULL)
        return -1;
    PyObject *code = field(fields, s_C);
    PyObject *msg = code ? field(fields, s_M) : NULL;
    Py_DECREF(fields);
    int r = msg ? on_error_fields(s, code, msg, now) : -1;
    Py_XDECREF(code);
    Py_XDECREF(msg);
    return r;
}

static int
on_parameter_description(Session *s, const Body *message)
{
    Entry *h = head(s);
    Entry *e = h != NULL && h->kind == K_DESC ? h : realign(s, K_DESC);
    if (e == NULL || e->kind != K_DESC)
        return 0;
    Entry x = fifo_pop(&s->queue);
    Statement *st = x.st;  /* the entry's reference moves to described */
    x.st = NULL;
    entry_clear(&x);
    Py_XSETREF(s->described, st);
    if (st == NULL)
        return 0;
    PyObject *body = body_bytes(message);
    PyObject *oids = body ? PyObject_CallOneArg(py_param_desc, body) : NULL;
    Py_XDECREF(body);
    if (oids == NULL) {
        if (PyErr_ExceptionMatches(py_struct_error)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    if (!PyList_Check(oids)) {
        PyObject *list = PySequence_List(oids);
        Py_SETREF(oids, list);
        if (oids == NULL)
            return -1;
    }
    Py_SETREF(st->oids, oids);
    Py_CLEAR(st->ptypes);
    return 0;
}

static int
on_empty_query(Session *s, long long now)
{
    Entry *h = head(s);
    Entry *e = h != NULL && (h->kind == K_EXEC || h->kind == K_QUERY) ? h : realign(s, K_EXEC);
    int r = 0;
    if (e != NULL && e->kind == K_EXEC) {
        Entry x = fifo_pop(&s->queue);
        if (x.portal != NULL && x.portal->start)
            r = abandon(s, x.portal);
        entry_clear(&x);
    }
    s->last_done = now;
    return r;
}

static int
on_parameter_status(Session *s, const Body *message)
{
    PyObject *body = body_bytes(message);
    PyObject *pair = body ? PyObject_CallOneArg(py_param_status, body) : NULL;
    Py_XDECREF(body);
    if (pair == NULL)
        return -1;
    int r = 0;
    PyObject *name = PyTuple_GET_ITEM(pair, 0);
    if (PyBytes_Check(name) && PyBytes_GET_SIZE(name) == 16
        && memcmp(PyBytes_AS_STRING(name), "application_name", 16) == 0) {
        PyObject *value = PyTuple_GET_ITEM(pair, 1);
        PyObject *app = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), "replace");
        if (app == NULL)
            r = -1;
        else {
            Py_SETREF(s->app, app);
            r = rebase(s);
        }
    }
    Py_DECREF(pair);
    return r;
}

static int
on_backend_key(Session *s, const Body *message)
{
    if (message->n < 4)
        return 0;
    PyObject *body = body_bytes(message);
    PyObject *key = body ? PyObject_CallOneArg(py_backend_key, body) : NULL;
    Py_XDECREF(body);
    if (key == NULL)
        return -1;
    s->backend_pid = PyLong_AsLongLong(PyTuple_GET_ITEM(key, 0));
    Py_DECREF(key);
    if (PyErr_Occurred())
        return -1;
    return rebase(s);
}

/* One message the backend sent (session.py's from_server, for one message). */
static int
server_message(Session *s, int typ, const Body *body, long long length, long long now)
{
    (void)length;
    int r = 0;
    switch (typ) {
    case M_COMMAND_COMPLETE:
        r = on_command_complete(s, body, now);
        break;
    case M_READY:
        r = on_ready(s, body->b, body->n, now);
        break;
    case M_ROW_DESCRIPTION: {  /* as frequent as CommandComplete for queries */
        PyObject *learns = PyObject_GetAttr(s->redactor, s_learns);
        if (learns == NULL) {
            r = -1;
            break;
        }
        int yes = PyObject_IsTrue(learns);
        Py_DECREF(learns);
        if (yes < 0)
            r = -1;
        else if (yes)
            r = row_description(s, body);
        else  /* answered: must not be credited with a later one */
            Py_CLEAR(s->described);
        break;
    }
    case M_PARSE_COMPLETE: {
        Entry *h = head(s);
        if (h != NULL && h->kind == K_PARSE) {
            fifo_drop_head(&s->queue);
        } else {
            Entry *e = realign(s, K_PARSE);
            if (e != NULL && e->kind == K_PARSE)
                fifo_drop_head(&s->queue);
        }
        break;
    }
    case M_PORTAL_SUSPENDED:
        r = on_suspend(s, now);
        break;
    case M_ERROR:
        r = on_error(s, body, now);
        break;
    case M_PARAMETER_DESCRIPTION:
        r = on_parameter_description(s, body);
        break;
    case M_EMPTY_QUERY:  /* no event */
        r = on_empty_query(s, now);
        break;
    case M_PARAMETER_STATUS:
        r = on_parameter_status(s, body);
        break;
    case M_BACKEND_KEY:
        r = on_backend_key(s, body);
        break;
    case M_COPY_IN:
        copy_in(s);
        break;
    default:
        break;
    }
    return r;
}

static PyObject *
session_from_server(Session *s, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "from_server(messages, now_us)");
        return NULL;
    }
    return feed_tuples(s, args[0], args[1], server_message);
}

/* -- the end and the rest of the interface ---------------------------------------------------------- */

static PyObject *
session_close(Session *s, PyObject *arg)
{
    long long now = PyLong_AsLongLong(arg);
    if (now == -1 && PyErr_Occurred())
        return NULL;
    if (s->closed)
        Py_RETURN_NONE;
    s->closed = 1;
    if (abandon_all(s) < 0)
        return NULL;
    if (s->in_txn) {
        PyObject *outcome = s_rolled_back;
        if (s->status == TXN_IDLE && !(s->explicit || s->txn_err || s->ext)) {
            /* Simple Queries: a fully answered Query is committed even without its ReadyForQuery. */
            Entry *e = head(s);
            int done = e == NULL;
            if (e != NULL && e->kind == K_QUERY) {
                if (ensure_parts(e) < 0)
                    return NULL;
                done = e->next >= PyList_GET_SIZE(e->parts);
            }
            if (done)
                outcome = s_autocommit;
        }
        if (end_txn(s, outcome, now) < 0)
            return NULL;
    }
    fifo_clear(&s->queue);
    s->outstanding = 0;
    PyDict_Clear(s->stmts);
    PyDict_Clear(s->portals);
    Py_RETURN_NONE;
}

static PyObject *
session_resume(Session *s, PyObject *arg)
{
    long long pid = PyLong_AsLongLong(arg);
    if (pid == -1 && PyErr_Occurred())
        return NULL;
    fifo_clear(&s->queue);
    s->outstanding = 0;
    s->backend_pid = pid;
    if (rebase(s) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
session_idle(Session *s, void *closure)
{
    (void)closure;
    return PyBool_FromLong(s->outstanding <= 0 && s->status == TXN_IDLE);
}

static PyObject *
session_status(Session *s, void *closure)
{
    (void)closure;
    char c = (char)s->status;
    return PyUnicode_FromStringAndSize(&c, 1);
}

/* For tests: the FIFO's kinds, as one-element tuples like session.py's entries start. */
static PyObject *
session_queue(Session *s, void *closure)
{
    (void)closure;
    PyObject *list = PyList_New(s->queue.len);
    for (Py_ssize_t i = 0; list && i < s->queue.len; i++) {
        PyObject *t = Py_BuildValue("(i)", fifo_at(&s->queue, i)->kind);
        if (t == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, t);
    }
    return list;
}

static PyObject *
get_ref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}

static PyObject *session_stmts(Session *s, void *c) { (void)c; return get_ref(s->stmts); }
static PyObject *session_portals(Session *s, void *c) { (void)c; return get_ref(s->portals); }
static PyObject *session_held(Session *s, void *c) { (void)c; return get_ref(s->held); }
static PyObject *session_redactor(Session *s, void *c) { (void)c; return get_ref(s->redactor); }
static PyObject *session_orders(Session *s, void *c) { (void)c; return get_ref(s->orders); }
static PyObject *session_savepoints(Session *s, void *c) { (void)c; return get_ref(s->savepoints); }

static PyObject *
session_get_app(Session *s, void *c)
{
    (void)c;
    return get_ref(s->app);
}

static int
session_set_app(Session *s, PyObject *value, void *c)
{
    (void)c;
    if (value == NULL || !PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "app must be str");
        return -1;
    }
    Py_INCREF(value);
    Py_SETREF(s->app, value);
    return 0;
}

static PyGetSetDef session_getset[] = {
    {"idle", (getter)session_idle, NULL, "Nothing in flight and no transaction open: closing now loses no work.",
     NULL},
    {"status", (getter)session_status, NULL, "Transaction status of the last ReadyForQuery: 'I', 'T' or 'E'.",
     NULL},
    {"app", (getter)session_get_app, (setter)session_set_app, NULL, NULL},
    {"_queue", (getter)session_queue, NULL, NULL, NULL},
    {"_stmts", (getter)session_stmts, NULL, NULL, NULL},
    {"_portals", (getter)session_portals, NULL, NULL, NULL},
    {"_held", (getter)session_held, NULL, NULL, NULL},
    {"_redactor", (getter)session_redactor, NULL, NULL, NULL},
    {"_orders", (getter)session_orders, NULL, NULL, NULL},
    {"_savepoints", (getter)session_savepoints, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef session_members[] = {
    {"capture", T_OBJECT, offsetof(Session, capture), READONLY, NULL},
    {"sid", T_OBJECT, offsetof(Session, sid), READONLY, NULL},
    {"client", T_OBJECT, offsetof(Session, client), READONLY, NULL},
    {"user", T_OBJECT, offsetof(Session, user), READONLY, NULL},
    {"database", T_OBJECT, offsetof(Session, database), READONLY, NULL},
    {"startup_options", T_OBJECT, offsetof(Session, startup_options), READONLY, NULL},
    {"backend_pid", T_LONGLONG, offsetof(Session, backend_pid), READONLY, NULL},
    {"closed", T_BOOL, offsetof(Session, closed), READONLY, NULL},
    {"outstanding", T_LONGLONG, offsetof(Session, outstanding), 0, NULL},
    {NULL},
};

static PyMethodDef session_methods[] = {
    {"from_client", (PyCFunction)(void (*)(void))session_from_client, METH_FASTCALL,
     "Messages the client sent (already forwarded)."},
    {"from_server", (PyCFunction)(void (*)(void))session_from_server, METH_FASTCALL,
     "Messages the backend sent (already forwarded)."},
    {"close", (PyCFunction)session_close, METH_O, "The connection ended; nothing more will arrive."},
    {"resume", (PyCFunction)session_resume, METH_O, "Pick up a session past its login: nothing awaited, idle."},
    {NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fasterdata.proxy._session.Session",
    .tp_basicsize = sizeof(Session),
    .tp_dealloc = (destructor)session_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Protocol state of one client connection and the statement events it yields "
              "(proxy/session.py's Session, compiled).",
    .tp_methods = session_methods,
    .tp_members = session_members,
    .tp_getset = session_getset,
    .tp_init = (initproc)session_init,
    .tp_new = PyType_GenericNew,
};

/* -- the C interface (_session_api.h) -------------------------------------------------------------- */

static int
feed_native(PyObject *session, int side, long long now, const SessionMessage *messages, size_t count)
{
    Session *s = (Session *)session;
    Handler handle = side ? server_message : client_message;
    for (size_t i = 0; i < count; i++) {
        const SessionMessage *m = &messages[i];
        Body body = {(const char *)m->body, (Py_ssize_t)m->kept, NULL};
        if (handle(s, m->type, &body, m->length, now) < 0)
            return -1;
    }
    return 0;
}

static SessionAPI api = {&SessionType, feed_native};

/* -- module ------------------------------------------------------------------------------------------ */

static PyObject *
from(const char *module, const char *name)
{
    PyObject *m = PyImport_ImportModule(module);
    if (m == NULL)
        return NULL;
    PyObject *v = PyObject_GetAttrString(m, name);
    Py_DECREF(m);
    return v;
}

static int
intern(PyObject **slot, const char *text)
{
    *slot = PyUnicode_InternFromString(text);
    return *slot ? 0 : -1;
}

static int
load(void)
{
    struct { PyObject **slot; const char *module, *name; } refs[] = {
        {&py_split, "fasterdata.proxy.sqltext", "split"},
        {&py_idents, "fasterdata.proxy.session", "_idents"},
        {&py_scrub, "fasterdata.proxy.session", "_scrub"},
        {&py_redactor_for, "fasterdata.proxy.session", "redactor_for"},
        {&control_tags, "fasterdata.proxy.session", "_CONTROL_TAGS"},
        {&unknown_sql, "fasterdata.proxy.session", "UNKNOWN_SQL"},
        {&py_fit, "fasterdata.proxy.sqlfit", "fit"},
        {&py_bind_params, "fasterdata.proxy.params", "bind_params"},
        {&py_command_complete, "fasterdata.proxy.wire", "parse_command_complete"},
        {&py_fields, "fasterdata.proxy.wire", "parse_fields"},
        {&py_param_desc, "fasterdata.proxy.wire", "parse_parameter_description"},
        {&py_param_status, "fasterdata.proxy.wire", "parse_parameter_status"},
        {&py_backend_key, "fasterdata.proxy.wire", "parse_backend_key"},
        {&py_random, "random", "random"},
        {&py_options_type, "fasterdata.proxy.events", "CaptureOptions"},
        {&py_provisional, "fasterdata.proxy.redact", "Provisional"},
        {&forget_tags, "fasterdata.proxy.redact", "FORGET_TAGS"},
        {&py_struct_error, "struct", "error"},
        {&s_schema, "fasterdata.proxy.events", "SCHEMA_VERSION"},
        {&s_kind_stmt, "fasterdata.proxy.events", "KIND_STMT"},
        {&s_kind_txn_end, "fasterdata.proxy.events", "KIND_TXN_END"},
        {&s_committed, "fasterdata.proxy.events", "COMMITTED"},
        {&s_rolled_back, "fasterdata.proxy.events", "ROLLED_BACK"},
        {&s_autocommit, "fasterdata.proxy.events", "AUTOCOMMIT"},
        {&s_prepared, "fasterdata.proxy.events", "PREPARED"},
        {&s_open, "fasterdata.proxy.events", "OPEN"},
    };
    for (size_t i = 0; i < sizeof(refs) / sizeof(refs[0]); i++)
        if ((*refs[i].slot = from(refs[i].module, refs[i].name)) == NULL)
            return -1;
    struct { PyObject **slot; const char *text; } names[] = {
        {&k_v, "v"}, {&k_kind, "kind"}, {&k_sid, "sid"}, {&k_client, "client"}, {&k_user, "user"},
        {&k_db, "db"}, {&k_app, "app"}, {&k_pid, "pid"}, {&k_ts, "ts"}, {&k_dur, "dur_us"},
        {&k_proto, "proto"}, {&k_stmt, "stmt"}, {&k_sql, "sql"}, {&k_part, "part"}, {&k_params, "params"},
        {&k_ptypes, "ptypes"}, {&k_txid, "txid"}, {&k_tag, "tag"}, {&k_rows, "rows"}, {&k_err, "err"},
        {&k_errmsg, "errmsg"}, {&k_txn, "txn"}, {&k_n, "n"}, {&k_stmts, "stmts"}, {&k_undone, "undone"},
        {&s_simple, "simple"}, {&s_extended, "extended"}, {&s_empty, ""}, {&s_empty_params, "[]"},
        {&s_C, "C"}, {&s_M, "M"}, {&s_learns, "learns"}, {&s_learn, "learn"}, {&s_to, "to"},
        {&s_deallocate, "deallocate"}, {&s_prepare, "prepare"}, {&s_startswith, "startswith"},
        {&s_comma, ","}, {&s_ellipsis, "\xe2\x80\xa6"},
        {&t_commit, "COMMIT"}, {&t_rollback, "ROLLBACK"}, {&t_prepare_txn, "PREPARE TRANSACTION"},
        {&t_begin, "BEGIN"}, {&t_start_txn, "START TRANSACTION"}, {&t_savepoint, "SAVEPOINT"},
        {&t_release, "RELEASE"}, {&t_deallocate, "DEALLOCATE"}, {&t_discard_all, "DISCARD ALL"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (intern(names[i].slot, names[i].text) < 0)
            return -1;
    if ((empty_tuple = PyTuple_New(0)) == NULL)
        return -1;
    if (!PyTuple_Check(forget_tags) || !PyAnySet_Check(control_tags)) {
        PyErr_SetString(PyExc_TypeError, "_session: FORGET_TAGS must be a tuple and _CONTROL_TAGS a set");
        return -1;
    }
    return 0;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fasterdata.proxy._session",
    .m_doc = "proxy/session.py's Session, compiled (see the comment at the top of proxy/_session.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__session(void)
{
    if (PyType_Ready(&StatementType) < 0 || PyType_Ready(&PortalType) < 0 || PyType_Ready(&SessionType) < 0)
        return NULL;
    if (load() < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SessionType);
    if (PyModule_AddObject(m, "Session", (PyObject *)&SessionType) < 0) {
        Py_DECREF(&SessionType);
        Py_DECREF(m);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(&api, SESSION_API_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObject(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
