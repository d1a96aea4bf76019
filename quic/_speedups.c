/* The forwarding hot path's C-sized jobs: sealing a short-header QUIC packet with AES-GCM and
 * AES header protection (RFC 9001 5.3, 5.4), opening a listener's packet the same way, and
 * sending a list of packets in one sendmmsg call.
 *
 * Optional: setup.py builds it when a compiler and OpenSSL's headers are there; without it the
 * same work runs in Python (salon.quic.fastpath.DatagramFastPath.protect, salon.quic.sendbatch
 * through ctypes), and the tests compare the bytes of both paths.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/evp.h>

#define NONCE_SIZE 12
#define TAG_SIZE 16
#define SAMPLE_SIZE 16
#define PN_MAX 4
#define MAX_BATCH 256

/* ------------------------------------------------------------------ keys of one direction */

/* A sealer and an opener hold the same keys; only the AEAD context's direction differs. */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *aead;
    EVP_CIPHER_CTX *hp;
    unsigned char iv[NONCE_SIZE];
} PacketKeys;

typedef PacketKeys PacketSealer;
typedef PacketKeys PacketOpener;

static void PacketKeys_dealloc(PacketKeys *self) {
    if (self->aead) EVP_CIPHER_CTX_free(self->aead);
    if (self->hp) EVP_CIPHER_CTX_free(self->hp);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int PacketKeys_init(PacketKeys *self, PyObject *args, PyObject *kwds, int encrypt) {
    static char *kwlist[] = {"key", "iv", "hp_key", NULL};
    Py_buffer key, iv, hp_key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*y*", kwlist, &key, &iv, &hp_key)) return -1;
    int result = -1;
    const EVP_CIPHER *aead_cipher = NULL, *hp_cipher = NULL;
    if (key.len == 16) aead_cipher = EVP_aes_128_gcm();
    else if (key.len == 32) aead_cipher = EVP_aes_256_gcm();
    if (hp_key.len == 16) hp_cipher = EVP_aes_128_ecb();
    else if (hp_key.len == 32) hp_cipher = EVP_aes_256_ecb();
    if (aead_cipher == NULL || hp_cipher == NULL || iv.len != NONCE_SIZE) {
        PyErr_SetString(PyExc_ValueError, "AES-128/256 keys and a 12-byte IV expected");
        goto done;
    }
    if (self->aead == NULL) self->aead = EVP_CIPHER_CTX_new();
    if (self->hp == NULL) self->hp = EVP_CIPHER_CTX_new();
    if (self->aead == NULL || self->hp == NULL ||
        !EVP_CipherInit_ex(self->aead, aead_cipher, NULL, key.buf, NULL, encrypt) ||
        !EVP_EncryptInit_ex(self->hp, hp_cipher, NULL, hp_key.buf, NULL) ||
        !EVP_CIPHER_CTX_set_padding(self->hp, 0)) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the keys");
        goto done;
    }
    memcpy(self->iv, iv.buf, NONCE_SIZE);
    result = 0;
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&iv);
    PyBuffer_Release(&hp_key);
    return result;
}

/* ------------------------------------------------------------------ PacketSealer */

static int PacketSealer_init(PacketSealer *self, PyObject *args, PyObject *kwds) {
    return PacketKeys_init(self, args, kwds, 1);
}

/* Seal header + payload into out (header copied, payload encrypted, tag appended), then apply
 * header protection. Returns 0 on success. */
