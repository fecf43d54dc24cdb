/* The sink's common case in C: one batch of events as the RESP command that adds it as bundled entries.
 *
 * proxy/sink/encoding.py has the same function in Python (pack_bundled_py), which runs when this extension
 * was not built; tests/sink/test_bundle.py holds the two to the same bytes. Either returns None for a
 * batch it cannot pack (a value that is not str, a NUL or a lone surrogate in a name or value, an event
 * without fields), and encode_batch then takes its general path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

/* Decimal digits of n >= 0. */
static Py_ssize_t
digits(Py_ssize_t n)
{
    Py_ssize_t d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

/* One RESP bulk string: $<len>\r\n<data>\r\n. */
static char *
put_bulk(char *p, const char *data, Py_ssize_t len)
{
    p += sprintf(p, "$%zd\r\n", len);
    memcpy(p, data, (size_t)len);
    p += len;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

static Py_ssize_t
bulk_size(Py_ssize_t len)
{
    return 1 + digits(len) + 2 + len + 2;
}

/* A head argument as hiredis.pack_command writes it: str as UTF-8, bytes as they are, int in decimal.
 * Its bytes go to data and len (num holds an int's text); -1 with an exception otherwise. */
static int
head_arg(PyObject *arg, char *num, const char **data, Py_ssize_t *len)
{
    if (PyUnicode_Check(arg)) {
        *data = PyUnicode_AsUTF8AndSize(arg, len);
        return *data == NULL ? -1 : 0;
    }
    if (PyBytes_Check(arg)) {
        *data = PyBytes_AS_STRING(arg);
        *len = PyBytes_GET_SIZE(arg);
        return 0;
    }
    if (PyLong_Check(arg)) {
        long long v = PyLong_AsLongLong(arg);
        if (v == -1 && PyErr_Occurred())
            return -1;
        *len = sprintf(num, "%lld", v);
        *data = num;
        return 0;
    }
    PyErr_SetString(PyExc_TypeError, "pack_bundled(): head arguments must be str, bytes or int");
    return -1;
}

/* The UTF-8 of a name or value that may go into a packed event, or NULL (no exception) when it may not. */
static const char *
packable(PyObject *s, Py_ssize_t *len)
{
    if (!PyUnicode_Check(s))
        return NULL;
    const char *u = PyUnicode_AsUTF8AndSize(s, len);
    if (u == NULL) {  /* a lone surrogate */
        PyErr_Clear();
        return NULL;
    }
    return memchr(u, 0, (size_t)*len) == NULL ? u : NULL;
}

/* pack_bundled(head, events) -> bytes | None
 *
 * The bytes of hiredis.pack_command((*head, *map(len, events), *packed)), where packed holds each
 * event's names and values joined with NUL (proxy.events.pack's form).
 */
static PyObject *
pack_bundled(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "pack_bundled(head: tuple, events: list)");
        return NULL;
    }
    PyObject *head = args[0];
    PyObject *events = PySequence_Fast(args[1], "pack_bundled(): events must be a sequence");
    if (events == NULL)
        return NULL;
    Py_ssize_t nhead = PyTuple_GET_SIZE(head), n = PySequence_Fast_GET_SIZE(events);
    PyObject **items = PySequence_Fast_ITEMS(events);
    Py_ssize_t *sizes = PyMem_Malloc((size_t)(n ? n : 1) * sizeof *sizes);  /* each packed event's length */
    PyObject *out = NULL;
    char num[32];
    if (sizes == NULL) {
        PyErr_NoMemory();
        goto done;
    }

    /* First pass: check every event and add up the sizes. */
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < nhead; i++) {
        const char *data;
        Py_ssize_t len;
        if (head_arg(PyTuple_GET_ITEM(head, i), num, &data, &len) < 0)
            goto done;
        total += bulk_size(len);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *event = items[i];
        if (!PyDict_Check(event) || PyDict_GET_SIZE(event) == 0)
            goto cannot;
        Py_ssize_t pos = 0, packed = -1, len;
        PyObject *key, *value;
        while (PyDict_Next(event, &pos, &key, &value)) {
            if (packable(key, &len) == NULL)
                goto cannot;
            packed += len + 1;
            if (packable(value, &len) == NULL)
                goto cannot;
            packed += len + 1;
        }
        sizes[i] = packed;
        total += bulk_size(digits(PyDict_GET_SIZE(event))) + bulk_size(packed);
    }
    Py_ssize_t nall = nhead + 2 * n;
    total += 1 + digits(nall) + 2;

    /* Second pass: write what the first one measured. */
    out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        goto done;
    char *start = PyBytes_AS_STRING(out), *p = start;
    p += sprintf(p, "*%zd\r\n", nall);
    for (Py_ssize_t i = 0; i < nhead; i++) {
        const char *data;
        Py_ssize_t len;
        head_arg(PyTuple_GET_ITEM(head, i), num, &data, &len);  /* succeeded in the first pass */
        p = put_bulk(p, data, len);
    }
    for (Py_ssize_t i = 0; i < n; i++)
        p = put_bulk(p, num, sprintf(num, "%zd", PyDict_GET_SIZE(items[i])));
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t pos = 0, len;
        PyObject *key, *value;
        p += sprintf(p, "$%zd\r\n", sizes[i]);
        char *first = p;
        while (PyDict_Next(items[i], &pos, &key, &value)) {
            if (p != first)
                *p++ = '\0';
            const char *u = PyUnicode_AsUTF8AndSize(key, &len);  /* cached by the first pass */
            memcpy(p, u, (size_t)len);
            p += len;
            *p++ = '\0';
            u = PyUnicode_AsUTF8AndSize(value, &len);
            memcpy(p, u, (size_t)len);
            p += len;
        }
        *p++ = '\r';
        *p++ = '\n';
    }
    if (p - start != total) {  /* the passes disagree: a bug, and never bytes Redis would misread */
        Py_CLEAR(out);
        PyErr_SetString(PyExc_SystemError, "pack_bundled(): size mismatch");
    }
    goto done;
cannot:
    out = Py_NewRef(Py_None);
done:
    PyMem_Free(sizes);
    Py_DECREF(events);
    return out;
}

static PyMethodDef methods[] = {
    {"pack_bundled", (PyCFunction)(void (*)(void))pack_bundled, METH_FASTCALL,
     "pack_bundled(head, events) -> bytes | None: the RESP command adding events as bundled entries"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_bundle",
    .m_doc = "The sink's bundled-batch encoding in C (see proxy/sink/encoding.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__bundle(void)
{
    return PyModule_Create(&module);
}
