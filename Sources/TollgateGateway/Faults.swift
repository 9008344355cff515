public import RoleCore
import ThrottleCore

/// WSO2's fault answers, by code: the status, message and description a
/// WSO2 2.x gateway sends, so clients written against WSO2 read ours alike.
public struct GatewayFault: Sendable, Hashable {
    public let code: Int32
    public let status: Int
    public let message: String
    public let description: String
    /// Security faults answer in WSO2's security namespace, throttling ones in its throttling namespace.
    let namespace: String

    static let security = "http://wso2.org/apimanager/security"
    static let throttling = "http://wso2.org/apimanager/throttling"

    public static let generalError = GatewayFault(code: 900900, status: 503, message: "Unclassified Authentication Failure",
                                                  description: "Error while accessing backend services for API key validation", namespace: security)
    public static let invalidCredentials = GatewayFault(code: 900901, status: 401, message: "Invalid Credentials",
                                                        description: "Make sure you have provided the correct security credentials", namespace: security)
    public static let missingCredentials = GatewayFault(code: 900902, status: 401, message: "Missing Credentials",
                                                        description: "Make sure your API invocation call has a header: 'Authorization : Bearer ACCESS_TOKEN'",
                                                        namespace: security)
    public static let wrongTokenType = GatewayFault(code: 900905, status: 401, message: "Incorrect Access Token Type is provided",
                                                    description: "The access token type does not match the resource's authentication type", namespace: security)
    public static let noMatchingResource = GatewayFault(code: 900906, status: 403, message: "No matching resource found in the API for the given request",
                                                        description: "Access failure for API, version: the resource or verb is not defined", namespace: security)
    public static let apiBlocked = GatewayFault(code: 900907, status: 503, message: "The requested API is temporarily blocked",
                                                description: "The API is blocked by its publisher", namespace: security)
    public static let subscriptionBlocked = GatewayFault(code: 900907, status: 401, message: "The requested API is temporarily blocked",
                                                         description: "The subscription to the API is blocked", namespace: security)
    public static let resourceForbidden = GatewayFault(code: 900908, status: 403, message: "Resource forbidden",
                                                       description: "The application is not subscribed to the API", namespace: security)
    public static let subscriptionInactive = GatewayFault(code: 900909, status: 401, message: "The subscription to the API is inactive",
                                                          description: "The subscription is on hold or rejected", namespace: security)
    public static let invalidScope = GatewayFault(code: 900910, status: 403, message: "The access token does not allow you to access the requested resource",
                                                  description: "User is NOT authorized to access the Resource. Scope validation failed.", namespace: security)
    public static let blocked = GatewayFault(code: 900805, status: 403, message: "Message blocked",
                                             description: "You have been blocked from accessing the resource", namespace: throttling)
    public static let apiThrottled = GatewayFault(code: 900800, status: 429, message: "Message throttled out",
                                                  description: "You have exceeded your quota for the API", namespace: throttling)
    public static let hardLimit = GatewayFault(code: 900801, status: 503, message: "API Limit Reached",
                                               description: "The API's backend limit was reached", namespace: throttling)
    public static let resourceThrottled = GatewayFault(code: 900802, status: 429, message: "Message throttled out",
                                                       description: "You have exceeded your quota for the resource", namespace: throttling)
    public static let applicationThrottled = GatewayFault(code: 900803, status: 429, message: "Message throttled out",
                                                          description: "You have exceeded your quota for the application", namespace: throttling)
    public static let subscriptionThrottled = GatewayFault(code: 900804, status: 429, message: "Message throttled out",
                                                           description: "You have exceeded your quota", namespace: throttling)
    public static let spikeArrest = GatewayFault(code: 900807, status: 429, message: "Message throttled out",
                                                 description: "You have exceeded your spike arrest limit", namespace: throttling)
    public static let customThrottled = GatewayFault(code: 900806, status: 429, message: "Message throttled out",
                                                     description: "You have exceeded your quota for a custom policy", namespace: throttling)

    /// The fault a throttle refusal answers with (docs/throttling.md §3).
    static func throttled(_ kind: ThrottleKind) -> GatewayFault {
        switch kind {
        case .api: apiThrottled
        case .resource: resourceThrottled
        case .subscription: subscriptionThrottled
        case .spikeArrest: spikeArrest
        case .application: applicationThrottled
        case .custom: customThrottled
        case .hardLimit: hardLimit
        }
    }

    /// The fault for a keymanager's refusal code.
    public static func validation(_ status: Int32) -> GatewayFault {
        switch status {
        case 900902: .missingCredentials
        case 900905: .wrongTokenType
        case 900906: .noMatchingResource
        case 900907: .subscriptionBlocked
        case 900908: .resourceForbidden
        case 900909: .subscriptionInactive
        case 900910: .invalidScope
        case 900900: .generalError
        default: .invalidCredentials
        }
    }

    /// The answer: JSON, or XML when the client accepts XML and not JSON.
    public func response(accept: String?, extraHeaders: [(name: String, value: String)] = []) -> HTTPResponse {
        var headers = extraHeaders
        let xml = accept.map { $0.contains("xml") && !$0.contains("json") && !$0.contains("*/*") } ?? false
        let body: String
        if xml {
            headers.append(("Content-Type", "application/xml; charset=UTF-8"))
            body = "<ams:fault xmlns:ams=\"\(namespace)\"><ams:code>\(code)</ams:code><ams:message>\(Self.escapeXML(message))</ams:message>"
                + "<ams:description>\(Self.escapeXML(description))</ams:description></ams:fault>"
        } else {
            headers.append(("Content-Type", "application/json; charset=UTF-8"))
            body = "{\"fault\":{\"code\":\(code),\"message\":\"\(Self.escapeJSON(message))\",\"description\":\"\(Self.escapeJSON(description))\"}}"
        }
        if status == 401 {
            let challenge = code == 900902 ? "Bearer realm=\"Tollgate\"" : "Bearer realm=\"Tollgate\", error=\"invalid_token\""
            headers.append(("WWW-Authenticate", challenge))
        }
        return HTTPResponse(status: status, headers: headers, body: Array(body.utf8))
    }

    static func escapeXML(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "&": out += "&amp;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            default: out.append(character)
            }
        }
        return out
    }

    static func escapeJSON(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out
    }
}
