/* A Bind body's parameter values as JSON array text, in C: proxy/params.py's bind_params_py, compiled.
 *
 * The loop is the Python one, step for step, and gives the same str for every input: the common values
 * (NULL, text-format integers and strings, binary integers, bools and strings) are written here, and every
 * other value goes to the same Python decoder params.py would call, so those agree by construction.
 * Which decoder a value gets is still read from params._TEXT / params._BINARY; the C paths key off the
 * decoder found there (params._t_int, params._b_int4, ...), not off OID numbers of their own.
 * tests/capture/test_params_compiled.py holds the two to the same output.
 *
 * Calls this loop cannot take as the Python one would (keyword arguments, a body that is not bytes,
 * oids not a list or tuple, a negative pos or max_bytes, int subclasses) are handed to bind_params_py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* What params.py provides, fetched on first use: params.py imports this module at its end. */
static PyObject *py_bind_params;     /* bind_params_py: the reference, and where odd calls go */
static PyObject *py_decode_value, *py_truncated, *py_text, *py_bad;
static PyObject *text_decoders, *binary_decoders;  /* params._TEXT, params._BINARY */
static PyObject *t_int, *b_int2, *b_int4, *b_int8, *b_oid, *b_bool, *b_text, *b_unknown;
static PyObject *struct_error;
static PyObject *py_zero;            /* the OID of a parameter past the end of oids */
static PyObject *malformed, *undecodable;
static PyObject *hidden_str;         /* params.HIDDEN, and its UTF-8 */
static const char *hidden_utf8;
static Py_ssize_t hidden_len;
static int hidden_ascii;

static PyObject *
attr(PyObject *mod, const char *name)
{
    return PyObject_GetAttrString(mod, name);
}

static int
load_params(void)
{
    if (py_bind_params != NULL)
        return 0;
    PyObject *mod = PyImport_ImportModule("fasterdata.proxy.params");
    if (mod == NULL)
        return -1;
    PyObject *st = PyImport_ImportModule("struct");
    if (st == NULL) {
        Py_DECREF(mod);
        return -1;
    }
    struct_error = attr(st, "error");
    Py_DECREF(st);
    py_decode_value = attr(mod, "decode_value");
    py_truncated = attr(mod, "_truncated");
    py_text = attr(mod, "_text");
    py_bad = attr(mod, "_bad");
    text_decoders = attr(mod, "_TEXT");
    binary_decoders = attr(mod, "_BINARY");
    t_int = attr(mod, "_t_int");
    b_int2 = attr(mod, "_b_int2");
    b_int4 = attr(mod, "_b_int4");
    b_int8 = attr(mod, "_b_int8");
    b_oid = attr(mod, "_b_oid");
    b_bool = attr(mod, "_b_bool");
    b_text = attr(mod, "_b_text");
    b_unknown = attr(mod, "_b_unknown");
    PyObject *hidden = attr(mod, "HIDDEN");
    PyObject *ref = attr(mod, "bind_params_py");
    Py_DECREF(mod);
    if (struct_error == NULL || py_decode_value == NULL || py_truncated == NULL || py_text == NULL
        || py_bad == NULL || text_decoders == NULL || binary_decoders == NULL || t_int == NULL
        || b_int2 == NULL || b_int4 == NULL || b_int8 == NULL || b_oid == NULL || b_bool == NULL
        || b_text == NULL || b_unknown == NULL || hidden == NULL || ref == NULL)
        goto fail;
    if (!PyDict_Check(text_decoders) || !PyDict_Check(binary_decoders) || !PyUnicode_Check(hidden)) {
        PyErr_SetString(PyExc_TypeError, "fasterdata.proxy.params: unexpected _TEXT, _BINARY or HIDDEN");
        goto fail;
    }
    hidden_utf8 = PyUnicode_AsUTF8AndSize(hidden, &hidden_len);  /* lives as long as hidden_str */
    if (hidden_utf8 == NULL)
        goto fail;
    hidden_ascii = PyUnicode_IS_ASCII(hidden);
    hidden_str = hidden;
    py_zero = PyLong_FromLong(0);
    malformed = PyUnicode_FromString("[\"\xe2\x80\xa6[malformed Bind]\"]");
    undecodable = PyUnicode_FromString("[\"\xe2\x80\xa6[undecodable Bind]\"]");
    if (py_zero == NULL || malformed == NULL || undecodable == NULL)
        goto fail;
    py_bind_params = ref;  /* last: it marks the rest as loaded */
    return 0;
fail:
    Py_XDECREF(hidden);
    hidden_str = NULL;
    Py_XDECREF(ref);
    Py_CLEAR(struct_error);
    Py_CLEAR(py_decode_value);
    Py_CLEAR(py_truncated);
    Py_CLEAR(py_text);
    Py_CLEAR(py_bad);
    Py_CLEAR(text_decoders);
    Py_CLEAR(binary_decoders);
    Py_CLEAR(t_int);
    Py_CLEAR(b_int2);
    Py_CLEAR(b_int4);
    Py_CLEAR(b_int8);
    Py_CLEAR(b_oid);
    Py_CLEAR(b_bool);
    Py_CLEAR(b_text);
    Py_CLEAR(b_unknown);
    Py_CLEAR(py_zero);
    Py_CLEAR(malformed);
    Py_CLEAR(undecodable);
    return -1;
}

