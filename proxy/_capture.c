/* Capture.emit in C: proxy/capture.py's Capture, compiled.
 *
 * Every event a session emits passes here once: the proxy's own counters (statements by tag, errors by
 * SQLSTATE class, the latency histogram by database and application) are bumped, then the event goes to
 * the sink's put. The counters are the same plain dicts and lists as in the Python class, so
 * CaptureCollector reads either; tests/capture/test_capture_compiled.py holds the two to the same counts
 * and the same calls to put. The buckets and the series limit are read from proxy/capture.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

static long long *buckets;    /* capture.BUCKETS_US */
static Py_ssize_t nbuckets;
static Py_ssize_t max_series; /* capture.MAX_LATENCY_SERIES */
static PyObject *k_kind, *k_tag, *k_err, *k_db, *k_app, *k_dur, *k_sid, *s_stmt, *s_error, *s_other_tag,
    *s_empty, *other_key;

static int
load(void)
{
    if (buckets != NULL)
        return 0;
    PyObject *mod = PyImport_ImportModule("fasterdata.proxy.capture");
    if (mod == NULL)
        return -1;
    PyObject *seq = PyObject_GetAttrString(mod, "BUCKETS_US");
    PyObject *most = PyObject_GetAttrString(mod, "MAX_LATENCY_SERIES");
    Py_DECREF(mod);
    PyObject *fast = seq ? PySequence_Fast(seq, "BUCKETS_US must be a sequence") : NULL;
    Py_XDECREF(seq);
    if (fast == NULL || most == NULL) {
        Py_XDECREF(fast);
        Py_XDECREF(most);
        return -1;
    }
    max_series = PyLong_AsSsize_t(most);
    Py_DECREF(most);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    long long *b = PyMem_Malloc(sizeof(long long) * (n ? n : 1));
    for (Py_ssize_t i = 0; b != NULL && i < n; i++)
        b[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(fast, i));
    Py_DECREF(fast);
    if (b == NULL || PyErr_Occurred()) {
        PyMem_Free(b);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return -1;
    }
    nbuckets = n;
    buckets = b;
    return 0;
}

typedef struct {
    PyObject_HEAD
    PyObject *put;        /* the sink's put(event, route), or None */
    PyObject *statements; /* dict: tag → count */
    PyObject *errors;     /* dict: SQLSTATE class → count */
    PyObject *latency;    /* dict: (db, app) → [bucket counts…, +Inf, sum µs] */
} Capture;

static int
capture_init(Capture *c, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"put", NULL};
    PyObject *put;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Capture", kwlist, &put) || load() < 0)
        return -1;
    Py_INCREF(put);
    Py_XSETREF(c->put, put);
    Py_XSETREF(c->statements, PyDict_New());
    Py_XSETREF(c->errors, PyDict_New());
    Py_XSETREF(c->latency, PyDict_New());
    return c->statements && c->errors && c->latency ? 0 : -1;
}

static int
capture_traverse(Capture *c, visitproc visit, void *arg)
{
    Py_VISIT(c->put);
    Py_VISIT(c->statements);
    Py_VISIT(c->errors);
    Py_VISIT(c->latency);
    return 0;
}

static int
capture_clear(Capture *c)
{
    Py_CLEAR(c->put);
    Py_CLEAR(c->statements);
    Py_CLEAR(c->errors);
    Py_CLEAR(c->latency);
    return 0;
}

