/*
 * Compiled twins of the protocol's hot paths (see docs/speedups.md).
 *
 * Every function here has a pure-Python twin in frames.py or utf8.py, which
 * is the reference: the twins must agree on every input, including the
 * exception raised and its message. tests/protocol/test_speedups.py checks
 * that with hypothesis.
 *
 *   apply_mask(data, mask) -> bytes
 *       RFC 6455 §5.3 masking, 8 bytes at a time.
 *   parse_frame(buf, pos, expect_mask, rsv_allowed, max_payload)
 *       -> (opcode, payload, fin, rsv1, end) | frame size | None
 *       One frame of FrameParser.next_raw, payload unmasked; the whole
 *       frame's size when only its payload is incomplete, None while its
 *       header is.
 *   payload_buffer(size) -> (bytes, memoryview)
 *   grow_payload(data, filled, size) -> (bytes, memoryview)
 *   finish_payload(data, mask) -> bytes
 *       A large payload received straight into the bytes object that is
 *       then handed out, unmasked in place (FrameParser.get_buffer). The
 *       buffer grows geometrically as the payload arrives, each step a new
 *       bytes object with what came so far copied in: memory follows the
 *       bytes received, not the size a header announced.
 *   utf8_check(data, state=0) -> state
 *       UTF-8 validation without decoding: a DFA that fails at the first
 *       byte that no valid continuation can follow, exactly when CPython's
 *       incremental decoder does.
 *   Utf8IncrementalDecoder
 *       codecs' incremental UTF-8 decoder (decode, getstate, setstate,
 *       reset) without its Python layer.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

/* tidings.exceptions.ProtocolError and PayloadTooBig, looked up at import. */
static PyObject *ProtocolError;
static PyObject *PayloadTooBig;

/* Large buffers are processed without the GIL, so other threads can run. */
#define NOGIL_THRESHOLD (1 << 16)

static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t min, Py_ssize_t max)
{
    if (nargs < min || nargs > max) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd to %zd arguments (%zd given)",
                     name, min, max, nargs);
        return 0;
    }
    return 1;
}

/* -- masking (RFC 6455 §5.3) -------------------------------------------- */

static void
mask_bytes(unsigned char *out, const unsigned char *in, Py_ssize_t n,
           const unsigned char key[4])
{
    unsigned char key8[8];
    uint64_t k;
    Py_ssize_t i = 0;

    memcpy(key8, key, 4);
    memcpy(key8 + 4, key, 4);
    memcpy(&k, key8, 8);
    /* memcpy compiles to plain unaligned loads and stores; the loop is
       simple enough for the compiler to unroll or vectorize. */
    for (; i + 32 <= n; i += 32) {
        uint64_t a, b, c, d;
        memcpy(&a, in + i, 8);
        memcpy(&b, in + i + 8, 8);
        memcpy(&c, in + i + 16, 8);
        memcpy(&d, in + i + 24, 8);
        a ^= k;
        b ^= k;
        c ^= k;
        d ^= k;
        memcpy(out + i, &a, 8);
        memcpy(out + i + 8, &b, 8);
        memcpy(out + i + 16, &c, 8);
        memcpy(out + i + 24, &d, 8);
    }
    for (; i + 8 <= n; i += 8) {
        uint64_t a;
        memcpy(&a, in + i, 8);
        a ^= k;
        memcpy(out + i, &a, 8);
    }
    for (; i < n; i++) {
        out[i] = in[i] ^ key[i & 3];
    }
}

/* Copy n bytes from in to out, masked with key unless it is NULL; large
   buffers without the GIL, so other threads can run. */
static void
copy_masked(unsigned char *out, const unsigned char *in, Py_ssize_t n,
            const unsigned char *key)
{
    if (n >= NOGIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        if (key != NULL) {
            mask_bytes(out, in, n, key);
        }
        else {
            memcpy(out, in, (size_t)n);
        }
        Py_END_ALLOW_THREADS
    }
    else if (key != NULL) {
        mask_bytes(out, in, n, key);
    }
    else {
        memcpy(out, in, (size_t)n);
    }
}

/* A contiguous view of a bytes-like object. A non-contiguous one (such as
   memoryview(b)[::2]) is copied first, as bytes(data) would. */
static int
get_contiguous(PyObject *obj, Py_buffer *view, PyObject **copy)
{
    *copy = NULL;
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) == 0) {
        return 0;
    }
    if (!PyObject_CheckBuffer(obj) || !PyErr_ExceptionMatches(PyExc_BufferError)) {
        return -1;
    }
    PyErr_Clear();
    *copy = PyBytes_FromObject(obj);
    if (*copy == NULL) {
        return -1;
    }
    return PyObject_GetBuffer(*copy, view, PyBUF_SIMPLE);
}