static int seal_into(PacketSealer *self, const unsigned char *header, Py_ssize_t header_len,
                     const unsigned char *payload, Py_ssize_t payload_len,
                     unsigned long long packet_number, unsigned char *out) {
    unsigned char nonce[NONCE_SIZE];
    unsigned char mask[SAMPLE_SIZE + 16];
    int len = 0;
    memcpy(nonce, self->iv, NONCE_SIZE);
    for (int i = 0; i < 8; i++) nonce[NONCE_SIZE - 1 - i] ^= (unsigned char)(packet_number >> (8 * i));
    if (out != header) memcpy(out, header, header_len);
    unsigned char *body = out + header_len;
    if (!EVP_EncryptInit_ex(self->aead, NULL, NULL, NULL, nonce) ||
        !EVP_EncryptUpdate(self->aead, NULL, &len, header, (int)header_len) ||
        !EVP_EncryptUpdate(self->aead, body, &len, payload, (int)payload_len) ||
        !EVP_EncryptFinal_ex(self->aead, body + len, &len) ||
        !EVP_CIPHER_CTX_ctrl(self->aead, EVP_CTRL_GCM_GET_TAG, TAG_SIZE, body + payload_len))
        return -1;
    Py_ssize_t pn_length = (header[0] & 0x03) + 1;
    Py_ssize_t pn_offset = header_len - pn_length;
    /* The sample starts 4 bytes after the packet number's start (RFC 9001 5.4.2). */
    const unsigned char *sample = out + pn_offset + PN_MAX;
    if (!EVP_EncryptUpdate(self->hp, mask, &len, sample, SAMPLE_SIZE) || len < 5) return -1;
    out[0] ^= mask[0] & ((out[0] & 0x80) ? 0x0F : 0x1F);
    for (Py_ssize_t i = 0; i < pn_length; i++) out[pn_offset + i] ^= mask[1 + i];
    return 0;
}

static PyObject *PacketSealer_protect(PacketSealer *self, PyObject *args) {
    Py_buffer header, payload;
    unsigned long long packet_number;
    if (!PyArg_ParseTuple(args, "y*y*K", &header, &payload, &packet_number)) return NULL;
    PyObject *packet = NULL;
    Py_ssize_t pn_length = header.len ? (((const unsigned char *)header.buf)[0] & 0x03) + 1 : 0;
    if (header.len < 1 + pn_length || payload.len + pn_length < PN_MAX + SAMPLE_SIZE - TAG_SIZE ||
        payload.len > INT_MAX || header.len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "packet too short to sample, or too large");
        goto done;
    }
    packet = PyBytes_FromStringAndSize(NULL, header.len + payload.len + TAG_SIZE);
    if (packet == NULL) goto done;
    if (seal_into(self, header.buf, header.len, payload.buf, payload.len, packet_number,
                  (unsigned char *)PyBytes_AS_STRING(packet)) != 0) {
        Py_CLEAR(packet);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal the packet");
    }
done:
    PyBuffer_Release(&header);
    PyBuffer_Release(&payload);
    return packet;
}

#define DATAGRAM_WITH_LENGTH 0x31

static PyObject *PacketSealer_seal_datagrams(PacketSealer *self, PyObject *args) {
    Py_buffer start;
    unsigned long long packet_number;
    PyObject *queue;
    Py_ssize_t limit, max_payload;
    if (!PyArg_ParseTuple(args, "y*KOnn", &start, &packet_number, &queue, &limit, &max_payload))
        return NULL;
    PyObject *result = NULL, *iterator = NULL, *item;
    PyObject *items[256];
    Py_ssize_t count = 0, size = 0;
    if (start.len < 1 || (((const unsigned char *)start.buf)[0] & 0x03) != 1) {
        PyErr_SetString(PyExc_ValueError, "a header for a 2-byte packet number expected");
        goto done;
    }
    iterator = PyObject_GetIter(queue);
    if (iterator == NULL) goto done;
    /* As DatagramFastPath.send: as many datagrams as fit, from the front, in order. */
    while (count < 256 && (item = PyIter_Next(iterator)) != NULL) {
        if (!PyBytes_Check(item)) {
            Py_DECREF(item);
            PyErr_SetString(PyExc_TypeError, "datagrams must be bytes");
            goto done;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(item);
        Py_ssize_t frame_size = length + (length >= 64 ? 3 : 2);
        if (length > limit || size + frame_size > max_payload || length >= 0x4000) {
            Py_DECREF(item);
            break;
        }
        items[count++] = item; /* a new reference, released below */
        size += frame_size;
    }
    if (PyErr_Occurred()) goto release;
    if (count == 0) {
        PyErr_SetString(PyExc_ValueError, "the first datagram does not fit");
        goto release;
    }
    Py_ssize_t header_len = start.len + 2;
    if (size + 2 < PN_MAX + SAMPLE_SIZE - TAG_SIZE) {
        PyErr_SetString(PyExc_ValueError, "packet too short to sample");
        goto release;
    }
    PyObject *packet = PyBytes_FromStringAndSize(NULL, header_len + size + TAG_SIZE);
    if (packet == NULL) goto release;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(packet);
    memcpy(out, start.buf, start.len);
    out[start.len] = (unsigned char)(packet_number >> 8);
    out[start.len + 1] = (unsigned char)packet_number;
    unsigned char *frame = out + header_len;
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t length = PyBytes_GET_SIZE(items[i]);
        *frame++ = DATAGRAM_WITH_LENGTH;
        if (length >= 64) {
            *frame++ = (unsigned char)(0x40 | (length >> 8));
            *frame++ = (unsigned char)length;
        } else {
            *frame++ = (unsigned char)length;
        }
        memcpy(frame, PyBytes_AS_STRING(items[i]), length);
        frame += length;
    }
    /* Sealed in place: the plaintext frames are where the ciphertext goes. */
    if (seal_into(self, out, header_len, out + header_len, size, packet_number, out) != 0) {
        Py_DECREF(packet);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal the packet");
        goto release;
    }
    result = Py_BuildValue("(Nn)", packet, count);
release:
    for (Py_ssize_t i = 0; i < count; i++) Py_DECREF(items[i]);
done:
    Py_XDECREF(iterator);
    PyBuffer_Release(&start);
    return result;
}

