public import RPCCore
public import TollgateProto
public import TollgateServices
import TollgateStorage

/// `tollgate.v1.UserService`, served by the publisher, store and key manager
/// roles. Access rules are in the access table; handlers act in the call's
/// tenant (`ServerCallContext.tenant`).
public struct UserService: UserServiceHandler {
    public let directory: UserDirectory

    public init(directory: UserDirectory) {
        self.directory = directory
    }

    public func login(_ request: LoginRequest, context: ServerCallContext) async throws -> LoginResponse {
        guard !request.username.isEmpty, !request.password.isEmpty else {
            throw RPCError(.invalidArgument, "username and password are required")
        }
        let result = try await directory.login(username: request.username, password: request.password, defaultTenant: context.metadata["x-tenant"] ?? superTenant,
                                               source: context.sourceAddress)
        return LoginResponse(sessionToken: result.token, expiresAtUnixMs: result.session.expiresAtUnixMs, user: result.user, permissions: result.permissions)
    }

    public func logout(_ request: LogoutRequest, context: ServerCallContext) async throws -> LogoutResponse {
        guard let session = try context.requireUser().sessionID else {
            throw RPCError(.failedPrecondition, "this call was authenticated by a certificate; there is no session to end")
        }
        try await directory.logout(sessionID: session)
        return LogoutResponse()
    }

    public func whoAmI(_ request: WhoAmIRequest, context: ServerCallContext) async throws -> WhoAmIResponse {
        let caller = try context.requireUser()
        return WhoAmIResponse(user: try directory.user(named: caller.username, tenant: caller.tenant), permissions: caller.permissions,
                              sessionExpiresAtUnixMs: caller.sessionExpiresAtUnixMs)
    }

    public func createUser(_ request: CreateUserRequest, context: ServerCallContext) async throws -> CreateUserResponse {
        CreateUserResponse(user: try await directory.createUser(request.user ?? User(), password: request.password, tenant: context.tenant))
    }

    public func updateUser(_ request: UpdateUserRequest, context: ServerCallContext) async throws -> UpdateUserResponse {
        UpdateUserResponse(user: try await directory.updateUser(request.user ?? User(), tenant: context.tenant))
    }

    public func deleteUser(_ request: DeleteUserRequest, context: ServerCallContext) async throws -> DeleteUserResponse {
        try await directory.deleteUser(request.username, tenant: context.tenant, by: try context.requireUser())
        return DeleteUserResponse()
    }

    public func getUser(_ request: GetUserRequest, context: ServerCallContext) async throws -> GetUserResponse {
        GetUserResponse(user: try directory.user(named: request.username, tenant: context.tenant))
    }

    public func listUsers(_ request: ListUsersRequest, context: ServerCallContext) async throws -> ListUsersResponse {
        let page = try directory.listUsers(tenant: context.tenant, prefix: request.usernamePrefix, role: request.role,
                                           pageSize: Int(request.page?.pageSize ?? 0), pageToken: request.page?.pageToken ?? [])
        return ListUsersResponse(users: page.items, page: PageResponse(nextPageToken: page.nextPageToken))
    }

    public func changePassword(_ request: ChangePasswordRequest, context: ServerCallContext) async throws -> ChangePasswordResponse {
        let caller = try context.requireUser()
        let own = request.username.isEmpty || (request.username == caller.username && context.tenant == caller.tenant)
        if own {
            guard !request.currentPassword.isEmpty else { throw RPCError(.invalidArgument, "the current password is required") }
            try await directory.changePassword(caller.username, tenant: caller.tenant, current: request.currentPassword, new: request.newPassword,
                                         keeping: caller.sessionID)
        } else {
            guard caller.holds(Permission.manageUsers) else {
                throw RPCError(.permissionDenied, "changing another user's password needs permission \(Permission.manageUsers)")
            }
            try await directory.changePassword(request.username, tenant: context.tenant, current: nil, new: request.newPassword, keeping: nil)
        }
        return ChangePasswordResponse()
    }

    public func createRole(_ request: CreateRoleRequest, context: ServerCallContext) async throws -> CreateRoleResponse {
        CreateRoleResponse(role: try await directory.createRole(request.role ?? UserRole(), tenant: context.tenant))
    }

    public func deleteRole(_ request: DeleteRoleRequest, context: ServerCallContext) async throws -> DeleteRoleResponse {
        try await directory.deleteRole(request.name, tenant: context.tenant)
        return DeleteRoleResponse()
    }

    public func listRoles(_ request: ListRolesRequest, context: ServerCallContext) async throws -> ListRolesResponse {
        let page = try directory.listRoles(tenant: context.tenant, pageSize: Int(request.page?.pageSize ?? 0), pageToken: request.page?.pageToken ?? [])
        return ListRolesResponse(roles: page.items, page: PageResponse(nextPageToken: page.nextPageToken))
    }

    public func assignRoles(_ request: AssignRolesRequest, context: ServerCallContext) async throws -> AssignRolesResponse {
        AssignRolesResponse(user: try await directory.assignRoles(request.username, tenant: context.tenant, add: request.addRoles, remove: request.removeRoles))
    }

    public func createTenant(_ request: CreateTenantRequest, context: ServerCallContext) async throws -> CreateTenantResponse {
        CreateTenantResponse(tenant: try await directory.createTenant(request))
    }

    public func listTenants(_ request: ListTenantsRequest, context: ServerCallContext) async throws -> ListTenantsResponse {
        let page = try directory.listTenants(status: request.status, pageSize: Int(request.page?.pageSize ?? 0), pageToken: request.page?.pageToken ?? [])
        return ListTenantsResponse(tenants: page.items, page: PageResponse(nextPageToken: page.nextPageToken))
    }

    public func setTenantStatus(_ request: SetTenantStatusRequest, context: ServerCallContext) async throws -> SetTenantStatusResponse {
        SetTenantStatusResponse(tenant: try await directory.setTenantStatus(request.domain, status: request.status))
    }
}