/* The 4-byte masking key in mask_obj, copied to key. */
static int
get_mask_key(PyObject *mask_obj, unsigned char key[4])
{
    Py_buffer mask;

    if (PyObject_GetBuffer(mask_obj, &mask, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    if (mask.len != 4) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        return -1;
    }
    memcpy(key, mask.buf, 4);
    PyBuffer_Release(&mask);
    return 0;
}

static PyObject *
apply_mask(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"data", "mask", NULL};
    Py_buffer data;
    PyObject *data_obj, *mask_obj, *copy, *result = NULL;
    unsigned char key[4];

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO:apply_mask", keywords,
                                     &data_obj, &mask_obj)) {
        return NULL;
    }
    if (get_mask_key(mask_obj, key) < 0) {
        return NULL;
    }
    if (get_contiguous(data_obj, &data, &copy) < 0) {
        Py_XDECREF(copy);
        return NULL;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        copy_masked((unsigned char *)PyBytes_AS_STRING(result), data.buf, data.len,
                    key);
    }
    PyBuffer_Release(&data);
    Py_XDECREF(copy);
    return result;
}

/* -- frames out (RFC 6455 §5.2) ------------------------------------------ */

/* build_frame(opcode, payload, fin, rsv1, mask) -> bytes: the header with
   the minimal length encoding, then the payload (masked with the 4-byte
   mask unless it is None), in one new bytes object. */
static PyObject *
build_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    PyObject *copy, *result;
    unsigned char key[4], *out;
    long opcode;
    int fin, rsv1, masked;
    Py_ssize_t header;

    if (!check_nargs("build_frame", nargs, 5, 5)) {
        return NULL;
    }
    opcode = PyLong_AsLong(args[0]);
    if (opcode == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (opcode < 0 || opcode > 0x0F) {
        PyErr_SetString(PyExc_ValueError, "opcode must be 0 to 15");
        return NULL;
    }
    fin = PyObject_IsTrue(args[2]);
    rsv1 = PyObject_IsTrue(args[3]);
    if (fin < 0 || rsv1 < 0) {
        return NULL;
    }
    masked = args[4] != Py_None;
    if (masked && get_mask_key(args[4], key) < 0) {
        return NULL;
    }
    if (get_contiguous(args[1], &data, &copy) < 0) {
        Py_XDECREF(copy);
        return NULL;
    }
    header = data.len < 126 ? 2 : data.len < 65536 ? 4 : 10;
    result = PyBytes_FromStringAndSize(NULL, header + (masked ? 4 : 0) + data.len);
    if (result != NULL) {
        out = (unsigned char *)PyBytes_AS_STRING(result);
        out[0] = (unsigned char)(opcode | (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0));
        if (header == 2) {
            out[1] = (unsigned char)data.len;
        }
        else if (header == 4) {
            out[1] = 126;
            out[2] = (unsigned char)(data.len >> 8);
            out[3] = (unsigned char)data.len;
        }
        else {
            uint64_t n = (uint64_t)data.len;
            out[1] = 127;
            for (int i = 9; i >= 2; i--, n >>= 8) {
                out[i] = (unsigned char)n;
            }
        }
        out += header;
        if (masked) {
            PyBytes_AS_STRING(result)[1] |= (char)0x80;
            memcpy(out, key, 4);
            out += 4;
        }
        copy_masked(out, data.buf, data.len, masked ? key : NULL);
    }
    PyBuffer_Release(&data);
    Py_XDECREF(copy);
    return result;
}

/* -- large payloads received in place ---------------------------------- */

/* A new uninitialized bytes object of `size` bytes and a writable view of
   it. The view does not keep the bytes alive: the caller holds both, and
   hands the bytes out only once it is whole (finish_payload). */
static PyObject *
new_payload(Py_ssize_t size, PyObject **data)
{
    PyObject *view;

    /* Not initialized: the socket writes every byte before anyone reads. */
    *data = PyBytes_FromStringAndSize(NULL, size);
    if (*data == NULL) {
        return NULL;
    }
    view = PyMemoryView_FromMemory(PyBytes_AS_STRING(*data), size, PyBUF_WRITE);
    if (view == NULL) {
        Py_CLEAR(*data);
    }
    return view;
}

static PyObject *
payload_buffer(PyObject *module, PyObject *arg)
{
    Py_ssize_t size = PyNumber_AsSsize_t(arg, PyExc_OverflowError);
    PyObject *data, *view;

    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (size < 0) {
        PyErr_SetString(PyExc_ValueError, "size must not be negative");
        return NULL;
    }
    view = new_payload(size, &data);
    if (view == NULL) {
        return NULL;
    }
    return Py_BuildValue("(NN)", data, view);
}

