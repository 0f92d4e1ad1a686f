/*
 * The compiled twin of the engine's fan-out loop (see docs/speedups.md).
 *
 * tidings.engine.broadcast._py_write_plain is the reference; the twins must
 * write the same bytes to the same transports and return the same result.
 * tests/engine/test_broadcast.py runs its tests on both.
 *
 *   write_plain(connections, frames, open, compressed) -> (written, rest)
 *       For each WebSocket of connections whose protocol state is open and
 *       that is not in the middle of a fragmented message: when it has
 *       nothing special about it (a server side, nothing corked, writing
 *       not paused, a transport), frames are written (write_frames), or
 *       compressed[send_key] where its permessage-deflate compresses each
 *       message alone (compressed compresses on a miss); otherwise the
 *       connection is put in rest for the Python code to handle. The
 *       others are skipped.
 *
 * This loop runs once per subscriber of every publication: in Python it
 * costs more than the hub's whole share of a delivery besides the system
 * call. It reads the same slots of WebSocket and of the protocol's
 * Connection that the Python twin reads, by name.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef _WIN32
#include <errno.h>
#include <sys/socket.h>
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: Python ignores SIGPIPE anyway */
#endif
#endif

static PyObject *s_conn, *s_state, *s_out_opcode, *s_write_paused,
    *s_is_client, *s_deflate, *s_send_key, *s_corked, *s_transport, *s_fd,
    *s_write, *s_is_closing, *s_get_write_buffer_size;

/* Write frames (bytes) to transport, straight to its socket fd when there
 * is one and the transport holds nothing, so that order is kept: a
 * send() costs less than the transport's write path and the write() system
 * call underneath it. What the socket does not take goes to the transport,
 * which then waits for the socket, or learns of its error. Return 0, or -1
 * on error. */
static int
write_frames(PyObject *transport, PyObject *fd_obj, PyObject *frames)
{
    PyObject *result, *rest = frames;
    long fd = PyLong_AsLong(fd_obj);

    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
#ifndef _WIN32
    if (fd >= 0 && PyBytes_CheckExact(frames)) {
        Py_ssize_t size, length = PyBytes_GET_SIZE(frames), n;
        int closing;

        /* A closing transport may have closed the descriptor already. */
        result = PyObject_CallMethodNoArgs(transport, s_is_closing);
        if (result == NULL) {
            return -1;
        }
        closing = PyObject_IsTrue(result);
        Py_DECREF(result);
        if (closing < 0) {
            return -1;
        }
        result = closing ? NULL
                         : PyObject_CallMethodNoArgs(transport,
                                                     s_get_write_buffer_size);
        if (!closing) {
            if (result == NULL) {
                return -1;
            }
            size = PyLong_AsSsize_t(result);
            Py_DECREF(result);
            if (size == -1 && PyErr_Occurred()) {
                return -1;
            }
            if (size == 0) {
                n = send((int)fd, PyBytes_AS_STRING(frames), (size_t)length,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n == length) {
                    return 0;
                }
                if (n > 0) {
                    rest = PyBytes_FromStringAndSize(
                        PyBytes_AS_STRING(frames) + n, length - n);
                    if (rest == NULL) {
                        return -1;
                    }
                }
            }
        }
    }
#endif
    result = PyObject_CallMethodOneArg(transport, s_write, rest);
    if (rest != frames) {
        Py_DECREF(rest);
    }
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Return 1 when obj.name is true, 0 when it is not, -1 on error. */
static int
attr_is(PyObject *obj, PyObject *name)
{
    PyObject *value = PyObject_GetAttr(obj, name);
    int result;

    if (value == NULL) {
        return -1;
    }
    result = PyObject_IsTrue(value);
    Py_DECREF(value);
    return result;
}

/* Return 1 when ws needs the Python code, 0 when it can be written to
 * (*transport then holds a new reference), -1 on error. */
static int
needs_python(PyObject *ws, PyObject *conn, PyObject **transport)
{
    PyObject *value;
    int special;

    *transport = NULL;
    if ((special = attr_is(ws, s_write_paused)) != 0 ||
        (special = attr_is(ws, s_corked)) != 0 ||
        (special = attr_is(conn, s_is_client)) != 0) {
        return special;
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

/* Return a new reference to what conn is sent: frames, or where its
 * permessage-deflate compresses each message alone, compressed[send_key];
 * NULL on error. */
static PyObject *
frames_for(PyObject *conn, PyObject *frames, PyObject *compressed)
{
    PyObject *deflate, *key, *out;

    deflate = PyObject_GetAttr(conn, s_deflate);
    if (deflate == NULL) {
        return NULL;
    }
    key = deflate == Py_None ? Py_NewRef(Py_None)
                             : PyObject_GetAttr(deflate, s_send_key);
    Py_DECREF(deflate);
    if (key == NULL) {
        return NULL;
    }
    out = key == Py_None ? Py_NewRef(frames) : PyObject_GetItem(compressed, key);
    Py_DECREF(key);
    return out;
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
    PyObject *seq, *rest, *frames, *open, *compressed, *ws, *conn, *transport,
        *fd, *data;
    Py_ssize_t written = 0, n;
    int status;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "write_plain(connections, frames, "
                                         "open, compressed) takes 4 arguments");
        return NULL;
    }
    frames = args[1];
    open = args[2];
    compressed = args[3];
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
        /* Held: a write's callbacks might change a list passed in. */
        ws = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(ws);
        conn = PyObject_GetAttr(ws, s_conn);
        if (conn == NULL) {
            Py_DECREF(ws);
            goto error;
        }
        status = can_send(conn, open);
        if (status == 1) {
            status = needs_python(ws, conn, &transport);
            if (status == 0) {
                fd = PyObject_GetAttr(ws, s_fd);
                data = fd != NULL ? frames_for(conn, frames, compressed) : NULL;
                status = data != NULL ? write_frames(transport, fd, data) : -1;
                Py_XDECREF(data);
                Py_XDECREF(fd);
                Py_DECREF(transport);
                written += status == 0;
            }
            else if (status == 1 && PyList_Append(rest, ws) < 0) {
                status = -1;
            }
        }
        Py_DECREF(conn);
        Py_DECREF(ws);
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
     "write_plain(connections, frames, open, compressed) -> (written, rest): "
     "write frames (or compressed[send_key] where deflate compresses each "
     "message alone) to each open connection with nothing special about it; "
     "return how many and the list of those the Python code must handle."},
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
        {&s_send_key, "send_key"},
        {&s_corked, "_corked"},
        {&s_transport, "_transport"},
        {&s_fd, "_fd"},
        {&s_write, "write"},
        {&s_is_closing, "is_closing"},
        {&s_get_write_buffer_size, "get_write_buffer_size"},
    };

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].name = PyUnicode_InternFromString(names[i].text);
        if (*names[i].name == NULL) {
            return NULL;
        }
    }
    return PyModule_Create(&fanout_module);
}
