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
 * Connection that the Python twin reads, straight from where the type's
 * __slots__ keep them (see Slot), not through attribute lookup.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#ifndef Py_T_OBJECT_EX /* before Python 3.12 */
#include <structmember.h>
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

#ifndef _WIN32
#include <errno.h>
#include <sys/socket.h>
#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0 /* macOS: Python ignores SIGPIPE anyway */
#endif
#endif

static PyObject *s_send_key, *s_write, *s_is_closing, *s_get_write_buffer_size;

/* An attribute read once per subscriber. Found through its name, it costs
 * a type lookup and a descriptor call; most of the loop's own time went
 * there (perf: PyMember_GetOne). Where the type keeps it in a __slots__
 * slot, it is read from the slot's offset, found once per type. */
typedef struct {
    const char *text;
    PyObject *name;
    PyTypeObject *type; /* the type offset was found for (held), or NULL */
    Py_ssize_t offset;  /* in its instances; -1: not a plain slot */
} Slot;

static Slot conn_ = {"_conn"}, state_ = {"state"},
            out_opcode_ = {"_out_opcode"}, write_paused_ = {"_write_paused"},
            corked_ = {"_corked"}, is_client_ = {"is_client"},
            deflate_ = {"_deflate"}, transport_ = {"_transport"}, fd_ = {"_fd"},
            unsent_ = {"_unsent"};

static void
find_offset(Slot *slot, PyTypeObject *type)
{
    PyObject *descr = PyObject_GetAttr((PyObject *)type, slot->name);
    PyMemberDef *member;

    slot->offset = -1;
    if (descr == NULL) {
        PyErr_Clear(); /* the read by name below raises it again */
    }
    else {
        if (Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            member = ((PyMemberDescrObject *)descr)->d_member;
            if (member->type == Py_T_OBJECT_EX) {
                slot->offset = member->offset;
            }
        }
        Py_DECREF(descr);
    }
    Py_INCREF(type);
    Py_XSETREF(slot->type, type);
}

/* obj.<slot> (a new reference), or NULL with an error. */
static PyObject *
get(PyObject *obj, Slot *slot)
{
    PyObject *value;

    if (Py_TYPE(obj) != slot->type) {
        find_offset(slot, Py_TYPE(obj));
    }
    if (slot->offset >= 0) {
        value = *(PyObject **)((char *)obj + slot->offset);
        if (value != NULL) {
            return Py_NewRef(value);
        }
    }
    return PyObject_GetAttr(obj, slot->name); /* raises if unset */
}

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#else
#define PREFETCH(address) ((void)(address))
#endif

/* What a subscriber's turn reads is in cold memory: the kernel's send path
 * for the one before evicted it. Asking for it a turn or two ahead lets
 * those reads overlap the system call. A prefetch never faults, so the
 * addresses need only be right for the usual types. */
static void
prefetch_slots(PyObject *obj, Slot *const *slots, size_t count)
{
    PREFETCH(obj);
    for (size_t i = 0; i < count; i++) {
        if (slots[i]->offset >= 0) {
            PREFETCH((char *)obj + slots[i]->offset);
        }
    }
}

static Slot *const ws_slots[] = {&conn_, &write_paused_, &corked_, &transport_,
                                 &fd_, &unsent_};
static Slot *const conn_slots[] = {&state_, &out_opcode_, &is_client_,
                                   &deflate_};

/* Prefetch what ws (prefetched itself a turn before) refers to. */
static void
prefetch_referents(PyObject *ws)
{
    PyObject *conn, *transport, *fd;

    if (Py_TYPE(ws) != conn_.type || conn_.offset < 0 ||
        transport_.type != conn_.type || transport_.offset < 0 ||
        fd_.type != conn_.type || fd_.offset < 0) {
        return;
    }
    conn = *(PyObject **)((char *)ws + conn_.offset);
    transport = *(PyObject **)((char *)ws + transport_.offset);
    fd = *(PyObject **)((char *)ws + fd_.offset);
    if (conn != NULL) {
        prefetch_slots(conn, conn_slots, sizeof(conn_slots) / sizeof(conn_slots[0]));
    }
    if (transport != NULL) {
        PREFETCH(transport);
        PREFETCH((char *)transport + 64);
        PREFETCH((char *)transport + 128);
    }
    if (fd != NULL) {
        PREFETCH(fd);
    }
}

