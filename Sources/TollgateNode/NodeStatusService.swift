import RoleCore
import Foundation
import RPCCore
import RPCNIO
import TollgateProto
import TollgateServices

/// `tollgate.v1.NodeService`: every node answers pings and reports its status.
struct NodeStatusService: NodeServiceHandler {
    let config: NodeConfig
    let startedAtUnixMs: Int64
    /// Which roles serve each declared service (the node's role modules' table).
    let placement: ServiceRoles
    let peers: @Sendable () -> [PeerLink]

    func listServices(_ request: ListServicesRequest, context: ServerCallContext) async throws -> ListServicesResponse {
        ListServicesResponse(nodeRoles: config.roles.map(\.protoRole), services: RoleModules.declaredServices.map { service in
            let roles = (placement.rolesByService[service] ?? []).compactMap(Role.init(rawValue:))
            return ServicePlacement(service: service, roles: roles.map(\.protoRole), servedHere: roles.contains { config.roles.contains($0) })
        })
    }

    func ping(_ request: PingRequest, context: ServerCallContext) async throws -> PingResponse {
        PingResponse(payload: request.payload, serverTimeUnixMs: Int64(Date().timeIntervalSince1970 * 1000), nodeId: config.nodeID)
    }

    func getNodeStatus(_ request: GetNodeStatusRequest, context: ServerCallContext) async throws -> GetNodeStatusResponse {
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        return GetNodeStatusResponse(
            nodeId: config.nodeID, roles: config.roles.map(\.protoRole), version: TollgateVersion.current,
            hostname: ProcessInfo.processInfo.hostName, startedAtUnixMs: startedAtUnixMs, uptimeMs: now - startedAtUnixMs, ready: true,
            peers: peers().map { peer in
                let status = peer.channel.status
                var connection = PeerConnection()
                if let report = peer.report {
                    connection.nodeId = report.status.nodeId
                    connection.version = report.status.version
                    connection.uptimeMs = report.status.uptimeMs
                    connection.ready = report.status.ready
                    connection.reportedAtUnixMs = report.atUnixMs
                }
                connection.role = peer.role.protoRole
                connection.address = peer.endpoint.description
                connection.state = switch status.state {
                case .ready: .ready
                case .connecting, .idle: .connecting
                case .backoff: .backoff
                case .closed: .closed
                }
                connection.reconnectCount = UInt64(status.reconnects)
                connection.lastErrorMessage = status.lastError
                if let age = status.lastErrorAge {
                    connection.lastErrorAtUnixMs = now - age.components.seconds * 1000 - age.components.attoseconds / 1_000_000_000_000_000
                }
                return connection
            })
    }
}

extension Role {
    var protoRole: NodeRole {
        switch self {
        case .publisher: .publisher
        case .store: .store
        case .keymanager: .keyManager
        case .gateway: .gateway
        case .trafficmanager: .trafficManager
        case .analytics: .analytics
        }
    }
}
