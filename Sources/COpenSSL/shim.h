// System OpenSSL 3 for Tollgate; imported only by the OpenSSLKit Swift module.
// OpenSSL spells several APIs as function-like macros, which Swift cannot
// import; each one Tollgate needs gets a static inline wrapper here.
#ifndef TOLLGATE_COPENSSL_SHIM_H
#define TOLLGATE_COPENSSL_SHIM_H

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/bio.h>

static inline int COpenSSLShims_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

static inline int COpenSSLShims_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

static inline void COpenSSLShims_BIO_set_retry_read(BIO *bio) {
    BIO_set_retry_read(bio);
}

static inline int COpenSSLShims_sk_X509_num(const STACK_OF(X509) *stack) {
    return sk_X509_num(stack);
}

#endif