static PyMethodDef PacketSealer_methods[] = {
    {"seal_datagrams", (PyCFunction)PacketSealer_seal_datagrams, METH_VARARGS,
     "seal_datagrams(header_start, packet_number, queue, limit, max_payload) -> (packet, count)\n\n"
     "One short-header packet (header_start, then the packet number's low 2 bytes) of DATAGRAM\n"
     "frames for the datagrams at the front of queue, as many as fit in max_payload bytes of\n"
     "frames and up to the first one over limit; sealed and header-protected. The queue is\n"
     "left as it is: the caller pops count datagrams once the packet is sent."},
    {"protect", (PyCFunction)PacketSealer_protect, METH_VARARGS,
     "protect(header, payload, packet_number) -> bytes\n\n"
     "The packet of header (ending with its packet number) and payload, sealed with AES-GCM and\n"
     "header-protected (RFC 9001 5.3, 5.4)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PacketSealerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "salon.quic._speedups.PacketSealer",
    .tp_doc = "PacketSealer(key, iv, hp_key): one direction's 1-RTT AES keys, for sealing packets.",
    .tp_basicsize = sizeof(PacketSealer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PacketSealer_init,
    .tp_dealloc = (destructor)PacketKeys_dealloc,
    .tp_methods = PacketSealer_methods,
};

/* ------------------------------------------------------------------ PacketOpener */

static int PacketOpener_init(PacketOpener *self, PyObject *args, PyObject *kwds) {
    return PacketKeys_init(self, args, kwds, 0);
}

/* RFC 9000 A.3, as aioquic's decode_packet_number. */
static long long decode_packet_number(long long truncated, int bits, long long expected) {
    long long window = 1LL << bits;
    long long half_window = window / 2;
    long long candidate = (expected & ~(window - 1)) | truncated;
    if (candidate <= expected - half_window && candidate < (1LL << 62) - window)
        return candidate + window;
    if (candidate > expected + half_window && candidate >= window) return candidate - window;
    return candidate;
}

static PyObject *PacketOpener_open(PacketOpener *self, PyObject *args) {
    Py_buffer packet;
    Py_ssize_t pn_offset;
    long long expected;
    int key_phase;
    if (!PyArg_ParseTuple(args, "y*nLp", &packet, &pn_offset, &expected, &key_phase)) return NULL;
    PyObject *result = NULL;
    const unsigned char *data = packet.buf;
    unsigned char mask[SAMPLE_SIZE + 16];
    unsigned char header[64];
    int len = 0;
    if (pn_offset < 1 || pn_offset + PN_MAX > (Py_ssize_t)sizeof(header) ||
        pn_offset + PN_MAX + SAMPLE_SIZE > packet.len || packet.len > INT_MAX) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (!EVP_EncryptUpdate(self->hp, mask, &len, data + pn_offset + PN_MAX, SAMPLE_SIZE) || len < 5) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to compute the header mask");
        goto done;
    }
    memcpy(header, data, pn_offset);
    header[0] ^= mask[0] & ((header[0] & 0x80) ? 0x0F : 0x1F);
    int pn_length = (header[0] & 0x03) + 1;
    long long truncated = 0;
    for (int i = 0; i < pn_length; i++) {
        header[pn_offset + i] = data[pn_offset + i] ^ mask[1 + i];
        truncated = (truncated << 8) | header[pn_offset + i];
    }
    Py_ssize_t header_len = pn_offset + pn_length;
    if (!(header[0] & 0x80) && ((header[0] & 0x04) >> 2) != key_phase) {
        result = Py_NewRef(Py_None); /* a key update: aioquic's path handles it */
        goto done;
    }
    Py_ssize_t sealed_len = packet.len - header_len;
    if (sealed_len < TAG_SIZE) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    long long packet_number = decode_packet_number(truncated, pn_length * 8, expected);
    unsigned char nonce[NONCE_SIZE];
    memcpy(nonce, self->iv, NONCE_SIZE);
    for (int i = 0; i < 8; i++)
        nonce[NONCE_SIZE - 1 - i] ^= (unsigned char)((unsigned long long)packet_number >> (8 * i));
    Py_ssize_t plain_len = sealed_len - TAG_SIZE;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, plain_len);
    if (payload == NULL) goto done;
    unsigned char *plain = (unsigned char *)PyBytes_AS_STRING(payload);
    const unsigned char *sealed = data + header_len;
    if (!EVP_DecryptInit_ex(self->aead, NULL, NULL, NULL, nonce) ||
        !EVP_DecryptUpdate(self->aead, NULL, &len, header, (int)header_len) ||
        !EVP_DecryptUpdate(self->aead, plain, &len, sealed, (int)plain_len) ||
        !EVP_CIPHER_CTX_ctrl(self->aead, EVP_CTRL_GCM_SET_TAG, TAG_SIZE,
                             (void *)(sealed + plain_len)) ||
        EVP_DecryptFinal_ex(self->aead, plain + len, &len) <= 0) {
        Py_DECREF(payload);
        result = Py_NewRef(Py_None); /* not authentic: aioquic's path drops it */
        goto done;
    }
    result = Py_BuildValue("(iNL)", header[0], payload, packet_number);
done:
    PyBuffer_Release(&packet);
    return result;
}