/* -- the output: UTF-8 text growing in one buffer, a str at the end -------------------------------- */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
    int ascii;      /* nothing above U+007F written yet: the str can be copied, not decoded */
    int redo;       /* a piece this buffer cannot hold as UTF-8 came back: run the Python loop */
    char small[512];
} Out;

static int
out_reserve(Out *o, Py_ssize_t n)
{
    if (o->len + n <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap * 2;
    if (cap < o->len + n)
        cap = o->len + n;
    char *buf = o->buf == o->small ? PyMem_Malloc((size_t)cap) : PyMem_Realloc(o->buf, (size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (o->buf == o->small)
        memcpy(buf, o->small, (size_t)o->len);
    o->buf = buf;
    o->cap = cap;
    return 0;
}

static int
out_put(Out *o, const char *s, Py_ssize_t n)
{
    if (out_reserve(o, n) < 0)
        return -1;
    memcpy(o->buf + o->len, s, (size_t)n);
    o->len += n;
    return 0;
}

/* A fragment a Python decoder returned (a new reference, or NULL with its exception). */
static int
out_piece(Out *o, PyObject *piece)
{
    if (piece == NULL)
        return -1;
    if (!PyUnicode_Check(piece)) {  /* ",".join would refuse it */
        PyErr_Format(PyExc_TypeError, "sequence item: expected str instance, %.80s found",
                     Py_TYPE(piece)->tp_name);
        Py_DECREF(piece);
        return -1;
    }
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(piece, &n);
    if (s == NULL) {  /* a lone surrogate: fine for ",".join, not for UTF-8 */
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            o->redo = 1;
        }
        Py_DECREF(piece);
        return -1;
    }
    if (!PyUnicode_IS_ASCII(piece))
        o->ascii = 0;
    int r = out_put(o, s, n);
    Py_DECREF(piece);
    return r;
}

/* '"…[truncated: N more parameters]"' */
static int
out_more(Out *o, long long n)
{
    char s[64];
    int k = snprintf(s, sizeof s, "\"\xe2\x80\xa6[truncated: %lld more parameters]\"", n);
    o->ascii = 0;
    return out_put(o, s, k);
}

static PyObject *
out_finish(Out *o)
{
    if (!o->ascii)
        return PyUnicode_DecodeUTF8(o->buf, o->len, "strict");
    PyObject *s = PyUnicode_New(o->len, 127);
    if (s != NULL)
        memcpy(PyUnicode_DATA(s), o->buf, (size_t)o->len);
    return s;
}

/* -- the values written here ------------------------------------------------------------------------ */

static int
out_decimal(Out *o, long long x)
{
    char s[24];
    return out_put(o, s, snprintf(s, sizeof s, "%lld", x));
}

/* str(int(v)) for v of the form -?[0-9]+ with at most 20 digits (far from any int_max_str_digits
 * limit): the digits without leading zeros, and no sign on zero. 0 when v has any other form (spaces,
 * '+', '_', other digits, ...): the caller leaves those to Python's int(). */
static int
put_plain_int(Out *o, const char *v, Py_ssize_t n)
{
    Py_ssize_t i = (n > 0 && v[0] == '-') ? 1 : 0;
    if (n - i < 1 || n - i > 20)
        return 0;
    for (Py_ssize_t k = i; k < n; k++)
        if (v[k] < '0' || v[k] > '9')
            return 0;
    int neg = i == 1;
    while (i < n - 1 && v[i] == '0')
        i++;
    if (v[i] == '0')  /* all zeros: "0", "-000" */
        return out_put(o, "0", 1) < 0 ? -1 : 1;
    if (out_reserve(o, n - i + 1) < 0)
        return -1;
    if (neg)
        o->buf[o->len++] = '-';
    memcpy(o->buf + o->len, v + i, (size_t)(n - i));
    o->len += n - i;
    return 1;
}

/* _text(v): the value read as UTF-8 and written as encode_basestring writes a str ('"', '\\' and
 * characters below U+0020 escaped, everything else as it is). Escaping only touches ASCII, so it works on
 * the bytes. 0 for bytes that are not UTF-8, which _text shows as hex: the caller calls it. */
static int
put_text(Out *o, const char *v, Py_ssize_t n)
{
    Py_ssize_t extra = 0;
    int ascii = 1;
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)v[k];
        if (c >= 0x80)
            ascii = 0;
        else if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f')
            extra += 1;
        else if (c < 0x20)
            extra += 5;
    }
    if (!ascii) {  /* Python's own decoder says what is UTF-8 (no surrogates, no overlong forms, ...) */
        PyObject *s = PyUnicode_DecodeUTF8(v, n, "strict");
        if (s == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError))
                return -1;
            PyErr_Clear();
            return 0;
        }
        Py_DECREF(s);
        o->ascii = 0;
    }
    if (out_reserve(o, n + extra + 2) < 0)
        return -1;
    char *p = o->buf + o->len;
    *p++ = '"';
    if (extra == 0) {
        memcpy(p, v, (size_t)n);
        p += n;
    }
    else {
        static const char hex[] = "0123456789abcdef";
        for (Py_ssize_t k = 0; k < n; k++) {
            unsigned char c = (unsigned char)v[k];
            char esc = 0;
            switch (c) {
            case '"': esc = '"'; break;
            case '\\': esc = '\\'; break;
            case '\n': esc = 'n'; break;
            case '\r': esc = 'r'; break;
            case '\t': esc = 't'; break;
            case '\b': esc = 'b'; break;
            case '\f': esc = 'f'; break;
            }
            if (esc) {
                *p++ = '\\';
                *p++ = esc;
            }
            else if (c < 0x20) {
                memcpy(p, "\\u00", 4);
                p[4] = hex[c >> 4];
                p[5] = hex[c & 0xf];
                p += 6;
            }
            else
                *p++ = (char)c;
        }
    }
    *p++ = '"';
    o->len = p - o->buf;
    return 1;
}

