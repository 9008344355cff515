public import RPCCore
import TollgateStorage

/// The tenancy rule: a tenant's users act in their own tenant; only the
/// super tenant's administrators may act in another (naming it in
/// `x-tenant`), as WSO2's super-tenant admins do.
public struct SuperTenantAdministration: TenantAccessPolicy {
    public init() {}

    public func mayAct(in tenant: String, as user: UserPrincipal) -> Bool {
        user.tenant.lowercased() == superTenant && user.holds("/permission/admin")
    }
}

extension ServerCallContext {
    /// The tenant the call acts in: `x-tenant` if given (already checked by
    /// the access controller against the tenancy rule), else the user's own,
    /// else the super tenant. Tenant domains are lower-case everywhere they
    /// are stored and compared.
    public var tenant: String {
        (metadata["x-tenant"] ?? caller.user?.tenant ?? superTenant).lowercased()
    }
}
