#pragma once
// TLS for the VNC server (VeNCrypt and wss): GnuTLS, loaded with dlopen only
// when -vnc ...,tls-creds= is given (tls.c; the row XENVFB_LIBRARY_GNUTLS of
// libraries.h). Non-blocking: nothing here waits on a socket.
#include <stddef.h>
#include <sys/types.h>

/// Loads libgnutls (dlopen). Returns 0, or -1 with the reason in `error`
/// (which names the option and the Debian package). Idempotent, one thread.
int xenvfb_tls_load(char *error, size_t size);

/// X.509 server credentials, as QEMU's tls-creds-x509 reads them from a directory.
typedef struct xenvfb_tls_creds xenvfb_tls_creds;
/// One TLS connection over a non-blocking socket.
typedef struct xenvfb_tls_session xenvfb_tls_session;

/// Reads DIR/ca-cert.pem, DIR/server-cert.pem and DIR/server-key.pem (all
/// required), DIR/ca-crl.pem and DIR/dh-params.pem (if present). `priority`
/// is a GnuTLS priority string (NULL: "NORMAL"). With `verify_peer` every
/// client must present a certificate signed by the CA. NULL with a message
/// in `error` on failure. Call xenvfb_tls_load first.
xenvfb_tls_creds *xenvfb_tls_creds_new(const char *dir, const char *priority, int verify_peer,
                                       char *error, size_t size);
void xenvfb_tls_creds_free(xenvfb_tls_creds *creds);

/// A server-side session on `fd` (non-blocking). `prefix` holds bytes
/// already read from the socket that belong to TLS (a client that sent its
/// ClientHello early); they are read first. NULL with a message on failure.
xenvfb_tls_session *xenvfb_tls_session_new(xenvfb_tls_creds *creds, int fd, const void *prefix, size_t prefix_size,
                                           char *error, size_t size);
/// Sends close_notify if the socket takes it at once, then frees the session
/// (the socket stays open).
void xenvfb_tls_session_free(xenvfb_tls_session *session);

#define XENVFB_TLS_AGAIN (-1)
#define XENVFB_TLS_ERROR (-2)

/// Advances the handshake: 1 when done (and the peer verified, with
/// verify_peer), XENVFB_TLS_AGAIN to call again when the socket is ready
/// (xenvfb_tls_wants_write says for what), XENVFB_TLS_ERROR with a message.
int xenvfb_tls_handshake(xenvfb_tls_session *session, char *error, size_t size);
/// Decrypted bytes into `buffer`: the count, 0 at the end of the stream,
/// XENVFB_TLS_AGAIN or XENVFB_TLS_ERROR (with a message).
ssize_t xenvfb_tls_recv(xenvfb_tls_session *session, void *buffer, size_t count, char *error, size_t size);
/// Encrypts and sends up to `count` bytes (one record at most): the count
/// taken, XENVFB_TLS_AGAIN (call again with the same bytes when the socket
/// is writable) or XENVFB_TLS_ERROR.
ssize_t xenvfb_tls_send(xenvfb_tls_session *session, const void *buffer, size_t count, char *error, size_t size);
/// Decrypted bytes GnuTLS holds that the socket will not signal again.
size_t xenvfb_tls_pending(xenvfb_tls_session *session);
/// Whether the last call that returned XENVFB_TLS_AGAIN waits to write (1) or to read (0).
int xenvfb_tls_wants_write(xenvfb_tls_session *session);
/// The negotiated protocol and cipher ("TLS1.3 AES-256-GCM"), for the log.
void xenvfb_tls_description(xenvfb_tls_session *session, char *text, size_t size);
