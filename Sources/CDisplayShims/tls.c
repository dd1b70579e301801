// GnuTLS for the VNC server's TLS (VeNCrypt X.509 and wss), loaded only when
// -vnc ...,tls-creds= asks for it: a device model without TLS never maps it.
//
// The socket is non-blocking and belongs to the VNC server's thread; GnuTLS
// reads and writes it through pull/push functions here that never wait
// (EAGAIN goes back to the server's epoll loop). Bytes the server had already
// read before TLS started (a client that sends its ClientHello without waiting
// for the VeNCrypt ack) are handed to GnuTLS first.
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <gnutls/gnutls.h>
#include "displayshims.h"
#include "libraries.h"
#include "xenvfb_tls.h"

// Every GnuTLS function used: X(return type, name, (parameters), (arguments)).
#define XENVFB_GNUTLS_FUNCTIONS(X) \
    X(int, gnutls_certificate_allocate_credentials, (gnutls_certificate_credentials_t *c), (c)) \
    X(void, gnutls_certificate_free_credentials, (gnutls_certificate_credentials_t c), (c)) \
    X(int, gnutls_certificate_set_x509_trust_file, (gnutls_certificate_credentials_t c, const char *f, gnutls_x509_crt_fmt_t t), (c, f, t)) \
    X(int, gnutls_certificate_set_x509_crl_file, (gnutls_certificate_credentials_t c, const char *f, gnutls_x509_crt_fmt_t t), (c, f, t)) \
    X(int, gnutls_certificate_set_x509_key_file, (gnutls_certificate_credentials_t c, const char *cf, const char *kf, gnutls_x509_crt_fmt_t t), (c, cf, kf, t)) \
    X(void, gnutls_certificate_set_dh_params, (gnutls_certificate_credentials_t c, gnutls_dh_params_t p), (c, p)) \
    X(int, gnutls_dh_params_init, (gnutls_dh_params_t *p), (p)) \
    X(void, gnutls_dh_params_deinit, (gnutls_dh_params_t p), (p)) \
    X(int, gnutls_dh_params_import_pkcs3, (gnutls_dh_params_t p, const gnutls_datum_t *d, gnutls_x509_crt_fmt_t f), (p, d, f)) \
    X(int, gnutls_priority_init, (gnutls_priority_t *p, const char *s, const char **e), (p, s, e)) \
    X(void, gnutls_priority_deinit, (gnutls_priority_t p), (p)) \
    X(int, gnutls_init, (gnutls_session_t *s, unsigned int f), (s, f)) \
    X(void, gnutls_deinit, (gnutls_session_t s), (s)) \
    X(int, gnutls_priority_set, (gnutls_session_t s, gnutls_priority_t p), (s, p)) \
    X(int, gnutls_credentials_set, (gnutls_session_t s, gnutls_credentials_type_t t, void *c), (s, t, c)) \
    X(void, gnutls_certificate_server_set_request, (gnutls_session_t s, gnutls_certificate_request_t r), (s, r)) \
    X(int, gnutls_certificate_verify_peers2, (gnutls_session_t s, unsigned int *st), (s, st)) \
    X(void, gnutls_transport_set_ptr, (gnutls_session_t s, gnutls_transport_ptr_t p), (s, p)) \
    X(void, gnutls_transport_set_push_function, (gnutls_session_t s, gnutls_push_func f), (s, f)) \
    X(void, gnutls_transport_set_pull_function, (gnutls_session_t s, gnutls_pull_func f), (s, f)) \
    X(void, gnutls_transport_set_pull_timeout_function, (gnutls_session_t s, gnutls_pull_timeout_func f), (s, f)) \
    X(void, gnutls_transport_set_errno, (gnutls_session_t s, int e), (s, e)) \
    X(int, gnutls_handshake, (gnutls_session_t s), (s)) \
    X(ssize_t, gnutls_record_recv, (gnutls_session_t s, void *d, size_t n), (s, d, n)) \
    X(ssize_t, gnutls_record_send, (gnutls_session_t s, const void *d, size_t n), (s, d, n)) \
    X(size_t, gnutls_record_check_pending, (gnutls_session_t s), (s)) \
    X(int, gnutls_record_get_direction, (gnutls_session_t s), (s)) \
    X(int, gnutls_bye, (gnutls_session_t s, gnutls_close_request_t h), (s, h)) \
    X(int, gnutls_error_is_fatal, (int e), (e)) \
    X(const char *, gnutls_strerror, (int e), (e)) \
    X(gnutls_protocol_t, gnutls_protocol_get_version, (gnutls_session_t s), (s)) \
    X(const char *, gnutls_protocol_get_name, (gnutls_protocol_t v), (v)) \
    X(gnutls_cipher_algorithm_t, gnutls_cipher_get, (gnutls_session_t s), (s)) \
    X(const char *, gnutls_cipher_get_name, (gnutls_cipher_algorithm_t a), (a))

