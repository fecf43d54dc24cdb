/* The framer's inner loop in C: walk whole PostgreSQL messages in a chunk and collect the wanted ones.
 *
 * proxy/wire.py calls scan() for the common case (complete messages, nothing half-read from the last
 * chunk) and keeps every other case (a partial message, a length it must refuse) in Python: scan()
 * stops in front of such a message and returns its position, and the Python framer takes it from
 * there. Without a compiler the extension is simply absent and wire.py runs the same loop in Python;
 * tests/proxy/test_framescan.py holds both to the same results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* scan(data, pos, wanted, max_message, keep, out) -> int
 *
 * data: a bytes-like chunk; pos: where the next message header starts; wanted: 256 bytes, non-zero at
 * the message types to collect; max_message: the largest length word accepted; keep: body bytes kept
 * per collected message (the rest is only counted); out: a list that receives (type, body, size)
 * tuples. Returns the position of the first message not consumed (== len(data) when all were).
 */
static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data, wanted;
    Py_ssize_t pos, max_message, keep;
    PyObject *out;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 6 arguments");
        return NULL;
    }
    pos = PyLong_AsSsize_t(args[1]);
    max_message = PyLong_AsSsize_t(args[3]);
    keep = PyLong_AsSsize_t(args[4]);
    if (PyErr_Occurred())
        return NULL;
    out = args[5];
    if (!PyList_Check(out)) {
        PyErr_SetString(PyExc_TypeError, "scan(): out must be a list");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[2], &wanted, PyBUF_SIMPLE) < 0) {
        PyBuffer_Release(&data);
        return NULL;
    }
    if (wanted.len != 256 || pos < 0 || keep < 0) {
        PyErr_SetString(PyExc_ValueError, "scan(): wanted must be 256 bytes, pos and keep >= 0");
        goto fail;
    }
    {
        const unsigned char *buf = (const unsigned char *)data.buf;
        const unsigned char *want = (const unsigned char *)wanted.buf;
        Py_ssize_t end = data.len;

        while (end - pos >= 5) {
            unsigned char typ = buf[pos];
            uint32_t length = ((uint32_t)buf[pos + 1] << 24) | ((uint32_t)buf[pos + 2] << 16)
                              | ((uint32_t)buf[pos + 3] << 8) | (uint32_t)buf[pos + 4];
            if (length < 4 || (Py_ssize_t)length > max_message || (Py_ssize_t)length > end - pos - 1)
                break;  /* refused or incomplete: the Python framer decides */
            if (want[typ]) {
                Py_ssize_t size = (Py_ssize_t)length - 4;
                Py_ssize_t kept = size <= keep ? size : keep;
                PyObject *item = Py_BuildValue("(iy#n)", (int)typ, (const char *)buf + pos + 5, kept, size);
                if (item == NULL)
                    goto fail;
                if (PyList_Append(out, item) < 0) {
                    Py_DECREF(item);
                    goto fail;
                }
                Py_DECREF(item);
            }
            pos += 1 + (Py_ssize_t)length;
        }
    }
    PyBuffer_Release(&wanted);
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(pos);

fail:
    PyBuffer_Release(&wanted);
    PyBuffer_Release(&data);
    return NULL;
}

static PyMethodDef methods[] = {
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL,
     "scan(data, pos, wanted, max_message, keep, out) -> position of the first message not consumed"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "proxy._framescan", "The framer's inner loop, compiled (see wire.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__framescan(void)
{
    return PyModule_Create(&module);
}