static PyObject *
grow_payload(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t filled, size;
    PyObject *data, *view;

    if (!check_nargs("grow_payload", nargs, 3, 3)) {
        return NULL;
    }
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "data must come from payload_buffer()");
        return NULL;
    }
    filled = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (filled == -1 && PyErr_Occurred()) {
        return NULL;
    }
    size = PyNumber_AsSsize_t(args[2], PyExc_OverflowError);
    if (size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (filled < 0 || filled > PyBytes_GET_SIZE(args[0]) || filled > size) {
        PyErr_SetString(PyExc_ValueError, "filled must be within both buffers");
        return NULL;
    }
    view = new_payload(size, &data);
    if (view == NULL) {
        return NULL;
    }
    /* The one copy that growing costs; FrameParser grows by 4 times, so
       these copies add up to at most a third of the payload. */
    copy_masked((unsigned char *)PyBytes_AS_STRING(data),
                (const unsigned char *)PyBytes_AS_STRING(args[0]), filled, NULL);
    return Py_BuildValue("(NN)", data, view);
}

static PyObject *
finish_payload(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char key[4];
    unsigned char *buf;
    Py_ssize_t n;

    if (!check_nargs("finish_payload", nargs, 2, 2)) {
        return NULL;
    }
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "data must come from payload_buffer()");
        return NULL;
    }
    if (args[1] != Py_None) {
        if (get_mask_key(args[1], key) < 0) {
            return NULL;
        }
        buf = (unsigned char *)PyBytes_AS_STRING(args[0]);
        n = PyBytes_GET_SIZE(args[0]);
        /* In place: each 8 bytes are read before they are written. */
        if (n >= NOGIL_THRESHOLD) {
            Py_BEGIN_ALLOW_THREADS
            mask_bytes(buf, buf, n, key);
            Py_END_ALLOW_THREADS
        }
        else {
            mask_bytes(buf, buf, n, key);
        }
    }
    return Py_NewRef(args[0]);
}

/* -- frame header parsing (RFC 6455 §5.2) ------------------------------- */

/* "\xc2\xa7" is "§" in UTF-8; messages match FrameParser's word for word. */
#define SECTION "\xc2\xa7"

static PyObject *
raise_with(PyObject *cls, PyObject *message)
{
    if (message != NULL) {
        PyObject *exc = PyObject_CallOneArg(cls, message);
        Py_DECREF(message);
        if (exc != NULL) {
            PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
            Py_DECREF(exc);
        }
    }
    return NULL;
}

static PyObject *
protocol_error(const char *utf8_message)
{
    return raise_with(ProtocolError, PyUnicode_FromString(utf8_message));
}

/* FrameParser._check_first_byte: 0 when b0 is acceptable, else -1 with the
   ProtocolError set. */
static int
check_first_byte(unsigned int b0, unsigned long rsv_allowed)
{
    unsigned int opcode = b0 & 0x0F;
    unsigned int rsv;
    char message[160];

    if ((opcode > 0x2 && opcode < 0x8) || opcode > 0xA) {
        PyOS_snprintf(message, sizeof(message),
                      "reserved opcode 0x%x (RFC 6455 " SECTION "5.2)", opcode);
        protocol_error(message);
        return -1;
    }
    rsv = b0 & 0x70 & ~(unsigned int)(rsv_allowed & 0x70);
    if (rsv) {
        rsv >>= 4;
        PyOS_snprintf(message, sizeof(message),
                      "RSV bits 0b%d%d%d set without a negotiated extension "
                      "(RFC 6455 " SECTION "5.2)",
                      (rsv >> 2) & 1, (rsv >> 1) & 1, rsv & 1);
        protocol_error(message);
        return -1;
    }
    if (opcode >= 0x8) {
        if (!(b0 & 0x80)) {
            protocol_error("fragmented control frame (RFC 6455 " SECTION "5.5)");
            return -1;
        }
        if (b0 & 0x40) {
            protocol_error("RSV1 set on a control frame; control frames are never "
                           "compressed (RFC 7692 " SECTION "6.1)");
            return -1;
        }
    }
    return 0;
}

/* 1 when a data frame of `length` bytes exceeds max_payload (None: no limit),
   0 when it does not, -1 on error. */
static int
exceeds(unsigned long long length, PyObject *max_payload)
{
    if (max_payload == Py_None) {
        return 0;
    }
    if (PyLong_Check(max_payload)) {
        int overflow;
        long long limit = PyLong_AsLongLongAndOverflow(max_payload, &overflow);
        if (limit == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow) {
            return overflow < 0;
        }
        return limit < 0 || length > (unsigned long long)limit;
    }
    else {
        int result;
        PyObject *n = PyLong_FromUnsignedLongLong(length);
        if (n == NULL) {
            return -1;
        }
        result = PyObject_RichCompareBool(n, max_payload, Py_GT);
        Py_DECREF(n);
        return result;
    }
}

/* The payload length in the header at buf[pos:] (available bytes): 1 with
   *length and *header_size set, 0 when the header is not whole yet, -1 when
   a 64-bit length has its top bit set (RFC 6455 §5.2). */
