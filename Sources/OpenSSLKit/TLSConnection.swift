internal import COpenSSL

/// One TLS connection as a state machine over two memory BIOs: ciphertext
/// from the network goes in with ``feedCiphertext(_:)``, ciphertext for the
/// network comes out of ``drainCiphertext(_:)``, and plaintext goes through
/// ``read(into:)`` and ``write(_:)``. It does no I/O itself, so any transport
/// (the SwiftNIO handler, a test, a fuzzer) can drive it.
///
/// Not thread-safe: a connection belongs to the one event loop that drives it.
public final class TLSConnection {
    /// The outcome of a step that may need more input from the peer.
    public enum StepResult: Equatable, Sendable {
        case complete
        /// More ciphertext from the peer is needed (after sending what is pending).
        case wantsMore
        case failed(TLSError)
    }

    /// The outcome of reading plaintext.
    public enum ReadResult: Equatable, Sendable {
        case bytes(Int)
        case wantsMore
        /// The peer sent close_notify.
        case closed
        case failed(TLSError)
    }

    public let context: TLSContext
    private let ssl: OpaquePointer
    private let networkIn: OpaquePointer
    private let networkOut: OpaquePointer

    init(context: TLSContext, serverHostname: String?) throws(TLSError) {
        self.context = context
        ERR_clear_error()
        guard let ssl = SSL_new(context.context) else { throw TLSError.fromQueue(.configuration, "creating a connection") }
        guard let input = BIO_new(BIO_s_mem()), let output = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl)
            throw TLSError.fromQueue(.configuration, "creating memory BIOs")
        }
        // SSL_set_bio hands both BIOs to the SSL object, which frees them.
        SSL_set_bio(ssl, input, output)
        self.ssl = ssl
        self.networkIn = input
        self.networkOut = output
        switch context.configuration.role {
        case .client:
            SSL_set_connect_state(ssl)
            if let serverHostname {
                _ = COpenSSLShims_SSL_set_tlsext_host_name(ssl, serverHostname)
                if context.configuration.verification != .none {
                    // Check the server's certificate names this host.
                    // Every stored property is set: deinit frees the SSL object.
                    guard SSL_set1_host(ssl, serverHostname) == 1 else {
                        throw TLSError.fromQueue(.configuration, "setting the expected host name")
                    }
                }
            }
        case .server:
            SSL_set_accept_state(ssl)
        }
    }

    deinit {
        SSL_free(ssl)
    }

    // MARK: Ciphertext

    /// Hands ciphertext received from the network to OpenSSL.
    public func feedCiphertext(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        // A memory BIO grows as needed, so the write takes everything.
        _ = BIO_write(networkIn, base, Int32(bytes.count))
    }

    /// Bytes of ciphertext waiting to be sent.
    public var pendingCiphertext: Int { Int(BIO_ctrl_pending(networkOut)) }

    /// Passes pending ciphertext to `sink` in chunks, emptying the buffer.
    public func drainCiphertext(_ sink: (UnsafeRawBufferPointer) -> Void) {
        var remaining = pendingCiphertext
        guard remaining > 0 else { return }
        withUnsafeTemporaryAllocation(byteCount: min(remaining, 16 * 1024 + 512), alignment: 1) { chunk in
            while remaining > 0 {
                let count = BIO_read(networkOut, chunk.baseAddress, Int32(chunk.count))
                guard count > 0 else { break }
                sink(UnsafeRawBufferPointer(start: chunk.baseAddress, count: Int(count)))
                remaining = pendingCiphertext
            }
        }
    }

    // MARK: Handshake, data, shutdown

    /// Advances the handshake.
    public func handshake() -> StepResult {
        ERR_clear_error()
        let result = SSL_do_handshake(ssl)
        if result == 1 { return .complete }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantsMore
        default:
            let verify = SSL_get_verify_result(ssl)
            if verify != Int(X509_V_OK) {
                return .failed(TLSError.fromQueue(.certificateRejected, "handshake",
                                                  verifyResult: String(cString: X509_verify_cert_error_string(verify))))
            }
            let error = TLSError.fromQueue(.handshakeFailed, "handshake")
            if error.openSSLErrors.contains(where: { $0.contains("peer did not return a certificate") || $0.contains("certificate required") }) {
                return .failed(TLSError(kind: .certificateRejected, context: "handshake", openSSLErrors: error.openSSLErrors,
                                        verifyResult: "the peer sent no certificate"))
            }
            return .failed(error)
        }
    }

    /// Whether the handshake has finished.
    public var isHandshakeComplete: Bool { SSL_is_init_finished(ssl) == 1 }

    /// Decrypts available plaintext into `buffer`.
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> ReadResult {
        guard let base = buffer.baseAddress, !buffer.isEmpty else { return .bytes(0) }
        ERR_clear_error()
        let count = SSL_read(ssl, base, Int32(min(buffer.count, Int(Int32.max))))
        if count > 0 { return .bytes(Int(count)) }
        switch SSL_get_error(ssl, count) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantsMore
        case SSL_ERROR_ZERO_RETURN:
            return .closed
        default:
            return .failed(TLSError.fromQueue(.protocolError, "read"))
        }
    }

    /// Encrypts all of `bytes`; the ciphertext is then pending.
    public func write(_ bytes: UnsafeRawBufferPointer) -> StepResult {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return .complete }
        var offset = 0
        while offset < bytes.count {
            ERR_clear_error()
            let chunk = Int32(min(bytes.count - offset, Int(Int32.max)))
            let written = SSL_write(ssl, base + offset, chunk)
            guard written > 0 else {
                switch SSL_get_error(ssl, written) {
                case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                    return .wantsMore
                default:
                    return .failed(TLSError.fromQueue(.protocolError, "write"))
                }
            }
            offset += Int(written)
        }
        return .complete
    }

    /// Sends close_notify (once); `.complete` when the peer's has arrived too.
    public func shutdown() -> StepResult {
        ERR_clear_error()
        let result = SSL_shutdown(ssl)
        if result == 1 { return .complete }
        if result == 0 { return .wantsMore }
        switch SSL_get_error(ssl, result) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantsMore
        default:
            return .failed(TLSError.fromQueue(.protocolError, "shutdown"))
        }
    }

    // MARK: Session facts

    /// The ALPN protocol agreed on, if any.
    public var negotiatedProtocol: String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// `TLSv1.3` or `TLSv1.2`.
    public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }

    /// The cipher suite in use, e.g. `TLS_AES_256_GCM_SHA384`.
    public var cipherSuite: String? {
        SSL_get_current_cipher(ssl).flatMap { SSL_CIPHER_get_name($0) }.map { String(cString: $0) }
    }

    /// The certificate the peer presented (verified when verification is on).
    public var peerCertificate: Certificate? {
        guard let x509 = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(x509) }
        return Certificate(x509: x509)
    }
}
