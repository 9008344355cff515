/// WSO2 API-M 2.x's Thrift key-validation interface (carbon-apimgt
/// `keymgt.thrift` and carbon-identity `authenticator.thrift`; the IDL as
/// written from those facts is `proto/thrift/`, the field table
/// docs/thrift-key-validation.md): the typed structs, each read from and
/// written as a ``ThriftStruct`` with WSO2's field ids and types.
public enum KeyValidationService {
    public static let validateKey = "validateKey"
    public static let getAllURITemplates = "getAllURITemplates"
    public static let validateKeyforHandshake = "validateKeyforHandshake"
    public static let authenticate = "authenticate"
    /// The message of the declared `APIKeyMgtException` for a bad session (WSO2's wording).
    public static let invalidSessionMessage = "Invalid session id for thrift authenticator."
}

/// `APIKeyValidationInfoDTO`: every field optional.
public struct APIKeyValidationInfoDTO: Sendable, Hashable {
    public var authorized: Bool?
    public var subscriber: String?
    public var tier: String?
    public var type: String?
    public var endUserToken: String?
    public var endUserName: String?
    public var applicationName: String?
    public var validationStatus: Int32?
    public var applicationId: String?
    public var applicationTier: String?
    public var apiName: String?
    public var consumerKey: String?
    public var apiPublisher: String?
    public var authorizedDomains: [String]?
    public var scopes: [String]?
    public var validityPeriod: Int64?
    public var issuedTime: Int64?
    public var isContentAware: Bool?
    public var apiTier: String?
    public var throttlingDataList: [String]?
    public var spikeArrestLimit: Int32?
    public var subscriberTenantDomain: String?
    public var spikeArrestUnit: String?
    public var stopOnQuotaReach: Bool?

    public init() {}

    public init(thrift s: ThriftStruct) {
        authorized = s.bool(1)
        subscriber = s.string(2)
        tier = s.string(3)
        type = s.string(4)
        endUserToken = s.string(5)
        endUserName = s.string(6)
        applicationName = s.string(7)
        validationStatus = s.i32(8)
        applicationId = s.string(9)
        applicationTier = s.string(10)
        apiName = s.string(11)
        consumerKey = s.string(12)
        apiPublisher = s.string(13)
        authorizedDomains = s.strings(14)
        scopes = s.strings(15)
        validityPeriod = s.i64(16)
        issuedTime = s.i64(17)
        isContentAware = s.bool(18)
        apiTier = s.string(19)
        throttlingDataList = s.strings(20)
        spikeArrestLimit = s.i32(21)
        subscriberTenantDomain = s.string(22)
        spikeArrestUnit = s.string(23)
        stopOnQuotaReach = s.bool(24)
    }

    /// Fields in ascending id order, unset ones omitted (as generated writers do).
    public var thrift: ThriftStruct {
        var s = ThriftStruct()
        s.fields.reserveCapacity(24)
        s.append(1, authorized.map(ThriftValue.bool))
        s.append(2, subscriber.map(ThriftValue.text))
        s.append(3, tier.map(ThriftValue.text))
        s.append(4, type.map(ThriftValue.text))
        s.append(5, endUserToken.map(ThriftValue.text))
        s.append(6, endUserName.map(ThriftValue.text))
        s.append(7, applicationName.map(ThriftValue.text))
        s.append(8, validationStatus.map(ThriftValue.i32))
        s.append(9, applicationId.map(ThriftValue.text))
        s.append(10, applicationTier.map(ThriftValue.text))
        s.append(11, apiName.map(ThriftValue.text))
        s.append(12, consumerKey.map(ThriftValue.text))
        s.append(13, apiPublisher.map(ThriftValue.text))
        s.append(14, authorizedDomains.map { .list(.string, $0.map(ThriftValue.text)) })
        s.append(15, scopes.map { .set(.string, $0.map(ThriftValue.text)) })
        s.append(16, validityPeriod.map(ThriftValue.i64))
        s.append(17, issuedTime.map(ThriftValue.i64))
        s.append(18, isContentAware.map(ThriftValue.bool))
        s.append(19, apiTier.map(ThriftValue.text))
        s.append(20, throttlingDataList.map { .list(.string, $0.map(ThriftValue.text)) })
        s.append(21, spikeArrestLimit.map(ThriftValue.i32))
        s.append(22, subscriberTenantDomain.map(ThriftValue.text))
        s.append(23, spikeArrestUnit.map(ThriftValue.text))
        s.append(24, stopOnQuotaReach.map(ThriftValue.bool))
        return s
    }
}

/// `ConditionDTO`.
public struct ConditionDTO: Sendable, Hashable {
    public var conditionType: String?
    public var conditionName: String?
    public var conditionValue: String?
    public var isInverted: Bool?