static int
read_length(const unsigned char *buf, Py_ssize_t pos, Py_ssize_t available,
            unsigned long long *length, Py_ssize_t *header_size)
{
    *length = buf[pos + 1] & 0x7F;
    *header_size = 2;
    if (*length == 126) {
        if (available < 4) {
            return 0;
        }
        *length = ((unsigned long long)buf[pos + 2] << 8) | buf[pos + 3];
        *header_size = 4;
    }
    else if (*length == 127) {
        if (available < 10) {
            return 0;
        }
        *length = 0;
        for (int i = 2; i < 10; i++) {
            *length = (*length << 8) | buf[pos + i];
        }
        if (*length >> 63) {
            return -1;
        }
        *header_size = 10;
    }
    return 1;
}

/* A new bytes object holding the payload at buf[start:start + length],
   unmasked with the 4 bytes before it when masked. */
static PyObject *
take_payload(const unsigned char *buf, Py_ssize_t start, Py_ssize_t length,
             int masked)
{
    PyObject *payload = PyBytes_FromStringAndSize(NULL, length);

    if (payload == NULL) {
        return NULL;
    }
    if (masked) {
        mask_bytes((unsigned char *)PyBytes_AS_STRING(payload), buf + start, length,
                   buf + start - 4);
    }
    else {
        memcpy(PyBytes_AS_STRING(payload), buf + start, (size_t)length);
    }
    return payload;
}

static PyObject *
parse_frame_in(const unsigned char *buf, Py_ssize_t size, Py_ssize_t pos,
               int expect_mask, unsigned long rsv_allowed, PyObject *max_payload)
{
    Py_ssize_t available, header_size, start;
    unsigned long long length;
    unsigned int b0, b1, opcode;
    PyObject *payload, *result, *end;

    if (pos < 0 || pos > size) {
        PyErr_SetString(PyExc_ValueError, "pos is outside the buffer");
        return NULL;
    }
    available = size - pos;
    if (available < 2) {
        Py_RETURN_NONE;
    }
    b0 = buf[pos];
    b1 = buf[pos + 1];
    if (check_first_byte(b0, rsv_allowed) < 0) {
        return NULL;
    }
    if (((b1 & 0x80) != 0) != expect_mask) {
        return protocol_error(expect_mask
                                  ? "client frame is not masked (RFC 6455 " SECTION "5.1)"
                                  : "server frame is masked (RFC 6455 " SECTION "5.1)");
    }
    opcode = b0 & 0x0F;
    switch (read_length(buf, pos, available, &length, &header_size)) {
    case 0:
        Py_RETURN_NONE;
    case -1:
        return protocol_error("64-bit payload length has its most significant "
                              "bit set (RFC 6455 " SECTION "5.2)");
    }
    if (opcode >= 0x8) {
        if (length > 125) {
            char message[160];
            PyOS_snprintf(message, sizeof(message),
                          "control frame payload is %llu bytes; at most 125 are "
                          "allowed (RFC 6455 " SECTION "5.5)",
                          length);
            return protocol_error(message);
        }
    }
    else {
        int over = exceeds(length, max_payload);
        if (over < 0) {
            return NULL;
        }
        if (over) {
            return raise_with(
                PayloadTooBig,
                PyUnicode_FromFormat("frame of %llu bytes exceeds the remaining "
                                     "message size limit of %S bytes",
                                     length, max_payload));
        }
    }
    start = pos + header_size + (expect_mask ? 4 : 0);
    /* length < 2**63, so comparing with what is left cannot overflow. */
    if (start > size || length > (unsigned long long)(size - start)) {
        /* The header is whole and valid: say how long the frame is. */
        return PyLong_FromUnsignedLongLong((unsigned long long)(start - pos) + length);
    }
    payload = take_payload(buf, start, (Py_ssize_t)length, expect_mask);
    if (payload == NULL) {
        return NULL;
    }
    /* Py_BuildValue would parse its format string on every frame. */
    result = PyTuple_New(5);
    end = PyLong_FromSsize_t(start + (Py_ssize_t)length);
    if (result == NULL || end == NULL) {
        Py_XDECREF(result);
        Py_XDECREF(end);
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, PyLong_FromLong(opcode)); /* small ints are cached */
    PyTuple_SET_ITEM(result, 1, payload);
    PyTuple_SET_ITEM(result, 2, Py_NewRef((b0 & 0x80) ? Py_True : Py_False));
    PyTuple_SET_ITEM(result, 3, Py_NewRef((b0 & 0x40) ? Py_True : Py_False));
    PyTuple_SET_ITEM(result, 4, end);
    return result;
}