static PyMethodDef PacketOpener_methods[] = {
    {"open", (PyCFunction)PacketOpener_open, METH_VARARGS,
     "open(packet, pn_offset, expected_packet_number, key_phase) -> (first_byte, payload,\n"
     "packet_number) or None\n\n"
     "Remove header protection and decrypt a packet (RFC 9001 5.3, 5.4), as aioquic's\n"
     "CryptoContext.decrypt_packet; None when it is too short, carries another key phase than\n"
     "key_phase, or is not authentic."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject PacketOpenerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "salon.quic._speedups.PacketOpener",
    .tp_doc = "PacketOpener(key, iv, hp_key): one direction's 1-RTT AES keys, for opening packets.",
    .tp_basicsize = sizeof(PacketOpener),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)PacketOpener_init,
    .tp_dealloc = (destructor)PacketKeys_dealloc,
    .tp_methods = PacketOpener_methods,
};

/* ------------------------------------------------------------------ sendmmsg */

/* A Python socket address (host, port[, flowinfo, scope_id]) as a C sockaddr. */
static int to_sockaddr(PyObject *addr, int family, struct sockaddr_storage *out, socklen_t *len) {
    const char *host;
    int port;
    unsigned int flowinfo = 0, scope_id = 0;
    if (!PyTuple_Check(addr) ||
        !PyArg_ParseTuple(addr, "si|II", &host, &port, &flowinfo, &scope_id)) {
        PyErr_Format(PyExc_TypeError, "a (host, port) address expected, got %R", addr);
        return -1;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_OverflowError, "port out of range");
        return -1;
    }
    memset(out, 0, sizeof(*out));
    if (family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)out;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((unsigned short)port);
        if (inet_pton(AF_INET, host, &in4->sin_addr) != 1) goto bad;
        *len = sizeof(*in4);
        return 0;
    }
    if (family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)out;
        char plain[INET6_ADDRSTRLEN + 1];
        size_t host_len = strcspn(host, "%");
        if (host_len >= sizeof(plain)) goto bad;
        memcpy(plain, host, host_len);
        plain[host_len] = 0;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((unsigned short)port);
        in6->sin6_flowinfo = htonl(flowinfo);
        in6->sin6_scope_id = scope_id;
        if (inet_pton(AF_INET6, plain, &in6->sin6_addr) != 1) goto bad;
        *len = sizeof(*in6);
        return 0;
    }
    PyErr_SetString(PyExc_ValueError, "AF_INET or AF_INET6 sockets only");
    return -1;
