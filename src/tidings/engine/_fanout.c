/*
 * The compiled twin of the engine's fan-out loop (see docs/speedups.md).
 *
 * tidings.engine.broadcast._py_write_plain is the reference; the twins must
 * write the same bytes to the same transports and return the same result.
 * tests/engine/test_broadcast.py runs its tests on both.
 *
 *   write_plain(connections, frames, open) -> (written, rest)
 *       For each WebSocket of connections whose protocol state is open and
 *       that is not in the middle of a fragmented message: when it has
 *       nothing special about it (a server side, no permessage-deflate,
 *       nothing corked, writing not paused, a transport), frames go
 *       straight to transport.write(); otherwise the connection is put in
 *       rest for the Python code to handle. The others are skipped.
 *
 * This loop runs once per subscriber of every publication: in Python it
 * costs more than the hub's whole share of a delivery besides the system
 * call. It reads the same slots of WebSocket and of the protocol's
 * Connection that the Python twin reads, by name.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *s_conn, *s_state, *s_out_opcode, *s_write_paused,
    *s_is_client, *s_deflate, *s_corked, *s_transport, *s_write;

/* Return 1 when ws needs the Python code, 0 when it can be written to
 * (*transport then holds a new reference), -1 on error. */
static int
needs_python(PyObject *ws, PyObject *conn, PyObject **transport)
{
    static PyObject **const flags[] = {&s_write_paused, &s_corked};
    PyObject *value;
    int special;

    *transport = NULL;
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        value = PyObject_GetAttr(ws, *flags[i]);
        if (value == NULL) {
            return -1;
        }
        special = PyObject_IsTrue(value);
        Py_DECREF(value);
        if (special != 0) {
            return special;
        }
    }
    value = PyObject_GetAttr(conn, s_is_client);
    if (value == NULL) {
        return -1;
    }
    special = PyObject_IsTrue(value);
    Py_DECREF(value);
    if (special != 0) {
        return special;
    }
    value = PyObject_GetAttr(conn, s_deflate);
    if (value == NULL) {
        return -1;
    }
    special = value != Py_None;
    Py_DECREF(value);
    if (special) {
        return 1;
    }
    value = PyObject_GetAttr(ws, s_transport);
    if (value == NULL) {
        return -1;
    }
    if (value == Py_None) {
        Py_DECREF(value);
        return 1;
    }
    *transport = value;
    return 0;
}

/* Return 1 when conn may take a new data message (open, no fragmented
 * message unfinished), 0 when not, -1 on error. */
static int
can_send(PyObject *conn, PyObject *open)
{
    PyObject *value;
    int ok;

    value = PyObject_GetAttr(conn, s_state);
    if (value == NULL) {
        return -1;
    }
    ok = value == open;
    Py_DECREF(value);
    if (!ok) {
        return 0;
    }
    value = PyObject_GetAttr(conn, s_out_opcode);
    if (value == NULL) {
        return -1;
    }
    ok = value == Py_None;
    Py_DECREF(value);
    return ok;
}

static PyObject *
write_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *seq, *rest, *frames, *open, *ws, *conn, *transport, *result;
    Py_ssize_t written = 0, n;
    int status;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError,
                        "write_plain(connections, frames, open) takes 3 arguments");
        return NULL;
    }
    frames = args[1];
    open = args[2];
    seq = PySequence_Fast(args[0], "connections must be iterable");
    if (seq == NULL) {
        return NULL;
    }
    rest = PyList_New(0);
    if (rest == NULL) {
        Py_DECREF(seq);
        return NULL;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        /* Borrowed from seq, which a write's callbacks cannot change. */
        ws = PySequence_Fast_GET_ITEM(seq, i);
        conn = PyObject_GetAttr(ws, s_conn);
        if (conn == NULL) {
            goto error;
        }
        status = can_send(conn, open);
        if (status == 1) {
            status = needs_python(ws, conn, &transport);
            if (status == 0) {
                result = PyObject_CallMethodOneArg(transport, s_write, frames);
                Py_DECREF(transport);
                if (result == NULL) {
                    Py_DECREF(conn);
                    goto error;
                }
                Py_DECREF(result);
                written++;
            }
            else if (status == 1 && PyList_Append(rest, ws) < 0) {
                status = -1;
            }
        }
        Py_DECREF(conn);
        if (status < 0) {
            goto error;
        }
    }
    Py_DECREF(seq);
    return Py_BuildValue("(nN)", written, rest);

error:
    Py_DECREF(seq);
    Py_DECREF(rest);
    return NULL;
}

static PyMethodDef fanout_methods[] = {
    {"write_plain", (PyCFunction)(void (*)(void))write_plain, METH_FASTCALL,
     "write_plain(connections, frames, open) -> (written, rest): write frames "
     "to each open connection with nothing special about it; return how many "
     "and the list of those the Python code must handle."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fanout_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tidings.engine._fanout",
    .m_doc = "The compiled twin of the engine's fan-out loop.",
    .m_size = -1,
    .m_methods = fanout_methods,
};

PyMODINIT_FUNC
PyInit__fanout(void)
{
    static const struct {
        PyObject **name;
        const char *text;
    } names[] = {
        {&s_conn, "_conn"},
        {&s_state, "state"},
        {&s_out_opcode, "_out_opcode"},
        {&s_write_paused, "_write_paused"},
        {&s_is_client, "is_client"},
        {&s_deflate, "_deflate"},
        {&s_corked, "_corked"},
        {&s_transport, "_transport"},
        {&s_write, "write"},
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].name = PyUnicode_InternFromString(names[i].text);
        if (*names[i].name == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&fanout_module);
}