static PyObject *
parse_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    Py_ssize_t pos;
    int expect_mask;
    unsigned long rsv_allowed;
    PyObject *result;

    if (!check_nargs("parse_frame", nargs, 5, 5)) {
        return NULL;
    }
    pos = PyNumber_AsSsize_t(args[1], PyExc_OverflowError);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    expect_mask = PyObject_IsTrue(args[2]);
    if (expect_mask < 0) {
        return NULL;
    }
    if (!PyLong_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "rsv_allowed must be an int");
        return NULL;
    }
    /* Only the low bits matter; masking keeps Python's semantics of ~ and &
       for any int, negative or huge. */
    rsv_allowed = PyLong_AsUnsignedLongMask(args[3]);
    if (rsv_allowed == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    result = parse_frame_in(view.buf, view.len, pos, expect_mask, rsv_allowed,
                            args[4]);
    PyBuffer_Release(&view);
    return result;
}

/* parse_messages(buf, expect_mask, max_payload) -> list | None: the
   messages in buf when it holds nothing but whole, final, uncompressed text
   and binary frames, masked as expected, each within max_payload, text
   valid UTF-8: str for text, bytes for binary. Anything else (a control
   frame, a fragment, RSV bits, an incomplete frame, a protocol error) gives
   None, and the caller parses buf frame by frame as usual: this never
   raises for what a peer sends. */
static PyObject *
parse_messages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer view;
    const unsigned char *buf;
    Py_ssize_t size, pos = 0, available, header_size, start;
    unsigned long long length;
    unsigned int b0, b1;
    int expect_mask, over;
    PyObject *messages, *message, *payload;

    if (!check_nargs("parse_messages", nargs, 3, 3)) {
        return NULL;
    }
    expect_mask = PyObject_IsTrue(args[1]);
    if (expect_mask < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    buf = view.buf;
    size = view.len;
    messages = PyList_New(0);
    if (messages == NULL) {
        goto error;
    }
    while (pos < size) {
        available = size - pos;
        if (available < 2) {
            goto other;
        }
        b0 = buf[pos];
        b1 = buf[pos + 1];
        /* FIN, no RSV bit, text or binary; masked as expected. */
        if ((b0 != 0x81 && b0 != 0x82) || ((b1 & 0x80) != 0) != expect_mask) {
            goto other;
        }
        if (read_length(buf, pos, available, &length, &header_size) != 1) {
            goto other;
        }
        over = exceeds(length, args[2]);
        if (over < 0) {
            goto error;
        }
        start = pos + header_size + (expect_mask ? 4 : 0);
        if (over || start > size || length > (unsigned long long)(size - start)) {
            goto other;
        }
        payload = take_payload(buf, start, (Py_ssize_t)length, expect_mask);
        if (payload == NULL) {
            goto error;
        }
        if (b0 == 0x81) {
            message = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(payload),
                                           (Py_ssize_t)length, NULL);
            Py_DECREF(payload);
            if (message == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    goto error;
                }
                PyErr_Clear();
                goto other;
            }
        }
        else {
            message = payload;
        }
        if (PyList_Append(messages, message) < 0) {
            Py_DECREF(message);
            goto error;
        }
        Py_DECREF(message);
        pos = start + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    return messages;
other:
    Py_DECREF(messages);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
error:
    Py_XDECREF(messages);
    PyBuffer_Release(&view);
    return NULL;
}

/* -- UTF-8 (RFC 3629; RFC 6455 §8.1) ----------------------------------- */

/*
 * DFA states. ACCEPT is a code point boundary; the others wait for
 * continuation bytes. The ranges are those of Unicode's table 3-7 of
 * well-formed byte sequences, which CPython's decoder implements.
 *
 * SURROGATE reproduces one detail of CPython's incremental decoder: when the
 * input ends with ED A0..BF (the start of an encoded surrogate, which can
 * never be valid) and the input is not final, CPython keeps the two bytes
 * and reports the error with the next byte or at the end. Agreeing with the
 * reference matters more than failing one fragment earlier.
 */
enum {
    UTF8_REJECT = -1,
    UTF8_ACCEPT = 0,
    UTF8_TAIL1,     /* one continuation byte 80..BF to go */
    UTF8_TAIL2,     /* two to go */
    UTF8_TAIL3,     /* three to go */
    UTF8_E0,        /* after E0: A0..BF (no overlong) */
    UTF8_ED,        /* after ED: 80..9F (no surrogate) */
    UTF8_F0,        /* after F0: 90..BF (no overlong) */
    UTF8_F4,        /* after F4: 80..8F (nothing above U+10FFFF) */
    UTF8_SURROGATE, /* after ED A0..BF: any byte fails */
    UTF8_STATES
};

/* Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 never valid
   (C0, C1, F5..FF), 5 C2..DF, 6 E0, 7 E1..EC and EE..EF, 8 ED, 9 F0,
   10 F1..F3, 11 F4. */
