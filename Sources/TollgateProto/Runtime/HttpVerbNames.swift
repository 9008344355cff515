/// HTTP method names of the verbs an API can declare, written once for every
/// module that turns one into the other (the gateway, the publisher's
/// OpenAPI, WSO2's Thrift messages).
extension HttpVerb {
    /// `GET`, `POST`, …; nil for an unspecified or unknown verb.
    public var httpMethodName: String? {
        switch self {
        case .get: "GET"
        case .post: "POST"
        case .put: "PUT"
        case .delete: "DELETE"
        case .patch: "PATCH"
        case .head: "HEAD"
        case .options: "OPTIONS"
        case .unspecified, .unrecognized: nil
        }
    }

    /// The verb of a method name, in any case; nil for methods APIs cannot declare.
    public init?(httpMethodName name: String) {
        switch name.uppercased() {
        case "GET": self = .get
        case "POST": self = .post
        case "PUT": self = .put
        case "DELETE": self = .delete
        case "PATCH": self = .patch
        case "HEAD": self = .head
        case "OPTIONS": self = .options
        default: return nil
        }
    }
}
