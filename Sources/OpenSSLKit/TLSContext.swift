internal import COpenSSL

#if canImport(Glibc)
import Glibc
#endif

/// TLS protocol versions Tollgate accepts. Older ones are never enabled.
public enum TLSVersion: Sendable, Hashable {
    case v1_2, v1_3

    var openSSLValue: Int32 {
        switch self {
        case .v1_2: return TLS1_2_VERSION
        case .v1_3: return TLS1_3_VERSION
        }
    }
}

/// Everything a TLS endpoint needs, for a listener or a client.
public struct TLSConfiguration: Sendable, Hashable {
    public enum Role: Sendable, Hashable { case client, server }

    /// Whether to ask for and check the peer's certificate.
    public enum PeerVerification: Sendable, Hashable {
        /// Do not ask (servers) or do not check (clients: never use outside tests).
        case none
        /// Check a certificate if the peer sends one (servers) / always (clients).
        case peer
        /// Require a certificate from the trust roots; refuse peers without one.
        case peerRequired
    }

    public var role: Role
    /// PEM file with our certificate followed by any intermediates.
    public var certificateChainFile: String?
    /// PEM file with the private key of the first certificate.
    public var privateKeyFile: String?
    /// PEM file of the CA certificates peers are checked against.
    public var trustRootsFile: String?
    public var verification: PeerVerification
    public var minimumVersion: TLSVersion = .v1_2
    /// TLS 1.2 cipher list: forward-secret AEAD suites only.
    public var cipherList = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
    /// TLS 1.3 suites, in order of preference.
    public var cipherSuites = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"
    /// ALPN protocol ids, in order of preference (a server's order wins).
    public var applicationProtocols: [String] = []

    public init(role: Role, certificateChainFile: String? = nil, privateKeyFile: String? = nil, trustRootsFile: String? = nil,
                verification: PeerVerification, applicationProtocols: [String] = []) {
        self.role = role
        self.certificateChainFile = certificateChainFile
        self.privateKeyFile = privateKeyFile
        self.trustRootsFile = trustRootsFile
        self.verification = verification
        self.applicationProtocols = applicationProtocols
    }

    /// A listener presenting `certificateChainFile`; with `trustRootsFile`
    /// and `.peerRequired`, clients must present a certificate from those roots.
    public static func server(certificateChainFile: String, privateKeyFile: String, trustRootsFile: String? = nil,
                              verification: PeerVerification = .none, applicationProtocols: [String] = []) -> TLSConfiguration {
        TLSConfiguration(role: .server, certificateChainFile: certificateChainFile, privateKeyFile: privateKeyFile,
                         trustRootsFile: trustRootsFile, verification: verification, applicationProtocols: applicationProtocols)
    }

    /// A client checking servers against `trustRootsFile`, optionally presenting its own certificate.
    public static func client(trustRootsFile: String?, certificateChainFile: String? = nil, privateKeyFile: String? = nil,
                              verification: PeerVerification = .peerRequired, applicationProtocols: [String] = []) -> TLSConfiguration {
        TLSConfiguration(role: .client, certificateChainFile: certificateChainFile, privateKeyFile: privateKeyFile,
                         trustRootsFile: trustRootsFile, verification: verification, applicationProtocols: applicationProtocols)
    }
}