#define R UTF8_REJECT
static const signed char utf8_next[UTF8_STATES][12] = {
    /*                  00  80  90  A0  xx  C2  E0  E1  ED  F0  F1  F4 */
    [UTF8_ACCEPT]    = {0,  R,  R,  R,  R,  UTF8_TAIL1, UTF8_E0, UTF8_TAIL2,
                        UTF8_ED, UTF8_F0, UTF8_TAIL3, UTF8_F4},
    [UTF8_TAIL1]     = {R,  0,  0,  0,  R,  R,  R,  R,  R,  R,  R,  R},
    [UTF8_TAIL2]     = {R,  UTF8_TAIL1, UTF8_TAIL1, UTF8_TAIL1, R,  R,  R,  R,
                        R,  R,  R,  R},
    [UTF8_TAIL3]     = {R,  UTF8_TAIL2, UTF8_TAIL2, UTF8_TAIL2, R,  R,  R,  R,
                        R,  R,  R,  R},
    [UTF8_E0]        = {R,  R,  R,  UTF8_TAIL1, R,  R,  R,  R,  R,  R,  R,  R},
    [UTF8_ED]        = {R,  UTF8_TAIL1, UTF8_TAIL1, UTF8_SURROGATE, R,  R,  R,
                        R,  R,  R,  R,  R},
    [UTF8_F0]        = {R,  R,  UTF8_TAIL2, UTF8_TAIL2, R,  R,  R,  R,  R,  R,
                        R,  R},
    [UTF8_F4]        = {R,  UTF8_TAIL2, R,  R,  R,  R,  R,  R,  R,  R,  R,  R},
    [UTF8_SURROGATE] = {R,  R,  R,  R,  R,  R,  R,  R,  R,  R,  R,  R},
};
#undef R

/* The DFA as a "shift DFA": each state is a multiple of 6 (its index times
   6), and utf8_row[byte] holds, at bit offset `state`, the next state. One
   step is a table load that does not depend on the state, a shift and a
   mask, so the dependency chain is two cheap instructions per byte. With
   10 states the 60 bits fit in a uint64. */
#define UTF8_SHIFT(state) ((state) == UTF8_REJECT ? (UTF8_STATES) * 6 : (state) * 6)
static uint64_t utf8_row[256];

static void
utf8_init_rows(void)
{
    int b, state;
    for (b = 0; b < 256; b++) {
        unsigned char c;
        uint64_t row = 0;
        if (b < 0x80) c = 0;
        else if (b < 0x90) c = 1;
        else if (b < 0xA0) c = 2;
        else if (b < 0xC0) c = 3;
        else if (b < 0xC2) c = 4;
        else if (b < 0xE0) c = 5;
        else if (b == 0xE0) c = 6;
        else if (b == 0xED) c = 8;
        else if (b < 0xF0) c = 7;
        else if (b == 0xF0) c = 9;
        else if (b < 0xF4) c = 10;
        else if (b == 0xF4) c = 11;
        else c = 4;
        for (state = 0; state < UTF8_STATES; state++) {
            row |= (uint64_t)UTF8_SHIFT(utf8_next[state][c]) << UTF8_SHIFT(state);
        }
        /* REJECT, the last state, leads to itself. */
        row |= (uint64_t)UTF8_SHIFT(UTF8_REJECT) << UTF8_SHIFT(UTF8_REJECT);
        utf8_row[b] = row;
    }
}

/* Validate n bytes from `state`; return the state after them. */
static int
utf8_run(int state, const unsigned char *s, Py_ssize_t n)
{
    const uint64_t high = 0x8080808080808080ULL;
    uint64_t shift = UTF8_SHIFT(state);
    Py_ssize_t i = 0;

    while (i + 16 <= n) {
        int k;
        if (shift == 0) {
            /* At a code point boundary, ASCII goes 16 bytes at a time. */
            uint64_t a, b;
            memcpy(&a, s + i, 8);
            memcpy(&b, s + i + 8, 8);
            if (!((a | b) & high)) {
                i += 16;
                continue;
            }
        }
        for (k = 0; k < 16; k++) {
            shift = (utf8_row[s[i + k]] >> shift) & 63;
        }
        i += 16;
        if (shift == UTF8_SHIFT(UTF8_REJECT)) {
            return UTF8_REJECT;
        }
    }
    for (; i < n; i++) {
        shift = (utf8_row[s[i]] >> shift) & 63;
    }
    return shift == UTF8_SHIFT(UTF8_REJECT) ? UTF8_REJECT : (int)(shift / 6);
}

