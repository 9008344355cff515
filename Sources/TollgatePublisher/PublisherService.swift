public import RPCCore
public import TollgateProto
public import TollgateServices
import TollgateStorage
import TollgateUsers

/// `tollgate.v1.PublisherService`: the transport-facing side of
/// ``PublisherStore``. Authorization has already happened (see
/// `AccessTable`); calls act in the caller's tenant, or `x-tenant` for the
/// super tenant's administrators.
public struct PublisherService: PublisherServiceHandler {
    public let store: PublisherStore
    /// APIs per snapshot chunk on the deployment feed.
    public let snapshotChunkSize: Int
    /// How often a quiet deployment feed repeats its caught-up frame.
    public let feedHeartbeat: Duration

    /// - Parameter feedHeartbeat: nil for the change-log's default, 10 s.
    public init(store: PublisherStore, snapshotChunkSize: Int = 200, feedHeartbeat: Duration? = nil) {
        self.store = store
        self.snapshotChunkSize = snapshotChunkSize
        self.feedHeartbeat = feedHeartbeat ?? ChangeLog<DeploymentChange>.defaultHeartbeat
    }

    /// Who is acting, for the records (`created_by`, history).
    static func actor(_ context: ServerCallContext) -> String {
        switch context.caller {
        case .user(let user): user.username
        case .node(let id, _): "node:" + id
        case .certificateHolder(let name): name
        case .anonymous: "anonymous"
        }
    }

    public func createApi(_ request: CreateApiRequest, context: ServerCallContext) async throws -> CreateApiResponse {
        CreateApiResponse(api: try await store.createApi(request.api ?? Api(), actor: Self.actor(context), tenant: context.tenant))
    }

    public func updateApi(_ request: UpdateApiRequest, context: ServerCallContext) async throws -> UpdateApiResponse {
        UpdateApiResponse(api: try await store.updateApi(request.api ?? Api(), expectedRevision: request.expectedRevision,
                                                   actor: Self.actor(context), tenant: context.tenant))
    }

    public func deleteApi(_ request: DeleteApiRequest, context: ServerCallContext) async throws -> DeleteApiResponse {
        try await store.deleteApi(request.apiId, tenant: context.tenant)
        return DeleteApiResponse()
    }

    public func getApi(_ request: GetApiRequest, context: ServerCallContext) async throws -> GetApiResponse {
        GetApiResponse(api: try store.getApi(request.apiId, tenant: context.tenant))
    }

    public func listApis(_ request: ListApisRequest, context: ServerCallContext) async throws -> ListApisResponse {
        let result = try store.listApis(provider: request.provider, states: request.states, pageSize: Int(request.page?.pageSize ?? 0),
                                        pageToken: request.page?.pageToken ?? [], tenant: context.tenant)
        return ListApisResponse(apis: result.apis, page: result.page)
    }

    public func searchApis(_ request: SearchApisRequest, context: ServerCallContext) async throws -> SearchApisResponse {
        let result = try store.searchApis(query: request.query, pageSize: Int(request.page?.pageSize ?? 0),
                                          pageToken: request.page?.pageToken ?? [], tenant: context.tenant)
        return SearchApisResponse(apis: result.apis, page: result.page)
    }

    public func importOpenApi(_ request: ImportOpenApiRequest, context: ServerCallContext) async throws -> ImportOpenApiResponse {
        let result = try await store.importOpenApi(apiID: request.apiId, template: request.apiTemplate ?? Api(), document: request.document,
                                             format: request.format, actor: Self.actor(context), tenant: context.tenant)
        return ImportOpenApiResponse(api: result.api, definition: result.definition, warnings: result.warnings, servers: result.servers)
    }

    public func exportOpenApi(_ request: ExportOpenApiRequest, context: ServerCallContext) async throws -> ExportOpenApiResponse {
        ExportOpenApiResponse(definition: try store.exportOpenApi(request.apiId, format: request.format, tenant: context.tenant))
    }

    public func changeLifecycle(_ request: ChangeLifecycleRequest, context: ServerCallContext) async throws -> ChangeLifecycleResponse {
        let options = PublisherStore.LifecycleOptions(comment: request.comment, deprecateOldVersions: request.deprecateOldVersions,
                                                      requireResubscription: request.requireResubscription)
        let result = try await store.changeLifecycle(request.apiId, to: request.targetState, options: options, actor: Self.actor(context), tenant: context.tenant)
        return ChangeLifecycleResponse(api: result.api, entry: result.entry)
    }

    public func getLifecycleHistory(_ request: GetLifecycleHistoryRequest, context: ServerCallContext) async throws -> GetLifecycleHistoryResponse {
        GetLifecycleHistoryResponse(entries: try store.lifecycleHistory(request.apiId, tenant: context.tenant))
    }