/// Why a TLS operation failed, with OpenSSL's own account of it.
public struct TLSError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// The configuration cannot be used (unreadable file, key mismatch, bad cipher list).
        case configuration
        /// The handshake failed: protocol mismatch, no shared cipher, alert from the peer.
        case handshakeFailed
        /// The peer's certificate was missing or did not verify.
        case certificateRejected
        /// An error after the handshake: bad record, decryption failure.
        case protocolError
        /// The connection closed during the handshake.
        case eofDuringHandshake
    }

    public let kind: Kind
    /// What Tollgate was doing, in words.
    public let context: String
    /// OpenSSL's error queue, oldest first.
    public let openSSLErrors: [String]
    /// The certificate check's result, when it failed (`X509_verify_cert_error_string`).
    public let verifyResult: String?

    public init(kind: Kind, context: String, openSSLErrors: [String] = [], verifyResult: String? = nil) {
        self.kind = kind
        self.context = context
        self.openSSLErrors = openSSLErrors
        self.verifyResult = verifyResult
    }

    public var description: String {
        var text = "TLS \(context) failed"
        if let verifyResult { text += ": certificate verification: \(verifyResult)" }
        if !openSSLErrors.isEmpty { text += " (\(openSSLErrors.joined(separator: "; ")))" }
        return text
    }

    static func fromQueue(_ kind: Kind, _ context: String, verifyResult: String? = nil) -> TLSError {
        TLSError(kind: kind, context: context, openSSLErrors: OpenSSLError.drain(context).stack, verifyResult: verifyResult)
    }
}

/// An `SSL_CTX`: certificates, trust roots, versions, ciphers and ALPN,
/// shared by every connection of one listener or client.
public final class TLSContext: @unchecked Sendable {
    // @unchecked Sendable: the SSL_CTX is fully configured in init and only
    // read afterwards (SSL_new takes its own references), which OpenSSL
    // allows from any thread; `alpnWire` is immutable after init.
    let context: OpaquePointer
    public let configuration: TLSConfiguration
    /// Our ALPN list in wire format behind a 2-byte length, kept alive for the server callback.
    private let alpnWire: UnsafeMutableBufferPointer<UInt8>

    public init(configuration: TLSConfiguration) throws(TLSError) {
        self.configuration = configuration
        ERR_clear_error()
        guard let context = SSL_CTX_new(configuration.role == .server ? TLS_server_method() : TLS_client_method()) else {
            throw TLSError.fromQueue(.configuration, "context creation")
        }
        self.context = context
        var wire: [UInt8] = []
        for proto in configuration.applicationProtocols {
            let bytes = Array(proto.utf8)
            precondition(!bytes.isEmpty && bytes.count < 256, "ALPN protocol ids are 1 to 255 bytes")
            wire.append(UInt8(bytes.count))
            wire += bytes
        }
        // Two length bytes in front, so the server callback can read the list
        // from the one pointer OpenSSL hands it.
        let stored = [UInt8(wire.count >> 8), UInt8(wire.count & 0xFF)] + wire
        alpnWire = .allocate(capacity: stored.count)
        _ = alpnWire.initialize(from: stored)
        // Every stored property is set: if configuring throws, deinit frees both.
        try configure(wireCount: wire.count)
    }

    deinit {
        SSL_CTX_free(context)
        alpnWire.deallocate()
    }

