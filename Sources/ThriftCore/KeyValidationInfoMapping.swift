public import TollgateProto

/// One validation result, two encodings: the keymanager answers Thrift
/// calls from the same ``KeyValidationInfo`` the `ValidateKey` RPC returns,
/// and the gateway's Thrift client turns a DTO back into one.
///
/// What the DTO cannot carry: the two policies' limits
/// (`application_limit`, `subscription_limit`); WSO2 gateways look them up
/// by tier name instead.
extension APIKeyValidationInfoDTO {
    /// WSO2 sends `Long.MAX_VALUE` as the validity of a token that never expires.
    public static let neverExpires = Int64.max

    public init(_ info: KeyValidationInfo) {
        self.init()
        authorized = info.authorized
        validationStatus = info.validationStatus
        func text(_ value: String) -> String? { value.isEmpty ? nil : value }
        subscriber = text(info.subscriber)
        tier = text(info.subscriptionPolicy)
        type = switch info.keyType {
        case .production: "PRODUCTION"
        case .sandbox: "SANDBOX"
        default: nil
        }
        endUserToken = text(info.endUserToken)
        endUserName = text(info.endUserName)
        applicationName = text(info.applicationName)
        applicationId = text(info.applicationId)
        applicationTier = text(info.applicationPolicy)
        apiName = text(info.apiName)
        consumerKey = text(info.consumerKey)
        apiPublisher = text(info.apiPublisher)
        if !info.authorizedDomains.isEmpty { authorizedDomains = info.authorizedDomains }
        if !info.scopes.isEmpty { scopes = info.scopes }
        apiTier = text(info.apiPolicy)
        if !info.throttlingData.isEmpty { throttlingDataList = info.throttlingData }
        subscriberTenantDomain = text(info.subscriberTenantDomain)
        spikeArrestUnit = Self.spikeArrestUnitName(info.spikeArrestUnit)
        // WSO2's keymanager always sends these on an authorized result, so
        // the gateway's expiry check on cached entries works (a 0 validity
        // would expire every cached repeat).
        if info.authorized {
            issuedTime = info.issuedAtUnixMs
            validityPeriod = info.expiresAtUnixMs.map { max(0, $0 - info.issuedAtUnixMs) } ?? Self.neverExpires
            isContentAware = info.contentAware
            spikeArrestLimit = Int32(clamping: info.spikeArrestLimit)
            stopOnQuotaReach = info.stopOnQuotaReach
        }
    }

    /// `RATE_LIMIT_TIME_UNIT` as WSO2's admin portal stores it (`sec`, `min`, …).
    static func spikeArrestUnitName(_ unit: TimeUnit) -> String? {
        switch unit {
        case .second: "sec"
        case .minute: "min"
        case .hour: "hour"
        case .day: "day"
        case .month: "month"
        case .year: "year"
        default: nil
        }
    }

    /// Reads WSO2's unit names leniently (`sec`, `second`, `SECOND`, `s`, …).
    static func timeUnit(named name: String?) -> TimeUnit {
        switch name?.lowercased() {
        case "s", "sec", "second", "seconds": .second
        case "m", "min", "minute", "minutes": .minute
        case "h", "hour", "hours": .hour
        case "d", "day", "days": .day
        case "month", "months": .month
        case "y", "year", "years": .year
        default: .unspecified
        }
    }

    /// The result as the RPC path returns it.
    public var keyValidationInfo: KeyValidationInfo {
        var info = KeyValidationInfo(authorized: authorized ?? false, validationStatus: validationStatus ?? 0)
        info.keyType = switch type?.uppercased() {
        case "PRODUCTION": .production
        case "SANDBOX": .sandbox
        default: .unspecified
        }
        info.subscriber = subscriber ?? ""
        info.subscriptionPolicy = tier ?? ""
        info.endUserToken = endUserToken ?? ""
        info.endUserName = endUserName ?? ""
        info.applicationName = applicationName ?? ""
        info.applicationId = applicationId ?? ""
        info.applicationPolicy = applicationTier ?? ""
        info.apiName = apiName ?? ""
        info.consumerKey = consumerKey ?? ""
        info.apiPublisher = apiPublisher ?? ""
        info.authorizedDomains = authorizedDomains ?? []
        info.scopes = scopes ?? []
        info.apiPolicy = apiTier ?? ""
        info.throttlingData = throttlingDataList ?? []
        info.subscriberTenantDomain = subscriberTenantDomain ?? ""
        info.spikeArrestUnit = Self.timeUnit(named: spikeArrestUnit)
        info.spikeArrestLimit = UInt32(clamping: spikeArrestLimit ?? 0)
        info.stopOnQuotaReach = stopOnQuotaReach ?? false
        info.contentAware = isContentAware ?? false
        info.issuedAtUnixMs = issuedTime ?? 0
        if let validityPeriod, validityPeriod != Self.neverExpires {
            let (expires, overflow) = (issuedTime ?? 0).addingReportingOverflow(validityPeriod)
            info.expiresAtUnixMs = overflow ? nil : expires
        }
        return info
    }
}

/// WSO2's `requiredAuthenticationLevel` strings (`Any`, `Application`,
/// `Application_User`, `None`) and HTTP verbs, as the RPC's enums.
public enum KeyValidationVocabulary {
    public static func authType(_ level: String) -> ResourceAuthType {
        switch level.lowercased() {
        case "application": .application
        case "application_user", "application user": .applicationUser
        case "none": .none
        // WSO2's handler restricts the token type only for the two named levels.
        default: .any
        }
    }

    public static func level(_ type: ResourceAuthType) -> String {
        switch type {
        case .application: "Application"
        case .applicationUser: "Application_User"
        case .none: "None"
        default: "Any"
        }
    }

    public static func verb(_ name: String) -> HttpVerb { HttpVerb(httpMethodName: name) ?? .unspecified }

    public static func verbName(_ verb: HttpVerb) -> String { verb.httpMethodName ?? "" }
}
