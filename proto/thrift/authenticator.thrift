// WSO2's Thrift authenticator (carbon-identity-framework authenticator.thrift),
// served over HTTPS POST /thriftAuthenticator in TCompactProtocol. Written
// from the wire facts in docs/thrift-key-validation.md.

namespace java org.wso2.carbon.identity.thrift.authentication.internal.generatedCode
namespace py authenticator

exception AuthenticationException {
    1: required string message
}

service AuthenticatorService {
    string authenticate(1: required string userName, 2: required string password) throws (1: AuthenticationException ae)
}