/* Return 1 when obj.<slot> is true, 0 when it is not, -1 on error. */
static int
attr_is(PyObject *obj, Slot *slot)
{
    PyObject *value = get(obj, slot);
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
    if ((special = attr_is(ws, &write_paused_)) != 0 ||
        (special = attr_is(ws, &corked_)) != 0 ||
        (special = attr_is(conn, &is_client_)) != 0) {
        return special;
    }
    value = get(ws, &transport_);
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

/* Return 1 when transport may hold bytes not yet sent, 0 when it holds
 * none, -1 on error. ws._unsent says it holds none without asking it. */
static int
holds_bytes(PyObject *ws, PyObject *transport)
{
    PyObject *result;
    Py_ssize_t size;
    int unsent = attr_is(ws, &unsent_);

    if (unsent != 1) {
        return unsent;
    }
    result = PyObject_CallMethodNoArgs(transport, s_get_write_buffer_size);
    if (result == NULL) {
        return -1;
    }
    size = PyLong_AsSsize_t(result);
    Py_DECREF(result);
    if (size == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (size > 0) {
        return 1;
    }
    return PyObject_SetAttr(ws, unsent_.name, Py_False);
}

/* Write frames (bytes) to ws's transport, straight to its socket fd when
 * there is one and the transport holds nothing, so that order is kept: a
 * send() costs less than the transport's write path and the write() system
 * call underneath it. What the socket does not take goes to the transport,
 * which then waits for the socket, or learns of its error. Return 0, or -1
 * on error. */
static int
write_frames(PyObject *ws, PyObject *transport, PyObject *fd_obj,
             PyObject *frames)
{
    PyObject *result, *rest = frames;
    long fd = PyLong_AsLong(fd_obj);

    if (fd == -1 && PyErr_Occurred()) {
        return -1;
    }
#ifndef _WIN32
    if (fd >= 0 && PyBytes_CheckExact(frames)) {
        Py_ssize_t length = PyBytes_GET_SIZE(frames), n;
        int busy;

        /* A closing transport may have closed the descriptor already. */
        result = PyObject_CallMethodNoArgs(transport, s_is_closing);
        if (result == NULL) {
            return -1;
        }
        busy = PyObject_IsTrue(result);
        Py_DECREF(result);
        if (busy == 0) {
            busy = holds_bytes(ws, transport);
        }
        if (busy < 0) {
            return -1;
        }
        if (busy == 0) {
            n = send((int)fd, PyBytes_AS_STRING(frames), (size_t)length,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n == length) {
                return 0;
            }
            if (n > 0) {
                rest = PyBytes_FromStringAndSize(PyBytes_AS_STRING(frames) + n,
                                                 length - n);
                if (rest == NULL) {
                    return -1;
                }
            }
        }
    }
#endif
    if (PyObject_SetAttr(ws, unsent_.name, Py_True) < 0) {
        result = NULL;
    }
    else {
        result = PyObject_CallMethodOneArg(transport, s_write, rest);
    }
    if (rest != frames) {
        Py_DECREF(rest);
    }
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* Return a new reference to what conn is sent: frames, or where its
 * permessage-deflate compresses each message alone, compressed[send_key];
 * NULL on error. */
static PyObject *
frames_for(PyObject *conn, PyObject *frames, PyObject *compressed)
{
    PyObject *deflate, *key, *out;

    deflate = get(conn, &deflate_);
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

    value = get(conn, &state_);
    if (value == NULL) {
        return -1;
    }
    ok = value == open;
    Py_DECREF(value);
    if (!ok) {
        return 0;
    }
    value = get(conn, &out_opcode_);
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
        if (i + 2 < n) {
            prefetch_slots(PySequence_Fast_GET_ITEM(seq, i + 2), ws_slots,
                           sizeof(ws_slots) / sizeof(ws_slots[0]));
        }
        if (i + 1 < n) {
            prefetch_referents(PySequence_Fast_GET_ITEM(seq, i + 1));
        }
        /* Held: a write's callbacks might change a list passed in. */
        ws = PySequence_Fast_GET_ITEM(seq, i);
        Py_INCREF(ws);
        conn = get(ws, &conn_);
        if (conn == NULL) {
            Py_DECREF(ws);
            goto error;
        }
        status = can_send(conn, open);
        if (status == 1) {
            status = needs_python(ws, conn, &transport);
            if (status == 0) {
                fd = get(ws, &fd_);
                data = fd != NULL ? frames_for(conn, frames, compressed) : NULL;
                status = data != NULL ? write_frames(ws, transport, fd, data) : -1;
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
        {&s_send_key, "send_key"},
        {&s_write, "write"},
        {&s_is_closing, "is_closing"},
        {&s_get_write_buffer_size, "get_write_buffer_size"},
    };
    static Slot *slots[] = {&conn_,    &state_,   &out_opcode_,
                            &write_paused_, &corked_, &is_client_,
                            &deflate_, &transport_, &fd_, &unsent_};

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        *names[i].name = PyUnicode_InternFromString(names[i].text);
        if (*names[i].name == NULL) {
            return NULL;
        }
    }
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++) {
        slots[i]->name = PyUnicode_InternFromString(slots[i]->text);
        if (slots[i]->name == NULL) {
            return NULL;
        }
        slots[i]->offset = -1;
    }
    return PyModule_Create(&fanout_module);
}