XENVFB_DLOPEN_NOTE(XENVFB_LIBRARY_GNUTLS, XENVFB_GNUTLS_FUNCTIONS);
static const struct xenvfb_library gnutls_library = {XENVFB_LIBRARY_GNUTLS};

#define POINTER(type, name, params, args) static type (*p_##name) params;
XENVFB_GNUTLS_FUNCTIONS(POINTER)

int xenvfb_tls_load(char *error, size_t size) {
    static void *library;
    if (library) return 0;
    void *handle = xenvfb_dlopen(&gnutls_library, error, size);
    if (!handle) return -1;
#define RESOLVE(type, name, params, args) \
    if (!(p_##name = (type (*) params)dlsym(handle, #name))) { \
        xenvfb_dlopen_lacks(&gnutls_library, handle, #name, error, size); \
        return -1; \
    }
    XENVFB_GNUTLS_FUNCTIONS(RESOLVE)
    library = handle;
    return 0;
}

struct xenvfb_tls_creds {
    gnutls_certificate_credentials_t x509;
    gnutls_priority_t priority;
    gnutls_dh_params_t dh;
    int verify_peer;
};

struct xenvfb_tls_session {
    gnutls_session_t tls;
    int fd;
    int verify_peer;
    unsigned char *prefix;
    size_t prefix_size, prefix_used;
};

/// "DIR/NAME" into `path`; 0, or -1 when it does not fit.
static int join(char *path, size_t size, const char *dir, const char *name) {
    int n = snprintf(path, size, "%s/%s", dir, name);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/// A PEM file of at most 64 KiB (DH parameters are a few KiB).
static int read_small_file(const char *path, gnutls_datum_t *datum) {
    FILE *f = fopen(path, "rbe");
    if (!f) return -1;
    unsigned char *data = malloc(65536);
    size_t n = data ? fread(data, 1, 65536, f) : 0;
    int bad = !data || ferror(f) || n == 65536;
    fclose(f);
    if (bad) {
        free(data);
        return -1;
    }
    datum->data = data;
    datum->size = (unsigned int)n;
    return 0;
}

void xenvfb_tls_creds_free(xenvfb_tls_creds *creds) {
    if (!creds) return;
    if (creds->x509) p_gnutls_certificate_free_credentials(creds->x509);
    if (creds->priority) p_gnutls_priority_deinit(creds->priority);
    if (creds->dh) p_gnutls_dh_params_deinit(creds->dh);
    free(creds);
}

xenvfb_tls_creds *xenvfb_tls_creds_new(const char *dir, const char *priority, int verify_peer,
                                       char *error, size_t size) {
    char ca[4096], cert[4096], key[4096], crl[4096], dh[4096];
    if (join(ca, sizeof ca, dir, "ca-cert.pem") || join(cert, sizeof cert, dir, "server-cert.pem") ||
        join(key, sizeof key, dir, "server-key.pem") || join(crl, sizeof crl, dir, "ca-crl.pem") ||
        join(dh, sizeof dh, dir, "dh-params.pem")) {
        snprintf(error, size, "directory name too long");
        return NULL;
    }
    const char *required[] = {ca, cert, key};
    for (size_t i = 0; i < 3; i++) {
        if (!exists(required[i])) {
            snprintf(error, size, "%s: %s", required[i], strerror(errno));
            return NULL;
        }
    }
    xenvfb_tls_creds *creds = calloc(1, sizeof *creds);
    if (!creds) {
        snprintf(error, size, "out of memory");
        return NULL;
    }
    creds->verify_peer = verify_peer;
    int rc = p_gnutls_certificate_allocate_credentials(&creds->x509);
    if (rc < 0) {
        snprintf(error, size, "cannot allocate credentials: %s", p_gnutls_strerror(rc));
        goto fail;
    }
    rc = p_gnutls_certificate_set_x509_trust_file(creds->x509, ca, GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
        snprintf(error, size, "%s: %s", ca, p_gnutls_strerror(rc));
        goto fail;
    }
    if (rc == 0) {
        snprintf(error, size, "%s: no CA certificate in it", ca);
        goto fail;
    }
    rc = p_gnutls_certificate_set_x509_key_file(creds->x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (rc < 0) {
        snprintf(error, size, "%s, %s: %s", cert, key, p_gnutls_strerror(rc));
        goto fail;
    }
    if (exists(crl)) {
        rc = p_gnutls_certificate_set_x509_crl_file(creds->x509, crl, GNUTLS_X509_FMT_PEM);
        if (rc < 0) {
            snprintf(error, size, "%s: %s", crl, p_gnutls_strerror(rc));
            goto fail;
        }
    }
    if (exists(dh)) {
        gnutls_datum_t pem;
        if (read_small_file(dh, &pem) != 0) {
            snprintf(error, size, "%s: cannot read it (or it is larger than 64 KiB)", dh);
            goto fail;
        }
        rc = p_gnutls_dh_params_init(&creds->dh);
        if (rc >= 0) rc = p_gnutls_dh_params_import_pkcs3(creds->dh, &pem, GNUTLS_X509_FMT_PEM);
        free(pem.data);
        if (rc < 0) {
            snprintf(error, size, "%s: %s", dh, p_gnutls_strerror(rc));
            goto fail;
        }
        p_gnutls_certificate_set_dh_params(creds->x509, creds->dh);
    }
    const char *where = NULL;
    rc = p_gnutls_priority_init(&creds->priority, priority ? priority : "NORMAL", &where);
    if (rc < 0) {
        snprintf(error, size, "priority '%s': %s%s%s", priority ? priority : "NORMAL", p_gnutls_strerror(rc),
                 where ? " at " : "", where ? where : "");
        creds->priority = NULL;
        goto fail;
    }
    return creds;
fail:
    xenvfb_tls_creds_free(creds);
    return NULL;
}

static ssize_t pull(gnutls_transport_ptr_t ptr, void *buffer, size_t count) {
    xenvfb_tls_session *s = ptr;
    if (s->prefix_used < s->prefix_size) {
        size_t n = s->prefix_size - s->prefix_used;
        if (n > count) n = count;
        memcpy(buffer, s->prefix + s->prefix_used, n);
        s->prefix_used += n;
        return (ssize_t)n;
    }
    ssize_t n;
    do {
        n = recv(s->fd, buffer, count, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0) p_gnutls_transport_set_errno(s->tls, errno == EWOULDBLOCK ? EAGAIN : errno);
    return n;
}

static ssize_t push(gnutls_transport_ptr_t ptr, const void *buffer, size_t count) {
    xenvfb_tls_session *s = ptr;
    ssize_t n;
    do {
        n = send(s->fd, buffer, count, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) p_gnutls_transport_set_errno(s->tls, errno == EWOULDBLOCK ? EAGAIN : errno);
    return n;
}

// Never waits: says whether reading would find something now.
static int pull_timeout(gnutls_transport_ptr_t ptr, unsigned int ms) {
    (void)ms;
    xenvfb_tls_session *s = ptr;
    if (s->prefix_used < s->prefix_size) return 1;
    struct pollfd p = {.fd = s->fd, .events = POLLIN};
    int n = poll(&p, 1, 0);
    return n < 0 ? -1 : n;
}

xenvfb_tls_session *xenvfb_tls_session_new(xenvfb_tls_creds *creds, int fd, const void *prefix, size_t prefix_size,
                                           char *error, size_t size) {
    xenvfb_tls_session *s = calloc(1, sizeof *s);
    if (!s || (prefix_size && !(s->prefix = malloc(prefix_size)))) {
        free(s);
        snprintf(error, size, "out of memory");
        return NULL;
    }
    if (prefix_size) memcpy(s->prefix, prefix, prefix_size);
    s->prefix_size = prefix_size;
    s->fd = fd;
    s->verify_peer = creds->verify_peer;
    int rc = p_gnutls_init(&s->tls, GNUTLS_SERVER | GNUTLS_NONBLOCK);
    if (rc >= 0) rc = p_gnutls_priority_set(s->tls, creds->priority);
    if (rc >= 0) rc = p_gnutls_credentials_set(s->tls, GNUTLS_CRD_CERTIFICATE, creds->x509);
    if (rc < 0) {
        snprintf(error, size, "cannot start a TLS session: %s", p_gnutls_strerror(rc));
        if (s->tls) p_gnutls_deinit(s->tls);
        free(s->prefix);
        free(s);
        return NULL;
    }
    p_gnutls_certificate_server_set_request(s->tls, creds->verify_peer ? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_IGNORE);
    p_gnutls_transport_set_ptr(s->tls, s);
    p_gnutls_transport_set_push_function(s->tls, push);
    p_gnutls_transport_set_pull_function(s->tls, pull);
    p_gnutls_transport_set_pull_timeout_function(s->tls, pull_timeout);
    return s;
}

void xenvfb_tls_session_free(xenvfb_tls_session *s) {
    if (!s) return;
    p_gnutls_bye(s->tls, GNUTLS_SHUT_WR); // non-blocking: sent if the socket takes it now
    p_gnutls_deinit(s->tls);
    free(s->prefix);
    free(s);
}

static int failure(int rc, const char *what, char *error, size_t size) {
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED || !p_gnutls_error_is_fatal(rc)) return XENVFB_TLS_AGAIN;
    snprintf(error, size, "%s: %s", what, p_gnutls_strerror(rc));
    return XENVFB_TLS_ERROR;
}

int xenvfb_tls_handshake(xenvfb_tls_session *s, char *error, size_t size) {
    int rc = p_gnutls_handshake(s->tls);
    if (rc < 0) return failure(rc, "TLS handshake", error, size);
    if (s->verify_peer) {
        unsigned int status = 0;
        rc = p_gnutls_certificate_verify_peers2(s->tls, &status);
        if (rc < 0) {
            snprintf(error, size, "client certificate: %s", p_gnutls_strerror(rc));
            return XENVFB_TLS_ERROR;
        }
        if (status != 0) {
            snprintf(error, size, "client certificate not trusted (GnuTLS status 0x%x%s%s%s)", status,
                     status & GNUTLS_CERT_SIGNER_NOT_FOUND ? ", signer not the CA" : "",
                     status & GNUTLS_CERT_EXPIRED ? ", expired" : "",
                     status & GNUTLS_CERT_REVOKED ? ", revoked" : "");
            return XENVFB_TLS_ERROR;
        }
    }
    return 1;
}

ssize_t xenvfb_tls_recv(xenvfb_tls_session *s, void *buffer, size_t count, char *error, size_t size) {
    ssize_t n = p_gnutls_record_recv(s->tls, buffer, count);
    if (n >= 0) return n;
    if (n == GNUTLS_E_PREMATURE_TERMINATION) return 0; // the peer closed without close_notify
    return failure((int)n, "TLS read", error, size);
}

ssize_t xenvfb_tls_send(xenvfb_tls_session *s, const void *buffer, size_t count, char *error, size_t size) {
    ssize_t n = p_gnutls_record_send(s->tls, buffer, count);
    if (n >= 0) return n;
    return failure((int)n, "TLS write", error, size);
}

size_t xenvfb_tls_pending(xenvfb_tls_session *s) { return p_gnutls_record_check_pending(s->tls); }

int xenvfb_tls_wants_write(xenvfb_tls_session *s) { return p_gnutls_record_get_direction(s->tls); }

void xenvfb_tls_description(xenvfb_tls_session *s, char *text, size_t size) {
    const char *protocol = p_gnutls_protocol_get_name(p_gnutls_protocol_get_version(s->tls));
    const char *cipher = p_gnutls_cipher_get_name(p_gnutls_cipher_get(s->tls));
    snprintf(text, size, "%s %s", protocol ? protocol : "?", cipher ? cipher : "?");
}
