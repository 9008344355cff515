/// The name of the default tenant, which hosts the cluster's administrators
/// (WSO2 calls it the super tenant). Its records are stored under this
/// domain, and gateways serve its APIs without a `/t/<domain>` prefix.
public let superTenant = "carbon.super"
