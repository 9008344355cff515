public import RPCCore
public import TollgateProto
public import TollgateServices
import TollgateStorage
import TollgateUsers

/// `tollgate.v1.AdminService`: throttling policies and block conditions,
/// per tenant (the caller's, or `x-tenant` for the super tenant's admins).
public struct AdminService: AdminServiceHandler {
    public let store: PolicyStore

    public init(store: PolicyStore) {
        self.store = store
    }

    public func createPolicy(_ request: CreatePolicyRequest, context: ServerCallContext) async throws -> CreatePolicyResponse {
        try await store.installDefaults(tenant: context.tenant)
        return CreatePolicyResponse(policy: try await store.createPolicy(request.policy ?? ThrottlePolicy(), tenant: context.tenant))
    }

    public func updatePolicy(_ request: UpdatePolicyRequest, context: ServerCallContext) async throws -> UpdatePolicyResponse {
        try await store.installDefaults(tenant: context.tenant)
        return UpdatePolicyResponse(policy: try await store.updatePolicy(request.policy ?? ThrottlePolicy(), tenant: context.tenant))
    }

    public func deletePolicy(_ request: DeletePolicyRequest, context: ServerCallContext) async throws -> DeletePolicyResponse {
        let ref = try Self.reference(request.policy)
        try await store.installDefaults(tenant: context.tenant)
        try await store.deletePolicy(kind: ref.kind, name: ref.name, tenant: context.tenant)
        return DeletePolicyResponse()
    }

    public func getPolicy(_ request: GetPolicyRequest, context: ServerCallContext) async throws -> GetPolicyResponse {
        let ref = try Self.reference(request.policy)
        try await store.installDefaults(tenant: context.tenant)
        return GetPolicyResponse(policy: try store.policy(kind: ref.kind, name: ref.name, tenant: context.tenant))
    }

    public func listPolicies(_ request: ListPoliciesRequest, context: ServerCallContext) async throws -> ListPoliciesResponse {
        try await store.installDefaults(tenant: context.tenant)
        let page = try store.listPolicies(kind: request.kind, tenant: context.tenant, pageSize: Int(request.page?.pageSize ?? 0),
                                          pageToken: request.page?.pageToken ?? [])
        return ListPoliciesResponse(policies: page.items, page: PageResponse(nextPageToken: page.nextPageToken))
    }

    static func reference(_ ref: PolicyRef?) throws(RPCError) -> (kind: PolicyKind, name: String) {
        guard let ref, ref.kind != .unspecified, !ref.name.isEmpty else {
            throw RPCError(.invalidArgument, "policy needs a kind (SUBSCRIPTION, APPLICATION, ADVANCED, GLOBAL) and a name")
        }
        return (ref.kind, ref.name)
    }

    public func createBlockCondition(_ request: CreateBlockConditionRequest, context: ServerCallContext) async throws -> CreateBlockConditionResponse {
        CreateBlockConditionResponse(condition: try await store.createBlockCondition(request.condition ?? BlockCondition(), tenant: context.tenant))
    }

    public func updateBlockCondition(_ request: UpdateBlockConditionRequest, context: ServerCallContext) async throws -> UpdateBlockConditionResponse {
        UpdateBlockConditionResponse(condition: try await store.updateBlockCondition(request.condition ?? BlockCondition(), tenant: context.tenant))
    }

    public func deleteBlockCondition(_ request: DeleteBlockConditionRequest, context: ServerCallContext) async throws -> DeleteBlockConditionResponse {
        try await store.deleteBlockCondition(request.conditionId, tenant: context.tenant)
        return DeleteBlockConditionResponse()
    }

    public func getBlockCondition(_ request: GetBlockConditionRequest, context: ServerCallContext) async throws -> GetBlockConditionResponse {
        GetBlockConditionResponse(condition: try store.blockCondition(request.conditionId, tenant: context.tenant))
    }

    public func listBlockConditions(_ request: ListBlockConditionsRequest, context: ServerCallContext) async throws -> ListBlockConditionsResponse {
        let page = try store.listBlockConditions(type: request.conditionType, tenant: context.tenant, pageSize: Int(request.page?.pageSize ?? 0),
                                                 pageToken: request.page?.pageToken ?? [])
        return ListBlockConditionsResponse(conditions: page.items, page: PageResponse(nextPageToken: page.nextPageToken))
    }

    public func setBlockConditionEnabled(_ request: SetBlockConditionEnabledRequest, context: ServerCallContext) async throws -> SetBlockConditionEnabledResponse {
        SetBlockConditionEnabledResponse(condition: try await store.setBlockConditionEnabled(request.conditionId, enabled: request.enabled, tenant: context.tenant))
    }
}