static void
capture_dealloc(Capture *c)
{
    PyObject_GC_UnTrack(c);
    capture_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

/* d[key] += n, d[key] starting at 0. */
static int
bump(PyObject *d, PyObject *key, long long n)
{
    PyObject *old = PyDict_GetItemWithError(d, key);
    if (old == NULL && PyErr_Occurred())
        return -1;
    long long v = old ? PyLong_AsLongLong(old) : 0;
    if (v == -1 && PyErr_Occurred())
        return -1;
    PyObject *now = PyLong_FromLongLong(v + n);
    if (now == NULL)
        return -1;
    int r = PyDict_SetItem(d, key, now);
    Py_DECREF(now);
    return r;
}

/* list[i] += n */
static int
bump_item(PyObject *list, Py_ssize_t i, long long n)
{
    long long v = PyLong_AsLongLong(PyList_GET_ITEM(list, i));
    if (v == -1 && PyErr_Occurred())
        return -1;
    PyObject *now = PyLong_FromLongLong(v + n);
    if (now == NULL)
        return -1;
    PyList_SetItem(list, i, now);  /* steals now, drops the old count */
    return 0;
}

/* event.get(key) or fallback: borrowed; fallback when absent or empty (Python's `or`). */
static PyObject *
get_or(PyObject *event, PyObject *key, PyObject *fallback)
{
    PyObject *v = PyDict_GetItemWithError(event, key);
    if (v == NULL)
        return PyErr_Occurred() ? NULL : fallback;
    int truth = PyObject_IsTrue(v);
    return truth < 0 ? NULL : (truth ? v : fallback);
}

/* The latency series of (db, app), made on first use; past max_series new pairs share ("other", "other"). */
static PyObject *
series_of(Capture *c, PyObject *event)
{
    PyObject *db = PyDict_GetItemWithError(event, k_db);
    PyObject *app = db || !PyErr_Occurred() ? PyDict_GetItemWithError(event, k_app) : NULL;
    if (PyErr_Occurred())
        return NULL;
    PyObject *key = PyTuple_Pack(2, db ? db : s_empty, app ? app : s_empty);
    if (key == NULL)
        return NULL;
    PyObject *series = PyDict_GetItemWithError(c->latency, key);
    if (series == NULL && !PyErr_Occurred()) {
        if (PyDict_GET_SIZE(c->latency) >= max_series) {
            Py_INCREF(other_key);
            Py_SETREF(key, other_key);
            series = PyDict_GetItemWithError(c->latency, key);
        }
        if (series == NULL && !PyErr_Occurred()) {
            series = PyList_New(nbuckets + 2);
            for (Py_ssize_t i = 0; series && i < nbuckets + 2; i++)
                PyList_SET_ITEM(series, i, PyLong_FromLong(0));
            if (series == NULL || PyDict_SetItem(c->latency, key, series) < 0) {
                Py_XDECREF(series);
                Py_DECREF(key);
                return NULL;
            }
            Py_DECREF(series);  /* the dict holds it */
        }
    }
    Py_DECREF(key);
    return series;
}

/* The bucket a duration falls in: the first bound >= dur (bisect_left), nbuckets for +Inf. */
static Py_ssize_t
bucket(long long dur)
{
    Py_ssize_t lo = 0, hi = nbuckets;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (buckets[mid] < dur)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int
count(Capture *c, PyObject *event)
{
    PyObject *err = PyDict_GetItemWithError(event, k_err);
    if (err == NULL && PyErr_Occurred())
        return -1;
    PyObject *tag = get_or(event, k_tag, err != NULL ? s_error : s_other_tag);
    if (tag == NULL || bump(c->statements, tag, 1) < 0)
        return -1;
    int has_err = err ? PyObject_IsTrue(err) : 0;
    if (has_err < 0)
        return -1;
    if (has_err) {
        PyObject *cls = PySequence_GetSlice(err, 0, 2);
        int r = cls ? bump(c->errors, cls, 1) : -1;
        Py_XDECREF(cls);
        if (r < 0)
            return -1;
    }
    PyObject *series = series_of(c, event);
    if (series == NULL)
        return -1;
    PyObject *dur_text = PyDict_GetItemWithError(event, k_dur);
    if (dur_text == NULL && PyErr_Occurred())
        return -1;
    int timed = dur_text != NULL ? PyObject_IsTrue(dur_text) : 0;
    if (timed < 0)
        return -1;
    long long dur = 0;
    if (timed) {
        PyObject *n = PyNumber_Long(dur_text);  /* int(text), as the Python does */
        if (n == NULL)
            return -1;
        dur = PyLong_AsLongLong(n);
        Py_DECREF(n);
        if (dur == -1 && PyErr_Occurred())
            return -1;
    }
    return bump_item(series, bucket(dur), 1) < 0 || bump_item(series, nbuckets + 1, dur) < 0 ? -1 : 0;
}

static PyObject *
capture_emit(Capture *c, PyObject *event)
{
    if (!PyDict_Check(event)) {
        PyErr_SetString(PyExc_TypeError, "Capture.emit takes an event dict");
        return NULL;
    }
    PyObject *kind = PyDict_GetItemWithError(event, k_kind);
    if (kind == NULL && PyErr_Occurred())
        return NULL;
    if (kind != NULL && PyUnicode_Check(kind) && PyUnicode_Compare(kind, s_stmt) == 0 && count(c, event) < 0)
        return NULL;
    if (c->put != Py_None) {
        PyObject *sid = PyDict_GetItemWithError(event, k_sid);
        if (sid == NULL && PyErr_Occurred())
            return NULL;
        PyObject *r = PyObject_CallFunctionObjArgs(c->put, event, sid ? sid : s_empty, NULL);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyMethodDef capture_methods[] = {
    {"emit", (PyCFunction)capture_emit, METH_O, "Count one event, then hand it to put (the sink)."},
    {NULL},
};

static PyMemberDef capture_members[] = {
    {"put", T_OBJECT, offsetof(Capture, put), 0, NULL},
    {"statements", T_OBJECT, offsetof(Capture, statements), READONLY, NULL},
    {"errors", T_OBJECT, offsetof(Capture, errors), READONLY, NULL},
    {"latency", T_OBJECT, offsetof(Capture, latency), READONLY, NULL},
    {NULL},
};

static PyTypeObject CaptureType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "fasterdata.proxy._capture.Capture",
    .tp_basicsize = sizeof(Capture),
    .tp_dealloc = (destructor)capture_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Receives every event a session emits; counts it, then hands it to put (proxy/capture.py's "
              "Capture, compiled).",
    .tp_traverse = (traverseproc)capture_traverse,
    .tp_clear = (inquiry)capture_clear,
    .tp_methods = capture_methods,
    .tp_members = capture_members,
    .tp_init = (initproc)capture_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "fasterdata.proxy._capture",
    .m_doc = "proxy/capture.py's Capture, compiled.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__capture(void)
{
    struct { PyObject **slot; const char *text; } names[] = {
        {&k_kind, "kind"}, {&k_tag, "tag"}, {&k_err, "err"}, {&k_db, "db"}, {&k_app, "app"},
        {&k_dur, "dur_us"}, {&k_sid, "sid"}, {&s_stmt, "stmt"}, {&s_error, "ERROR"}, {&s_other_tag, "OTHER"},
        {&s_empty, ""},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if ((*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL)
            return NULL;
    if ((other_key = Py_BuildValue("(ss)", "other", "other")) == NULL || PyType_Ready(&CaptureType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&CaptureType);
    if (PyModule_AddObject(m, "Capture", (PyObject *)&CaptureType) < 0) {
        Py_DECREF(&CaptureType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