static uint32_t
rd32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static int
rd16s(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (int16_t)(uint16_t)(u[0] << 8 | u[1]);
}

/* The binary integer and bool decoders, when the length is theirs: 1 done, 0 when the decoder must run
 * (a wrong length, which it shows as hex with a marker, or another decoder). */
static int
put_binary(Out *o, PyObject *dec, const char *v, Py_ssize_t n)
{
    if (dec == b_int4 && n == 4)
        return out_decimal(o, (int32_t)rd32(v)) < 0 ? -1 : 1;
    if (dec == b_int8 && n == 8)
        return out_decimal(o, (int64_t)((uint64_t)rd32(v) << 32 | rd32(v + 4))) < 0 ? -1 : 1;
    if (dec == b_int2 && n == 2)
        return out_decimal(o, rd16s(v)) < 0 ? -1 : 1;
    if (dec == b_oid && n == 4)
        return out_decimal(o, rd32(v)) < 0 ? -1 : 1;
    if (dec == b_bool && n == 1)
        return (v[0] ? out_put(o, "true", 4) : out_put(o, "false", 5)) < 0 ? -1 : 1;
    return 0;
}

/* -- the loop --------------------------------------------------------------------------------------- */

/* dec(v, oid) with v = body[at:at + n]; dec(v) when oid is NULL. */
static PyObject *
call_decoder(PyObject *dec, const char *at, Py_ssize_t n, PyObject *oid)
{
    PyObject *v = PyBytes_FromStringAndSize(at, n);
    if (v == NULL)
        return NULL;
    PyObject *argv[] = {v, oid};
    PyObject *out = PyObject_Vectorcall(dec, argv, oid == NULL ? 1 : 2, NULL);
    Py_DECREF(v);
    return out;
}

/* _truncated(body[at:at + n], fmt, oid, extra), or decode_value(..., fmt, oid, max_bytes, extra). */
static PyObject *
call_cut(PyObject *fn, const char *at, Py_ssize_t n, int fmt, PyObject *oid, PyObject *max_bytes,
         long long extra)
{
    PyObject *v = PyBytes_FromStringAndSize(at, n), *f = PyLong_FromLong(fmt);
    PyObject *x = PyLong_FromLongLong(extra), *out = NULL;
    if (v != NULL && f != NULL && x != NULL) {
        PyObject *with_max[] = {v, f, oid, max_bytes, x}, *without[] = {v, f, oid, x};
        out = max_bytes == NULL ? PyObject_Vectorcall(fn, without, 4, NULL)
                                : PyObject_Vectorcall(fn, with_max, 5, NULL);
    }
    Py_XDECREF(v);
    Py_XDECREF(f);
    Py_XDECREF(x);
    return out;
}