    public init(conditionType: String? = nil, conditionName: String? = nil, conditionValue: String? = nil, isInverted: Bool? = nil) {
        self.conditionType = conditionType
        self.conditionName = conditionName
        self.conditionValue = conditionValue
        self.isInverted = isInverted
    }

    public init(thrift s: ThriftStruct) {
        self.init(conditionType: s.string(1), conditionName: s.string(2), conditionValue: s.string(3), isInverted: s.bool(4))
    }

    public var thrift: ThriftStruct {
        var s = ThriftStruct()
        s.append(1, conditionType.map(ThriftValue.text))
        s.append(2, conditionName.map(ThriftValue.text))
        s.append(3, conditionValue.map(ThriftValue.text))
        s.append(4, isInverted.map(ThriftValue.bool))
        return s
    }
}

/// `ConditionGroupDTO`.
public struct ConditionGroupDTO: Sendable, Hashable {
    public var conditionGroupId: String?
    public var conditions: [ConditionDTO]?

    public init(conditionGroupId: String? = nil, conditions: [ConditionDTO]? = nil) {
        self.conditionGroupId = conditionGroupId
        self.conditions = conditions
    }

    public init(thrift s: ThriftStruct) {
        self.init(conditionGroupId: s.string(1), conditions: s.structures(2)?.map(ConditionDTO.init(thrift:)))
    }

    public var thrift: ThriftStruct {
        var s = ThriftStruct()
        s.append(1, conditionGroupId.map(ThriftValue.text))
        s.append(2, conditions.map { .list(.structure, $0.map { .structure($0.thrift) }) })
        return s
    }
}

/// `URITemplate`: one (template, verb) of an API.
public struct URITemplateDTO: Sendable, Hashable {
    public var uriTemplate: String?
    public var resourceURI: String?
    public var resourceSandboxURI: String?
    public var httpVerb: String?
    public var authType: String?
    public var throttlingTier: String?
    public var throttlingConditions: [String]?
    public var applicableLevel: String?
    public var conditionGroups: [ConditionGroupDTO]?

    public init() {}

    public init(thrift s: ThriftStruct) {
        uriTemplate = s.string(1)
        resourceURI = s.string(2)
        resourceSandboxURI = s.string(3)
        httpVerb = s.string(4)
        authType = s.string(5)
        throttlingTier = s.string(6)
        throttlingConditions = s.strings(7)
        applicableLevel = s.string(8)
        conditionGroups = s.structures(9)?.map(ConditionGroupDTO.init(thrift:))
    }

    public var thrift: ThriftStruct {
        var s = ThriftStruct()
        s.append(1, uriTemplate.map(ThriftValue.text))
        s.append(2, resourceURI.map(ThriftValue.text))
        s.append(3, resourceSandboxURI.map(ThriftValue.text))
        s.append(4, httpVerb.map(ThriftValue.text))
        s.append(5, authType.map(ThriftValue.text))
        s.append(6, throttlingTier.map(ThriftValue.text))
        s.append(7, throttlingConditions.map { .list(.string, $0.map(ThriftValue.text)) })
        s.append(8, applicableLevel.map(ThriftValue.text))
        s.append(9, conditionGroups.map { .list(.structure, $0.map { .structure($0.thrift) }) })
        return s
    }
}

/// `validateKey_args`; also `validateKeyforHandshake_args` (fields 1–4 only).
public struct ValidateKeyArguments: Sendable, Hashable {
    public var context: String
    public var version: String
    public var accessToken: String
    public var sessionId: String
    public var requiredAuthenticationLevel: String
    /// Default requiredness in WSO2's IDL: omitted when null.
    public var clientDomain: String?
    public var matchingResource: String
    public var httpVerb: String

    public init(context: String, version: String, accessToken: String, sessionId: String, requiredAuthenticationLevel: String,
                clientDomain: String?, matchingResource: String, httpVerb: String) {
        self.context = context
        self.version = version
        self.accessToken = accessToken
        self.sessionId = sessionId
        self.requiredAuthenticationLevel = requiredAuthenticationLevel
        self.clientDomain = clientDomain
        self.matchingResource = matchingResource
        self.httpVerb = httpVerb
    }

    public init(thrift s: ThriftStruct) throws(ThriftMissingFieldError) {
        let name = "validateKey_args"
        self.init(context: try s.requiredString(1, "context", in: name), version: try s.requiredString(2, "version", in: name),
                  accessToken: try s.requiredString(3, "accessToken", in: name), sessionId: try s.requiredString(4, "sessionId", in: name),
                  requiredAuthenticationLevel: try s.requiredString(5, "requiredAuthenticationLevel", in: name), clientDomain: s.string(6),
                  matchingResource: try s.requiredString(7, "matchingResource", in: name), httpVerb: try s.requiredString(8, "httpVerb", in: name))
    }