bad:
    PyErr_Format(PyExc_ValueError, "not a numeric address of the socket's family: %R", addr);
    return -1;
}

static PyObject *speedups_sendmmsg(PyObject *module, PyObject *args) {
    int fd, family;
    PyObject *packets, *addrs;
    if (!PyArg_ParseTuple(args, "iiO!O!", &fd, &family, &PyList_Type, &packets, &PyList_Type, &addrs))
        return NULL;
    Py_ssize_t total = PyList_GET_SIZE(packets);
    if (PyList_GET_SIZE(addrs) != total) {
        PyErr_SetString(PyExc_ValueError, "as many addresses as packets expected");
        return NULL;
    }
    struct mmsghdr hdrs[MAX_BATCH];
    struct iovec iovs[MAX_BATCH];
    struct sockaddr_storage names[MAX_BATCH];
    Py_ssize_t done = 0;
    int error = 0;
    while (done < total && !error) {
        Py_ssize_t count = total - done;
        if (count > MAX_BATCH) count = MAX_BATCH;
        for (Py_ssize_t i = 0; i < count; i++) {
            PyObject *packet = PyList_GET_ITEM(packets, done + i);
            if (!PyBytes_Check(packet)) {
                PyErr_SetString(PyExc_TypeError, "packets must be bytes");
                return NULL;
            }
            socklen_t name_len = 0;
            if (to_sockaddr(PyList_GET_ITEM(addrs, done + i), family, &names[i], &name_len) != 0)
                return NULL;
            iovs[i].iov_base = PyBytes_AS_STRING(packet);
            iovs[i].iov_len = (size_t)PyBytes_GET_SIZE(packet);
            memset(&hdrs[i], 0, sizeof(hdrs[i]));
            hdrs[i].msg_hdr.msg_name = &names[i];
            hdrs[i].msg_hdr.msg_namelen = name_len;
            hdrs[i].msg_hdr.msg_iov = &iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        /* The packets list holds the buffers alive; a datagram send does not block long. */
        int sent = sendmmsg(fd, hdrs, (unsigned int)count, 0);
        if (sent < 0) {
            error = errno;
            break;
        }
        done += sent;
        if (sent < count) break; /* buffer full or an error for the next packet */
    }
    return Py_BuildValue("(ni)", done, error);
}

static PyMethodDef speedups_methods[] = {
    {"sendmmsg", speedups_sendmmsg, METH_VARARGS,
     "sendmmsg(fd, family, packets, addrs) -> (sent, errno)\n\n"
     "Send packets[i] to addrs[i] in order with sendmmsg, up to the first one the kernel\n"
     "refuses: how many were sent, and the errno of a failed call (0 if none)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT, "salon.quic._speedups",
    "C versions of the forwarding hot path's packet sealing and batched send.", -1,
    speedups_methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&PacketSealerType) < 0 || PyType_Ready(&PacketOpenerType) < 0) return NULL;
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) return NULL;
    Py_INCREF(&PacketSealerType);
    if (PyModule_AddObject(module, "PacketSealer", (PyObject *)&PacketSealerType) < 0) {
        Py_DECREF(&PacketSealerType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&PacketOpenerType);
    if (PyModule_AddObject(module, "PacketOpener", (PyObject *)&PacketOpenerType) < 0) {
        Py_DECREF(&PacketOpenerType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