/* One value that is neither NULL, hidden, nor cut by the decoder's keep: bind_params_py's if/elif. */
static int
put_value(Out *o, const char *v, Py_ssize_t size, int fmt, PyObject *oid, long long max_bytes)
{
    if (size > max_bytes)
        return out_piece(o, call_cut(py_truncated, v, (Py_ssize_t)max_bytes, fmt, oid, NULL,
                                     size - max_bytes));
    if (fmt != 0 && fmt != 1)
        return out_piece(o, call_decoder(py_bad, v, size, oid));
    /* _TEXT.get(oid) / _BINARY.get(oid, _b_unknown), held: the call below may run code that changes them */
    PyObject *dec = PyDict_GetItemWithError(fmt == 0 ? text_decoders : binary_decoders, oid);
    if (dec == NULL && PyErr_Occurred())
        return -1;
    if (dec == NULL && fmt == 1)
        dec = b_unknown;
    Py_XINCREF(dec);
    int r;
    if (dec == NULL || dec == b_text)  /* _text(v), and _b_text(v, oid) is _text(v) too */
        r = put_text(o, v, size);
    else if (dec == t_int)
        r = put_plain_int(o, v, size);
    else
        r = fmt == 1 ? put_binary(o, dec, v, size) : 0;
    if (r == 0) {  /* not one of the values written here: the decoder itself */
        if (dec == NULL || dec == b_text)
            r = out_piece(o, call_decoder(py_text, v, size, NULL));  /* not UTF-8 */
        else
            r = out_piece(o, call_decoder(dec, v, size, oid));
    }
    else
        r = r < 0 ? -1 : 0;
    Py_XDECREF(dec);
    return r;
}

/* oids[i] as a new reference; i < noids, the length bind_params_py took at the start. */
static PyObject *
oid_at(PyObject *oids, Py_ssize_t i)
{
    Py_ssize_t n = PyList_Check(oids) ? PyList_GET_SIZE(oids) : PyTuple_GET_SIZE(oids);
    if (i >= n) {  /* the list shrank meanwhile (a hidden container's __contains__ can do it) */
        PyErr_SetString(PyExc_IndexError, "list index out of range");
        return NULL;
    }
    return Py_NewRef(PyList_Check(oids) ? PyList_GET_ITEM(oids, i) : PyTuple_GET_ITEM(oids, i));
}

/* An int argument as a C value; 1 when it is exactly int, 0 when the call must go to Python.
 * Values past long long are pinned to its ends (they compare the same against any body length). */
static int
int_arg(PyObject *x, long long *out)
{
    if (!PyLong_CheckExact(x))
        return 0;
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(x, &overflow);
    if (overflow)
        *out = overflow > 0 ? LLONG_MAX : LLONG_MIN;
    return 1;
}

/* bind_params(body, length, pos, oids, max_bytes, hidden=None) -> str
 *
 * Returns 1 with *result set, or 0 when the call is one the Python function must make. */