    public var thrift: ThriftStruct {
        var s = ThriftStruct([ThriftField(1, .text(context)), ThriftField(2, .text(version)), ThriftField(3, .text(accessToken)),
                              ThriftField(4, .text(sessionId)), ThriftField(5, .text(requiredAuthenticationLevel))])
        s.append(6, clientDomain.map(ThriftValue.text))
        s.append(7, .text(matchingResource))
        s.append(8, .text(httpVerb))
        return s
    }
}

/// `validateKeyforHandshake_args` (WebSocket handshakes, APIM 2.1 on).
public struct ValidateKeyForHandshakeArguments: Sendable, Hashable {
    public var context: String
    public var version: String
    public var accessToken: String
    public var sessionId: String

    public init(context: String, version: String, accessToken: String, sessionId: String) {
        self.context = context
        self.version = version
        self.accessToken = accessToken
        self.sessionId = sessionId
    }

    public init(thrift s: ThriftStruct) throws(ThriftMissingFieldError) {
        let name = "validateKeyforHandshake_args"
        self.init(context: try s.requiredString(1, "context", in: name), version: try s.requiredString(2, "version", in: name),
                  accessToken: try s.requiredString(3, "accessToken", in: name), sessionId: try s.requiredString(4, "sessionId", in: name))
    }

    public var thrift: ThriftStruct {
        ThriftStruct([ThriftField(1, .text(context)), ThriftField(2, .text(version)), ThriftField(3, .text(accessToken)), ThriftField(4, .text(sessionId))])
    }
}

/// `getAllURITemplates_args`.
public struct GetAllURITemplatesArguments: Sendable, Hashable {
    public var context: String
    public var apiVersion: String
    public var sessionId: String

    public init(context: String, apiVersion: String, sessionId: String) {
        self.context = context
        self.apiVersion = apiVersion
        self.sessionId = sessionId
    }

    public init(thrift s: ThriftStruct) throws(ThriftMissingFieldError) {
        let name = "getAllURITemplates_args"
        self.init(context: try s.requiredString(1, "context", in: name), apiVersion: try s.requiredString(2, "apiVersion", in: name),
                  sessionId: try s.requiredString(3, "sessionId", in: name))
    }

    public var thrift: ThriftStruct {
        ThriftStruct([ThriftField(1, .text(context)), ThriftField(2, .text(apiVersion)), ThriftField(3, .text(sessionId))])
    }
}

/// `authenticate_args` of `AuthenticatorService`.
public struct AuthenticateArguments: Sendable, Hashable {
    public var userName: String
    public var password: String

    public init(userName: String, password: String) {
        self.userName = userName
        self.password = password
    }

    public init(thrift s: ThriftStruct) throws(ThriftMissingFieldError) {
        self.init(userName: try s.requiredString(1, "userName", in: "authenticate_args"), password: try s.requiredString(2, "password", in: "authenticate_args"))
    }

    public var thrift: ThriftStruct { ThriftStruct([ThriftField(1, .text(userName)), ThriftField(2, .text(password))]) }
}

/// A method's `_result`: the value at field 0, or a declared exception at
/// its IDL id. Every WSO2 exception is `{1: required string message}`.
public enum ThriftResult<Success: Sendable & Hashable>: Sendable, Hashable {
    case success(Success)
    /// A declared exception: its field id in `_result`, and its message.
    case declared(id: Int16, message: String)

    /// Field 1 of every key-validation method: `APIKeyMgtException`.
    public static func keyManagementException(_ message: String) -> ThriftResult { .declared(id: 1, message: message) }

    public func thrift(_ encode: (Success) -> ThriftValue) -> ThriftStruct {
        switch self {
        case .success(let value): ThriftStruct([ThriftField(0, encode(value))])
        case .declared(let id, let message): ThriftStruct([ThriftField(id, .structure(ThriftStruct([ThriftField(1, .text(message))])))])
        }
    }

    /// Reads a `_result`; a result with neither is libthrift's MISSING_RESULT.
    public init(thrift s: ThriftStruct, method: String, decode: (ThriftValue) -> Success?) throws(ThriftApplicationException) {
        if let value = s[0], let success = decode(value) {
            self = .success(success)
            return
        }
        for field in s.fields where field.id != 0 {
            if case .structure(let exception) = field.value {
                self = .declared(id: field.id, message: exception.string(1) ?? "")
                return
            }
        }
        throw ThriftApplicationException(.missingResult, "\(method) failed: unknown result")
    }
}
