import Foundation
import LMDBKit
import RPCCore
import Testing
import TollgatePolicies
import TollgateProto
import TollgatePublisher
import TollgateServices
import TollgateStorage

@Suite struct AccessTests {
    /// Who may call each PublisherService, AdminService and UserService method, written
    /// out by hand from the issue (not read from the access table, which is
    /// what is under test).
    static let expected: [String: Set<String>] = {
        let reads = ["GetApi", "ListApis", "SearchApis", "ExportOpenApi", "GetLifecycleHistory", "ListDocuments", "GetDocument", "ListApiSubscriptions"]
        let designs = ["CreateApi", "UpdateApi", "DeleteApi", "ImportOpenApi", "CreateNewVersion", "AddDocument", "UpdateDocument", "DeleteDocument"]
        let publishes = ["ChangeLifecycle", "BlockSubscription", "UnblockSubscription"]
        var table: [String: Set<String>] = [:]
        for method in reads { table["PublisherService/" + method] = ["admin", "creator", "publisher"] }
        for method in designs { table["PublisherService/" + method] = ["admin", "creator"] }
        for method in publishes { table["PublisherService/" + method] = ["admin", "publisher"] }
        table["PublisherService/WatchDeployments"] = []
        for method in ["CreatePolicy", "UpdatePolicy", "DeletePolicy", "CreateBlockCondition", "UpdateBlockCondition", "DeleteBlockCondition",
                       "GetBlockCondition", "ListBlockConditions", "SetBlockConditionEnabled"] {
            table["AdminService/" + method] = ["admin"]
        }
        for method in ["GetPolicy", "ListPolicies"] { table["AdminService/" + method] = ["admin", "creator", "publisher"] }
        for method in ["Login", "Logout", "WhoAmI", "ChangePassword"] { table["UserService/" + method] = ["admin", "creator", "publisher", "subscriber"] }
        for method in ["CreateUser", "UpdateUser", "DeleteUser", "GetUser", "ListUsers", "CreateRole", "DeleteRole", "ListRoles", "AssignRoles",
                       "CreateTenant", "ListTenants", "SetTenantStatus"] {
            table["UserService/" + method] = ["admin"]
        }
        return table
    }()

    /// Every method of the three services, called through the in-process server
    /// by each built-in role and by nobody: refused exactly as the table says,
    /// and never refused when allowed (the handler then answers for itself,
    /// mostly with INVALID_ARGUMENT or NOT_FOUND for the empty request).
    @Test func everyMethodByEveryRole() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        var sessions: [String: CallOptions] = ["admin": try await fixture.session("root")]
        for role in ["creator", "publisher", "subscriber"] { sessions[role] = try await fixture.user("user-\(role)", roles: [role]) }

        // Logout goes last: it ends the session the other calls use.
        let methods = (PublisherServiceDescriptor.methods + AdminServiceDescriptor.methods + UserServiceDescriptor.methods)
            .sorted { ($0.name == "Logout" ? 1 : 0) < ($1.name == "Logout" ? 1 : 0) }
        #expect(Set(methods.map { "\($0.service.split(separator: ".").last!)/\($0.name)" }) == Set(Self.expected.keys))
        for method in methods {
            let key = "\(method.service.split(separator: ".").last!)/\(method.name)"
            let allowed = try #require(Self.expected[key])
            for (role, options) in sessions.sorted(by: { $0.key < $1.key }) {
                var limited = options
                limited.timeout = .milliseconds(200)
                let code = await call(method, fixture.transport, limited)
                if allowed.contains(role) {
                    #expect(code != .permissionDenied && code != .unauthenticated, "\(key) as \(role) was refused: \(code.map(String.init(describing:)) ?? "OK")")
                } else {
                    #expect(code == .permissionDenied, "\(key) as \(role) gave \(code.map(String.init(describing:)) ?? "OK")")
                }
            }
            let anonymous = await call(method, fixture.transport, CallOptions(timeout: .milliseconds(200)))
            if key == "UserService/Login" {
                #expect(anonymous == .invalidArgument || anonymous == .unauthenticated, "signing in needs no session: \(String(describing: anonymous))")
            } else {
                #expect(anonymous == .unauthenticated, "\(key) without a session gave \(anonymous.map(String.init(describing:)) ?? "OK")")
            }
        }
    }

    /// The status of calling `method` with an empty request (nil for OK).
    func call(_ method: ProtoMethod, _ transport: InProcessTransport, _ options: CallOptions) async -> RPCCode? {
        do {
            if method.name == "WatchDeployments" {
                try await transport.serverStreaming(method, WatchDeploymentsRequest(), options: options) { (_: WatchDeploymentsResponse) in }
            } else {
                // Every request decodes from empty bytes; the response, read as a message with
                // no fields (any valid bytes decode), is not looked at.
                _ = try await transport.unary(method, GetApiRequest(), options: options, as: DeleteApiResponse.self)
            }
            return nil
        } catch let error as RPCError {
            return error.code
        } catch {
            return .unknown
        }
    }

    @Test func gatewaysAndTrafficManagersMayWatchOtherNodesMayNot() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        for (roles, allowed) in [(["gateway"], true), (["trafficmanager"], true), (["store"], false), (["keymanager", "publisher"], false)] {
            let transport = fixture.transport.calling(as: .node(id: "n1", roles: roles))
            var code: RPCCode?
            do {
                try await PublisherServiceClient(transport).watchDeployments(WatchDeploymentsRequest(), options: CallOptions(timeout: .milliseconds(300))) { _ in }
            } catch let error as RPCError {
                code = error.code
            }
            #expect(allowed ? code == .deadlineExceeded : code == .permissionDenied, "\(roles): \(String(describing: code))")
        }
    }
}