    private func configure(wireCount: Int) throws(TLSError) {
        let configuration = self.configuration
        guard COpenSSLShims_SSL_CTX_set_min_proto_version(context, configuration.minimumVersion.openSSLValue) == 1 else {
            throw TLSError.fromQueue(.configuration, "setting the minimum protocol version")
        }
        SSL_CTX_set_options(context, COpenSSLShims_SSL_OP_NO_RENEGOTIATION() | COpenSSLShims_SSL_OP_NO_COMPRESSION()
                                     | COpenSSLShims_SSL_OP_CIPHER_SERVER_PREFERENCE())
        // Partial writes stay off: a write either completes or fails, since
        // the memory BIO underneath always accepts everything.
        guard SSL_CTX_set_cipher_list(context, configuration.cipherList) == 1 else {
            throw TLSError.fromQueue(.configuration, "setting the TLS 1.2 cipher list")
        }
        guard SSL_CTX_set_ciphersuites(context, configuration.cipherSuites) == 1 else {
            throw TLSError.fromQueue(.configuration, "setting the TLS 1.3 cipher suites")
        }
        if let chain = configuration.certificateChainFile {
            guard SSL_CTX_use_certificate_chain_file(context, chain) == 1 else {
                throw TLSError.fromQueue(.configuration, "loading certificate chain \(chain)")
            }
            guard let key = configuration.privateKeyFile else {
                throw TLSError(kind: .configuration, context: "loading certificate chain \(chain): no private key file given")
            }
            guard SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM) == 1 else {
                throw TLSError.fromQueue(.configuration, "loading private key \(key)")
            }
            guard SSL_CTX_check_private_key(context) == 1 else {
                throw TLSError.fromQueue(.configuration, "matching private key \(key) to certificate \(chain)")
            }
        }
        if let roots = configuration.trustRootsFile {
            guard SSL_CTX_load_verify_locations(context, roots, nil) == 1 else {
                throw TLSError.fromQueue(.configuration, "loading trust roots \(roots)")
            }
            if configuration.role == .server, let names = SSL_load_client_CA_file(roots) {
                // Tell clients which CAs we accept their certificates from.
                SSL_CTX_set_client_CA_list(context, names)
            }
        } else if configuration.verification != .none {
            throw TLSError(kind: .configuration, context: "peer verification: no trust roots file given")
        }
        let mode: Int32 = switch (configuration.role, configuration.verification) {
        case (_, .none): SSL_VERIFY_NONE
        case (.server, .peer): SSL_VERIFY_PEER
        case (.server, .peerRequired): SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT
        case (.client, _): SSL_VERIFY_PEER
        }
        SSL_CTX_set_verify(context, mode, nil)
        if wireCount > 0 {
            switch configuration.role {
            case .client:
                // Reversed convention: 0 means success.
                guard SSL_CTX_set_alpn_protos(context, alpnWire.baseAddress! + 2, UInt32(wireCount)) == 0 else {
                    throw TLSError.fromQueue(.configuration, "setting ALPN protocols")
                }
            case .server:
                SSL_CTX_set_alpn_select_cb(context, { _, out, outLength, offered, offeredLength, argument in
                    guard let argument, let offered, let out, let outLength else { return SSL_TLSEXT_ERR_NOACK }
                    return TLSContext.selectProtocol(
                        ours: UnsafeRawPointer(argument).assumingMemoryBound(to: UInt8.self),
                        offered: UnsafeBufferPointer(start: offered, count: Int(offeredLength)),
                        out: out, outLength: outLength)
                }, UnsafeMutableRawPointer(alpnWire.baseAddress!))
            }
        }
    }

    /// Server preference: the first of our protocols that the client offered.
    /// `ours` is a 2-byte big-endian length followed by the wire-format list.
    /// No overlap is fatal (RFC 7301 no_application_protocol alert).
    static func selectProtocol(ours: UnsafePointer<UInt8>, offered: UnsafeBufferPointer<UInt8>,
                               out: UnsafeMutablePointer<UnsafePointer<UInt8>?>, outLength: UnsafeMutablePointer<UInt8>) -> Int32 {
        let ourLength = Int(ours[0]) << 8 | Int(ours[1])
        let list = UnsafeBufferPointer(start: ours + 2, count: ourLength)
        var ourIndex = 0
        while ourIndex < list.count {
            let length = Int(list[ourIndex])
            let candidate = list[(ourIndex + 1)..<min(ourIndex + 1 + length, list.count)]
            var offeredIndex = 0
            while offeredIndex < offered.count {
                let offeredLength = Int(offered[offeredIndex])
                let end = offeredIndex + 1 + offeredLength
                guard end <= offered.count else { break }
                if offered[(offeredIndex + 1)..<end].elementsEqual(candidate) {
                    out.pointee = UnsafePointer(offered.baseAddress! + offeredIndex + 1)
                    outLength.pointee = UInt8(offeredLength)
                    return SSL_TLSEXT_ERR_OK
                }
                offeredIndex = end
            }
            ourIndex += 1 + length
        }
        return SSL_TLSEXT_ERR_ALERT_FATAL
    }

    /// A connection engine for one socket.
    public func makeConnection(serverHostname: String? = nil) throws(TLSError) -> TLSConnection {
        try TLSConnection(context: self, serverHostname: serverHostname)
    }
}
