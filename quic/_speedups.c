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
#include <math.h>
#include <structmember.h>

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

/* As many datagrams from the front of queue as fit in one packet (up to the first over limit),
 * in DATAGRAM frames after start and the packet number's low 2 bytes, sealed and protected;
 * *count_out of them. The queue is left as it is. NULL with an exception on error. */
static PyObject *seal_front(PacketSealer *self, const unsigned char *start, Py_ssize_t start_len,
                            unsigned long long packet_number, PyObject *queue, Py_ssize_t limit,
                            Py_ssize_t max_payload, Py_ssize_t *count_out) {
    PyObject *result = NULL, *iterator = NULL, *item;
    PyObject *items[256];
    Py_ssize_t count = 0, size = 0;
    if (start_len < 1 || (start[0] & 0x03) != 1) {
        PyErr_SetString(PyExc_ValueError, "a header for a 2-byte packet number expected");
        return NULL;
    }
    iterator = PyObject_GetIter(queue);
    if (iterator == NULL) return NULL;
    /* As DatagramFastPath.send: as many datagrams as fit, from the front, in order. */
    while (count < 256 && (item = PyIter_Next(iterator)) != NULL) {
        if (!PyBytes_Check(item)) {
            Py_DECREF(item);
            PyErr_SetString(PyExc_TypeError, "datagrams must be bytes");
            goto release;
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
    Py_ssize_t header_len = start_len + 2;
    if (size + 2 < PN_MAX + SAMPLE_SIZE - TAG_SIZE) {
        PyErr_SetString(PyExc_ValueError, "packet too short to sample");
        goto release;
    }
    PyObject *packet = PyBytes_FromStringAndSize(NULL, header_len + size + TAG_SIZE);
    if (packet == NULL) goto release;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(packet);
    memcpy(out, start, start_len);
    out[start_len] = (unsigned char)(packet_number >> 8);
    out[start_len + 1] = (unsigned char)packet_number;
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
    result = packet;
    *count_out = count;
release:
    for (Py_ssize_t i = 0; i < count; i++) Py_DECREF(items[i]);
    Py_XDECREF(iterator);
    return result;
}

static PyObject *PacketSealer_seal_datagrams(PacketSealer *self, PyObject *args) {
    Py_buffer start;
    unsigned long long packet_number;
    PyObject *queue;
    Py_ssize_t limit, max_payload, count = 0;
    if (!PyArg_ParseTuple(args, "y*KOnn", &start, &packet_number, &queue, &limit, &max_payload))
        return NULL;
    PyObject *packet = seal_front(self, start.buf, start.len, packet_number, queue, limit,
                                  max_payload, &count);
    PyBuffer_Release(&start);
    if (packet == NULL) return NULL;
    return Py_BuildValue("(Nn)", packet, count);
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

/* Remove header protection and decrypt data into plain (room for len bytes): 1 opened (with
 * *first_byte, *plain_len, *packet_number), 0 refused (too short, another key phase, not
 * authentic), -1 an OpenSSL failure with an exception set. */
static int open_packet(PacketOpener *self, const unsigned char *data, Py_ssize_t data_len,
                       Py_ssize_t pn_offset, long long expected, int key_phase, int *first_byte,
                       unsigned char *plain, Py_ssize_t *plain_len, long long *packet_number) {
    unsigned char mask[SAMPLE_SIZE + 16];
    unsigned char header[64];
    int len = 0;
    if (pn_offset < 1 || pn_offset + PN_MAX > (Py_ssize_t)sizeof(header) ||
        pn_offset + PN_MAX + SAMPLE_SIZE > data_len || data_len > INT_MAX)
        return 0;
    if (!EVP_EncryptUpdate(self->hp, mask, &len, data + pn_offset + PN_MAX, SAMPLE_SIZE) || len < 5) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to compute the header mask");
        return -1;
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
    if (!(header[0] & 0x80) && ((header[0] & 0x04) >> 2) != key_phase)
        return 0; /* a key update: aioquic's path handles it */
    Py_ssize_t sealed_len = data_len - header_len;
    if (sealed_len < TAG_SIZE) return 0;
    long long number = decode_packet_number(truncated, pn_length * 8, expected);
    unsigned char nonce[NONCE_SIZE];
    memcpy(nonce, self->iv, NONCE_SIZE);
    for (int i = 0; i < 8; i++)
        nonce[NONCE_SIZE - 1 - i] ^= (unsigned char)((unsigned long long)number >> (8 * i));
    Py_ssize_t length = sealed_len - TAG_SIZE;
    const unsigned char *sealed = data + header_len;
    if (!EVP_DecryptInit_ex(self->aead, NULL, NULL, NULL, nonce) ||
        !EVP_DecryptUpdate(self->aead, NULL, &len, header, (int)header_len) ||
        !EVP_DecryptUpdate(self->aead, plain, &len, sealed, (int)length) ||
        !EVP_CIPHER_CTX_ctrl(self->aead, EVP_CTRL_GCM_SET_TAG, TAG_SIZE, (void *)(sealed + length)) ||
        EVP_DecryptFinal_ex(self->aead, plain + len, &len) <= 0)
        return 0; /* not authentic: aioquic's path drops it */
    *first_byte = header[0];
    *plain_len = length;
    *packet_number = number;
    return 1;
}

static PyObject *PacketOpener_open(PacketOpener *self, PyObject *args) {
    Py_buffer packet;
    Py_ssize_t pn_offset;
    long long expected;
    int key_phase;
    if (!PyArg_ParseTuple(args, "y*nLp", &packet, &pn_offset, &expected, &key_phase)) return NULL;
    PyObject *result = NULL;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, packet.len);
    if (payload == NULL) goto done;
    int first_byte = 0;
    Py_ssize_t plain_len = 0;
    long long packet_number = 0;
    int opened = open_packet(self, packet.buf, packet.len, pn_offset, expected, key_phase,
                             &first_byte, (unsigned char *)PyBytes_AS_STRING(payload), &plain_len,
                             &packet_number);
    if (opened < 0) {
        Py_DECREF(payload);
        goto done;
    }
    if (opened == 0) {
        Py_DECREF(payload);
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (_PyBytes_Resize(&payload, plain_len) < 0) goto done;
    result = Py_BuildValue("(iNL)", first_byte, payload, packet_number);
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

/* ------------------------------------------------------------------ MediaLink */

/* One listener connection's media path while it carries nothing but audio: the state that
 * aioquic's loss recovery, Reno congestion control, pacer and receive bookkeeping keep for its
 * 1-RTT packets, in one compact struct, and the two things that happen to it thousands of
 * times a second: sending queued datagrams (as DatagramFastPath.send) and applying an ACK-only
 * packet (as AckFastPath and QuicPacketRecovery.on_ack_received). salon.quic.medialink loads
 * the state from aioquic's objects and writes it back before anything else touches the
 * connection; the arithmetic below is aioquic's, step for step and in the same order
 * (tests/test_medialink.py replays the same traffic through both). Whatever this does not do —
 * a loss to declare, another frame, a possible duplicate, a key phase change — is refused
 * before any state changes, and aioquic handles it after the write-back.
 *
 * Why C: at 200 listeners the Python fast path was bound by touching aioquic's per-connection
 * objects (a dozen per send, each out of the CPU's caches by its turn); here a connection's
 * media state is one struct and an array of sent packets. */

#define RECEIVED_MAX 64
#define RECEIVED_WINDOW 128 /* aioquic's QuicPacketNumberWindow: 2 * MAX_ACK_RANGES */
#define CID_MAX 20
#define K_PACKET_THRESHOLD 3
#define K_TIME_THRESHOLD (9.0 / 8.0)
#define K_GRANULARITY 0.001
#define K_MICRO_SECOND 0.000001
#define K_SECOND 1.0
#define MONITOR_SIZE 5
#define ACK_RANGES_MAX 64
#define SPIN_BIT 0x20
#define RESERVED_BITS 0x18

enum { LINK_SENT = 0, LINK_BLOCKED = 1, LINK_FALLBACK = 2 };
enum { LINK_APPLIED = 0, LINK_REFUSED = 1 };

typedef struct {
    long long packet_number;
    double sent_time;
    long long sent_bytes;
} SentRecord;

typedef struct {
    PyObject_HEAD
    int active;
    PyObject *sealer; /* PacketSealer */
    PyObject *opener; /* PacketOpener */
    PyObject *addr;   /* the peer's address (the connection's only path) */
    PyObject *queue;  /* the connection's media queue (a deque), for flush_links */
    Py_ssize_t limit; /* the largest datagram the peer takes, for flush_links */
    unsigned char header_start[1 + CID_MAX];
    Py_ssize_t header_start_len;
    unsigned char host_cid[CID_MAX];
    Py_ssize_t host_cid_len;
    Py_ssize_t max_payload;
    long long next_packet_number;
    SentRecord *sent;
    Py_ssize_t sent_count, sent_cap;
    /* the 1-RTT space and loss recovery */
    long long ack_eliciting_in_flight, largest_acked_packet, pto_count;
    double loss_time; /* NAN: None */
    int peer_completed_address_validation, rtt_initialized;
    double rtt_initial, rtt_latest, rtt_min, rtt_smoothed, rtt_variance, rtt_first_sample_time;
    double max_ack_delay, time_of_last_sent_ack_eliciting_packet;
    /* Reno */
    long long bytes_in_flight, congestion_window, ssthresh; /* ssthresh -1: None */
    long long congestion_stash, cc_max_datagram_size;
    double congestion_recovery_start_time;
    /* Reno's RTT monitor (HyStart) */
    long long monitor_increases, monitor_sample_idx;
    int monitor_ready;
    double monitor_filtered_min, monitor_sample_max, monitor_sample_min; /* NAN: None */
    double monitor_sample_time;
    double monitor_samples[MONITOR_SIZE];
    /* the pacer */
    double bucket_max, bucket_time, evaluation_time, packet_time; /* packet_time NAN: None */
    long long pacer_max_datagram_size;
    /* the connection */
    double close_at, idle_timeout_config, ack_at; /* ack_at NAN: None */
    int ack_eliciting_sent_since_receipt;
    long long bytes_sent; /* since the load, for the path's counter */
    /* receiving */
    long long expected_packet_number, largest_received_packet, spin_highest_pn;
    double largest_received_time; /* NAN: None */
    int spin_bit, is_client, key_phase;
    long long ack_delay_exponent;
    long long received_floor; /* packet numbers up to it: aioquic decides (duplicates) */
    long long received_highest;
    long long received[RECEIVED_MAX];
    Py_ssize_t received_count;
    /* counters since the load */
    long long packets_sent, acks_applied, datagrams_dropped;
} MediaLink;

static PyObject *str_popleft;
static PyTypeObject *deque_type;    /* collections.deque */
static PyObject *deque_popleft;     /* its popleft method descriptor */

/* queue.popleft(), without looking the method up on each call for a deque. */
static int queue_popleft(PyObject *queue) {
    PyObject *gone = (deque_popleft != NULL && Py_IS_TYPE(queue, deque_type))
                         ? PyObject_CallOneArg(deque_popleft, queue)
                         : PyObject_CallMethodNoArgs(queue, str_popleft);
    if (gone == NULL) return -1;
    Py_DECREF(gone);
    return 0;
}

static void MediaLink_dealloc(MediaLink *self) {
    Py_XDECREF(self->sealer);
    Py_XDECREF(self->opener);
    Py_XDECREF(self->addr);
    Py_XDECREF(self->queue);
    PyMem_Free(self->sent);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int MediaLink_init(MediaLink *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    self->loss_time = self->ack_at = self->largest_received_time = NAN;
    self->monitor_filtered_min = self->monitor_sample_max = self->monitor_sample_min = NAN;
    self->packet_time = NAN;
    self->rtt_min = INFINITY;
    self->ssthresh = -1;
    return 0;
}

/* QuicPacketRecovery.get_probe_timeout(include_max_ack_delay=True) */
static double link_probe_timeout(const MediaLink *self) {
    if (!self->rtt_initialized) return 2 * self->rtt_initial;
    double variance = 4 * self->rtt_variance;
    double pto = self->rtt_smoothed + (K_GRANULARITY > variance ? K_GRANULARITY : variance);
    return pto + self->max_ack_delay;
}

/* QuicConnection._idle_timeout */
static double link_idle_timeout(const MediaLink *self) {
    double floor = 3 * link_probe_timeout(self);
    return floor > self->idle_timeout_config ? floor : self->idle_timeout_config;
}

static int link_append(MediaLink *self, long long packet_number, double now, long long bytes) {
    if (self->sent_count == self->sent_cap) {
        Py_ssize_t cap = self->sent_cap ? self->sent_cap * 2 : 64;
        SentRecord *grown = PyMem_Realloc(self->sent, cap * sizeof(SentRecord));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->sent = grown;
        self->sent_cap = cap;
    }
    SentRecord *record = &self->sent[self->sent_count++];
    record->packet_number = packet_number;
    record->sent_time = now;
    record->sent_bytes = bytes;
    return 0;
}

/* As many datagrams from the front of queue as fit in one packet, sealed (PacketSealer's
 * seal_datagrams); *count of them. NULL with an exception on error. */
/* DatagramFastPath.send on the link's state: queue's datagrams in sealed packets appended to
 * packets (the peer's address to addrs). Returns LINK_SENT, LINK_BLOCKED or LINK_FALLBACK, or
 * -1 with an exception set; *sent and *dropped count datagrams, *armed: no ack-eliciting
 * packet was in flight before. */
static int link_send(MediaLink *self, PyObject *queue, Py_ssize_t limit, double now,
                     PyObject *packets, PyObject *addrs, Py_ssize_t *sent, Py_ssize_t *dropped,
                     int *armed) {
    if (!self->active || self->sealer == NULL || self->addr == NULL ||
        !PyObject_TypeCheck(self->sealer, &PacketSealerType)) {
        PyErr_SetString(PyExc_RuntimeError, "the link is not loaded");
        return -1;
    }
    *sent = *dropped = 0;
    *armed = self->ack_eliciting_in_flight == 0;
    if (!isnan(self->ack_at) && self->ack_at <= now) return LINK_FALLBACK; /* only aioquic writes ACKs */
    for (;;) {
        Py_ssize_t queued = PyObject_Length(queue);
        if (queued < 0) return -1;
        if (queued == 0) return LINK_SENT;
        if (!isnan(self->packet_time)) {
            /* QuicPacketPacer.next_send_time */
            double bucket = self->bucket_time;
            if (now > self->evaluation_time) {
                bucket += now - self->evaluation_time;
                if (bucket > self->bucket_max) bucket = self->bucket_max;
                self->bucket_time = bucket;
                self->evaluation_time = now;
            }
            if (bucket <= 0) return LINK_FALLBACK;
        }
        PyObject *first = PySequence_GetItem(queue, 0);
        if (first == NULL) return -1;
        if (!PyBytes_Check(first)) {
            Py_DECREF(first);
            PyErr_SetString(PyExc_TypeError, "datagrams must be bytes");
            return -1;
        }
        Py_ssize_t first_len = PyBytes_GET_SIZE(first);
        Py_DECREF(first);
        if (first_len > limit || first_len + 3 > self->max_payload) {
            /* Over the peer's limit, or too large for any packet: dropped. */
            if (queue_popleft(queue) != 0) return -1;
            (*dropped)++;
            self->datagrams_dropped++;
            continue;
        }
        long long packet_number = self->next_packet_number;
        Py_ssize_t count = 0;
        PyObject *packet = seal_front((PacketSealer *)self->sealer, self->header_start,
                                      self->header_start_len, (unsigned long long)packet_number,
                                      queue, limit, self->max_payload, &count);
        if (packet == NULL) return -1;
        long long sent_bytes = PyBytes_GET_SIZE(packet);
        if (self->bytes_in_flight + sent_bytes > self->congestion_window) {
            Py_DECREF(packet);
            return LINK_BLOCKED; /* the rest waits in the queue for the next ACK */
        }
        if (link_append(self, packet_number, now, sent_bytes) != 0 ||
            PyList_Append(packets, packet) != 0 || PyList_Append(addrs, self->addr) != 0) {
            Py_DECREF(packet);
            return -1;
        }
        Py_DECREF(packet);
        for (Py_ssize_t i = 0; i < count; i++)
            if (queue_popleft(queue) != 0) return -1;
        *sent += count;
        self->next_packet_number = packet_number + 1;
        /* QuicPacketRecovery.on_packet_sent and Reno's */
        self->ack_eliciting_in_flight++;
        self->time_of_last_sent_ack_eliciting_packet = now;
        self->bytes_in_flight += sent_bytes;
        if (!isnan(self->packet_time)) {
            /* QuicPacketPacer.update_after_send (the bucket was brought to now above) */
            double bucket = self->bucket_time;
            self->bucket_time = bucket < self->packet_time ? 0.0 : bucket - self->packet_time;
        }
        /* The first ack-eliciting packet since the last one received restarts the idle timer
         * (RFC 9000 section 10.1), as aioquic's _flush_builder. */
        if (!self->ack_eliciting_sent_since_receipt) {
            self->close_at = now + link_idle_timeout(self);
            self->ack_eliciting_sent_since_receipt = 1;
        }
        self->bytes_sent += sent_bytes;
        self->packets_sent++;
    }
}

static PyObject *MediaLink_send(MediaLink *self, PyObject *args) {
    PyObject *queue, *packets, *addrs;
    Py_ssize_t limit, sent = 0, dropped = 0;
    double now;
    int armed = 0;
    if (!PyArg_ParseTuple(args, "OndO!O!", &queue, &limit, &now, &PyList_Type, &packets,
                          &PyList_Type, &addrs))
        return NULL;
    int result = link_send(self, queue, limit, now, packets, addrs, &sent, &dropped, &armed);
    if (result < 0) return NULL;
    return Py_BuildValue("(innO)", result, sent, dropped, armed ? Py_True : Py_False);
}

static PyTypeObject MediaLinkType;
static PyObject *str_media_link, *str_closed;

/* The flush of one tick for many connections: see the docstring in speedups_methods. */
static PyObject *speedups_flush_links(PyObject *module, PyObject *args) {
    PyObject *protocols, *packets, *addrs;
    double now;
    if (!PyArg_ParseTuple(args, "OdO!O!", &protocols, &now, &PyList_Type, &packets,
                          &PyList_Type, &addrs))
        return NULL;
    PyObject *rest = PyList_New(0), *iterator = NULL, *protocol = NULL, *link_object = NULL;
    Py_ssize_t total = 0;
    if (rest == NULL) return NULL;
    iterator = PyObject_GetIter(protocols);
    if (iterator == NULL) goto error;
    while ((protocol = PyIter_Next(iterator)) != NULL) {
        link_object = PyObject_GetAttr(protocol, str_media_link);
        if (link_object == NULL) {
            /* Not a QUIC connection of this server (a cluster peer): its own transmit. */
            if (!PyErr_ExceptionMatches(PyExc_AttributeError)) goto error;
            PyErr_Clear();
            link_object = Py_NewRef(Py_None);
        }
        MediaLink *link = (MediaLink *)link_object;
        int usable = Py_TYPE(link_object) == &MediaLinkType && link->active &&
                     link->queue != NULL && link->queue != Py_None && link->limit > 0;
        if (usable) {
            PyObject *closed = PyObject_GetAttr(protocol, str_closed);
            if (closed == NULL) goto error;
            int is_closed = PyObject_IsTrue(closed);
            Py_DECREF(closed);
            if (is_closed < 0) goto error;
            usable = !is_closed;
        }
        if (!usable) {
            if (PyList_Append(rest, protocol) != 0) goto error;
        } else {
            Py_ssize_t sent = 0, dropped = 0;
            int armed = 0;
            int result = link_send(link, link->queue, link->limit, now, packets, addrs, &sent,
                                   &dropped, &armed);
            if (result < 0) goto error;
            total += sent;
            if (result == LINK_FALLBACK || armed || dropped) {
                /* What only Python does: aioquic's writer, the timer, counting a drop. */
                PyObject *item = Py_BuildValue("(OinO)", protocol, result, dropped,
                                               armed ? Py_True : Py_False);
                if (item == NULL) goto error;
                int failed = PyList_Append(rest, item);
                Py_DECREF(item);
                if (failed) goto error;
            }
        }
        Py_CLEAR(link_object);
        Py_CLEAR(protocol);
    }
    if (PyErr_Occurred()) goto error;
    Py_DECREF(iterator);
    return Py_BuildValue("(Nn)", rest, total);
error:
    Py_XDECREF(link_object);
    Py_XDECREF(protocol);
    Py_XDECREF(iterator);
    Py_DECREF(rest);
    return NULL;
}

/* QUIC variable-length integer (RFC 9000 16); -1 past the end. */
static long long pull_varint(const unsigned char *data, Py_ssize_t len, Py_ssize_t *pos) {
    if (*pos >= len) return -1;
    int size = 1 << (data[*pos] >> 6);
    if (*pos + size > len) return -1;
    long long value = data[*pos] & 0x3F;
    for (int i = 1; i < size; i++) value = (value << 8) | data[*pos + i];
    *pos += size;
    return value;
}

/* QuicRttMonitor.is_rtt_increasing */
static int link_rtt_increasing(MediaLink *self, double now, double rtt) {
    if (now > self->monitor_sample_time + K_GRANULARITY) {
        self->monitor_samples[self->monitor_sample_idx] = rtt;
        self->monitor_sample_idx++;
        if (self->monitor_sample_idx >= MONITOR_SIZE) {
            self->monitor_sample_idx = 0;
            self->monitor_ready = 1;
        }
        if (self->monitor_ready) {
            self->monitor_sample_max = self->monitor_samples[0];
            self->monitor_sample_min = self->monitor_samples[0];
            for (int i = 1; i < MONITOR_SIZE; i++) {
                double sample = self->monitor_samples[i];
                if (sample < self->monitor_sample_min) self->monitor_sample_min = sample;
                else if (sample > self->monitor_sample_max) self->monitor_sample_max = sample;
            }
        }
        self->monitor_sample_time = now;
        if (self->monitor_ready) {
            if (isnan(self->monitor_filtered_min) ||
                self->monitor_filtered_min > self->monitor_sample_max)
                self->monitor_filtered_min = self->monitor_sample_max;
            double delta = self->monitor_sample_min - self->monitor_filtered_min;
            if (delta * 4 >= self->monitor_filtered_min) {
                self->monitor_increases++;
                if (self->monitor_increases >= MONITOR_SIZE) return 1;
            } else if (delta > 0) {
                self->monitor_increases = 0;
            }
        }
    }
    return 0;
}

static PyObject *MediaLink_receive(MediaLink *self, PyObject *args) {
    Py_buffer packet;
    PyObject *addr;
    double now;
    if (!PyArg_ParseTuple(args, "y*Od", &packet, &addr, &now)) return NULL;
    int result = LINK_REFUSED;
    const unsigned char *data = packet.buf;
    unsigned char payload[2048];
    Py_ssize_t cid_end = 1 + self->host_cid_len;
    if (!self->active || self->opener == NULL ||
        !PyObject_TypeCheck(self->opener, &PacketOpenerType) || self->addr == NULL ||
        packet.len < 1 || packet.len > (Py_ssize_t)sizeof(payload) || (data[0] & 0xC0) != 0x40 ||
        packet.len < cid_end + 20 || memcmp(data + 1, self->host_cid, self->host_cid_len) != 0 ||
        self->received_count >= RECEIVED_MAX)
        goto done;
    int same = PyObject_RichCompareBool(addr, self->addr, Py_EQ);
    if (same < 0) goto error;
    if (!same) goto done;
    /* Opened with the connection's 1-RTT keys; refused: not authentic or another key phase. */
    int first_byte = 0;
    Py_ssize_t payload_len = 0, pos = 0;
    long long packet_number = 0;
    int opened = open_packet((PacketOpener *)self->opener, data, packet.len, cid_end,
                             self->expected_packet_number, self->key_phase, &first_byte, payload,
                             &payload_len, &packet_number);
    if (opened < 0) goto error;
    if (opened == 0) goto done;
    if (first_byte & RESERVED_BITS) goto done;
    /* Possible duplicates (QuicPacketNumberWindow) are aioquic's to judge. */
    if (packet_number <= self->received_floor ||
        packet_number <= self->received_highest - RECEIVED_WINDOW)
        goto done;
    for (Py_ssize_t i = 0; i < self->received_count; i++)
        if (self->received[i] == packet_number) goto done;

    /* One ACK frame and PADDING, or aioquic's path (parsed in full before anything changes). */
    long long starts[ACK_RANGES_MAX], stops[ACK_RANGES_MAX]; /* descending */
    int ranges = 0, acks = 0;
    long long delay = 0;
    while (pos < payload_len) {
        long long frame_type = pull_varint(payload, payload_len, &pos);
        if (frame_type == 0x00) {
            while (pos < payload_len && payload[pos] == 0) pos++;
        } else if ((frame_type == 0x02 || frame_type == 0x03) && acks == 0) {
            acks++;
            long long end = pull_varint(payload, payload_len, &pos);
            delay = pull_varint(payload, payload_len, &pos);
            long long range_count = pull_varint(payload, payload_len, &pos);
            long long ack_count = pull_varint(payload, payload_len, &pos);
            if (end < 0 || delay < 0 || range_count < 0 || ack_count < 0 ||
                range_count >= ACK_RANGES_MAX)
                goto done;
            starts[ranges] = end - ack_count;
            stops[ranges++] = end + 1;
            end -= ack_count;
            for (long long i = 0; i < range_count; i++) {
                long long gap = pull_varint(payload, payload_len, &pos);
                ack_count = pull_varint(payload, payload_len, &pos);
                if (gap < 0 || ack_count < 0) goto done;
                end -= gap + 2;
                starts[ranges] = end - ack_count;
                stops[ranges++] = end + 1;
                end -= ack_count;
            }
            if (end < 0) goto done; /* aioquic: a negative packet number */
            if (frame_type == 0x03) {
                for (int i = 0; i < 3; i++)
                    if (pull_varint(payload, payload_len, &pos) < 0) goto done;
            }
        } else {
            goto done;
        }
    }
    if (acks == 0 || delay >= (1LL << 53)) goto done;

    /* QuicPacketRecovery.on_ack_received, first without changing anything: which packets are
     * newly acknowledged, the RTT sample, and whether loss detection would declare a loss
     * (then aioquic's path does it all). */
    long long largest_acked = stops[0] - 1;
    long long space_largest = self->largest_acked_packet;
    if (largest_acked > space_largest) space_largest = largest_acked;
    Py_ssize_t newest = -1; /* index of the largest newly acknowledged packet */
    int range = ranges - 1;
    Py_ssize_t acked_count = 0;
    for (Py_ssize_t i = 0; i < self->sent_count && range >= 0; i++) {
        long long number = self->sent[i].packet_number;
        while (range >= 0 && number >= stops[range]) range--;
        if (range >= 0 && number >= starts[range]) {
            newest = i;
            acked_count++;
        }
    }
    double rtt_latest = self->rtt_latest, rtt_min = self->rtt_min;
    double rtt_smoothed = self->rtt_smoothed, rtt_variance = self->rtt_variance;
    int rtt_initialized = self->rtt_initialized, sample = 0;
    double latest_rtt = 0;
    if (newest >= 0 && largest_acked == self->sent[newest].packet_number) {
        /* every packet of the link is ack-eliciting */
        sample = 1;
        latest_rtt = now - self->sent[newest].sent_time;
        double ack_delay = ldexp((double)delay, (int)self->ack_delay_exponent) / 1000000;
        if (ack_delay > self->max_ack_delay) ack_delay = self->max_ack_delay;
        rtt_latest = 0.001 > latest_rtt ? 0.001 : latest_rtt;
        if (rtt_latest < rtt_min) rtt_min = rtt_latest;
        if (rtt_latest > rtt_min + ack_delay) rtt_latest -= ack_delay;
        if (!rtt_initialized) {
            rtt_initialized = 1;
            rtt_variance = latest_rtt / 2;
            rtt_smoothed = latest_rtt;
        } else {
            double gap = rtt_min - rtt_latest;
            rtt_variance = 0.75 * rtt_variance + 0.25 * fabs(gap);
            rtt_smoothed = 0.875 * rtt_smoothed + 0.125 * rtt_latest;
        }
    }
    double loss_delay = 0, loss_time = NAN;
    if (newest >= 0) {
        /* _detect_loss over the packets left */
        double base = rtt_initialized ? (rtt_smoothed > rtt_latest ? rtt_smoothed : rtt_latest)
                                      : self->rtt_initial;
        loss_delay = K_TIME_THRESHOLD * base;
        long long packet_threshold = space_largest - K_PACKET_THRESHOLD;
        double time_threshold = now - loss_delay;
        range = ranges - 1;
        for (Py_ssize_t i = 0; i < self->sent_count; i++) {
            SentRecord *record = &self->sent[i];
            long long number = record->packet_number;
            while (range >= 0 && number >= stops[range]) range--;
            if (range >= 0 && number >= starts[range]) continue; /* acknowledged */
            if (number > space_largest) break;
            if (number <= packet_threshold || record->sent_time <= time_threshold)
                goto done; /* a loss: aioquic declares it */
            double packet_loss_time = record->sent_time + loss_delay;
            if (isnan(loss_time) || loss_time > packet_loss_time) loss_time = packet_loss_time;
        }
    }

    /* Applied from here on: nothing below refuses. */
    result = LINK_APPLIED;
    if (packet_number > self->expected_packet_number)
        self->expected_packet_number = packet_number + 1;
    if (packet_number > self->spin_highest_pn) {
        int spin = (first_byte & SPIN_BIT) != 0;
        if (self->is_client) spin = !spin;
        if (spin != self->spin_bit) {
            self->spin_bit = spin;
            self->header_start[0] ^= SPIN_BIT;
        }
        self->spin_highest_pn = packet_number;
    }
    self->peer_completed_address_validation = 1;
    self->largest_acked_packet = space_largest;
    if (newest >= 0) {
        /* the acknowledged packets, in order: counters and Reno's on_packet_acked */
        range = ranges - 1;
        Py_ssize_t kept = 0;
        for (Py_ssize_t i = 0; i < self->sent_count; i++) {
            SentRecord record = self->sent[i];
            long long number = record.packet_number;
            while (range >= 0 && number >= stops[range]) range--;
            if (!(range >= 0 && number >= starts[range])) {
                self->sent[kept++] = record;
                continue;
            }
            self->ack_eliciting_in_flight--;
            self->bytes_in_flight -= record.sent_bytes;
            if (record.sent_time <= self->congestion_recovery_start_time) continue;
            if (self->ssthresh < 0 || self->congestion_window < self->ssthresh) {
                self->congestion_window += record.sent_bytes; /* slow start */
            } else {
                self->congestion_stash += record.sent_bytes; /* congestion avoidance */
                long long count = self->congestion_stash / self->congestion_window;
                if (count) {
                    self->congestion_stash -= count * self->congestion_window;
                    self->congestion_window += count * self->cc_max_datagram_size;
                }
            }
        }
        self->sent_count = kept;
        if (sample) {
            if (!self->rtt_initialized) self->rtt_first_sample_time = now;
            self->rtt_latest = rtt_latest;
            self->rtt_min = rtt_min;
            self->rtt_smoothed = rtt_smoothed;
            self->rtt_variance = rtt_variance;
            self->rtt_initialized = 1;
            /* Reno's on_rtt_measurement, then QuicPacketPacer.update_rate */
            if (self->ssthresh < 0 && link_rtt_increasing(self, now, latest_rtt))
                self->ssthresh = self->congestion_window;
            double window = (double)self->congestion_window;
            double pacing_rate = window / (K_MICRO_SECOND > rtt_smoothed ? K_MICRO_SECOND
                                                                        : rtt_smoothed);
            double packet_time = (double)self->pacer_max_datagram_size / pacing_rate;
            if (!(packet_time <= K_SECOND)) packet_time = K_SECOND;
            self->packet_time = K_MICRO_SECOND > packet_time ? K_MICRO_SECOND : packet_time;
            long long burst = self->congestion_window / 4;
            if (burst > 16 * self->pacer_max_datagram_size) burst = 16 * self->pacer_max_datagram_size;
            if (2 * self->pacer_max_datagram_size > burst) burst = 2 * self->pacer_max_datagram_size;
            self->bucket_max = (double)burst / pacing_rate;
            if (self->bucket_time > self->bucket_max) self->bucket_time = self->bucket_max;
        }
        self->loss_time = loss_time;
        if (self->peer_completed_address_validation) self->pto_count = 0;
    }
    self->close_at = now + link_idle_timeout(self);
    self->ack_eliciting_sent_since_receipt = 0;
    if (packet_number > self->largest_received_packet) {
        self->largest_received_packet = packet_number;
        self->largest_received_time = now;
    }
    self->received[self->received_count++] = packet_number;
    if (packet_number > self->received_highest) self->received_highest = packet_number;
    self->acks_applied++;
done:
    PyBuffer_Release(&packet);
    return PyLong_FromLong(result);
error:
    PyBuffer_Release(&packet);
    return NULL;
}

/* QuicConnection.get_timer for a loaded link: the idle/close time, an ACK due, loss detection
 * (QuicPacketRecovery.get_loss_detection_time); None when nothing is due. */
static PyObject *MediaLink_timer(MediaLink *self, PyObject *unused) {
    double timer_at = self->close_at;
    if (!isnan(self->ack_at) && self->ack_at < timer_at) timer_at = self->ack_at;
    double loss_at = NAN;
    if (!isnan(self->loss_time)) {
        loss_at = self->loss_time;
    } else if (!self->peer_completed_address_validation || self->ack_eliciting_in_flight) {
        double timeout = ldexp(link_probe_timeout(self), (int)self->pto_count);
        loss_at = self->time_of_last_sent_ack_eliciting_packet + timeout;
    }
    if (!isnan(loss_at) && loss_at < timer_at) timer_at = loss_at;
    if (isnan(timer_at)) Py_RETURN_NONE;
    return PyFloat_FromDouble(timer_at);
}

static PyObject *MediaLink_set_sent(MediaLink *self, PyObject *args) {
    PyObject *records;
    if (!PyArg_ParseTuple(args, "O!", &PyList_Type, &records)) return NULL;
    self->sent_count = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        long long number, bytes;
        double sent_time;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(records, i), "LdL", &number, &sent_time, &bytes))
            return NULL;
        if (self->sent_count && number <= self->sent[self->sent_count - 1].packet_number) {
            PyErr_SetString(PyExc_ValueError, "sent packets in increasing packet numbers expected");
            return NULL;
        }
        if (link_append(self, number, sent_time, bytes) != 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *MediaLink_sent_packets(MediaLink *self, PyObject *unused) {
    PyObject *list = PyList_New(self->sent_count);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->sent_count; i++) {
        SentRecord *record = &self->sent[i];
        PyObject *item = Py_BuildValue("(LdL)", record->packet_number, record->sent_time,
                                       record->sent_bytes);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, item);
    }
    return list;
}

static PyObject *MediaLink_set_header(MediaLink *self, PyObject *args) {
    Py_buffer start, host_cid;
    if (!PyArg_ParseTuple(args, "y*y*", &start, &host_cid)) return NULL;
    PyObject *result = NULL;
    if (start.len < 1 || start.len > 1 + CID_MAX || host_cid.len > CID_MAX ||
        (((const unsigned char *)start.buf)[0] & 0x03) != 1) {
        PyErr_SetString(PyExc_ValueError, "a short header for a 2-byte packet number expected");
        goto done;
    }
    memcpy(self->header_start, start.buf, start.len);
    self->header_start_len = start.len;
    memcpy(self->host_cid, host_cid.buf, host_cid.len);
    self->host_cid_len = host_cid.len;
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&start);
    PyBuffer_Release(&host_cid);
    return result;
}

static PyObject *MediaLink_take_received(MediaLink *self, PyObject *unused) {
    PyObject *list = PyList_New(self->received_count);
    if (list == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->received_count; i++) {
        PyObject *number = PyLong_FromLongLong(self->received[i]);
        if (number == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, i, number);
    }
    self->received_count = 0;
    return list;
}

static PyObject *MediaLink_get_samples(MediaLink *self, void *closure) {
    return Py_BuildValue("[ddddd]", self->monitor_samples[0], self->monitor_samples[1],
                         self->monitor_samples[2], self->monitor_samples[3],
                         self->monitor_samples[4]);
}

static int MediaLink_set_samples(MediaLink *self, PyObject *value, void *closure) {
    if (value == NULL || !PySequence_Check(value) || PySequence_Length(value) != MONITOR_SIZE) {
        PyErr_SetString(PyExc_ValueError, "five RTT samples expected");
        return -1;
    }
    double samples[MONITOR_SIZE];
    for (int i = 0; i < MONITOR_SIZE; i++) {
        PyObject *item = PySequence_GetItem(value, i);
        if (item == NULL) return -1;
        samples[i] = PyFloat_AsDouble(item);
        Py_DECREF(item);
        if (samples[i] == -1.0 && PyErr_Occurred()) return -1;
    }
    memcpy(self->monitor_samples, samples, sizeof(samples));
    return 0;
}

static PyGetSetDef MediaLink_getset[] = {
    {"monitor_samples", (getter)MediaLink_get_samples, (setter)MediaLink_set_samples,
     "Reno's RTT monitor's five samples.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define LINK_MEMBER(name, type) {#name, type, offsetof(MediaLink, name), 0, NULL}

static PyMemberDef MediaLink_members[] = {
    LINK_MEMBER(active, T_INT),
    {"sealer", T_OBJECT, offsetof(MediaLink, sealer), 0, NULL},
    {"opener", T_OBJECT, offsetof(MediaLink, opener), 0, NULL},
    {"addr", T_OBJECT, offsetof(MediaLink, addr), 0, NULL},
    {"queue", T_OBJECT, offsetof(MediaLink, queue), 0, NULL},
    LINK_MEMBER(limit, T_PYSSIZET),
    LINK_MEMBER(max_payload, T_PYSSIZET),
    LINK_MEMBER(next_packet_number, T_LONGLONG),
    LINK_MEMBER(ack_eliciting_in_flight, T_LONGLONG),
    LINK_MEMBER(largest_acked_packet, T_LONGLONG),
    LINK_MEMBER(pto_count, T_LONGLONG),
    LINK_MEMBER(loss_time, T_DOUBLE),
    LINK_MEMBER(peer_completed_address_validation, T_INT),
    LINK_MEMBER(rtt_initialized, T_INT),
    LINK_MEMBER(rtt_initial, T_DOUBLE),
    LINK_MEMBER(rtt_latest, T_DOUBLE),
    LINK_MEMBER(rtt_min, T_DOUBLE),
    LINK_MEMBER(rtt_smoothed, T_DOUBLE),
    LINK_MEMBER(rtt_variance, T_DOUBLE),
    LINK_MEMBER(rtt_first_sample_time, T_DOUBLE),
    LINK_MEMBER(max_ack_delay, T_DOUBLE),
    LINK_MEMBER(time_of_last_sent_ack_eliciting_packet, T_DOUBLE),
    LINK_MEMBER(bytes_in_flight, T_LONGLONG),
    LINK_MEMBER(congestion_window, T_LONGLONG),
    LINK_MEMBER(ssthresh, T_LONGLONG),
    LINK_MEMBER(congestion_stash, T_LONGLONG),
    LINK_MEMBER(cc_max_datagram_size, T_LONGLONG),
    LINK_MEMBER(congestion_recovery_start_time, T_DOUBLE),
    LINK_MEMBER(monitor_increases, T_LONGLONG),
    LINK_MEMBER(monitor_sample_idx, T_LONGLONG),
    LINK_MEMBER(monitor_ready, T_INT),
    LINK_MEMBER(monitor_filtered_min, T_DOUBLE),
    LINK_MEMBER(monitor_sample_max, T_DOUBLE),
    LINK_MEMBER(monitor_sample_min, T_DOUBLE),
    LINK_MEMBER(monitor_sample_time, T_DOUBLE),
    LINK_MEMBER(bucket_max, T_DOUBLE),
    LINK_MEMBER(bucket_time, T_DOUBLE),
    LINK_MEMBER(evaluation_time, T_DOUBLE),
    LINK_MEMBER(packet_time, T_DOUBLE),
    LINK_MEMBER(pacer_max_datagram_size, T_LONGLONG),
    LINK_MEMBER(close_at, T_DOUBLE),
    LINK_MEMBER(idle_timeout_config, T_DOUBLE),
    LINK_MEMBER(ack_at, T_DOUBLE),
    LINK_MEMBER(ack_eliciting_sent_since_receipt, T_INT),
    LINK_MEMBER(bytes_sent, T_LONGLONG),
    LINK_MEMBER(expected_packet_number, T_LONGLONG),
    LINK_MEMBER(largest_received_packet, T_LONGLONG),
    LINK_MEMBER(largest_received_time, T_DOUBLE),
    LINK_MEMBER(spin_bit, T_INT),
    LINK_MEMBER(is_client, T_INT),
    LINK_MEMBER(key_phase, T_INT),
    LINK_MEMBER(spin_highest_pn, T_LONGLONG),
    LINK_MEMBER(ack_delay_exponent, T_LONGLONG),
    LINK_MEMBER(received_floor, T_LONGLONG),
    LINK_MEMBER(received_highest, T_LONGLONG),
    LINK_MEMBER(packets_sent, T_LONGLONG),
    LINK_MEMBER(acks_applied, T_LONGLONG),
    LINK_MEMBER(datagrams_dropped, T_LONGLONG),
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef MediaLink_methods[] = {
    {"send", (PyCFunction)MediaLink_send, METH_VARARGS,
     "send(queue, limit, now, packets, addrs) -> (result, sent, dropped, armed)\n\n"
     "DatagramFastPath.send on the link's state: the queue's datagrams in sealed packets\n"
     "appended to packets (and the peer's address to addrs); result 0 sent, 1 blocked by the\n"
     "congestion window, 2 aioquic must send (pacing, an ACK due); armed: no ack-eliciting\n"
     "packet was in flight before."},
    {"receive", (PyCFunction)MediaLink_receive, METH_VARARGS,
     "receive(packet, addr, now) -> 0 applied, 1 refused (nothing changed)"},
    {"timer", (PyCFunction)MediaLink_timer, METH_NOARGS,
     "timer() -> when the connection's timer is due (QuicConnection.get_timer), or None"},
    {"set_sent", (PyCFunction)MediaLink_set_sent, METH_VARARGS,
     "set_sent([(packet_number, sent_time, sent_bytes), ...]): the packets in flight"},
    {"sent_packets", (PyCFunction)MediaLink_sent_packets, METH_NOARGS,
     "sent_packets() -> [(packet_number, sent_time, sent_bytes), ...]"},
    {"set_header", (PyCFunction)MediaLink_set_header, METH_VARARGS,
     "set_header(header_start, host_cid): the short header's first byte and the peer's\n"
     "connection id; the connection id the peer sends to"},
    {"take_received", (PyCFunction)MediaLink_take_received, METH_NOARGS,
     "take_received() -> the packet numbers applied since the last call, in order"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MediaLinkType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "salon.quic._speedups.MediaLink",
    .tp_doc = "MediaLink(): one connection's media path state (see salon.quic.medialink).",
    .tp_basicsize = sizeof(MediaLink),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MediaLink_init,
    .tp_dealloc = (destructor)MediaLink_dealloc,
    .tp_methods = MediaLink_methods,
    .tp_members = MediaLink_members,
    .tp_getset = MediaLink_getset,
};

/* ------------------------------------------------------------------ the bench's listener fleet */

/* The receive loop of the load generator's cheap listeners (bench/listener_fleet.py, Fleet and
 * FastListener): read the socket many datagrams per call, route each by connection id, open it,
 * and, when it holds only DATAGRAM and PADDING frames, arrives in order and crosses no ACK-state
 * check, do FastListener.receive's work here: record each copy's latency as the fleet's
 * recorder does, update the received packet's bookkeeping and arm the delayed ACK. Any other
 * packet goes, untouched, to FastListener.receive (in order, before the next one is read).
 *
 * The listener's state stays in its Python attributes (ints, None, a list of [start, stop]
 * lists), read and written here through the offsets of its __slots__ (what the slots' member
 * descriptors do): both paths share it, and the Python path is the reference. */

#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define FLEET_BATCH 64
#define FLEET_PACKET 2048
#define FLEET_CID_LENGTH 8
#define FLEET_MAX_MEDIA 64

enum {
    FLEET_OPENER,
    FLEET_KEY_PHASE,
    FLEET_LARGEST,
    FLEET_LARGEST_NS,
    FLEET_SPIN_BIT,
    FLEET_SPIN_HIGHEST,
    FLEET_RANGES,
    FLEET_ACK_AT,
    FLEET_ACK_DELAY,
    FLEET_DATAGRAMS,
    FLEET_SEALER,
    FLEET_PACKET_NUMBER,
    FLEET_PEER_CID,
    FLEET_SENT,
    FLEET_ACKS_SENT,
    FLEET_PINGS_SENT,
    FLEET_SLOTS
};

static const char *fleet_slot_names[FLEET_SLOTS] = {
    "_opener",   "key_phase", "largest_received", "largest_received_ns", "spin_bit",
    "spin_highest", "ranges", "ack_at_ns",        "ack_delay_ns",        "datagrams_received",
    "_sealer",   "packet_number", "peer_cid",     "sent",                "acks_sent",
    "pings_sent",
};

/* Connection ids to listeners: open addressing on the id's 8 bytes (the dict of routes holds
 * the references; a table slot is empty when its listener is NULL). */
typedef struct {
    unsigned long long cid;
    PyObject *listener;
    Py_ssize_t index;
} FleetRoute;

typedef struct {
    PyObject_HEAD
    PyTypeObject *listener_type;
    FleetRoute *table;
    Py_ssize_t table_size, table_used;
    long long worst_bucket, worst_seen;
    Py_ssize_t slots[FLEET_SLOTS];
    PyObject *routes;         /* connection id -> (listener, index) */
    PyObject *received;       /* copies recorded per listener index (the fleet's list) */
    PyObject *worst;          /* the fleet's dict: half-second bucket -> worst latency (µs) */
    PyObject *append_latency; /* the fleet's latencies.append */
    long long low, high, send_time_offset, check_every;
    long long packets_in, unrouted, in_c, in_python, acks_in_c, packets_out;
    struct mmsghdr *messages;
    struct iovec *vectors;
    unsigned char *buffers;
    unsigned char *plain;
} FleetReceiver;

static PyObject *str_receive, *str_ack_packet_due;

static long long fleet_clock(void) {
    struct timespec clock;
    clock_gettime(CLOCK_MONOTONIC, &clock);
    return (long long)clock.tv_sec * 1000000000LL + clock.tv_nsec;
}


#define FLEET_SLOT(self, obj, i) (*(PyObject **)((char *)(obj) + (self)->slots[i]))

static void fleet_set(FleetReceiver *self, PyObject *obj, int i, PyObject *value) {
    PyObject *old = FLEET_SLOT(self, obj, i);
    FLEET_SLOT(self, obj, i) = value;
    Py_XDECREF(old);
}

/* An exact int slot as a C value: 0 when it is not one (the Python path takes the packet). */
static int fleet_get(FleetReceiver *self, PyObject *obj, int i, long long *out) {
    PyObject *value = FLEET_SLOT(self, obj, i);
    if (value == NULL || !PyLong_CheckExact(value)) return 0;
    int overflow = 0;
    *out = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

static long long floor_div(long long a, long long b) {
    long long q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

/* The listeners refer back to the fleet that holds the receiver: a cycle the collector breaks. */
static int FleetReceiver_traverse(FleetReceiver *self, visitproc visit, void *arg) {
    Py_VISIT(self->listener_type);
    Py_VISIT(self->routes);
    Py_VISIT(self->received);
    Py_VISIT(self->worst);
    Py_VISIT(self->append_latency);
    return 0;
}

static int FleetReceiver_clear(FleetReceiver *self) {
    /* The table's listeners are the routes dict's: gone with it. */
    PyMem_Free(self->table);
    self->table = NULL;
    self->table_size = self->table_used = 0;
    Py_CLEAR(self->listener_type);
    Py_CLEAR(self->routes);
    Py_CLEAR(self->received);
    Py_CLEAR(self->worst);
    Py_CLEAR(self->append_latency);
    return 0;
}

static void FleetReceiver_dealloc(FleetReceiver *self) {
    PyObject_GC_UnTrack(self);
    FleetReceiver_clear(self);
    PyMem_Free(self->messages);
    PyMem_Free(self->vectors);
    PyMem_Free(self->buffers);
    PyMem_Free(self->plain);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int FleetReceiver_init(FleetReceiver *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"listener_type", "send_time_offset", "check_every", "received",
                             "worst", NULL};
    PyObject *type, *received, *worst;
    long long offset, check_every;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!LLO!O!", kwlist, &PyType_Type, &type,
                                     &offset, &check_every, &PyList_Type, &received,
                                     &PyDict_Type, &worst))
        return -1;
    if (offset < 0 || offset > FLEET_PACKET || check_every < 1) {
        PyErr_SetString(PyExc_ValueError, "send_time_offset or check_every out of range");
        return -1;
    }
    PyObject *dict = ((PyTypeObject *)type)->tp_dict;
    for (int i = 0; i < FLEET_SLOTS; i++) {
        PyObject *descr = dict ? PyDict_GetItemString(dict, fleet_slot_names[i]) : NULL;
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type) ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%R has no slot %s", type, fleet_slot_names[i]);
            return -1;
        }
        self->slots[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    Py_XSETREF(self->listener_type, (PyTypeObject *)Py_NewRef(type));
    Py_XSETREF(self->received, Py_NewRef(received));
    Py_XSETREF(self->worst, Py_NewRef(worst));
    PyMem_Free(self->table); /* routes from an earlier init are forgotten with their dict */
    self->table = NULL;
    self->table_size = self->table_used = 0;
    Py_XSETREF(self->routes, PyDict_New());
    if (self->routes == NULL) return -1;
    self->send_time_offset = offset;
    self->check_every = check_every;
    if (self->messages == NULL) {
        self->messages = PyMem_Calloc(FLEET_BATCH, sizeof(struct mmsghdr));
        self->vectors = PyMem_Calloc(FLEET_BATCH, sizeof(struct iovec));
        self->buffers = PyMem_Malloc(FLEET_BATCH * FLEET_PACKET);
        self->plain = PyMem_Malloc(FLEET_PACKET);
        if (!self->messages || !self->vectors || !self->buffers || !self->plain) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

static unsigned long long fleet_cid(const unsigned char *data) {
    unsigned long long cid;
    memcpy(&cid, data, FLEET_CID_LENGTH);
    return cid;
}

static FleetRoute *fleet_route(FleetReceiver *self, unsigned long long cid) {
    if (self->table == NULL) return NULL;
    size_t mask = (size_t)self->table_size - 1;
    size_t slot = (size_t)((cid * 0x9E3779B97F4A7C15ULL) >> 20) & mask;
    while (self->table[slot].listener != NULL) {
        if (self->table[slot].cid == cid) return &self->table[slot];
        slot = (slot + 1) & mask;
    }
    return &self->table[slot]; /* the empty slot where it would go */
}

static int fleet_route_add(FleetReceiver *self, unsigned long long cid, PyObject *listener,
                           Py_ssize_t index) {
    if ((self->table_used + 1) * 2 > self->table_size) {
        Py_ssize_t size = self->table_size ? self->table_size * 2 : 64;
        FleetRoute *old = self->table;
        Py_ssize_t old_size = self->table_size;
        self->table = PyMem_Calloc(size, sizeof(FleetRoute));
        if (self->table == NULL) {
            self->table = old;
            PyErr_NoMemory();
            return -1;
        }
        self->table_size = size;
        self->table_used = 0;
        for (Py_ssize_t i = 0; i < old_size; i++)
            if (old[i].listener != NULL) {
                *fleet_route(self, old[i].cid) = old[i];
                self->table_used++;
            }
        PyMem_Free(old);
    }
    FleetRoute *route = fleet_route(self, cid);
    if (route->listener == NULL) self->table_used++;
    route->cid = cid;
    route->listener = listener;
    route->index = index;
    return 0;
}

static PyObject *FleetReceiver_add(FleetReceiver *self, PyObject *args) {
    PyObject *cid, *listener;
    Py_ssize_t index;
    if (!PyArg_ParseTuple(args, "O!On", &PyBytes_Type, &cid, &listener, &index)) return NULL;
    if (self->routes == NULL || !Py_IS_TYPE(listener, self->listener_type) || index < 0) {
        PyErr_SetString(PyExc_TypeError, "a listener of the receiver's type expected");
        return NULL;
    }
    PyObject *entry = Py_BuildValue("(On)", listener, index);
    if (entry == NULL) return NULL;
    int failed = PyDict_SetItem(self->routes, cid, entry);
    Py_DECREF(entry);
    if (failed) return NULL;
    /* Routed by the table when the id has the length the fleet's packets carry. */
    if (PyBytes_GET_SIZE(cid) == FLEET_CID_LENGTH &&
        fleet_route_add(self, fleet_cid((const unsigned char *)PyBytes_AS_STRING(cid)), listener,
                        index) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *FleetReceiver_start(FleetReceiver *self, PyObject *args) {
    long long low, high;
    PyObject *latencies;
    if (!PyArg_ParseTuple(args, "LLO", &low, &high, &latencies)) return NULL;
    PyObject *append = PyObject_GetAttrString(latencies, "append");
    if (append == NULL) return NULL;
    Py_XSETREF(self->append_latency, append);
    self->low = low;
    self->high = high;
    self->packets_in = self->unrouted = self->in_c = self->in_python = self->acks_in_c =
        self->packets_out = 0;
    self->worst_bucket = -1;
    Py_RETURN_NONE;
}

/* The fleet's recorder (Fleet._recorder) for the copy whose data starts at start. */
static int fleet_record(FleetReceiver *self, Py_ssize_t index, const unsigned char *data,
                        long long now) {
    unsigned long long raw = 0;
    for (int i = 0; i < 8; i++) raw = (raw << 8) | data[i];
    long long sent = (long long)raw;
    if (!(self->low <= sent && sent < self->high)) return 0;
    if (self->append_latency == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "start() not called");
        return -1;
    }
    long long latency = floor_div(now - sent, 1000);
    PyObject *value = PyLong_FromLongLong(latency);
    if (value == NULL) return -1;
    PyObject *done = PyObject_CallOneArg(self->append_latency, value);
    if (done == NULL) goto fail;
    Py_DECREF(done);
    if (index >= PyList_GET_SIZE(self->received)) {
        PyErr_SetString(PyExc_IndexError, "no received count for the listener");
        goto fail;
    }
    long long copies = PyLong_AsLongLong(PyList_GET_ITEM(self->received, index));
    if (copies == -1 && PyErr_Occurred()) goto fail;
    PyObject *count = PyLong_FromLongLong(copies + 1);
    if (count == NULL) goto fail;
    PyList_SetItem(self->received, index, count);
    long long bucket_number = floor_div(sent - self->low, 500000000);
    /* The dict's worst only grows: at or below what it held last time, nothing to do. */
    if (bucket_number == self->worst_bucket && latency <= self->worst_seen) {
        Py_DECREF(value);
        return 0;
    }
    PyObject *bucket = PyLong_FromLongLong(bucket_number);
    if (bucket == NULL) goto fail;
    PyObject *worst = PyDict_GetItemWithError(self->worst, bucket);
    int greater = 1;
    if (worst != NULL) greater = PyObject_RichCompareBool(value, worst, Py_GT);
    else if (PyErr_Occurred()) greater = -1;
    else greater = latency > 0;
    if (greater < 0 || (greater && PyDict_SetItem(self->worst, bucket, value) < 0)) {
        Py_DECREF(bucket);
        goto fail;
    }
    self->worst_bucket = bucket_number;
    self->worst_seen = greater ? latency : (worst != NULL ? PyLong_AsLongLong(worst) : 0);
    if (self->worst_seen == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        self->worst_bucket = -1;
    }
    Py_DECREF(bucket);
    Py_DECREF(value);
    return 0;
fail:
    Py_DECREF(value);
    return -1;
}

/* FastListener.receive for the usual packet: 1 done (*armed set when the delayed ACK was
 * armed), 0 the Python path must take it (nothing changed), -1 an exception. */
static int fleet_receive_in_c(FleetReceiver *self, PyObject *listener, Py_ssize_t index,
                              const unsigned char *data, Py_ssize_t len, long long now,
                              int *armed) {
    PyObject *opener = FLEET_SLOT(self, listener, FLEET_OPENER);
    long long largest, key_phase, spin_highest, ack_delay, before, stop;
    if (opener == NULL || !Py_IS_TYPE(opener, &PacketOpenerType) || len > FLEET_PACKET ||
        !fleet_get(self, listener, FLEET_LARGEST, &largest) ||
        !fleet_get(self, listener, FLEET_KEY_PHASE, &key_phase) ||
        !fleet_get(self, listener, FLEET_SPIN_HIGHEST, &spin_highest) ||
        !fleet_get(self, listener, FLEET_ACK_DELAY, &ack_delay) ||
        !fleet_get(self, listener, FLEET_DATAGRAMS, &before) || (key_phase != 0 && key_phase != 1))
        return 0;
    PyObject *ack_at = FLEET_SLOT(self, listener, FLEET_ACK_AT);
    PyObject *ranges = FLEET_SLOT(self, listener, FLEET_RANGES);
    if (ack_at == NULL || ranges == NULL || !PyList_CheckExact(ranges) ||
        PyList_GET_SIZE(ranges) == 0)
        return 0;
    PyObject *last = PyList_GET_ITEM(ranges, PyList_GET_SIZE(ranges) - 1);
    if (!PyList_CheckExact(last) || PyList_GET_SIZE(last) != 2) return 0;
    int first = 0;
    Py_ssize_t n = 0;
    long long number = 0;
    int opened = open_packet((PacketOpener *)opener, data, len, 1 + FLEET_CID_LENGTH,
                             largest + 1, (int)key_phase, &first, self->plain, &n, &number);
    if (opened <= 0) {
        PyErr_Clear(); /* the Python path opens it again and says what is wrong */
        return 0;
    }
    /* Only DATAGRAM and PADDING frames, each whole, each with its send time. */
    const unsigned char *p = self->plain;
    Py_ssize_t starts[FLEET_MAX_MEDIA];
    int media = 0;
    Py_ssize_t position = 0;
    long long offset = self->send_time_offset;
    while (position < n) {
        unsigned char kind = p[position];
        if (kind == 0) {
            while (position < n && p[position] == 0) position++;
            continue;
        }
        Py_ssize_t start;
        if (kind == 0x31) {
            if (position + 1 >= n) return 0;
            int size = 1 << (p[position + 1] >> 6);
            if (position + 1 + size > n) return 0;
            long long length = p[position + 1] & 0x3F;
            for (int i = 1; i < size; i++) length = (length << 8) | p[position + 1 + i];
            start = position + 1 + size;
            if (length > n - start) return 0;
            position = start + length;
        } else if (kind == 0x30) {
            start = position + 1;
            position = n;
        } else {
            return 0;
        }
        if (media == FLEET_MAX_MEDIA || start + offset + 8 > n) return 0;
        starts[media++] = start;
    }
    /* In order after the newest range, and no ACK-state check (a PING may be due) crossed. */
    if (!PyLong_CheckExact(PyList_GET_ITEM(last, 1))) return 0;
    int overflow = 0;
    stop = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(last, 1), &overflow);
    if (overflow || stop != number) {
        PyErr_Clear();
        return 0;
    }
    if (media && (before + media) / self->check_every != before / self->check_every) return 0;
    if (ack_at != Py_None && !PyLong_CheckExact(ack_at)) return 0;

    for (int i = 0; i < media; i++)
        if (fleet_record(self, index, p + starts[i] + offset, now) < 0) return -1;
    PyObject *values[6] = {NULL};
    values[0] = PyLong_FromLongLong(number);
    values[1] = PyLong_FromLongLong(now);
    values[2] = PyLong_FromLongLong(number + 1);
    values[3] = PyLong_FromLongLong(now + ack_delay);
    values[4] = PyLong_FromLongLong(before + media);
    for (int i = 0; i < 5; i++)
        if (values[i] == NULL) {
            for (int j = 0; j < 5; j++) Py_XDECREF(values[j]);
            return -1;
        }
    /* As FastListener.receive after the frames, in the same order. */
    if (number > spin_highest) {
        fleet_set(self, listener, FLEET_SPIN_BIT, PyBool_FromLong(!(first & 0x20)));
        fleet_set(self, listener, FLEET_SPIN_HIGHEST, Py_NewRef(values[0]));
    }
    if (number > largest) {
        fleet_set(self, listener, FLEET_LARGEST, Py_NewRef(values[0]));
        fleet_set(self, listener, FLEET_LARGEST_NS, Py_NewRef(values[1]));
    }
    PyList_SetItem(last, 1, Py_NewRef(values[2]));
    *armed = 0;
    if (media && ack_at == Py_None) {
        fleet_set(self, listener, FLEET_ACK_AT, Py_NewRef(values[3]));
        *armed = 1;
    }
    if (media) fleet_set(self, listener, FLEET_DATAGRAMS, Py_NewRef(values[4]));
    for (int i = 0; i < 5; i++) Py_DECREF(values[i]);
    return 1;
}

/* One datagram read at now: the fleet's loop step. *due: a new (ack_at_ns, listener) when an
 * ACK became due later, else NULL. */
static int fleet_packet(FleetReceiver *self, const unsigned char *data, Py_ssize_t len,
                        long long now, PyObject **due) {
    *due = NULL;
    if (self->routes == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FleetReceiver not initialised");
        return -1;
    }
    if (self->low <= now && now < self->high) self->packets_in++;
    /* The routes dict says which ids exist; the table holds those of 8 bytes (all of them:
     * a shorter datagram's id is looked up in the dict, as Python would). */
    FleetRoute *route = len > FLEET_CID_LENGTH ? fleet_route(self, fleet_cid(data + 1)) : NULL;
    PyObject *listener;
    Py_ssize_t index;
    if (route != NULL && route->listener != NULL) {
        listener = route->listener;
        index = route->index;
    } else {
        Py_ssize_t cid_length = len - 1 < FLEET_CID_LENGTH ? len - 1 : FLEET_CID_LENGTH;
        PyObject *cid = PyBytes_FromStringAndSize((const char *)data + 1,
                                                  cid_length > 0 ? cid_length : 0);
        if (cid == NULL) return -1;
        PyObject *entry = PyDict_GetItemWithError(self->routes, cid);
        Py_DECREF(cid);
        if (entry == NULL) {
            if (PyErr_Occurred()) return -1;
            self->unrouted++;
            return 0;
        }
        listener = PyTuple_GET_ITEM(entry, 0);
        index = PyLong_AsSsize_t(PyTuple_GET_ITEM(entry, 1));
    }
    Py_INCREF(listener);
    int armed = 0;
    int done = fleet_receive_in_c(self, listener, index, data, len, now, &armed);
    if (done < 0) goto fail;
    if (done) {
        self->in_c++;
    } else {
        self->in_python++;
        PyObject *packet = PyBytes_FromStringAndSize((const char *)data, len);
        PyObject *when = PyLong_FromLongLong(now);
        PyObject *result = NULL;
        if (packet != NULL && when != NULL)
            result = PyObject_CallMethodObjArgs(listener, str_receive, packet, when, NULL);
        Py_XDECREF(packet);
        Py_XDECREF(when);
        if (result == NULL) goto fail;
        armed = PyObject_IsTrue(result);
        Py_DECREF(result);
        if (armed < 0) goto fail;
    }
    if (armed) {
        PyObject *at = FLEET_SLOT(self, listener, FLEET_ACK_AT);
        *due = PyTuple_Pack(2, at ? at : Py_None, listener);
        if (*due == NULL) goto fail;
    }
    Py_DECREF(listener);
    return 0;
fail:
    Py_DECREF(listener);
    return -1;
}

static PyObject *FleetReceiver_receive(FleetReceiver *self, PyObject *args) {
    Py_buffer packet;
    long long now;
    if (!PyArg_ParseTuple(args, "y*L", &packet, &now)) return NULL;
    PyObject *due = NULL;
    int failed = fleet_packet(self, packet.buf, packet.len, now, &due);
    PyBuffer_Release(&packet);
    if (failed) return NULL;
    return due ? due : Py_NewRef(Py_None);
}

static PyObject *FleetReceiver_drain(FleetReceiver *self, PyObject *args) {
    int fd;
    if (!PyArg_ParseTuple(args, "i", &fd)) return NULL;
    if (self->messages == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FleetReceiver not initialised");
        return NULL;
    }
    PyObject *dues = PyList_New(0);
    if (dues == NULL) return NULL;
    for (;;) {
        for (int i = 0; i < FLEET_BATCH; i++) {
            self->vectors[i].iov_base = self->buffers + (Py_ssize_t)i * FLEET_PACKET;
            self->vectors[i].iov_len = FLEET_PACKET;
            memset(&self->messages[i], 0, sizeof(struct mmsghdr));
            self->messages[i].msg_hdr.msg_iov = &self->vectors[i];
            self->messages[i].msg_hdr.msg_iovlen = 1;
        }
        int got = recvmmsg(fd, self->messages, FLEET_BATCH, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) goto fail;
                continue;
            }
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
        for (int i = 0; i < got; i++) {
            long long now = fleet_clock();
            PyObject *due = NULL;
            if (fleet_packet(self, self->buffers + (Py_ssize_t)i * FLEET_PACKET,
                             self->messages[i].msg_len, now, &due) < 0)
                goto fail;
            if (due != NULL) {
                int failed = PyList_Append(dues, due);
                Py_DECREF(due);
                if (failed) goto fail;
            }
        }
        if (got < FLEET_BATCH) break;
    }
    return dues;
fail:
    Py_DECREF(dues);
    return NULL;
}


#define FLEET_ACK_DELAY_EXPONENT 3
#define FLEET_ACK_FRAME_MAX 1200

static unsigned char *fleet_varint(unsigned char *out, unsigned long long value) {
    if (value < 0x40) {
        *out++ = (unsigned char)value;
    } else if (value < 0x4000) {
        *out++ = (unsigned char)(0x40 | (value >> 8));
        *out++ = (unsigned char)value;
    } else if (value < 0x40000000) {
        for (int i = 3; i >= 0; i--) *out++ = (unsigned char)(value >> (8 * i));
        out[-4] |= 0x80;
    } else {
        for (int i = 7; i >= 0; i--) *out++ = (unsigned char)(value >> (8 * i));
        out[-8] |= 0xC0;
    }
    return out;
}

/* A [start, stop) pair of the ranges list, checked: 0 when it is not one. */
static int fleet_range(PyObject *ranges, Py_ssize_t i, long long *start, long long *stop) {
    PyObject *pair = PyList_GET_ITEM(ranges, i);
    if (!PyList_CheckExact(pair) || PyList_GET_SIZE(pair) != 2 ||
        !PyLong_CheckExact(PyList_GET_ITEM(pair, 0)) || !PyLong_CheckExact(PyList_GET_ITEM(pair, 1)))
        return 0;
    int overflow = 0;
    *start = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(pair, 0), &overflow);
    if (overflow || (*start == -1 && PyErr_Occurred())) goto bad;
    *stop = PyLong_AsLongLongAndOverflow(PyList_GET_ITEM(pair, 1), &overflow);
    if (overflow || (*stop == -1 && PyErr_Occurred())) goto bad;
    return *start >= 0 && *stop > *start && *stop < (1LL << 62);
bad:
    PyErr_Clear();
    return 0;
}

/* FastListener._transmit(now, ping=False) for an ACK that is due and ranges to acknowledge:
 * *packet the sealed ACK packet; 1 done, 0 the Python path must do it (nothing changed),
 * -1 an exception. */
static int fleet_transmit_in_c(FleetReceiver *self, PyObject *listener, long long now,
                               PyObject **packet) {
    *packet = NULL;
    PyObject *sealer = FLEET_SLOT(self, listener, FLEET_SEALER);
    PyObject *ranges = FLEET_SLOT(self, listener, FLEET_RANGES);
    PyObject *peer_cid = FLEET_SLOT(self, listener, FLEET_PEER_CID);
    PyObject *sent = FLEET_SLOT(self, listener, FLEET_SENT);
    PyObject *spin = FLEET_SLOT(self, listener, FLEET_SPIN_BIT);
    long long number, largest, largest_ns, key_phase, acks, pings;
    if (sealer == NULL || !Py_IS_TYPE(sealer, &PacketSealerType) || ranges == NULL ||
        !PyList_CheckExact(ranges) || PyList_GET_SIZE(ranges) == 0 || peer_cid == NULL ||
        !PyBytes_CheckExact(peer_cid) || PyBytes_GET_SIZE(peer_cid) > 20 || sent == NULL ||
        !PyDict_CheckExact(sent) || spin == NULL || (spin != Py_True && spin != Py_False) ||
        !fleet_get(self, listener, FLEET_PACKET_NUMBER, &number) || number < 0 ||
        number >= (1LL << 62) || !fleet_get(self, listener, FLEET_LARGEST, &largest) ||
        !fleet_get(self, listener, FLEET_LARGEST_NS, &largest_ns) ||
        !fleet_get(self, listener, FLEET_KEY_PHASE, &key_phase) ||
        (key_phase != 0 && key_phase != 1) ||
        !fleet_get(self, listener, FLEET_ACKS_SENT, &acks) ||
        !fleet_get(self, listener, FLEET_PINGS_SENT, &pings))
        return 0;
    Py_ssize_t count = PyList_GET_SIZE(ranges);
    if (count > (FLEET_ACK_FRAME_MAX - 40) / 16) return 0;
    /* aioquic's push_ack_frame: newest range first, the delay in units of 8 µs. */
    unsigned char payload[FLEET_ACK_FRAME_MAX];
    unsigned char *out = payload;
    long long start, stop, older_start, older_stop;
    if (!fleet_range(ranges, count - 1, &start, &stop)) return 0;
    long long delay = floor_div(now - largest_ns, 1000) >> FLEET_ACK_DELAY_EXPONENT;
    if (delay >= (1LL << 62)) return 0;
    *out++ = 0x02;
    out = fleet_varint(out, (unsigned long long)(stop - 1));
    out = fleet_varint(out, (unsigned long long)(delay > 0 ? delay : 0));
    out = fleet_varint(out, (unsigned long long)(count - 1));
    out = fleet_varint(out, (unsigned long long)(stop - 1 - start));
    for (Py_ssize_t i = count - 2; i >= 0; i--) {
        if (!fleet_range(ranges, i, &older_start, &older_stop) || older_stop >= start) return 0;
        out = fleet_varint(out, (unsigned long long)(start - older_stop - 1));
        out = fleet_varint(out, (unsigned long long)(older_stop - 1 - older_start));
        start = older_start;
    }
    int ping = count > 1 && number % 8 == 0; /* aioquic's ACK-of-ACK trigger */
    if (ping) *out++ = 0x01;
    Py_ssize_t payload_len = out - payload;

    unsigned char header[1 + 20 + 2];
    Py_ssize_t cid_len = PyBytes_GET_SIZE(peer_cid);
    header[0] = (unsigned char)(0x40 | ((spin == Py_True) << 5) | (key_phase << 2) | 1);
    memcpy(header + 1, PyBytes_AS_STRING(peer_cid), cid_len);
    header[1 + cid_len] = (unsigned char)(number >> 8);
    header[2 + cid_len] = (unsigned char)number;
    Py_ssize_t header_len = cid_len + 3;
    PyObject *result = PyBytes_FromStringAndSize(NULL, header_len + payload_len + TAG_SIZE);
    PyObject *key = PyLong_FromLongLong(number);
    PyObject *highest = PyLong_FromLongLong(largest);
    PyObject *next = PyLong_FromLongLong(number + 1);
    PyObject *acks_now = PyLong_FromLongLong(acks + 1);
    PyObject *pings_now = ping ? PyLong_FromLongLong(pings + 1) : Py_NewRef(Py_None);
    if (result == NULL || key == NULL || highest == NULL || next == NULL || acks_now == NULL ||
        pings_now == NULL)
        goto fail;
    if (seal_into((PacketSealer *)sealer, header, header_len, payload, payload_len,
                  (unsigned long long)number, (unsigned char *)PyBytes_AS_STRING(result)) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL failed to seal the packet");
        goto fail;
    }
    if (PyDict_SetItem(sent, key, highest) < 0) goto fail;
    /* As FastListener._transmit, in the same order. */
    fleet_set(self, listener, FLEET_ACK_AT, Py_NewRef(Py_None));
    fleet_set(self, listener, FLEET_ACKS_SENT, acks_now);
    if (ping) fleet_set(self, listener, FLEET_PINGS_SENT, pings_now);
    else Py_DECREF(pings_now);
    fleet_set(self, listener, FLEET_PACKET_NUMBER, next);
    Py_DECREF(key);
    Py_DECREF(highest);
    *packet = result;
    return 1;
fail:
    Py_XDECREF(result);
    Py_XDECREF(key);
    Py_XDECREF(highest);
    Py_XDECREF(next);
    Py_XDECREF(acks_now);
    Py_XDECREF(pings_now);
    return -1;
}

/* Fleet.acknowledge: 0, or -1 with an exception. */
static int fleet_acknowledge(FleetReceiver *self, PyObject *due, long long now, PyObject *outbox) {
    long long sent_in_c = 0;
    for (;;) {
        Py_ssize_t waiting = PyObject_Length(due);
        if (waiting < 0) return -1;
        if (waiting == 0) break;
        PyObject *head = PySequence_GetItem(due, 0);
        if (head == NULL) return -1;
        if (!PyTuple_Check(head) || PyTuple_GET_SIZE(head) != 2 ||
            !Py_IS_TYPE(PyTuple_GET_ITEM(head, 1), self->listener_type)) {
            Py_DECREF(head);
            PyErr_SetString(PyExc_TypeError, "(time, listener) pairs expected");
            return -1;
        }
        long long when = PyLong_AsLongLong(PyTuple_GET_ITEM(head, 0));
        if (when == -1 && PyErr_Occurred()) {
            Py_DECREF(head);
            return -1;
        }
        if (when > now) {
            Py_DECREF(head);
            break;
        }
        PyObject *gone = PyObject_CallMethodNoArgs(due, str_popleft);
        if (gone == NULL) {
            Py_DECREF(head);
            return -1;
        }
        Py_DECREF(gone);
        PyObject *listener = Py_NewRef(PyTuple_GET_ITEM(head, 1));
        Py_DECREF(head);
        long long at;
        PyObject *at_object = FLEET_SLOT(self, listener, FLEET_ACK_AT);
        int failed = 0;
        if (at_object != NULL && at_object != Py_None && fleet_get(self, listener, FLEET_ACK_AT, &at) && at <= now) {
            PyObject *packet = NULL;
            int done = fleet_transmit_in_c(self, listener, now, &packet);
            if (done < 0) {
                failed = 1;
            } else if (done) {
                sent_in_c++;
                /* As Fleet.send: counted when sent within the window, queued. */
                long long clock = fleet_clock();
                if (self->low <= clock && clock < self->high) self->packets_out++;
                if (PyList_Append(outbox, packet) < 0) failed = 1;
                Py_DECREF(packet);
            } else {
                PyObject *when_now = PyLong_FromLongLong(now);
                PyObject *r = when_now ? PyObject_CallMethodOneArg(listener, str_ack_packet_due, when_now) : NULL;
                Py_XDECREF(when_now);
                if (r == NULL) failed = 1;
                Py_XDECREF(r);
            }
        } else if (at_object != NULL && at_object != Py_None && !PyLong_CheckExact(at_object)) {
            /* Not an int the C path reads: FastListener's own check decides. */
            PyObject *when_now = PyLong_FromLongLong(now);
            PyObject *r = when_now ? PyObject_RichCompare(at_object, when_now, Py_LE) : NULL;
            int is_due = r ? PyObject_IsTrue(r) : -1;
            Py_XDECREF(r);
            PyObject *r2 = NULL;
            if (is_due > 0) r2 = PyObject_CallMethodOneArg(listener, str_ack_packet_due, when_now);
            Py_XDECREF(when_now);
            if (is_due < 0 || (is_due > 0 && r2 == NULL)) failed = 1;
            Py_XDECREF(r2);
        }
        Py_DECREF(listener);
        if (failed) return -1;
    }
    self->acks_in_c += sent_in_c;
    return 0;
}

static PyObject *FleetReceiver_acknowledge_due(FleetReceiver *self, PyObject *args) {
    PyObject *due, *outbox;
    long long now;
    if (!PyArg_ParseTuple(args, "OLO!", &due, &now, &PyList_Type, &outbox)) return NULL;
    if (self->routes == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FleetReceiver not initialised");
        return NULL;
    }
    if (fleet_acknowledge(self, due, now, outbox) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *FleetReceiver_drain(FleetReceiver *self, PyObject *args);

/* Fleet.flush with sendmmsg: 0, or -1 with an exception. */
static int fleet_flush(PyObject *outbox, int fd, int family, PyObject *server) {
    while (PyList_GET_SIZE(outbox) > 0) {
        Py_ssize_t count = PyList_GET_SIZE(outbox);
        PyObject *addrs = PyList_New(count);
        if (addrs == NULL) return -1;
        for (Py_ssize_t i = 0; i < count; i++) PyList_SET_ITEM(addrs, i, Py_NewRef(server));
        PyObject *call = Py_BuildValue("(iiOO)", fd, family, outbox, addrs);
        Py_DECREF(addrs);
        if (call == NULL) return -1;
        PyObject *result = speedups_sendmmsg(NULL, call);
        Py_DECREF(call);
        if (result == NULL) return -1;
        Py_ssize_t sent = 0;
        int error = 0;
        int parsed = PyArg_ParseTuple(result, "ni", &sent, &error);
        Py_DECREF(result);
        if (!parsed) return -1;
        if (error || sent == 0) {
            errno = error;
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyList_SetSlice(outbox, 0, sent, NULL) < 0) return -1;
    }
    return 0;
}

static PyObject *FleetReceiver_run(FleetReceiver *self, PyObject *args) {
    int fd, family;
    PyObject *due, *outbox, *server, *extend = NULL, *dues = NULL;
    long long end;
    if (!PyArg_ParseTuple(args, "iOLO!Oi", &fd, &due, &end, &PyList_Type, &outbox, &server,
                          &family))
        return NULL;
    if (self->routes == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FleetReceiver not initialised");
        return NULL;
    }
    int poller = epoll_create1(EPOLL_CLOEXEC);
    if (poller < 0) return PyErr_SetFromErrno(PyExc_OSError);
    struct epoll_event event = {.events = EPOLLIN, .data = {.fd = fd}};
    long long wakeups = 0;
    if (epoll_ctl(poller, EPOLL_CTL_ADD, fd, &event) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto fail;
    }
    extend = PyObject_GetAttrString(due, "extend");
    if (extend == NULL) goto fail;
    PyObject *drain_args = Py_BuildValue("(i)", fd);
    if (drain_args == NULL) goto fail;
    for (;;) {
        /* Fleet.run's loop, step for step. */
        long long now = fleet_clock();
        if (fleet_acknowledge(self, due, now, outbox) < 0 ||
            fleet_flush(outbox, fd, family, server) < 0)
            goto fail_args;
        if (now >= end) break;
        long long wake = end;
        Py_ssize_t waiting = PyObject_Length(due);
        if (waiting < 0) goto fail_args;
        if (waiting > 0) {
            PyObject *head = PySequence_GetItem(due, 0);
            if (head == NULL) goto fail_args;
            long long first = PyTuple_Check(head) && PyTuple_GET_SIZE(head) == 2
                                  ? PyLong_AsLongLong(PyTuple_GET_ITEM(head, 0))
                                  : -1;
            Py_DECREF(head);
            if (first == -1 && PyErr_Occurred()) goto fail_args;
            if (first < wake) wake = first;
        }
        /* select.epoll.poll's timeout: milliseconds, rounded up. */
        long long wait = wake > now ? wake - now : 0;
        if (wait > 1000000000000LL) wait = 1000000000000LL; /* 1000 s: then look again */
        int timeout = (int)((wait + 999999) / 1000000);
        struct epoll_event ready;
        int got;
        Py_BEGIN_ALLOW_THREADS
        got = epoll_wait(poller, &ready, 1, timeout);
        Py_END_ALLOW_THREADS
        if (got < 0 && errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail_args;
        }
        if (PyErr_CheckSignals() < 0) goto fail_args;
        wakeups++;
        dues = FleetReceiver_drain(self, drain_args);
        if (dues == NULL) goto fail_args;
        if (PyList_GET_SIZE(dues) > 0) {
            PyObject *r = PyObject_CallOneArg(extend, dues);
            if (r == NULL) goto fail_args;
            Py_DECREF(r);
        }
        Py_CLEAR(dues);
    }
    Py_DECREF(drain_args);
    Py_DECREF(extend);
    close(poller);
    return PyLong_FromLongLong(wakeups);
fail_args:
    Py_XDECREF(dues);
    Py_DECREF(drain_args);
fail:
    Py_XDECREF(extend);
    close(poller);
    return NULL;
}

static PyMethodDef FleetReceiver_methods[] = {
    {"acknowledge_due", (PyCFunction)FleetReceiver_acknowledge_due, METH_VARARGS,
     "acknowledge_due(due, now, outbox)\n\n"
     "Fleet.acknowledge: pop the (time, listener) pairs of the deque due up to now and queue\n"
     "each listener's ACK packet due (FastListener.ack_packet_due) on the outbox list (those\n"
     "built here counted in packets_out)."},
    {"run", (PyCFunction)FleetReceiver_run, METH_VARARGS,
     "run(fd, due, end, outbox, server, family) -> wake-ups\n\n"
     "Fleet.run's loop until end (monotonic ns): ACKs due sent, the outbox flushed with\n"
     "sendmmsg to server, epoll on fd until the next ACK is due, the socket drained."},
    {"add", (PyCFunction)FleetReceiver_add, METH_VARARGS,
     "add(cid, listener, index): route packets for connection id cid to listener (its copies\n"
     "counted at received[index])."},
    {"start", (PyCFunction)FleetReceiver_start, METH_VARARGS,
     "start(low, high, latencies): record copies sent in [low, high) (monotonic ns) into\n"
     "latencies (µs), received and worst; zero the counters."},
    {"receive", (PyCFunction)FleetReceiver_receive, METH_VARARGS,
     "receive(packet, now) -> (ack_at_ns, listener) or None\n\n"
     "One datagram read at now (monotonic ns), as Fleet's loop takes it: the listener and the\n"
     "time of the ACK that became due later, if one did."},
    {"drain", (PyCFunction)FleetReceiver_drain, METH_VARARGS,
     "drain(fd) -> [(ack_at_ns, listener), ...]\n\n"
     "Read the non-blocking socket fd with recvmmsg until it is empty (or a batch comes back\n"
     "short), each datagram as receive() takes it at the time it was read."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef FleetReceiver_members[] = {
    {"packets_in", T_LONGLONG, offsetof(FleetReceiver, packets_in), READONLY,
     "datagrams read at a time in the window"},
    {"unrouted", T_LONGLONG, offsetof(FleetReceiver, unrouted), READONLY,
     "datagrams for no known connection id"},
    {"in_c", T_LONGLONG, offsetof(FleetReceiver, in_c), READONLY, "packets taken here"},
    {"in_python", T_LONGLONG, offsetof(FleetReceiver, in_python), READONLY,
     "packets given to FastListener.receive"},
    {"acks_in_c", T_LONGLONG, offsetof(FleetReceiver, acks_in_c), READONLY,
     "ACK packets built here"},
    {"packets_out", T_LONGLONG, offsetof(FleetReceiver, packets_out), READONLY,
     "ACK packets built here and queued at a time in the window"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject FleetReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "salon.quic._speedups.FleetReceiver",
    .tp_doc = "FleetReceiver(listener_type, send_time_offset, check_every, received, worst):\n"
              "the receive loop of the bench's listener fleet (bench/listener_fleet.py).",
    .tp_basicsize = sizeof(FleetReceiver),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_traverse = (traverseproc)FleetReceiver_traverse,
    .tp_clear = (inquiry)FleetReceiver_clear,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FleetReceiver_init,
    .tp_dealloc = (destructor)FleetReceiver_dealloc,
    .tp_methods = FleetReceiver_methods,
    .tp_members = FleetReceiver_members,
};

static PyMethodDef speedups_methods[] = {
    {"flush_links", speedups_flush_links, METH_VARARGS,
     "flush_links(protocols, now, packets, addrs) -> (rest, sent)\n\n"
     "Send each protocol's queued media through its loaded media link (its media_link\n"
     "attribute, with queue and limit set, and the protocol not closed), packets and\n"
     "addresses appended to the lists. rest: the protocols without such a link (their own\n"
     "transmit must run), and (protocol, result, dropped, armed) for a link that needs Python\n"
     "(result 2: aioquic must send; armed: re-arm the timer; dropped: count them); sent: the\n"
     "datagrams sent."},
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
    if (PyType_Ready(&PacketSealerType) < 0 || PyType_Ready(&PacketOpenerType) < 0 ||
        PyType_Ready(&MediaLinkType) < 0 || PyType_Ready(&FleetReceiverType) < 0)
        return NULL;
    str_receive = PyUnicode_InternFromString("receive");
    str_ack_packet_due = PyUnicode_InternFromString("ack_packet_due");
    if (str_receive == NULL || str_ack_packet_due == NULL) return NULL;
    str_popleft = PyUnicode_InternFromString("popleft");
    str_media_link = PyUnicode_InternFromString("media_link");
    str_closed = PyUnicode_InternFromString("closed");
    if (str_popleft == NULL || str_media_link == NULL || str_closed == NULL) return NULL;
    PyObject *collections = PyImport_ImportModule("collections");
    if (collections == NULL) return NULL;
    PyObject *deque = PyObject_GetAttrString(collections, "deque");
    Py_DECREF(collections);
    if (deque == NULL) return NULL;
    if (!PyType_Check(deque)) {
        Py_DECREF(deque);
        PyErr_SetString(PyExc_TypeError, "collections.deque is not a type");
        return NULL;
    }
    deque_type = (PyTypeObject *)deque; /* kept for the module's life */
    deque_popleft = PyObject_GetAttr(deque, str_popleft);
    if (deque_popleft == NULL) return NULL;
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
    Py_INCREF(&MediaLinkType);
    if (PyModule_AddObject(module, "MediaLink", (PyObject *)&MediaLinkType) < 0) {
        Py_DECREF(&MediaLinkType);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&FleetReceiverType);
    if (PyModule_AddObject(module, "FleetReceiver", (PyObject *)&FleetReceiverType) < 0) {
        Py_DECREF(&FleetReceiverType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