static int
bind_params_c(PyObject *const *args, Py_ssize_t nargs, PyObject **result)
{
    PyObject *body = args[0], *oids = args[3];
    PyObject *hidden = nargs > 5 && args[5] != Py_None ? args[5] : NULL;
    long long length, pos, max_bytes;
    if (!PyBytes_CheckExact(body) || !(PyList_CheckExact(oids) || PyTuple_CheckExact(oids))
        || !int_arg(args[1], &length) || !int_arg(args[2], &pos) || !int_arg(args[4], &max_bytes)
        || pos < 0 || max_bytes < 0)  /* Python counts these from the end (unpack_from, v[:max_bytes]) */
        return 0;
    const char *b = PyBytes_AS_STRING(body);
    const long long end_body = PyBytes_GET_SIZE(body);
    Out o;  /* small is left as it is: zeroing it would cost more than the common call */
    o.buf = o.small;
    o.len = 0;
    o.cap = sizeof o.small;
    o.ascii = 1;
    o.redo = 0;
    PyObject *oid = NULL;

    /* The format codes, then the parameter count (struct.error in Python: malformed). From here on
     * pos stays below 2**47: at most 32767 parameters of at most 2**31 bytes each. */
    if (pos > end_body - 2)
        goto malformed;
    int nfmt = rd16s(b + pos);
    pos += 2;
    if (nfmt < 0 || pos + 2LL * nfmt > end_body)
        goto malformed;
    const char *fmts = b + pos;
    pos += 2LL * nfmt;
    if (pos + 2 > end_body)
        goto malformed;
    int count = rd16s(b + pos);
    pos += 2;
    Py_ssize_t noids = PyList_Check(oids) ? PyList_GET_SIZE(oids) : PyTuple_GET_SIZE(oids);

    if (out_put(&o, "[", 1) < 0)
        goto error;
    for (int i = 0; i < count; i++) {
        if (i > 0 && out_put(&o, ",", 1) < 0)
            goto error;
        if (pos + 4 > end_body) {
            if (length > end_body) {  /* the decoder kept a prefix only */
                if (out_more(&o, count - i) < 0)
                    goto error;
                break;
            }
            goto malformed;
        }
        long long size = (int32_t)rd32(b + pos);
        pos += 4;
        if (size < 0) {
            if (out_put(&o, "null", 4) < 0)
                goto error;
            continue;
        }
        if (hidden != NULL) {
            PyObject *index = PyLong_FromLong(i);
            int in = index == NULL ? -1 : PySequence_Contains(hidden, index);
            Py_XDECREF(index);
            if (in < 0)
                goto error;
            if (in) {
                if (hidden_ascii == 0)
                    o.ascii = 0;
                if (out_put(&o, hidden_utf8, hidden_len) < 0)
                    goto error;
                pos += size;
                continue;
            }
        }
        int fmt;
        if (nfmt == 1)
            fmt = rd16s(fmts);
        else if (nfmt == 0)
            fmt = 0;
        else if (i < nfmt)
            fmt = rd16s(fmts + 2 * i);
        else  /* fewer format codes than parameters: IndexError in Python */
            goto malformed;
        oid = i < noids ? oid_at(oids, i) : Py_NewRef(py_zero);
        if (oid == NULL)
            goto error;
        long long end = pos + size;
        if (end > end_body) {
            if (length <= end_body)
                goto malformed;
            /* cut by the decoder's keep: decode_value(body[pos:], fmt, oid, max_bytes, missing) */
            if (out_piece(&o, call_cut(py_decode_value, b + pos, (Py_ssize_t)(end_body - pos), fmt, oid,
                                       args[4], end - end_body)) < 0)
                goto error;
            if (i + 1 < count && (out_put(&o, ",", 1) < 0 || out_more(&o, count - i - 1) < 0))
                goto error;
            Py_CLEAR(oid);
            break;
        }
        if (put_value(&o, b + pos, (Py_ssize_t)size, fmt, oid, max_bytes) < 0)
            goto error;
        Py_CLEAR(oid);
        pos = end;
    }
    if (out_put(&o, "]", 1) < 0)
        goto error;
    if ((*result = out_finish(&o)) == NULL)  /* in Python, the join is inside the try too */
        goto error;
    goto done;

malformed:
    *result = Py_NewRef(malformed);
    goto done;
error:  /* as bind_params_py's except clauses */
    Py_CLEAR(oid);
    if (o.redo) {
        if (o.buf != o.small)
            PyMem_Free(o.buf);
        return 0;
    }
    if (PyErr_ExceptionMatches(struct_error) || PyErr_ExceptionMatches(PyExc_IndexError)) {
        PyErr_Clear();
        *result = Py_NewRef(malformed);
    }
    else if (PyErr_ExceptionMatches(PyExc_Exception)) {  /* decoding must never break capture */
        PyErr_Clear();
        *result = Py_NewRef(undecodable);
    }
    else  /* KeyboardInterrupt and the like go through, as in Python */
        *result = NULL;
done:
    Py_XDECREF(oid);
    if (o.buf != o.small)
        PyMem_Free(o.buf);
    return 1;
}

static PyObject *
bind_params(PyObject *Py_UNUSED(self), PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (load_params() < 0)
        return NULL;
    PyObject *result;
    if (kwnames == NULL && (nargs == 5 || nargs == 6) && bind_params_c(args, nargs, &result))
        return result;
    return PyObject_Vectorcall(py_bind_params, args, (size_t)nargs, kwnames);
}

static PyMethodDef methods[] = {
    {"bind_params", (PyCFunction)(void (*)(void))bind_params, METH_FASTCALL | METH_KEYWORDS,
     "bind_params(body, length, pos, oids, max_bytes, hidden=None) -> str: a Bind body's parameters as "
     "JSON array text (see fasterdata.proxy.params.bind_params_py)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_params",
    .m_doc = "Bind parameter values as JSON text in C (see proxy/params.py).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__params(void)
{
    return PyModule_Create(&module);
}