    public func createNewVersion(_ request: CreateNewVersionRequest, context: ServerCallContext) async throws -> CreateNewVersionResponse {
        CreateNewVersionResponse(api: try await store.createNewVersion(request.apiId, version: request.newVersion, defaultVersion: request.defaultVersion,
                                                                 actor: Self.actor(context), tenant: context.tenant))
    }

    public func addDocument(_ request: AddDocumentRequest, context: ServerCallContext) async throws -> AddDocumentResponse {
        AddDocumentResponse(document: try await store.addDocument(request.document ?? Document(), actor: Self.actor(context), tenant: context.tenant))
    }

    public func updateDocument(_ request: UpdateDocumentRequest, context: ServerCallContext) async throws -> UpdateDocumentResponse {
        UpdateDocumentResponse(document: try await store.updateDocument(request.document ?? Document(), tenant: context.tenant))
    }

    public func deleteDocument(_ request: DeleteDocumentRequest, context: ServerCallContext) async throws -> DeleteDocumentResponse {
        try await store.deleteDocument(request.documentId, tenant: context.tenant)
        return DeleteDocumentResponse()
    }

    public func listDocuments(_ request: ListDocumentsRequest, context: ServerCallContext) async throws -> ListDocumentsResponse {
        let result = try store.listDocuments(api: request.apiId, pageSize: Int(request.page?.pageSize ?? 0), pageToken: request.page?.pageToken ?? [],
                                             tenant: context.tenant)
        return ListDocumentsResponse(documents: result.documents, page: result.page)
    }

    public func getDocument(_ request: GetDocumentRequest, context: ServerCallContext) async throws -> GetDocumentResponse {
        GetDocumentResponse(document: try store.document(request.documentId, tenant: context.tenant))
    }

    public func listApiSubscriptions(_ request: ListApiSubscriptionsRequest, context: ServerCallContext) async throws -> ListApiSubscriptionsResponse {
        let result = try store.listSubscriptions(api: request.apiId, pageSize: Int(request.page?.pageSize ?? 0), pageToken: request.page?.pageToken ?? [],
                                                 tenant: context.tenant)
        return ListApiSubscriptionsResponse(subscriptions: result.subscriptions, page: result.page)
    }

    public func blockSubscription(_ request: BlockSubscriptionRequest, context: ServerCallContext) async throws -> BlockSubscriptionResponse {
        BlockSubscriptionResponse(subscription: try await store.setSubscriptionStatus(request.subscriptionId, to: request.productionOnly ? .prodOnlyBlocked : .blocked,
                                                                                tenant: context.tenant))
    }

    public func unblockSubscription(_ request: UnblockSubscriptionRequest, context: ServerCallContext) async throws -> UnblockSubscriptionResponse {
        UnblockSubscriptionResponse(subscription: try await store.setSubscriptionStatus(request.subscriptionId, to: .unblocked, tenant: context.tenant))
    }

    /// A snapshot when the watcher's revision is 0 or no longer in the log,
    /// then every change in revision order, woken by commits in this process
    /// and by polling for other processes' commits; `caught_up` once the
    /// watcher holds everything, and again every ``feedHeartbeat`` of silence.
    public func watchDeployments(_ request: WatchDeploymentsRequest, writer: ResponseWriter<WatchDeploymentsResponse>, context: ServerCallContext) async throws {
        let log = store.deploymentLog
        let heartbeatSeconds = ChangeLog<DeploymentChange>.announcedSeconds(feedHeartbeat)
        do {
            try await context.untilStopping {
                try await log.log.follow(since: request.sinceRevision, heartbeat: feedHeartbeat, snapshot: {
                    let chunks = try log.snapshot(apisPerChunk: snapshotChunkSize)
                    return (chunks, chunks.last?.revision ?? 0)
                }, send: { event in
                    switch event {
                    case .snapshot(let chunk): try await writer.write(WatchDeploymentsResponse(frame: .snapshot(chunk)))
                    case .change(let change): try await writer.write(WatchDeploymentsResponse(frame: .change(change)))
                    case .caughtUp(let revision):
                        try await writer.write(WatchDeploymentsResponse(frame: .caughtUp(DeploymentFeedCaughtUp(revision: revision,
                                                                                                               heartbeatSeconds: heartbeatSeconds))))
                    }
                })
            }
        } catch ChangeLog<DeploymentChange>.FollowError.prunedPast(let revision) {
            // The log was pruned past this watcher while it lagged: it must start over.
            throw RPCError(.aborted, "the deployment log no longer holds revision \(revision): reconnect with since_revision 0 for a new snapshot")
        }
    }
}