static PyObject *
utf8_check(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer data;
    PyObject *copy;
    long state = UTF8_ACCEPT;

    if (!check_nargs("utf8_check", nargs, 1, 2)) {
        return NULL;
    }
    if (nargs == 2) {
        state = PyLong_AsLong(args[1]);
        if (state == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (state < UTF8_REJECT || state >= UTF8_STATES) {
            PyErr_Format(PyExc_ValueError, "invalid UTF-8 validation state %ld",
                         state);
            return NULL;
        }
    }
    if (state == UTF8_REJECT) {
        return PyLong_FromLong(UTF8_REJECT);
    }
    if (get_contiguous(args[0], &data, &copy) < 0) {
        Py_XDECREF(copy);
        return NULL;
    }
    if (data.len >= NOGIL_THRESHOLD) {
        Py_BEGIN_ALLOW_THREADS
        state = utf8_run((int)state, data.buf, data.len);
        Py_END_ALLOW_THREADS
    }
    else {
        state = utf8_run((int)state, data.buf, data.len);
    }
    PyBuffer_Release(&data);
    Py_XDECREF(copy);
    return PyLong_FromLong(state);
}

/* -- incremental UTF-8 decoder ------------------------------------------ */

/*
 * The same results and errors as codecs.getincrementaldecoder("utf-8")(),
 * since the decoding is CPython's own (PyUnicode_DecodeUTF8Stateful) on the
 * same bytes: what goes is codecs.BufferedIncrementalDecoder's Python layer.
 * The DFA above is not used here: checking before decoding would only add a
 * pass, as CPython's decoder already fails as early.
 */
typedef struct {
    PyObject_HEAD
    unsigned char pending[4];
    Py_ssize_t npending;
} Utf8DecoderObject;

static PyObject *
decode_stateful(const char *s, Py_ssize_t n, int final, Py_ssize_t *consumed)
{
    if (final) {
        *consumed = n;
        return PyUnicode_DecodeUTF8Stateful(s, n, "strict", NULL);
    }
    return PyUnicode_DecodeUTF8Stateful(s, n, "strict", consumed);
}

static int
keep_pending(Utf8DecoderObject *self, const unsigned char *s, Py_ssize_t n)
{
    if (n > (Py_ssize_t)sizeof(self->pending)) {
        /* CPython never leaves more than 3 bytes undecoded. */
        PyErr_SetString(PyExc_SystemError, "UTF-8 decoder kept too many bytes");
        return -1;
    }
    memcpy(self->pending, s, (size_t)n);
    self->npending = n;
    return 0;
}

static PyObject *
utf8_decode_in(Utf8DecoderObject *self, const unsigned char *s, Py_ssize_t n,
               int final)
{
    unsigned char small[256];
    unsigned char *joined;
    Py_ssize_t size, consumed;
    PyObject *result;

    if (self->npending == 0) {
        result = decode_stateful((const char *)s, n, final, &consumed);
        if (result != NULL && keep_pending(self, s + consumed, n - consumed) < 0) {
            Py_CLEAR(result);
        }
        return result;
    }
    /* A code point was split: decode the kept bytes and the input together,
       as codecs does, but copy into a buffer of our own. */
    size = self->npending + n;
    if (size <= (Py_ssize_t)sizeof(small)) {
        joined = small;
    }
    else {
        joined = PyMem_Malloc((size_t)size);
        if (joined == NULL) {
            return PyErr_NoMemory();
        }
    }
    memcpy(joined, self->pending, (size_t)self->npending);
    memcpy(joined + self->npending, s, (size_t)n);
    result = decode_stateful((const char *)joined, size, final, &consumed);
    if (result != NULL &&
        keep_pending(self, joined + consumed, size - consumed) < 0) {
        Py_CLEAR(result);
    }
    if (joined != small) {
        PyMem_Free(joined);
    }
    return result;
}

static PyObject *
Utf8Decoder_decode(Utf8DecoderObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"input", "final", NULL};
    Py_buffer data;
    int final = 0;
    PyObject *result;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|p:decode", keywords, &data,
                                     &final)) {
        return NULL;
    }
    result = utf8_decode_in(self, data.buf, data.len, final);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *
Utf8Decoder_getstate(Utf8DecoderObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("(y#i)", (const char *)self->pending, self->npending, 0);
}

static PyObject *
Utf8Decoder_setstate(Utf8DecoderObject *self, PyObject *state)
{
    Py_buffer pending;
    int flag;

    if (!PyArg_ParseTuple(state, "y*i:setstate", &pending, &flag)) {
        return NULL;
    }
    if (pending.len > 3) {
        PyBuffer_Release(&pending);
        PyErr_SetString(PyExc_ValueError, "at most 3 undecoded bytes");
        return NULL;
    }
    memcpy(self->pending, pending.buf, (size_t)pending.len);
    self->npending = pending.len;
    PyBuffer_Release(&pending);
    Py_RETURN_NONE;
}

static PyObject *
Utf8Decoder_reset(Utf8DecoderObject *self, PyObject *Py_UNUSED(ignored))
{
    self->npending = 0;
    Py_RETURN_NONE;
}

