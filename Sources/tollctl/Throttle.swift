import ArgumentParser
import Foundation
import RPCCore
import TollgateProto
import ThrottleCore
import TollgateServices

struct ThrottleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "throttle", abstract: "Cluster-wide throttling: quota leases on the traffic managers (docs/throttling.md).",
        subcommands: [ThrottleStatus.self])
}

struct ThrottleStatus: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a throttle key's window on a traffic manager: its limit, what is admitted, leased and left, per gateway.",
        discussion: """
            KEY is the key's wire form, e.g. sub:{applicationId}:{context}:{version} or app:{applicationId}:{user} (docs/throttling.md section 1). \
            Ask the traffic manager that owns it (--node, its cluster listener, with an admin certificate); a traffic manager that holds \
            no open window of the key says so.
            """)
    @OptionGroup var connection: ConnectionOptions
    @Option(help: "table or json") var output: OutputFormat = .table
    @Argument(help: "The throttle key.") var key: String

    func run() async throws {
        let status = try await NodeSession.with(connection) { node in
            try await node.run {
                try await TrafficManagerServiceClient(node.connection, defaultOptions: node.callOptions).getThrottleStatus(GetThrottleStatusRequest(throttleKey: key))
            }
        }
        func leased(_ granted: UInt64, _ returned: UInt64, _ used: UInt64) -> UInt64 {
            granted - min(granted, returned + used)
        }
        func pool(_ counter: ThrottleCounter) -> UInt64 { LeaseLedger.pool(counter) }
        func time(_ unixMs: Int64) -> String {
            ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(unixMs) / 1000))
        }
        switch output {
        case .json:
            try printJSON([
                "traffic_manager": status.trafficManagerId, "throttle_key": key,
                "windows": status.counters.map { counter in
                    ["window_start": time(counter.windowStartUnixMs), "window_end": time(counter.windowEndUnixMs), "limit": counter.limit,
                     "admitted": counter.used + counter.unleased, "leased": leased(counter.granted, counter.returned, counter.used),
                     "granted": counter.granted, "returned": counter.returned, "unleased": counter.unleased, "remaining": pool(counter),
                     "exhausted": counter.exhausted,
                     "gateways": counter.gateways.map { gateway in
                         ["gateway": gateway.gatewayId, "granted": gateway.granted, "returned": gateway.returned, "admitted": gateway.used + gateway.unleased,
                          "leased": leased(gateway.granted, gateway.returned, gateway.used)] as [String: Any]
                     }] as [String: Any]
                },
            ] as [String: Any])
        case .table:
            print("traffic manager \(status.trafficManagerId), key \(key)")
            guard !status.counters.isEmpty else {
                print("no open window: nothing leased for this key here (another traffic manager may own it)")
                return
            }
            for counter in status.counters {
                print("window \(time(counter.windowStartUnixMs)) – \(time(counter.windowEndUnixMs)): limit \(counter.limit), admitted \(counter.used + counter.unleased) "
                      + "(reported so far), leased \(leased(counter.granted, counter.returned, counter.used)), remaining \(pool(counter))"
                      + (counter.exhausted ? ", exhausted" : ""))
                printTable(["GATEWAY", "GRANTED", "RETURNED", "ADMITTED", "LEASED"], counter.gateways.map { gateway in
                    [gateway.gatewayId, "\(gateway.granted)", "\(gateway.returned)", "\(gateway.used + gateway.unleased)", "\(leased(gateway.granted, gateway.returned, gateway.used))"]
                })
            }
        }
    }
}
