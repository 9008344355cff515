import Foundation
import Logging
import NIOCore
import RoleCore
import Synchronization
import TestSupport
import Testing
@testable import TollgateNode

/// A role module of the test's own: an HTTP listener named `greeter`, a
/// `[greeter]` section, and reload that changes what it says.
struct GreeterModule: RoleModule {
    static let name = "greeter"
    static let listenerNames = ["greeter"]
    static let configSection: ConfigSectionSpec? = ConfigSectionSpec(name: "greeter", keys: [.init("greeting", .string)])

    final class Greeting: Sendable {
        let text: Mutex<String>
        init(_ text: String) { self.text = Mutex(text) }
    }

    struct Responder: HTTPResponder {
        let greeting: Greeting
        func respond(to request: HTTPRequest) async -> HTTPResponse {
            .text(200, "\(greeting.text.withLock { $0 }) \(request.path)")
        }
    }

    let greeting: Greeting

    init(context: NodeContext) async throws {
        greeting = Greeting(context.section("greeter").string("greeting") ?? "hello")
    }

    var listeners: [ListenerDeclaration] {
        [ListenerDeclaration(name: "greeter", kind: .http(Responder(greeting: greeting)), security: .tls)]
    }

    func reload(_ section: ConfigSection) async throws -> [String] {
        greeting.text.withLock { $0 = section.string("greeting") ?? "hello" }
        return []
    }
}

@Suite(.serialized) struct ModuleListenerTests {
    static let table = RoleModules { role in role == .gateway ? [GreeterModule.self] : RoleModules.standard.modules(for: role) }

    @Test func aModulesListenerSectionAndReloadComeFromTheModuleAlone() async throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        try fixture.issueNode("g1", roles: ["gateway"])
        let port = try NodeFixture.freePort()
        let path = try fixture.writeConfig("g1", roles: ["gateway"], clusterPort: try NodeFixture.freePort(), adminPort: nil,
                                           extra: "\n[greeter]\ngreeting = \"hi\"\n")
        // The listener's name is the module's: [listen] accepts it only with a table that has the module.
        var text = try String(contentsOfFile: path, encoding: .utf8)
        text = text.replacingOccurrences(of: "[listen]\n", with: "[listen]\ngreeter = \"127.0.0.1:\(port)\"\n")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        #expect(throws: ConfigError.self) { try NodeConfig.load(path: path) }

        let config = try NodeConfig.load(path: path, table: Self.table)
        let runtime = try await NodeRuntime.start(config: config, logger: Logger(label: "test"), threads: 1, table: Self.table)
        do {
            #expect(runtime.boundAddresses["greeter"]?.port == port)
            let first = try await runTool("/usr/bin/curl", ["-s", "--cacert", fixture.caPath, "https://localhost:\(port)/there"])
            #expect(first.output == "hi /there\n", "\(first.output)")

            // SIGHUP's reload hands the module its new section.
            try text.replacingOccurrences(of: "greeting = \"hi\"", with: "greeting = \"good day\"").write(toFile: path, atomically: true, encoding: .utf8)
            await runtime.reload(logger: Logger(label: "test"))
            let second = try await runTool("/usr/bin/curl", ["-s", "--cacert", fixture.caPath, "https://localhost:\(port)/again"])
            #expect(second.output == "good day /again\n", "\(second.output)")
            #expect(runtime.statusLine.contains("greeter 127.0.0.1:\(port)"))
        } catch {
            await runtime.stop()
            throw error
        }
        await runtime.stop()
    }

    /// Issue 11: a `[listen]` entry that no module of the node's roles
    /// declares was accepted and silently never bound. It is refused, with
    /// its line and the roles whose listener it is.
    @Test func aListenerNoRoleOfTheNodeUsesIsRefusedWithItsLine() throws {
        let fixture = try NodeFixture()
        defer { fixture.remove() }
        func config(_ id: String, roles: [String]) throws -> String {
            try fixture.issueNode(id, roles: roles)
            let path = try fixture.writeConfig(id, roles: roles, clusterPort: try NodeFixture.freePort(), adminPort: nil)
            let text = try String(contentsOfFile: path, encoding: .utf8)
                .replacingOccurrences(of: "[listen]\n", with: "[listen]\noauth = \"127.0.0.1:\(try NodeFixture.freePort())\"\n")
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let publisher = try config("p1", roles: ["publisher"])
        let line = try String(contentsOfFile: publisher, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
            .firstIndex { $0.hasPrefix("oauth = ") }.map { $0 + 1 }
        do {
            _ = try NodeConfig.load(path: publisher)
            Issue.record("[listen] oauth was accepted on a publisher node")
        } catch {
            let problem = try #require(error.problems.first { $0.key == "listen.oauth" }, "\(error)")
            #expect(problem.line == line && line != nil, "\(error)")
            #expect(problem.message.contains("keymanager") && problem.message.contains("publisher"), "\(problem.message)")
        }
        // The key manager's own listener, on a key manager node, is fine.
        let keyManager = try config("k1", roles: ["keymanager"])
        #expect(try NodeConfig.load(path: keyManager).moduleListen["oauth"] != nil)
    }
}