@Suite struct TenantIsolationTests {
    @Test func tenantsCannotSeeOrTouchEachOthersObjects() async throws {
        let fixture = try await PublisherFixture()
        defer { fixture.remove() }
        let root = try await fixture.session("root")
        _ = try await UserServiceClient(fixture.transport, defaultOptions: root)
            .createTenant(CreateTenantRequest(domain: "acme.com", adminUsername: "boss", adminPassword: PublisherFixture.password))
        let acme = fixture.publisherClient(try await fixture.session("boss@acme.com"))
        let superAdmin = fixture.publisherClient(root)

        let ours = try #require(try await superAdmin.createApi(CreateApiRequest(api: sampleApi())).api)
        _ = try await superAdmin.changeLifecycle(ChangeLifecycleRequest(apiId: ours.id, targetState: .published))
        let document = try #require(try await superAdmin.addDocument(AddDocumentRequest(document: Document(
            apiId: ours.id, name: "Guide", documentType: .howTo, sourceType: .inline, body: .text("secret")))).document)
        try fixture.publisher.apimgt.database.environment.write { txn in
            try fixture.publisher.apimgt.subscriptions.insert(Subscription(id: "sub-1", tenantDomain: superTenant, apiId: ours.id, applicationId: "app-1",
                                                                           throttlingPolicy: "Gold", status: .unblocked), in: &txn)
        }

        // Acme's admin sees nothing of the super tenant's, and learns nothing from the errors.
        #expect(try await acme.listApis(ListApisRequest()).apis.isEmpty)
        #expect(try await acme.searchApis(SearchApisRequest(query: "pizza")).apis.isEmpty)
        let notFound: [(String, @Sendable () async throws -> Void)] = [
            ("get", { _ = try await acme.getApi(GetApiRequest(apiId: ours.id)) }),
            ("update", { _ = try await acme.updateApi(UpdateApiRequest(api: ours)) }),
            ("delete", { _ = try await acme.deleteApi(DeleteApiRequest(apiId: ours.id)) }),
            ("lifecycle", { _ = try await acme.changeLifecycle(ChangeLifecycleRequest(apiId: ours.id, targetState: .blocked)) }),
            ("history", { _ = try await acme.getLifecycleHistory(GetLifecycleHistoryRequest(apiId: ours.id)) }),
            ("new version", { _ = try await acme.createNewVersion(CreateNewVersionRequest(apiId: ours.id, newVersion: "9")) }),
            ("export", { _ = try await acme.exportOpenApi(ExportOpenApiRequest(apiId: ours.id)) }),
            ("import", { _ = try await acme.importOpenApi(ImportOpenApiRequest(apiId: ours.id, document: "openapi: 3.0.0\ninfo: {title: x, version: '1'}\npaths: {/a: {get: {}}}")) }),
            ("documents", { _ = try await acme.listDocuments(ListDocumentsRequest(apiId: ours.id)) }),
            ("document", { _ = try await acme.getDocument(GetDocumentRequest(documentId: document.id)) }),
            ("add document", { _ = try await acme.addDocument(AddDocumentRequest(document: Document(apiId: ours.id, name: "x", documentType: .howTo, sourceType: .inline, body: .text("x")))) }),
            ("update document", { _ = try await acme.updateDocument(UpdateDocumentRequest(document: document)) }),
            ("delete document", { _ = try await acme.deleteDocument(DeleteDocumentRequest(documentId: document.id)) }),
            ("subscriptions", { _ = try await acme.listApiSubscriptions(ListApiSubscriptionsRequest(apiId: ours.id)) }),
            ("block", { _ = try await acme.blockSubscription(BlockSubscriptionRequest(subscriptionId: "sub-1")) }),
            ("unblock", { _ = try await acme.unblockSubscription(UnblockSubscriptionRequest(subscriptionId: "sub-1")) }),
        ]
        for (what, attempt) in notFound {
            await expectStatus(.notFound, comment: "\(what)") { try await attempt() }
        }
        // Naming the other tenant outright is refused too.
        let acmeAsSuper = fixture.publisherClient(try await fixture.session("boss@acme.com", tenant: superTenant))
        await expectStatus(.permissionDenied) { _ = try await acmeAsSuper.getApi(GetApiRequest(apiId: ours.id)) }

        // Nothing changed.
        let after = try await superAdmin.getApi(GetApiRequest(apiId: ours.id)).api
        #expect(after == (try fixture.publisher.getApi(ours.id, tenant: superTenant)) && after?.lifecycleState == .published)
        #expect(try fixture.publisher.document(document.id, tenant: superTenant).body == .text("secret"))

        // The same context is free in acme, and the super tenant's admin can act there with x-tenant.
        _ = try await acme.createApi(CreateApiRequest(api: sampleApi()))
        let superInAcme = fixture.publisherClient(try await fixture.session("root", tenant: "acme.com"))
        #expect(try await superInAcme.listApis(ListApisRequest()).apis.map(\.tenantDomain) == ["acme.com"])
    }
}
