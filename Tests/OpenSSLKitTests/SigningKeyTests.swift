import Foundation
import OpenSSLKit
import Testing

@Suite struct SigningKeyTests {
    @Test func es256SignaturesVerifyAndAnythingChangedDoesNot() throws {
        let key = try P256SigningKey.generate()
        let message = Array("header.payload".utf8)
        let signature = try key.sign(message)
        #expect(signature.count == 64 && key.x.count == 32 && key.y.count == 32)
        let publicKey = try key.publicKey
        #expect(publicKey.verify(signature, of: message))
        #expect(!publicKey.verify(signature, of: Array("header.payload!".utf8)))
        var flipped = signature
        flipped[10] ^= 0x01
        #expect(!publicKey.verify(flipped, of: message))
        #expect(!publicKey.verify(Array(signature.prefix(63)), of: message))
        #expect(try !P256SigningKey.generate().publicKey.verify(signature, of: message))
    }

    @Test func pemRoundTripsAndOtherKeysAreRefused() throws {
        let key = try P256SigningKey.generate()
        let again = try P256SigningKey(pem: try key.pem())
        #expect(again.x == key.x && again.y == key.y)
        #expect(try again.publicKey.verify(try key.sign([1, 2, 3]), of: [1, 2, 3]))
        #expect(throws: OpenSSLError.self) { try P256SigningKey(pem: Array("not a key".utf8)) }
        // An X25519 key is a valid PEM private key, but not a P-256 one.
        let x25519 = try runProcess("/usr/bin/openssl", ["genpkey", "-algorithm", "X25519"])
        #expect(throws: OpenSSLError.self) { try P256SigningKey(pem: Array(x25519.utf8)) }
        // A point that is not on the curve is refused.
        #expect(throws: OpenSSLError.self) { try P256PublicKey(x: Array(repeating: 1, count: 32), y: Array(repeating: 2, count: 32)) }
    }

    func runProcess(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: data, as: UTF8.self)
    }
}
