public import RPCCore
public import TollgateProto
public import TollgateServices
import TollgatePublisher
import TollgateStorage
import TollgateUsers

/// `tollgate.v1.StoreService` over ``ConsumerStore``. Authorization has
/// already happened (`AccessTable`); calls act in the caller's tenant, or
/// the `x-tenant` a visitor names.
public struct StoreRPCService: StoreServiceHandler {
    public let store: ConsumerStore

    public init(store: ConsumerStore) { self.store = store }

    static func caller(_ context: ServerCallContext) -> StoreCaller {
        StoreCaller(user: context.caller.user, tenant: context.tenant)
    }

    public func listPublishedApis(_ request: ListPublishedApisRequest, context: ServerCallContext) async throws -> ListPublishedApisResponse {
        let result = try store.listApis(tag: request.tag, provider: request.provider, pageSize: Int(request.page?.pageSize ?? 0),
                                        pageToken: request.page?.pageToken ?? [], caller: Self.caller(context))
        return ListPublishedApisResponse(apis: result.apis, page: result.page)
    }

    public func searchPublishedApis(_ request: SearchPublishedApisRequest, context: ServerCallContext) async throws -> SearchPublishedApisResponse {
        let result = try store.searchApis(query: request.query, pageSize: Int(request.page?.pageSize ?? 0), pageToken: request.page?.pageToken ?? [],
                                          caller: Self.caller(context))
        return SearchPublishedApisResponse(apis: result.apis, page: result.page)
    }

    public func getApiDetails(_ request: GetApiDetailsRequest, context: ServerCallContext) async throws -> GetApiDetailsResponse {
        let details = try store.apiDetails(request.apiId, caller: Self.caller(context))
        return GetApiDetailsResponse(api: ApiCatalog.listing(details.api), resources: details.api.resources, scopes: details.api.scopes,
                                     definition: details.definition, documents: details.documents, availablePolicies: details.policies,
                                     gatewayUrls: details.gatewayURLs)
    }

    public func getApiDocument(_ request: GetApiDocumentRequest, context: ServerCallContext) async throws -> GetApiDocumentResponse {
        GetApiDocumentResponse(document: try store.document(request.documentId, caller: Self.caller(context)))
    }

    public func createApplication(_ request: CreateApplicationRequest, context: ServerCallContext) async throws -> CreateApplicationResponse {
        CreateApplicationResponse(application: try await store.createApplication(request.application ?? Application(), caller: Self.caller(context)))
    }

    public func updateApplication(_ request: UpdateApplicationRequest, context: ServerCallContext) async throws -> UpdateApplicationResponse {
        UpdateApplicationResponse(application: try await store.updateApplication(request.application ?? Application(), caller: Self.caller(context)))
    }

    public func deleteApplication(_ request: DeleteApplicationRequest, context: ServerCallContext) async throws -> DeleteApplicationResponse {
        try await store.deleteApplication(request.applicationId, caller: Self.caller(context))
        return DeleteApplicationResponse()
    }

    public func listApplications(_ request: ListApplicationsRequest, context: ServerCallContext) async throws -> ListApplicationsResponse {
        ListApplicationsResponse(applications: try store.listApplications(groupID: request.groupId, caller: Self.caller(context)), page: PageResponse())
    }

    public func getApplication(_ request: GetApplicationRequest, context: ServerCallContext) async throws -> GetApplicationResponse {
        let application = try store.application(request.applicationId, caller: Self.caller(context))
        return GetApplicationResponse(application: application, keys: try store.keys(of: application))
    }

    public func subscribe(_ request: SubscribeRequest, context: ServerCallContext) async throws -> SubscribeResponse {
        SubscribeResponse(subscription: try await store.subscribe(application: request.applicationId, api: request.apiId, tier: request.throttlingPolicy,
                                                                caller: Self.caller(context)))
    }

    public func unsubscribe(_ request: UnsubscribeRequest, context: ServerCallContext) async throws -> UnsubscribeResponse {
        try await store.unsubscribe(request.subscriptionId, caller: Self.caller(context))
        return UnsubscribeResponse()
    }

    public func listSubscriptions(_ request: ListSubscriptionsRequest, context: ServerCallContext) async throws -> ListSubscriptionsResponse {
        ListSubscriptionsResponse(subscriptions: try store.listSubscriptions(application: request.applicationId, api: request.apiId, caller: Self.caller(context)),
                                  page: PageResponse())
    }

    public func generateKeys(_ request: GenerateKeysRequest, context: ServerCallContext) async throws -> GenerateKeysResponse {
        let generated = try await store.generateKeys(request, caller: Self.caller(context))
        return GenerateKeysResponse(key: generated.key, consumerSecret: generated.secret, applicationToken: generated.token)
    }

    public func regenerateSecret(_ request: RegenerateSecretRequest, context: ServerCallContext) async throws -> RegenerateSecretResponse {
        let (key, secret) = try await store.regenerateSecret(application: request.applicationId, type: request.keyType, caller: Self.caller(context))
        return RegenerateSecretResponse(consumerKey: key, consumerSecret: secret)
    }

    public func generateApplicationToken(_ request: GenerateApplicationTokenRequest, context: ServerCallContext) async throws -> GenerateApplicationTokenResponse {
        GenerateApplicationTokenResponse(token: try await store.generateToken(request, caller: Self.caller(context)))
    }

    public func revokeApplicationToken(_ request: RevokeApplicationTokenRequest, context: ServerCallContext) async throws -> RevokeApplicationTokenResponse {
        try await store.revokeToken(request, caller: Self.caller(context))
        return RevokeApplicationTokenResponse()
    }

    public func signUp(_ request: SignUpRequest, context: ServerCallContext) async throws -> SignUpResponse {
        SignUpResponse(user: try await store.signUp(request, tenant: context.tenant))
    }
}