static PyObject *
Utf8Decoder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"errors", NULL};
    const char *errors = "strict";
    Utf8DecoderObject *self;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|s:Utf8IncrementalDecoder",
                                     keywords, &errors)) {
        return NULL;
    }
    if (strcmp(errors, "strict") != 0) {
        PyErr_SetString(PyExc_ValueError, "only errors='strict' is supported");
        return NULL;
    }
    self = (Utf8DecoderObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->npending = 0;
    }
    return (PyObject *)self;
}

static PyMethodDef Utf8Decoder_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))Utf8Decoder_decode,
     METH_VARARGS | METH_KEYWORDS,
     "decode(input, final=False) -> str: decode the next bytes; keep a split "
     "code point for the next call."},
    {"getstate", (PyCFunction)Utf8Decoder_getstate, METH_NOARGS,
     "getstate() -> (bytes, 0): the undecoded bytes."},
    {"setstate", (PyCFunction)Utf8Decoder_setstate, METH_O,
     "setstate((bytes, int)): restore a state from getstate()."},
    {"reset", (PyCFunction)Utf8Decoder_reset, METH_NOARGS,
     "reset(): forget undecoded bytes."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject Utf8DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tidings.protocol._speedups.Utf8IncrementalDecoder",
    .tp_basicsize = sizeof(Utf8DecoderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "codecs' incremental UTF-8 decoder (errors='strict'), in C.",
    .tp_methods = Utf8Decoder_methods,
    .tp_new = Utf8Decoder_new,
};

/* -- module ------------------------------------------------------------- */

static PyMethodDef speedups_methods[] = {
    {"apply_mask", (PyCFunction)(void (*)(void))apply_mask,
     METH_VARARGS | METH_KEYWORDS,
     "apply_mask(data, mask) -> bytes: XOR data with the 4-byte mask repeated "
     "(RFC 6455 5.3)."},
    {"build_frame", (PyCFunction)(void (*)(void))build_frame, METH_FASTCALL,
     "build_frame(opcode, payload, fin, rsv1, mask) -> bytes: one frame, its "
     "payload masked with the 4-byte mask unless mask is None."},
    {"parse_frame", (PyCFunction)(void (*)(void))parse_frame, METH_FASTCALL,
     "parse_frame(buf, pos, expect_mask, rsv_allowed, max_payload) -> "
     "(opcode, payload, fin, rsv1, end) | frame size | None: parse the frame "
     "at buf[pos:]."},
    {"parse_messages", (PyCFunction)(void (*)(void))parse_messages, METH_FASTCALL,
     "parse_messages(buf, expect_mask, max_payload) -> list | None: the "
     "messages in buf when it holds only whole, final, uncompressed data "
     "frames; None for anything else."},
    {"payload_buffer", (PyCFunction)payload_buffer, METH_O,
     "payload_buffer(size) -> (bytes, memoryview): a new bytes object to "
     "receive a payload into through the writable view; hold both."},
    {"grow_payload", (PyCFunction)(void (*)(void))grow_payload, METH_FASTCALL,
     "grow_payload(data, filled, size) -> (bytes, memoryview): a new bytes "
     "object of size bytes starting with the first filled bytes of data "
     "(from payload_buffer() or grow_payload()), and a writable view of it."},
    {"finish_payload", (PyCFunction)(void (*)(void))finish_payload, METH_FASTCALL,
     "finish_payload(data, mask) -> bytes: unmask data from payload_buffer() "
     "in place (mask None: leave it) and return it."},
    {"utf8_check", (PyCFunction)(void (*)(void))utf8_check, METH_FASTCALL,
     "utf8_check(data, state=0) -> int: validate UTF-8 from state; 0 is a "
     "code point boundary, -1 invalid, other values mid code point."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tidings.protocol._speedups",
    .m_doc = "Compiled twins of tidings.protocol's hot paths.",
    .m_size = -1,
    .m_methods = speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *module, *exceptions;

    utf8_init_rows();
    exceptions = PyImport_ImportModule("tidings.exceptions");
    if (exceptions == NULL) {
        return NULL;
    }
    ProtocolError = PyObject_GetAttrString(exceptions, "ProtocolError");
    PayloadTooBig = PyObject_GetAttrString(exceptions, "PayloadTooBig");
    Py_DECREF(exceptions);
    if (ProtocolError == NULL || PayloadTooBig == NULL) {
        return NULL;
    }
    if (PyType_Ready(&Utf8DecoderType) < 0) {
        return NULL;
    }
    module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    Py_INCREF(&Utf8DecoderType);
    if (PyModule_AddObject(module, "Utf8IncrementalDecoder",
                           (PyObject *)&Utf8DecoderType) < 0) {
        Py_DECREF(&Utf8DecoderType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "UTF8_ACCEPT", UTF8_ACCEPT) < 0 ||
        PyModule_AddIntConstant(module, "UTF8_REJECT", UTF8_REJECT) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
